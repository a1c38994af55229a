"""The one resource every asset uses: settings plus warehouse connections."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import time
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import dagster as dg
import duckdb

from schemas.settings import Settings, load_settings
from schemas.staging import drop_work_tables

# Every step that opens the warehouse takes a slot of this pool (limit 1 in the
# shipped dagster.yaml): DuckDB allows one process per file at a time.
WAREHOUSE_POOL = "warehouse"

# How long opening the warehouse waits while another process holds DuckDB's file
# lock. The pool keeps steps apart; this covers what it cannot: a fresh Dagster
# instance whose first two runs race to create the pool's slot (CI saw two runs
# each get one), the moment a finishing process takes to let go of the file, a
# notebook's short write. Past this, a clear error names the lock holder.
LOCK_WAIT_SECONDS = 120.0

log = logging.getLogger(__name__)

# DuckDB's buffer pool for a warehouse connection. DuckDB's own default is 80% of
# the machine, which one mart could take from a shared server; beyond the cap
# joins, aggregates and sorts spill to <warehouse>.tmp instead. At 1M episodes the
# marts run within it (decision 008). Caveat: median()/quantile_cont() states in a
# grouped aggregate slow down 6-10x under a cap, so the marts read medians from
# counts or sorted lists. Steps that know better set their own for a block and
# restore this one (the ingest, expected_treatment_response).
WAREHOUSE_MEMORY_MAX = 3 << 30


def warehouse_memory_limit() -> int:
    """Bytes of buffer pool: 3 GiB, or half the machine's memory when that is less."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # no sysconf (Windows)
        return WAREHOUSE_MEMORY_MAX
    return min(WAREHOUSE_MEMORY_MAX, physical // 2)


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


def _is_lock_conflict(exc: duckdb.Error) -> bool:
    return "Could not set lock on file" in str(exc)


def connect_waiting(
    path: Path, read_only: bool = False, lock_wait: float = LOCK_WAIT_SECONDS
) -> duckdb.DuckDBPyConnection:
    """``duckdb.connect``, waiting up to ``lock_wait`` s while another process holds the file."""
    deadline = time.monotonic() + lock_wait
    delay = 0.05
    waited = False
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if not _is_lock_conflict(exc):
                raise
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"The warehouse {path} is locked by another process (waited "
                    f"{lock_wait:.0f} s). Close notebooks or runs that opened it for writing, "
                    f"then run again. DuckDB: {str(exc).splitlines()[0]}"
                ) from None
            if not waited:
                log.warning("%s is locked by another process; waiting for it", path)
                waited = True
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
            continue
        if waited:
            log.info("%s: lock released, opened", path)
        return con


@contextlib.contextmanager
def warehouse_connection(
    path: Path, read_only: bool = False, lock_wait: float = LOCK_WAIT_SECONDS
) -> Iterator[duckdb.DuckDBPyConnection]:
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    con = connect_waiting(path, read_only=read_only, lock_wait=lock_wait)
    try:
        con.execute(f"SET memory_limit = '{warehouse_memory_limit() >> 20}MiB'")
        if not read_only:
            for schema in ("staging", "quarantine", "marts"):
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            # A killed ingest's work tables: never published, not even in a snapshot
            # taken by a later run that does not ingest.
            dropped = drop_work_tables(con)
            if dropped:
                log.warning("%s: dropped work tables of an interrupted ingest: %s", path, dropped)
        yield con
    finally:
        con.close()
