"""Runs never write the warehouse at the same time; readers use the published snapshot.

DuckDB: while one process has the warehouse open for writing, no other process can
open it, not even read-only. So (1) every step that opens the warehouse is in the
``warehouse`` pool (one slot, dagster_home/dagster.yaml) and runs wait in the run
queue (max one at a time), and (2) readers open the snapshot published at the end
of each successful run, which is replaced atomically and never locked by a run.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from pipelines.snapshot import (
    WAREHOUSE_POOL,
    SnapshotMissingError,
    connect,
    publish_snapshot,
    snapshot_path,
)
from tests.factories import make_warehouse

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 420  # seconds for two full refreshes of a small export on a busy 2-core box


def _seed_warehouse(path: Path, episodes: int, as_of: str = "2026-06-30") -> None:
    """A tiny typed warehouse with ``episodes`` episodes (what a reader will count)."""
    with duckdb.connect(str(path)) as con:
        make_warehouse(
            con,
            as_of=as_of,
            episodes=[
                {"episode_id": f"E{i}", "client_id": f"K{i}", "start_date": "2026-01-05"}
                for i in range(1, episodes + 1)
            ],
        )


def _read(con: duckdb.DuckDBPyConnection) -> tuple[int, str]:
    episodes = con.execute("SELECT count(*) FROM staging.episodes").fetchone()[0]
    run_id = con.execute("SELECT run_id FROM published.snapshot_info").fetchone()[0]
    return episodes, run_id


# --------------------------------------------------------------------------- pool coverage


def _outside_pool() -> list[str]:
    """Steps that open the warehouse (they use the `outcomes` resource) but are not in the pool."""
    import inspect

    from pipelines.definitions import defs

    return sorted(
        f"{a.op.name} ({Path(inspect.getsourcefile(a.op.compute_fn.decorated_fn)).name})"
        for a in defs.resolve_asset_graph().assets_defs
        if a.is_executable
        and "outcomes" in a.required_resource_keys
        and a.op.pool != WAREHOUSE_POOL
    )


def test_every_step_that_opens_the_warehouse_is_in_the_warehouse_pool() -> None:
    outside = _outside_pool()
    assert outside == [], (
        f"add pool={WAREHOUSE_POOL!r} to the asset decorators of {outside}: two runs (or a "
        "CLI run and a scheduled run) would otherwise open the DuckDB file at the same time"
    )


def test_snapshot_is_published_last_and_only_after_every_warehouse_table() -> None:
    from pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    snapshot_key = dg.AssetKey(["published", "warehouse_snapshot"])
    warehouse_tables = {
        key
        for key in graph.get_all_asset_keys()
        if key.path[0] in ("staging", "quarantine", "marts")
    }
    assert warehouse_tables and set(graph.get(snapshot_key).parent_keys) == warehouse_tables
    assert defs.resolve_assets_def(snapshot_key).op.pool == WAREHOUSE_POOL


# --------------------------------------------------------------------------- the snapshot


def test_snapshot_path_beside_the_warehouse_or_from_env(tmp_path: Path) -> None:
    env = {"OUTCOMES_WAREHOUSE": str(tmp_path / "wh" / "clinic.duckdb")}
    assert snapshot_path(env=env) == tmp_path / "wh" / "clinic.snapshot.duckdb"
    env["OUTCOMES_SNAPSHOT"] = str(tmp_path / "share" / "for_analysts.duckdb")
    assert snapshot_path(env=env) == tmp_path / "share" / "for_analysts.duckdb"


def test_connect_without_a_snapshot_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(SnapshotMissingError, match="run `./dev run`"):
        connect(tmp_path / "none.duckdb")


def test_reader_keeps_a_consistent_snapshot_while_a_new_one_is_published(tmp_path: Path) -> None:
    warehouse, snap = tmp_path / "warehouse.duckdb", tmp_path / "warehouse.snapshot.duckdb"
    _seed_warehouse(warehouse, episodes=1)
    info = publish_snapshot(warehouse, snap, run_id="run-a")
    assert info.as_of == dt.date(2026, 6, 30)
    assert info.row_counts["staging.episodes"] == 1

    reader = connect(snap)
    assert _read(reader) == (1, "run-a")
    with pytest.raises(duckdb.Error):  # the snapshot is read-only for readers
        reader.execute("DELETE FROM staging.episodes")

    # The next run rewrites the warehouse (3 episodes) and publishes while the reader is open.
    warehouse.unlink()
    _seed_warehouse(warehouse, episodes=3)
    publish_snapshot(warehouse, snap, run_id="run-b")
    assert _read(reader) == (1, "run-a")  # the old, complete version: never a mix
    reader.close()

    with connect(snap) as fresh:
        assert _read(fresh) == (3, "run-b")
    # The warehouse itself is still writable (the publish left no lock or WAL behind) ...
    with duckdb.connect(str(warehouse)) as con:
        con.execute("CREATE TABLE marts.t AS SELECT 1 AS x")
    # ... and nothing but the two database files is left in the folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "warehouse.duckdb",
        "warehouse.snapshot.duckdb",
    ]


# --------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    generate = pytest.importorskip("pipelines.generate", reason="needs the export generator")
    out = tmp_path_factory.mktemp("exports") / "exports"
    generate.generate(out, episodes=40, seed=7, progress=False)
    return out


@pytest.fixture
def deployment(tmp_path: Path, small_export: Path) -> Iterator[dict[str, str]]:
    """Env of a fresh deployment: its own DAGSTER_HOME (the shipped dagster.yaml) and paths."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "OUTCOMES_EXPORTS_DIR": str(small_export),
        "OUTCOMES_WAREHOUSE": str(tmp_path / "data" / "warehouse.duckdb"),
        "OUTCOMES_REPORTS_DIR": str(tmp_path / "reports"),
        "OUTCOMES_MONTHLY_SCHEDULE": "off",
        "OUTCOMES_EXPORTS_SENSOR": "off",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("OUTCOMES_CONFIG", None)
    env.pop("OUTCOMES_AS_OF", None)
    env.pop("OUTCOMES_SNAPSHOT", None)
    yield env


def _seed_snapshot(env: dict[str, str], tmp_path: Path) -> Path:
    """A snapshot from an earlier run (2 episodes), for the reader to hold open."""
    seed = tmp_path / "seed.duckdb"
    _seed_warehouse(seed, episodes=2)
    snap = snapshot_path(env=env)
    publish_snapshot(seed, snap, run_id="earlier-run")
    return snap


def _instance(env: dict[str, str]) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(env["DAGSTER_HOME"])


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _pool_step_intervals(instance: dg.DagsterInstance, run_id: str) -> list[tuple[float, float]]:
    """(start, end) of every step of the run, from its event log."""
    starts: dict[str, float] = {}
    intervals = []
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            starts[event.step_key] = record.timestamp
        elif event.event_type in (
            dg.DagsterEventType.STEP_SUCCESS,
            dg.DagsterEventType.STEP_FAILURE,
        ):
            intervals.append((starts[event.step_key], record.timestamp))
    return intervals


def _failures(instance: dg.DagsterInstance, run_ids: list[str]) -> str:
    """The error messages of failed steps and runs, for assertion messages."""
    lines = []
    for run_id in run_ids:
        for record in instance.all_logs(run_id):
            event = record.dagster_event
            if event is None:
                continue
            if event.event_type == dg.DagsterEventType.STEP_FAILURE:
                error = event.step_failure_data.error
                lines.append(f"{run_id[:8]} {event.step_key}: {error.message if error else ''}")
            elif event.event_type == dg.DagsterEventType.RUN_FAILURE:
                lines.append(f"{run_id[:8]} run failure: {event.message}")
    return "\n".join(lines)


def _overlaps(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[tuple]:
    return [(x, y) for x in a for y in b if x[0] < y[1] and y[0] < x[1]]


def test_two_runs_through_the_queue_both_succeed_in_turn_while_a_reader_holds_the_snapshot(
    deployment: dict[str, str], tmp_path: Path
) -> None:
    """What a schedule and the sensor firing together do: both runs queue, neither fails."""
    env = deployment
    instance = _instance(env)  # create the instance storage before several processes open it
    snap = _seed_snapshot(env, tmp_path)
    reader = connect(snap)
    assert _read(reader) == (2, "earlier-run")

    daemon_log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "dagster._daemon", "run", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        stdout=daemon_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        launch = [sys.executable, "-m", "dagster", "job", "launch", "-w", "workspace.yaml"]
        launchers = [
            subprocess.Popen(
                [*launch, "-j", "refresh_all"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        for proc in launchers:
            out, _ = proc.communicate(timeout=180)
            assert proc.returncode == 0, out

        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            # The reader keeps reading the old snapshot, whatever the runs are doing.
            assert _read(reader) == (2, "earlier-run")
            runs = instance.get_runs()
            if len(runs) == 2 and all(r.is_finished for r in runs):
                break
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
            assert time.monotonic() < deadline, (
                f"runs not finished: {[(r.run_id, r.status) for r in runs]}\n"
                + (tmp_path / "daemon.log").read_text()[-3000:]
            )
            time.sleep(1)
    finally:
        _stop(daemon)
        daemon_log.close()

    records = sorted(instance.get_run_records(), key=lambda r: r.start_time or float("inf"))
    statuses = [r.dagster_run.status for r in records]
    assert statuses == [dg.DagsterRunStatus.SUCCESS] * 2, _failures(
        instance, [r.dagster_run.run_id for r in records]
    )
    first, second = records
    assert first.end_time <= second.start_time  # one after the other, never together
    assert _read(reader) == (2, "earlier-run")
    reader.close()
    with connect(snap) as fresh:
        episodes, run_id = _read(fresh)
    assert run_id == second.dagster_run.run_id and episodes > 2  # the last run's snapshot
    instance.dispose()


RUN_IN_PROCESS = """
import sys
import dagster as dg
from pipelines.definitions import defs
result = defs.resolve_job_def("refresh_all").execute_in_process(
    instance=dg.DagsterInstance.get(), raise_on_error=False
)
print("RUN_ID", result.run_id)
sys.exit(0 if result.success else 1)
"""


def test_two_in_process_runs_wait_for_the_warehouse_pool(
    deployment: dict[str, str], tmp_path: Path
) -> None:
    """Runs that bypass the queue (``./dev run`` next to the daemon) still never collide."""
    outside = _outside_pool()
    if outside:
        pytest.skip(f"steps not yet in the warehouse pool: {outside}")
    env = deployment
    instance = _instance(env)
    snap = _seed_snapshot(env, tmp_path)
    reader = connect(snap)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RUN_IN_PROCESS],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=RUN_TIMEOUT)
            outputs.append(out)
            assert proc.returncode == 0, out[-5000:]
    finally:
        for proc in procs:
            _stop(proc)
    assert _read(reader) == (2, "earlier-run")
    reader.close()

    run_ids = [
        line.split()[1] for out in outputs for line in out.splitlines() if line.startswith("RUN_ID")
    ]
    assert len(run_ids) == 2
    a, b = (_pool_step_intervals(instance, run_id) for run_id in run_ids)
    assert a and b
    assert _overlaps(a, b) == []  # no two warehouse steps ever ran at the same time
    with connect(snap) as fresh:
        assert _read(fresh)[1] in run_ids
    instance.dispose()


TOY_RUN = """
import sys, time
import dagster as dg

@dg.asset(pool="warehouse")
def slow_writer() -> None:
    print("HOLDING", flush=True)
    time.sleep(float(sys.argv[1]))

job = dg.define_asset_job("toy", selection="*", executor_def=dg.in_process_executor)
defs = dg.Definitions(assets=[slow_writer], jobs=[job])
result = defs.resolve_job_def("toy").execute_in_process(instance=dg.DagsterInstance.get())
print("RUN_ID", result.run_id, flush=True)
sys.exit(0 if result.success else 1)
"""


def test_a_killed_run_does_not_block_the_next_ones(tmp_path: Path) -> None:
    """SIGKILL leaves a run STARTED with its pool slot; the janitor frees both."""
    from pipelines.sensors import build_dead_run_janitor, release_dead_runs

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    script = tmp_path / "toy.py"
    script.write_text(TOY_RUN, encoding="utf-8")
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    instance = dg.DagsterInstance.from_config(str(home))

    victim = subprocess.Popen(
        [sys.executable, str(script), "600"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert victim.stdout.readline().strip() == "HOLDING"  # inside the step: slot held
        (run,) = instance.get_runs()
        slots = instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL).claimed_slots
        assert [s.run_id for s in slots] == [run.run_id]
        assert release_dead_runs(instance) == []  # alive: left alone
        victim.kill()
    finally:
        _stop(victim)

    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    janitor = build_dead_run_janitor(env={})
    assert janitor.default_status == dg.DefaultSensorStatus.RUNNING
    data = janitor.evaluate_tick(dg.build_sensor_context(instance=instance))
    assert run.run_id in data.skip_message
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL).claimed_slots == []

    # The next run gets the slot at once instead of waiting for ever.
    nxt = subprocess.run(
        [sys.executable, str(script), "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert nxt.returncode == 0, nxt.stdout[-3000:] + nxt.stderr[-3000:]
    instance.dispose()
