"""Warehouse connections: DuckDB's buffer pool is capped so big marts spill, not balloon;
a file locked by another process is waited for, then refused with a clear error."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from pipelines.resources import (
    WAREHOUSE_MEMORY_MAX,
    connect_waiting,
    warehouse_connection,
    warehouse_memory_limit,
)
from schemas.staging import work_tables


def _memory_limit(con: duckdb.DuckDBPyConnection) -> str:
    return con.execute("SELECT current_setting('memory_limit')").fetchone()[0]


def test_warehouse_connections_cap_the_buffer_pool(tmp_path: Path) -> None:
    limit = warehouse_memory_limit()
    assert 0 < limit <= WAREHOUSE_MEMORY_MAX
    expected = duckdb.connect()
    expected.execute(f"SET memory_limit = '{limit >> 20}MiB'")
    path = tmp_path / "warehouse.duckdb"
    with warehouse_connection(path) as con:
        assert _memory_limit(con) == _memory_limit(expected)
    with warehouse_connection(path, read_only=True) as con:
        assert _memory_limit(con) == _memory_limit(expected)


def _hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    """Another process that opens ``path`` for writing and keeps it for ``seconds``."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
            "print('locked', flush=True); time.sleep(float(sys.argv[2])); c.close()",
            str(path),
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_warehouse_locked_by_another_process_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    holder = _hold_lock(path, 1.5)
    started = time.monotonic()
    try:
        with warehouse_connection(path, lock_wait=60) as con:
            waited = time.monotonic() - started
            assert con.execute("SELECT 42").fetchone() == (42,)
    finally:
        holder.wait(30)
    assert waited > 0.5  # it did wait for the holder, and got the file once it let go


def test_a_lock_held_past_the_wait_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    holder = _hold_lock(path, 5)
    try:
        with pytest.raises(RuntimeError, match=r"locked by another process \(waited 1 s\)"):
            connect_waiting(path, lock_wait=1)
    finally:
        holder.kill()
        holder.wait(30)


def test_a_killed_ingests_work_tables_are_dropped_by_the_next_writer(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE SCHEMA staging")
    con.execute("CREATE TABLE staging._in_sessions (session_id VARCHAR)")
    con.execute("CREATE TABLE staging.sessions (session_id VARCHAR)")
    con.close()
    with warehouse_connection(path, read_only=True) as ro:
        assert work_tables(ro) == ["_in_sessions"]  # a reader changes nothing
    with warehouse_connection(path) as rw:
        assert work_tables(rw) == []
    with warehouse_connection(path, read_only=True) as ro:
        tables = ro.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()
    assert tables == [("sessions",)]
