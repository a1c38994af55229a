"""Warehouse connections: DuckDB's buffer pool is capped so big marts spill, not balloon."""

from __future__ import annotations

from pathlib import Path

import duckdb

from pipelines.resources import (
    WAREHOUSE_MEMORY_MAX,
    warehouse_connection,
    warehouse_memory_limit,
)


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
