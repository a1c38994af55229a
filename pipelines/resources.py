"""The one resource every asset uses: settings plus warehouse connections."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import dagster as dg
import duckdb

from schemas.settings import Settings, load_settings

# Every step that opens the warehouse takes a slot of this pool (limit 1 in the
# shipped dagster.yaml): DuckDB allows one process per file at a time.
WAREHOUSE_POOL = "warehouse"


class OutcomesResource(dg.ConfigurableResource):
    """Paths and tunables of one run (defaults from env vars and OUTCOMES_CONFIG)."""

    exports_dir: str | None = None
    warehouse: str | None = None
    reports_dir: str | None = None
    as_of: str | None = None

    @cached_property
    def settings(self) -> Settings:
        base = load_settings()
        updates: dict[str, object] = {}
        if self.exports_dir:
            updates["exports_dir"] = Path(self.exports_dir)
        if self.warehouse:
            updates["warehouse"] = Path(self.warehouse)
        if self.reports_dir:
            updates["reports_dir"] = Path(self.reports_dir)
        if self.as_of:
            updates["as_of"] = dt.date.fromisoformat(self.as_of)
        from dataclasses import replace

        return replace(base, **updates) if updates else base

    @contextlib.contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the warehouse file, created with its schemas on first use."""
        path = self.settings.warehouse
        with warehouse_connection(path, read_only=read_only) as con:
            yield con


@contextlib.contextmanager
def warehouse_connection(
    path: Path, read_only: bool = False
) -> Iterator[duckdb.DuckDBPyConnection]:
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), read_only=read_only)
    try:
        if not read_only:
            for schema in ("staging", "quarantine", "marts"):
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        yield con
    finally:
        con.close()
