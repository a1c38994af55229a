"""Build tiny typed warehouses for metric tests, with the real staging DDL.

Tests pass plain dicts with only the columns they care about; the rest get
neutral defaults. ``registry`` defaults to the shipped one, and ``as_of`` is
written to staging.run_info as the ingest would.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import duckdb
import pandas as pd

from schemas.registry import Registry, load_registry
from schemas.staging import create_tables

DEFAULTS: dict[str, dict[str, Any]] = {
    "episodes": {
        "clinic_id": "C1",
        "clinician_id": "T1",
        "referral_date": None,
        "end_date": None,
        "end_reason": None,
        "program": None,
        "age_band": None,
        "gender": None,
    },
    "sessions": {
        "clinician_id": "T1",
        "session_type": "treatment",
        "modality": None,
        "duration_minutes": None,
        "practice_completed": None,
    },
    "assessments": {
        "session_id": None,
        "total_score": None,
        "items_answered": None,
        "prorated": False,
    },
    "assessment_items": {},
    "goals": {},
    "risk_responses": {"staged": True},
}


def create_empty_warehouse(con: duckdb.DuckDBPyConnection) -> None:
    for schema in ("staging", "quarantine", "marts"):
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    create_tables(con)


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [
        r[0]
        for r in con.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'staging' AND table_name = ? ORDER BY ordinal_position",
            [table],
        ).fetchall()
    ]


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    cols = _columns(con, table)
    records = []
    for i, row in enumerate(rows, start=1):
        lineage = {"source_file": f"{table}.csv", "source_row": i} if "source_row" in cols else {}
        full = {**lineage, **DEFAULTS.get(table, {}), **row}
        unknown = set(full) - set(cols)
        if unknown:
            raise KeyError(f"staging.{table} has no columns {sorted(unknown)}")
        records.append({c: full.get(c) for c in cols})
    frame = pd.DataFrame.from_records(records, columns=cols)
    con.register("_rows", frame)
    con.execute(f"INSERT INTO staging.{table} SELECT * FROM _rows")
    con.unregister("_rows")


def make_warehouse(
    con: duckdb.DuckDBPyConnection,
    *,
    as_of: str | dt.date = "2026-06-30",
    registry: Registry | None = None,
    settings: dict[str, Any] | None = None,
    **tables: list[dict[str, Any]],
) -> duckdb.DuckDBPyConnection:
    """Fill a (fresh) connection with staging tables from lists of dicts."""
    create_empty_warehouse(con)
    registry = registry or load_registry()
    frame = registry.frame()
    con.register("_instruments", frame)
    con.execute("INSERT INTO staging.instruments BY NAME SELECT * FROM _instruments")
    con.unregister("_instruments")
    as_of = dt.date.fromisoformat(as_of) if isinstance(as_of, str) else as_of
    con.execute(
        "INSERT INTO staging.run_info VALUES ('test-run', ?, 'config', 'tests', ?)",
        [as_of, json.dumps(settings or {})],
    )
    for table, rows in tables.items():
        insert_rows(con, table, rows)
    return con
