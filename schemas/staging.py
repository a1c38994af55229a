"""The typed staging DDL (staging_tables.sql), shared by ingest and test factories."""

from __future__ import annotations

from importlib import resources

import duckdb

STAGING_TABLES = ("episodes", "sessions", "assessments", "assessment_items", "goals")


def staging_ddl(schema_map: dict[str, str] | None = None) -> str:
    """The DDL text; ``schema_map`` renames schemas (e.g. to build in a scratch schema)."""
    text = resources.files("schemas").joinpath("staging_tables.sql").read_text(encoding="utf-8")
    for old, new in (schema_map or {}).items():
        text = text.replace(f"{old}.", f"{new}.")
    return text


def create_tables(con: duckdb.DuckDBPyConnection, schema_map: dict[str, str] | None = None) -> None:
    """Create every staging/quarantine table (schemas must exist)."""
    con.execute(staging_ddl(schema_map))
