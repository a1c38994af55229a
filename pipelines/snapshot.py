"""The published read-only snapshot of the warehouse, for analysts and notebooks.

Why: DuckDB lets one process write a file, and while it writes no other process
can open that file, not even read-only. A notebook holding the live warehouse
open would make the next run fail; a run would lock an analyst out for its whole
length. So readers never open the live warehouse: at the end of every
successful refresh the asset ``published/warehouse_snapshot`` copies it to a
separate file, replaced atomically (temp file + ``os.replace``), and
:func:`connect` opens that copy read-only. A reader that holds the old snapshot
open keeps reading the old, complete version; the next :func:`connect` after it
closes sees the new one. See docs/decisions/warehouse-snapshot.md.

Location: env ``OUTCOMES_SNAPSHOT``; default ``<warehouse stem>.snapshot.duckdb``
beside the warehouse (``data/warehouse.snapshot.duckdb``), on the same file
system so that the rename is atomic.
"""

import datetime as dt
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import duckdb

from pipelines.resources import WAREHOUSE_POOL, OutcomesResource, warehouse_connection
from schemas.settings import Settings, load_settings

SNAPSHOT_KEY = dg.AssetKey(["published", "warehouse_snapshot"])
# Every step that opens the warehouse (to write or to read) runs in this pool;
# dagster_home/dagster.yaml limits every pool to one slot, across runs.
WAREHOUSE_SCHEMAS = ("staging", "quarantine", "marts")
SNAPSHOT_ENV = "OUTCOMES_SNAPSHOT"


class SnapshotMissingError(FileNotFoundError):
    """No snapshot has been published yet (or OUTCOMES_SNAPSHOT points elsewhere)."""


@dataclass(frozen=True)
class SnapshotInfo:
    path: Path
    size_bytes: int
    run_id: str
    as_of: dt.date | None
    published_at: dt.datetime
    row_counts: Mapping[str, int] = field(default_factory=dict)


def snapshot_path(settings: Settings | None = None, env: Mapping[str, str] | None = None) -> Path:
    """Where the snapshot of ``settings.warehouse`` is published."""
    env = os.environ if env is None else env
    if env.get(SNAPSHOT_ENV):
        return Path(env[SNAPSHOT_ENV])
    warehouse = Path((settings or load_settings(dict(env))).warehouse)
    return warehouse.with_name(f"{warehouse.stem}.snapshot{warehouse.suffix or '.duckdb'}")


def connect(path: str | Path | None = None) -> duckdb.DuckDBPyConnection:
    """Open the published snapshot read-only (``with connect() as con: ...``).

    DuckDB reuses an open database inside one process: close every connection
    to the snapshot before connecting again to see a newer one.
    """
    target = Path(path) if path is not None else snapshot_path()
    if not target.is_file():
        raise SnapshotMissingError(
            f"No published warehouse snapshot at {target}. It is written at the end of "
            "every successful refresh: run `./dev run` (or job refresh_all in the UI) first."
        )
    return duckdb.connect(str(target), read_only=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # directories cannot be fsynced on some platforms
        pass
    finally:
        os.close(fd)


def _row_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    tables = con.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() "
        "WHERE schema_name IN ('staging', 'quarantine', 'marts') ORDER BY 1, 2"
    ).fetchall()
    return {
        f"{schema}.{name}": con.execute(f'SELECT count(*) FROM {schema}."{name}"').fetchone()[0]
        for schema, name in tables
    }


def _as_of(con: duckdb.DuckDBPyConnection) -> dt.date | None:
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() "
        "WHERE schema_name = 'staging' AND table_name = 'run_info'"
    ).fetchone()[0]
    if not exists:
        return None
    row = con.execute("SELECT max(as_of) FROM staging.run_info").fetchone()
    return row[0] if row else None


def publish_snapshot(warehouse: Path, snapshot: Path, *, run_id: str) -> SnapshotInfo:
    """Copy the warehouse to ``snapshot`` atomically; readers of the old copy are unaffected.

    The caller must hold the warehouse pool slot (no other step writes meanwhile).
    """
    warehouse, snapshot = Path(warehouse), Path(snapshot)
    if not warehouse.is_file():
        raise FileNotFoundError(f"warehouse {warehouse} does not exist: nothing to publish")
    # Merge the write-ahead log into the file so that the file alone is complete.
    with warehouse_connection(warehouse) as con:
        con.execute("CHECKPOINT")
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    tmp = snapshot.with_name(f"{snapshot.name}.tmp-{os.getpid()}")
    leftovers = [tmp, Path(f"{tmp}.wal")]
    try:
        # Also the temp copies of runs killed mid-copy (other pids): with the pool slot
        # held, no other writer is alive, and each is a stray copy of clinical data.
        for path in [*leftovers, *snapshot.parent.glob(f"{snapshot.name}.tmp-*")]:
            path.unlink(missing_ok=True)
        shutil.copyfile(warehouse, tmp)
        wal = Path(f"{warehouse}.wal")
        if wal.is_file():  # not expected after CHECKPOINT; DuckDB replays it on open
            shutil.copyfile(wal, leftovers[1])
        published_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
        with duckdb.connect(str(tmp)) as con:
            as_of = _as_of(con)
            counts = _row_counts(con)
            con.execute("CREATE SCHEMA IF NOT EXISTS published")
            con.execute(
                "CREATE OR REPLACE TABLE published.snapshot_info AS SELECT "
                "CAST(? AS VARCHAR) AS run_id, CAST(? AS DATE) AS as_of, "
                "CAST(? AS TIMESTAMP) AS published_at_utc, CAST(? AS VARCHAR) AS source_warehouse",
                [run_id, as_of, published_at.replace(tzinfo=None), str(warehouse)],
            )
            con.execute("CHECKPOINT")
        _fsync(tmp)
        os.replace(tmp, snapshot)
        _fsync(snapshot.parent)
    finally:
        for path in leftovers:
            path.unlink(missing_ok=True)
    return SnapshotInfo(
        path=snapshot,
        size_bytes=snapshot.stat().st_size,
        run_id=run_id,
        as_of=as_of,
        published_at=published_at,
        row_counts=counts,
    )


def warehouse_keys(assets: Iterable[object]) -> list[dg.AssetKey]:
    """Keys of every asset stored in the warehouse (staging, quarantine, marts)."""
    keys: set[dg.AssetKey] = set()
    for item in assets:
        if isinstance(item, dg.AssetsDefinition):
            keys.update(k for k in item.keys if k.path[0] in WAREHOUSE_SCHEMAS)
    return sorted(keys, key=lambda k: k.to_user_string())


def build_snapshot_asset(upstream: Iterable[dg.AssetKey]) -> dg.AssetsDefinition:
    """The ``published/warehouse_snapshot`` asset, downstream of every warehouse table.

    It runs last in ``refresh_all`` and only when every upstream step succeeded
    (a failed step or blocking check skips it), so the snapshot is always the
    complete output of one successful run.
    """

    @dg.asset(
        key=SNAPSHOT_KEY,
        deps=list(upstream),
        group_name="published",
        kinds={"duckdb"},
        pool=WAREHOUSE_POOL,
        description=(
            "Read-only copy of the warehouse for analysts and notebooks, replaced atomically "
            "at the end of each successful refresh (open it with pipelines.snapshot.connect())."
        ),
    )
    def warehouse_snapshot(
        context: dg.AssetExecutionContext, outcomes: OutcomesResource
    ) -> dg.MaterializeResult:
        settings = outcomes.settings
        info = publish_snapshot(settings.warehouse, snapshot_path(settings), run_id=context.run_id)
        context.log.info(f"published {info.path} ({info.size_bytes:,} bytes, as of {info.as_of})")
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(info.path)),
                "size_bytes": info.size_bytes,
                "as_of": str(info.as_of) if info.as_of else "",
                "published_at_utc": info.published_at.isoformat(),
                "tables": len(info.row_counts),
                "row_counts": dg.MetadataValue.json(dict(info.row_counts)),
            }
        )

    return warehouse_snapshot
