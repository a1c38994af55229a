"""Tiny hand-made export folders for ingest tests.

``base_tables()`` is a small valid export (every value chosen by hand); tests
copy it, break one thing, write it with ``write_exports`` and run the ingest
with ``ingest``.
"""

from __future__ import annotations

import copy
import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from assets.ingest_engine import Ingest, IngestResult
from schemas.settings import Settings

Rows = list[dict[str, Any]]

PHQ9_ITEMS = [2, 2, 2, 2, 2, 2, 2, 2, 0]  # total 16


def base_tables() -> dict[str, Rows]:
    return copy.deepcopy(
        {
            "episodes": [
                {
                    "episode_id": "E1",
                    "client_id": "K1",
                    "clinic_id": "C1",
                    "clinician_id": "T1",
                    "referral_date": "2026-01-01",
                    "start_date": "2026-01-05",
                    "end_date": "",
                    "end_reason": "",
                    "program": "adult_anxiety",
                    "age_band": "25-34",
                    "gender": "female",
                },
                {
                    "episode_id": "E2",
                    "client_id": "K2",
                    "clinic_id": "C1",
                    "clinician_id": "T2",
                    "referral_date": "",
                    "start_date": "2026-01-10",
                    "end_date": "2026-03-01",
                    "end_reason": "completed",
                    "program": "",
                    "age_band": "",
                    "gender": "not_stated",
                },
            ],
            "sessions": [
                {
                    "session_id": "S1",
                    "episode_id": "E1",
                    "client_id": "K1",
                    "clinician_id": "T1",
                    "scheduled_at": "2026-01-05T10:00:00",
                    "status": "attended",
                    "session_type": "assessment",
                    "modality": "video",
                    "duration_minutes": "50",
                    "practice_completed": "",
                },
                {
                    "session_id": "S2",
                    "episode_id": "E1",
                    "client_id": "K1",
                    "clinician_id": "T1",
                    "scheduled_at": "2026-01-12 10:00:00",
                    "status": "attended",
                    "session_type": "",
                    "modality": "",
                    "duration_minutes": "45.0",
                    "practice_completed": "yes",
                },
                {
                    "session_id": "S3",
                    "episode_id": "E2",
                    "client_id": "K2",
                    "clinician_id": "T2",
                    "scheduled_at": "2026-01-10T09:00:00",
                    "status": "no_show",
                    "session_type": "",
                    "modality": "phone",
                    "duration_minutes": "",
                    "practice_completed": "",
                },
            ],
            "assessments": [
                {
                    "assessment_id": "A1",
                    "episode_id": "E1",
                    "client_id": "K1",
                    "session_id": "S1",
                    "instrument": "PHQ-9",
                    "administered_at": "2026-01-05T10:30:00",
                    "total_score": "",
                },
                {
                    "assessment_id": "A2",
                    "episode_id": "E1",
                    "client_id": "K1",
                    "session_id": "",
                    "instrument": "GAD-7",
                    "administered_at": "2026-01-12T10:30:00",
                    "total_score": "12",
                },
            ],
            "assessment_items": [
                {"assessment_id": "A1", "item": str(i), "score": str(s)}
                for i, s in enumerate(PHQ9_ITEMS, start=1)
            ],
            "goals": [
                {
                    "episode_id": "E1",
                    "goal_number": "1",
                    "set_at": "2026-01-05",
                    "horizon": "short_term",
                },
            ],
        }
    )


def write_csv(path: Path, rows: Rows, columns: list[str] | None = None, bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def write_exports(folder: Path, tables: dict[str, Rows], fmt: str = "csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for table, rows in tables.items():
        if rows is None:
            continue
        if fmt == "parquet":
            frame = pd.DataFrame(rows).replace("", None)
            frame.to_parquet(folder / f"{table}.parquet", index=False)
        else:
            write_csv(folder / f"{table}.csv", rows)
    return folder


def ingest(
    folder: Path, con: duckdb.DuckDBPyConnection | None = None, **settings: Any
) -> tuple[duckdb.DuckDBPyConnection, IngestResult]:
    con = con or duckdb.connect()
    for schema in ("staging", "quarantine", "marts"):
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    result = Ingest(
        replace(Settings(), exports_dir=folder, **settings), con, run_id="test-run"
    ).run()
    return con, result


def rejected(con: duckdb.DuckDBPyConnection, table: str | None = None) -> list[tuple]:
    """(table_name, source_file, source_row, rule) of every quarantined row, in order."""
    where = "" if table is None else f"WHERE table_name = '{table}'"
    return con.execute(
        f"SELECT table_name, source_file, source_row, rule FROM quarantine.rejected_rows {where}"
    ).fetchall()


def staged_ids(con: duckdb.DuckDBPyConnection, table: str, column: str) -> list[str]:
    return [
        r[0]
        for r in con.execute(
            f"SELECT {column} FROM staging.{table} ORDER BY source_file, source_row"
        ).fetchall()
    ]
