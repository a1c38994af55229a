"""SIGKILL ``refresh_all`` at random moments: the warehouse is never left half-written.

A run is killed (SIGKILL: no finally block, no rollback, no flush) while the
warehouse holds the complete output of the *other* export, so that every
table's old and new versions differ. After each kill:

1. the warehouse opens (DuckDB replays its write-ahead log on open);
2. every table is either the previous complete version or the new complete
   version (row count and an order-independent checksum against clean runs),
   and tables written in one transaction (staging + quarantine, a multi-table
   mart) are all old or all new together;
3. every report page is complete and each report folder was written by one run;
4. the next run succeeds and leaves exactly the marts of a clean run, no temp file
   of the killed run, and no run "started" in the Dagster instance (every step
   holds the ``warehouse`` pool slot: the CLI frees a dead run's slot first,
   pipelines.sensors.release_dead_runs, or the next run would wait for ever).

Kills are spread over every stage (ingest, marts, snapshot, reports): each
targets a step of the stage, at a random fraction of that step's duration in
the clean run. CI runs a few kills and checks the recovery run after the last
one; ``RELIABILITY_FULL=1`` (benchmarks/reliability.py) runs 20 kills on a
larger export with a full recovery run after every kill.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter

import pytest

from schemas.staging import work_tables
from tests.reliability import (
    FULL,
    SUITE_EPISODES,
    CleanRun,
    Run,
    Site,
    bound,
    clean_a,
    clean_b,
    copy_site_state,
    fingerprints,
    open_warehouse,
    record,
    report_state,
    run_forked,
    run_id_of,
    snapshot_of,
    start_run,
)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills need os.fork")

KILLS = bound(3, 20)
SEED = int(os.environ.get("RELIABILITY_SEED", "2026"))
# Stages in the order kills cycle through them: ingest and marts twice as often.
STAGE_CYCLE = ("staging", "marts", "reports", "published", "staging", "marts")
CONFIG_TABLES = {"staging.instruments", "staging.run_info", "marts.etr_settings"}
# Tables written by the ingest's one transaction besides its asset keys (edge rule 18).
INGEST_EXTRA = (
    "staging.risk_responses",
    "staging.instruments",
    "staging.run_info",
    "quarantine.total_mismatches",
)


def _step_stages() -> tuple[dict[str, str], list[set[str]]]:
    """Step -> stage (asset group), and the table groups each step writes in one transaction."""
    from pipelines.definitions import defs

    stages: dict[str, str] = {}
    groups: list[set[str]] = []
    for assets_def in defs.resolve_asset_graph().assets_defs:
        if not assets_def.is_executable:
            continue
        keys = list(assets_def.keys)
        stages[assets_def.op.name] = assets_def.group_names_by_key[keys[0]]
        tables = {
            f"{k.path[0]}.{k.path[1]}"
            for k in keys
            if k.path[0] in ("staging", "quarantine", "marts") and len(k.path) == 2
        }
        if any(t.startswith("staging.") for t in tables):
            tables |= set(INGEST_EXTRA)
        if len(tables) > 1:
            groups.append(tables)
    return stages, groups


def _plan(rng: random.Random, reference: Run, stages: dict[str, str], n: int) -> list[tuple]:
    """(step, seconds after its start) per kill, cycling over the stages."""
    by_stage: dict[str, list[str]] = {}
    for step, times in reference.steps.items():
        if "STEP_START" in times and step in stages:
            by_stage.setdefault(stages[step], []).append(step)
    plan = []
    cycle = [s for s in STAGE_CYCLE if s in by_stage]
    for i in range(n):
        step = rng.choice(sorted(by_stage[cycle[i % len(cycle)]]))
        times = reference.steps[step]
        duration = times.get("STEP_SUCCESS", times["STEP_START"] + 1) - times["STEP_START"]
        plan.append((step, rng.uniform(0, 0.8 * duration)))
    return plan


def _kill_at(site: Site, tag: str, exports: str, step: str, delay: float) -> tuple[Run, str]:
    """Start a run and SIGKILL it ``delay`` seconds after ``step`` starts."""
    run = start_run(site, tag, OUTCOMES_EXPORTS_DIR=exports)
    deadline = time.perf_counter() + 600
    fire_at = None
    while run.poll() is None and time.perf_counter() < deadline:
        if fire_at is None and "STEP_START" in run.steps.get(step, {}):
            fire_at = time.perf_counter() + delay
        if fire_at is not None and time.perf_counter() >= fire_at:
            break
        time.sleep(0.01)
    running = run.running_step() or "between steps"
    run.kill()
    return run, running


def _versions(
    found: dict[str, tuple[int, str]], old: CleanRun, new: CleanRun, where: str
) -> dict[str, str]:
    """Table -> 'old', 'new' or 'same' (identical in both); anything else fails."""
    version: dict[str, str] = {}
    for table in sorted(set(old.tables) | set(new.tables) | set(found)):
        got, before, after = found.get(table), old.tables.get(table), new.tables.get(table)
        if got == before == after:
            version[table] = "same"
        elif got == after:
            version[table] = "new"
        elif got == before:
            version[table] = "old"
        else:
            raise AssertionError(
                f"{where}: {table} is neither the previous nor the new complete version after "
                f"a kill: found {got}, previous {before}, new {after}"
            )
    return version


def _check_killed_state(
    site: Site, old: CleanRun, new: CleanRun, groups: list[set[str]]
) -> dict[str, str]:
    """Every table old or new (never partial); one-transaction groups consistent."""
    version = _versions(fingerprints(site.warehouse), old, new, "warehouse")  # replays the WAL
    for group in groups:
        seen = {version[t] for t in group if version.get(t, "same") != "same"}
        assert len(seen) <= 1, f"tables written in one transaction disagree: {group} -> {version}"
    with open_warehouse(site.warehouse) as con:
        history = con.execute(
            "SELECT run_id, count(*) FROM quarantine.ingest_history GROUP BY 1"
        ).fetchall()
    assert all(n == 5 for _, n in history), f"partial ingest_history: {history}"
    snapshot = snapshot_of(site)
    if snapshot.is_file():  # published copy: all of one run or all of the other
        seen = set(_versions(fingerprints(snapshot), old, new, "snapshot").values()) - {"same"}
        assert len(seen) <= 1, "the published snapshot mixes tables of two runs"
    reports = report_state(site.reports)
    assert reports.incomplete == [], f"report pages cut short: {reports.incomplete}"
    for entry, ids in reports.versions.items():
        assert len(ids) <= 1, f"report {entry} mixes pages of runs {ids}"
    return version


def _leftovers(site: Site) -> list[str]:
    """Temp files and folders of a killed writer (report folders, snapshot copy, scratch
    file), and the ingest's work tables in the warehouse."""
    files = [p.name for p in site.root.iterdir() if ".tmp-" in p.name or "scratch" in p.name]
    with open_warehouse(site.warehouse) as con:
        tables = [f"staging.{t}" for t in work_tables(con)]
    return sorted(report_state(site.reports).leftovers + files + tables)


def _check_recovered(site: Site, run: Run, reference: CleanRun) -> None:
    assert run.returncode == 0, f"the run after a kill failed:\n{run.stderr[-4000:]}"
    assert _leftovers(site) == [], "the next run left a killed run's temp files behind"
    tables = fingerprints(site.warehouse)
    differ = sorted(t for t in reference.tables if tables.get(t) != reference.tables[t])
    assert differ == [], f"after a kill, the next run's tables differ from a clean run: {differ}"
    assert set(tables) == set(reference.tables)
    reports = report_state(site.reports)
    assert reports.incomplete == []
    run_id = run_id_of(run)
    assert all(ids == {run_id} for ids in reports.versions.values()), reports.versions
    assert set(reports.versions) == set(report_state(reference.site.reports).versions)
    import dagster as dg

    with dg.DagsterInstance.from_config(str(site.home)) as instance:
        unfinished = instance.get_runs(
            filters=dg.RunsFilter(
                statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
            )
        )
    assert unfinished == [], "a killed run is still 'started' in the Dagster instance"


def test_sigkill_at_random_moments_never_leaves_a_partial_warehouse(tmp_path):
    a, b = clean_a(), clean_b()
    same = sorted(t for t in a.tables if a.tables[t] == b.tables.get(t) and a.tables[t][0])
    # Config-only tables are the same for both exports; every non-empty data table must
    # differ for the test to tell the previous version from the new one.
    assert set(same) <= CONFIG_TABLES, f"exports A and B give identical tables {same}"
    stages, groups = _step_stages()
    rng = random.Random(SEED)
    plan = _plan(rng, b.run, stages, KILLS)
    site = Site(tmp_path / "site", a.site.exports)
    copy_site_state(a.site, site)
    current, other = a, b
    log = []
    for i, (step, delay) in enumerate(plan):
        killed, running = _kill_at(site, f"kill{i}", str(other.site.exports), step, delay)
        while not killed.killed:  # a busy box ran the step faster than planned: kill sooner
            assert killed.returncode == 0, killed.stderr[-4000:]
            _check_recovered(site, killed, other)
            current, other = other, current
            delay /= 4
            killed, running = _kill_at(site, f"kill{i}", str(other.site.exports), step, delay)
        wal = os.path.exists(f"{site.warehouse}.wal")
        version = _check_killed_state(site, current, other, groups)
        new_tables = sum(v == "new" for v in version.values())
        old_tables = sum(v == "old" for v in version.values())
        entry = {
            "kill": i,
            "target": step,
            "stage": stages.get(running, running),
            "running": running,
            "delay_s": round(delay, 2),
            "wal_left": wal,
            "tables_new": new_tables,
            "tables_old": old_tables,
            "leftovers": _leftovers(site),
        }
        # CI: one recovery run after the last kill; full: after every kill.
        if FULL or i == len(plan) - 1:
            recovery = start_run(site, f"recover{i}", OUTCOMES_EXPORTS_DIR=str(other.site.exports))
            recovery.wait()
            _check_recovered(site, recovery, other)
            entry["recovered"] = True
            current, other = other, current
        log.append(entry)
    survived = len(log)
    record(
        "kill",
        {
            "episodes": SUITE_EPISODES,
            "kills": len(plan),
            "survived": survived,
            "recovery_runs": sum(1 for e in log if e.get("recovered")),
            "stages": dict(Counter(e["stage"] for e in log)),
            "kills_with_wal_left": sum(e["wal_left"] for e in log),
            "kills_mid_write": sum(
                0 < e["tables_new"] < e["tables_new"] + e["tables_old"] for e in log
            ),
            "log": log,
        },
    )


def test_leftovers_of_a_killed_writer_are_cleared_by_the_next_run(tmp_path):
    """Regression: a run killed while publishing left a partial warehouse copy
    ('warehouse.snapshot.duckdb.tmp-<pid>', clinical rows included) and report temp
    folders behind for good; a kill between the report folder's two renames left the
    previous reports only in '.qi_report.old-<pid>'."""
    import duckdb

    from assets.reports import write_folder
    from pipelines.snapshot import publish_snapshot

    reports = tmp_path / "reports"
    (reports / ".qi_report.old-99999").mkdir(parents=True)
    (reports / ".qi_report.old-99999" / "service.html").write_text("previous")
    (reports / ".qi_report.tmp-99998").mkdir()
    (reports / ".qi_report.tmp-99998" / "service.html").write_text("half")
    target = reports / "qi_report"

    def disk_full(folder):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):  # the next run fails too: the previous reports are back
        write_folder(target, {"service.html": "new"}, disk_full)
    assert (target / "service.html").read_text() == "previous"
    assert sorted(p.name for p in reports.iterdir()) == ["qi_report"]
    write_folder(target, {"service.html": "new"})
    assert (target / "service.html").read_text() == "new"

    warehouse = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(warehouse)) as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS x")
    snapshot = tmp_path / "warehouse.snapshot.duckdb"
    stale = tmp_path / "warehouse.snapshot.duckdb.tmp-99999"
    stale.write_bytes(b"half a copy of the warehouse")
    publish_snapshot(warehouse, snapshot, run_id="r")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "warehouse.duckdb",
        "warehouse.snapshot.duckdb",
    ]


def _commit_then_die(database: str) -> None:
    """Child: commit one replace_tables transaction, start another, SIGKILL mid-way."""
    import signal

    import duckdb
    import pandas as pd

    from assets.sql_runner import replace_tables

    con = duckdb.connect(database)
    con.execute("SET checkpoint_threshold = '1TB'")  # keep the commit in the WAL
    con.execute("PRAGMA disable_checkpoint_on_shutdown")
    frame = pd.DataFrame({"y": range(20_000), "label": [f"row {i}" for i in range(20_000)]})
    replace_tables(con, {"marts.a": "SELECT range * 2 AS x FROM range(100000)", "marts.b": frame})
    con.execute("BEGIN TRANSACTION")
    con.execute("CREATE OR REPLACE TABLE marts.a AS SELECT 0 AS x")
    con.execute("INSERT INTO marts.b SELECT -1, 'uncommitted'")
    os.kill(os.getpid(), signal.SIGKILL)


def test_wal_replay_is_all_or_nothing_per_transaction(tmp_path):
    """A kill leaves DuckDB's write-ahead log; on open it is replayed transaction by
    transaction. The kills above rarely leave one (the pipeline's connections close,
    which checkpoints), so this pins it: a committed replace_tables is all there, an
    uncommitted one not at all, and a WAL torn at any byte (a kill mid-commit) gives
    the previous version, never part of the new one and never a file that will not open."""
    import shutil

    import duckdb

    from assets.sql_runner import replace_tables

    database = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute("CREATE SCHEMA marts")
        replace_tables(con, {"marts.a": "SELECT 1 AS x", "marts.b": "SELECT 1 AS y, 'x' AS label"})
    assert run_forked(_commit_then_die, str(database)) == -9
    wal = tmp_path / "warehouse.duckdb.wal"
    assert wal.is_file()
    shutil.copy(database, tmp_path / "db.orig")
    shutil.copy(wal, tmp_path / "wal.orig")
    log = (tmp_path / "wal.orig").read_bytes()

    def state() -> tuple:
        with duckdb.connect(str(database), read_only=True) as con:
            return con.execute(
                "SELECT (SELECT count(*) FROM marts.a), (SELECT sum(x) FROM marts.a), "
                "(SELECT count(*) FROM marts.b), (SELECT min(y) FROM marts.b)"
            ).fetchall()[0]

    old, new = (1, 1, 1, 1), (100_000, 9_999_900_000, 20_000, 0)
    assert state() == new  # the commit replayed, the open transaction gone
    rng = random.Random(SEED)
    cuts = sorted(
        {0, 1, len(log) - 1, len(log) // 2}
        | {rng.randrange(len(log)) for _ in range(bound(20, 200))}
    )
    seen = Counter()
    for cut in cuts:
        shutil.copy(tmp_path / "db.orig", database)
        wal.write_bytes(log[:cut])
        got = state()
        assert got in (old, new), f"WAL torn at byte {cut} of {len(log)} gave {got}"
        seen["new" if got == new else "old"] += 1
    record("wal", {"wal_bytes": len(log), "torn_cuts": len(cuts), "states": dict(seen)})


def _ingest_then_die(database: str, exports: str) -> None:
    """Child: an ingest whose commit stays in the WAL (no checkpoint), then SIGKILL."""
    import signal
    from dataclasses import replace
    from pathlib import Path

    import duckdb

    from assets.ingest_engine import Ingest
    from schemas.settings import Settings

    con = duckdb.connect(database)
    con.execute("SET checkpoint_threshold = '1TB'")
    con.execute("PRAGMA disable_checkpoint_on_shutdown")
    Ingest(replace(Settings(), exports_dir=Path(exports)), con, run_id="killed").run()
    os.kill(os.getpid(), signal.SIGKILL)


def test_wal_replay_of_an_ingest_that_builds_staging_in_place(tmp_path):
    """The ingest turns work tables into staging tables inside its publishing
    transaction (DELETE, ALTER ... DROP COLUMN / TYPE / SET NOT NULL, RENAME). Killed
    after that commit, before any checkpoint, the WAL replays it: the new staging,
    columns and constraints included; torn at any byte, the previous staging or the
    new, with at most a killed run's work tables beside it (the next writer drops them)."""
    import shutil

    import duckdb

    from schemas.staging import work_tables
    from tests.exports import base_tables, ingest, write_exports

    database = tmp_path / "warehouse.duckdb"
    con, _ = ingest(write_exports(tmp_path / "a", base_tables()), duckdb.connect(str(database)))
    con.close()
    changed = base_tables()
    changed["sessions"][1]["duration_minutes"] = "50"
    changed["sessions"][2]["status"] = "Attended"  # bad_enum: a quarantined row
    changed["goals"][0]["horizon"] = "long_term"

    def state() -> tuple:
        with open_warehouse(database) as con:
            layout = con.execute(
                "SELECT table_name, column_name, data_type, is_nullable FROM "
                "information_schema.columns WHERE table_schema = 'staging' "
                "AND NOT starts_with(table_name, '_') ORDER BY ALL"
            ).fetchall()
            leftovers = work_tables(con)
        return fingerprints(database), layout, leftovers

    old = state()
    exports_b = write_exports(tmp_path / "b", changed)
    assert run_forked(_ingest_then_die, str(database), str(exports_b)) == -9
    wal = tmp_path / "warehouse.duckdb.wal"
    assert wal.is_file()
    shutil.copy(database, tmp_path / "db.orig")
    shutil.copy(wal, tmp_path / "wal.orig")
    log = (tmp_path / "wal.orig").read_bytes()
    new = state()
    clean = tmp_path / "clean.duckdb"
    con, _ = ingest(exports_b, duckdb.connect(str(clean)))
    con.close()
    assert new[0] == fingerprints(clean) and new[0] != old[0]
    assert new[1] == old[1] and new[2] == []
    rng = random.Random(SEED)
    # The publishing transaction is the end of the log: cut there densely too.
    cuts = sorted(
        {0, 1, len(log) - 1, len(log) // 2, len(log)}
        | {rng.randrange(len(log)) for _ in range(bound(20, 200))}
        | {len(log) - rng.randrange(len(log) // 4) for _ in range(bound(20, 200))}
    )
    seen = Counter()
    for cut in cuts:
        shutil.copy(tmp_path / "db.orig", database)
        wal.write_bytes(log[:cut])
        tables, layout, leftovers = state()
        got = "new" if tables == new[0] else "old" if tables == old[0] else None
        assert got is not None and layout == old[1], f"WAL torn at byte {cut} of {len(log)}"
        assert got == "old" or leftovers == [], f"WAL torn at byte {cut}: new with leftovers"
        seen[got + (" + work tables" if leftovers else "")] += 1
    assert seen["new"] and seen["old + work tables"], seen
    record("wal_ingest", {"wal_bytes": len(log), "torn_cuts": len(cuts), "states": dict(seen)})
