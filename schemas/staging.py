"""The typed staging DDL (staging_tables.sql), shared by ingest and test factories."""

from __future__ import annotations

import functools
from importlib import resources
from typing import NamedTuple

import duckdb

STAGING_TABLES = ("episodes", "sessions", "assessments", "assessment_items", "goals")
# The ingest builds most staging tables in place, as ``staging._in_<table>``
# work tables renamed when it publishes (assets/ingest_engine.py, IN_PLACE).
WORK_TABLE_PREFIX = "_in_"


def staging_ddl(schema_map: dict[str, str] | None = None) -> str:
    """The DDL text; ``schema_map`` renames schemas (e.g. to build in a scratch schema)."""
    text = resources.files("schemas").joinpath("staging_tables.sql").read_text(encoding="utf-8")
    for old, new in (schema_map or {}).items():
        text = text.replace(f"{old}.", f"{new}.")
    return text


def create_tables(con: duckdb.DuckDBPyConnection, schema_map: dict[str, str] | None = None) -> None:
    """Create every staging/quarantine table (schemas must exist)."""
    con.execute(staging_ddl(schema_map))


class StagingColumn(NamedTuple):
    name: str
    sql_type: str
    not_null: bool


@functools.cache
def staging_columns() -> dict[str, tuple[StagingColumn, ...]]:
    """Per staging table, its columns in order as the DDL defines them.

    Read from the DDL itself (built in a throwaway in-memory database), so that
    the ingest, which builds some staging tables in place, cannot drift from it.
    """
    con = duckdb.connect()
    try:
        con.execute("CREATE SCHEMA staging; CREATE SCHEMA quarantine")
        create_tables(con)
        rows = con.execute(
            "SELECT table_name, column_name, data_type, is_nullable = 'NO' "
            "FROM information_schema.columns WHERE table_schema = 'staging' "
            "ORDER BY table_name, ordinal_position"
        ).fetchall()
    finally:
        con.close()
    out: dict[str, list[StagingColumn]] = {}
    for table, *column in rows:
        out.setdefault(table, []).append(StagingColumn(*column))
    return {table: tuple(columns) for table, columns in out.items()}


def work_tables(con: duckdb.DuckDBPyConnection, database: str | None = None) -> list[str]:
    """Ingest work tables in a warehouse's staging schema: only a killed ingest leaves any."""
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = "
        "coalesce($db, current_database()) AND schema_name = 'staging' "
        "AND starts_with(table_name, $prefix) ORDER BY 1",
        {"db": database, "prefix": WORK_TABLE_PREFIX},
    ).fetchall()
    return [r[0] for r in rows]


def drop_work_tables(con: duckdb.DuckDBPyConnection, database: str | None = None) -> list[str]:
    """Drop what :func:`work_tables` finds; returns their names.

    Safe whenever the caller is the warehouse's only writer, as every step is (DuckDB
    locks the file; the ``warehouse`` pool has one slot), since then no ingest is
    running: work tables exist only while one does.
    """
    names = work_tables(con, database)
    prefix = f'"{database}".' if database else ""
    for name in names:
        con.execute(f'DROP TABLE IF EXISTS {prefix}staging."{name}"')
    return names
