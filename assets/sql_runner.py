"""Run the metric SQL files in assets/sql/ and publish their tables atomically."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import duckdb
import pandas as pd

SQL_DIR = Path(__file__).resolve().parent / "sql"


@cache
def load_sql(name: str) -> str:
    """Text of ``assets/sql/<name>.sql``."""
    return (SQL_DIR / f"{name}.sql").read_text(encoding="utf-8")


def replace_tables(
    con: duckdb.DuckDBPyConnection,
    tables: dict[str, str | pd.DataFrame],
    params: dict | None = None,
) -> dict[str, int]:
    """Replace several tables in one transaction: all new, or all as before.

    ``tables`` maps ``schema.table`` to a SELECT statement (run with ``params``)
    or to a DataFrame. Returns the row count of each table written.
    """
    counts: dict[str, int] = {}
    con.execute("BEGIN TRANSACTION")
    try:
        for name, source in tables.items():
            if isinstance(source, pd.DataFrame):
                con.register("_replace_frame", source)
                con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM _replace_frame")
                con.unregister("_replace_frame")
            else:
                con.execute(f"CREATE OR REPLACE TABLE {name} AS {source}", params or {})
            counts[name] = con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return counts


def statements(sql: str) -> list[str]:
    """Split a SQL script into statements (comment lines dropped first)."""
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in re.split(r";\s*(?:\n|$)", body) if s.strip()]


def run_script(con: duckdb.DuckDBPyConnection, sql: str, params: dict | None = None) -> None:
    """Run each statement of a script, binding only the ``$name`` params it uses."""
    for statement in statements(sql):
        used = {k: v for k, v in (params or {}).items() if f"${k}" in statement}
        con.execute(statement, used) if used else con.execute(statement)


def preview_markdown(con: duckdb.DuckDBPyConnection, relation: str, limit: int = 5) -> str:
    """The first rows of a table or ``(SELECT ...)`` as a markdown table, for asset metadata."""
    frame = con.execute(f"SELECT * FROM {relation} LIMIT {int(limit)}").df()
    frame = frame.astype(object).where(frame.notna(), None)
    lines = [
        "| " + " | ".join(map(str, frame.columns)) + " |",
        "| " + " | ".join("---" for _ in frame.columns) + " |",
    ]
    lines += [
        "| " + " | ".join("" if v is None else str(v) for v in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines)
