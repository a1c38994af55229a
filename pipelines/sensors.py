"""A sensor on the exports folder: one ``refresh_all`` run per settled change set.

Why this shape: the exporting system copies files into ``OUTCOMES_EXPORTS_DIR``
(``settings.exports_dir``) whenever it likes, often several files one after the
other, sometimes slowly over a network share. A run started on a half-copied
file would quarantine or fail rows that are fine. So the sensor

- keys every file by its path relative to the folder, its size and its mtime,
  and remembers in its cursor (JSON) the state the last run was asked for
  (``seen``) and the state at the previous look (``look``);
- ignores hidden files and folders, ``*.tmp``, ``*.part`` and the other
  temporary suffixes the ingest ignores;
- waits until the folder has *settled*: the same state at two consecutive looks
  and no file or folder modified within ``settle_seconds`` (a deletion shows as
  a folder mtime), so a drop of several files gives one run, not one per file;
- requests one run per settled change set, with ``run_key`` from a fingerprint
  of the whole folder state (the same state is never run twice), and returns a
  ``SkipReason`` saying why otherwise.

Env vars: ``OUTCOMES_SENSOR_INTERVAL_SECONDS`` (default 60, seconds between
looks), ``OUTCOMES_SENSOR_SETTLE_SECONDS`` (default 60), ``OUTCOMES_EXPORTS_SENSOR``
(``on``/``off``, default ``off``: switch it on in the UI once the exporting system
writes into the folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from assets.ingest_engine import IGNORED_SUFFIXES
from pipelines.schedules import JOB_NAME, TRIGGER_TAG, default_status, int_env
from pipelines.snapshot import WAREHOUSE_POOL
from schemas.settings import load_settings

FINGERPRINT_TAG = "outcomes/exports_fingerprint"
CURSOR_VERSION = 1

FileState = tuple[int, int]  # size in bytes, mtime in nanoseconds


@dataclass(frozen=True)
class Scan:
    files: dict[str, FileState]
    newest_mtime_ns: int  # newest mtime among the files and the folders holding them


@dataclass(frozen=True)
class Decision:
    run: bool
    message: str
    cursor: str
    fingerprint: str | None = None
    changed: tuple[str, ...] = ()


def ignored(name: str) -> bool:
    """Hidden and temporary names are never read by the ingest and never trigger a run."""
    return name.startswith((".", "~")) or name.lower().endswith(IGNORED_SUFFIXES)


def scan(root: Path) -> Scan:
    """Every candidate export file under ``root`` with its size and mtime."""
    files: dict[str, FileState] = {}
    newest = root.stat().st_mtime_ns
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not ignored(d))
        here = Path(folder)
        if here != root:
            try:
                newest = max(newest, here.stat().st_mtime_ns)
            except FileNotFoundError:
                continue
        for name in sorted(filenames):
            if ignored(name):
                continue
            path = here / name
            try:
                stat = path.stat()
            except FileNotFoundError:  # removed while we looked
                continue
            files[path.relative_to(root).as_posix()] = (stat.st_size, stat.st_mtime_ns)
            newest = max(newest, stat.st_mtime_ns)
    return Scan(files, newest)


def fingerprint(files: Mapping[str, FileState]) -> str:
    payload = json.dumps(sorted((name, *state) for name, state in files.items()))
    return hashlib.sha256(payload.encode()).hexdigest()


def _load_cursor(text: str | None) -> tuple[dict[str, FileState], dict[str, FileState] | None]:
    if not text:
        return {}, None
    try:
        doc = json.loads(text)
        seen = {k: (int(v[0]), int(v[1])) for k, v in doc.get("seen", {}).items()}
        look = doc.get("look")
        look = None if look is None else {k: (int(v[0]), int(v[1])) for k, v in look.items()}
    except (ValueError, TypeError, AttributeError, IndexError):
        return {}, None  # an unreadable cursor: treat every file as new
    return seen, look


def _dump_cursor(seen: Mapping[str, FileState], look: Mapping[str, FileState]) -> str:
    return json.dumps(
        {
            "version": CURSOR_VERSION,
            "seen": {k: list(v) for k, v in sorted(seen.items())},
            "look": {k: list(v) for k, v in sorted(look.items())},
        },
        separators=(",", ":"),
    )


def _names(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def decide(root: Path, cursor: str | None, now: float, settle_seconds: float) -> Decision:
    """What the sensor does on one look at ``root`` (pure apart from reading the folder)."""
    seen, look = _load_cursor(cursor)
    if not root.is_dir():
        return Decision(False, f"exports folder {root} does not exist", cursor or "")
    current = scan(root)
    files = current.files
    new_cursor = _dump_cursor(seen, files)
    if not files:
        return Decision(False, f"no export files in {root}", new_cursor)
    if files == seen:
        return Decision(
            False, f"no new or changed export files in {root} ({len(files)} files)", new_cursor
        )
    changed = sorted(n for n in files if seen.get(n) != files[n])
    changed += sorted(f"{n} (removed)" for n in seen if n not in files)
    age = now - current.newest_mtime_ns / 1e9
    if files != look:
        return Decision(
            False,
            f"{len(changed)} changed export file(s) ({_names(changed)}): waiting for the folder "
            "to stay unchanged between two looks",
            new_cursor,
            changed=tuple(changed),
        )
    if age < settle_seconds:
        return Decision(
            False,
            f"{len(changed)} changed export file(s) ({_names(changed)}): the folder was modified "
            f"{max(age, 0):.0f}s ago, waiting until it has been quiet for {settle_seconds:.0f}s",
            new_cursor,
            changed=tuple(changed),
        )
    return Decision(
        True,
        f"{len(changed)} new or changed export file(s): {_names(changed)}",
        _dump_cursor(files, files),
        fingerprint=fingerprint(files),
        changed=tuple(changed),
    )


def build_exports_sensor(
    exports_dir: Path | None = None,
    *,
    settle_seconds: float | None = None,
    interval_seconds: int | None = None,
    clock: Callable[[], float] = time.time,
    env: Mapping[str, str] | None = None,
    name: str = "exports_sensor",
) -> dg.SensorDefinition:
    """The exports-folder sensor; arguments left out come from env and settings at each look."""
    env = os.environ if env is None else env
    interval = interval_seconds or int_env(env, "OUTCOMES_SENSOR_INTERVAL_SECONDS", 60, 5, 86400)
    settle = (
        settle_seconds
        if settle_seconds is not None
        else int_env(env, "OUTCOMES_SENSOR_SETTLE_SECONDS", 60, 0, 86400)
    )
    running = (
        default_status(env, "OUTCOMES_EXPORTS_SENSOR", dg.DefaultScheduleStatus.STOPPED)
        == dg.DefaultScheduleStatus.RUNNING
    )

    @dg.sensor(
        name=name,
        job_name=JOB_NAME,
        minimum_interval_seconds=interval,
        default_status=(
            dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED
        ),
        description=(
            "Refresh everything when export files in OUTCOMES_EXPORTS_DIR are added, changed or "
            f"removed, once the folder has been quiet for {settle:.0f}s (ignores hidden, *.tmp "
            "and *.part files)."
        ),
    )
    def exports_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        root = Path(exports_dir) if exports_dir is not None else load_settings().exports_dir
        decision = decide(root, context.cursor, clock(), settle)
        if not decision.run:
            return dg.SensorResult(skip_reason=decision.message, cursor=decision.cursor)
        context.log.info(decision.message)
        request = dg.RunRequest(
            run_key=f"exports-{decision.fingerprint[:16]}",
            tags={
                TRIGGER_TAG: name,
                FINGERPRINT_TAG: decision.fingerprint[:16],
            },
        )
        return dg.SensorResult(run_requests=[request], cursor=decision.cursor)

    return exports_sensor


# --------------------------------------------------------------------------- dead runs

# A run tagged with the host it executes on (``./dev run`` does) is only judged there.
HOST_TAG = "outcomes/host"
DEAD_RUN_MESSAGE = (
    "The process of this run (pid {pid}) is gone: it was killed or the machine restarted. "
    "Marked failed by the dead_run_janitor so that the next runs can use the warehouse; "
    "the warehouse keeps the last complete version of every table. Re-run refresh_all."
)


def _run_pid(instance: dg.DagsterInstance, run_id: str) -> tuple[int | None, float | None]:
    """The pid that executes the run's steps, and when it reported it."""
    pid, when = None, None
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        data = record.dagster_event.engine_event_data if record.dagster_event else None
        value = data.metadata.get("pid") if data and data.metadata else None
        if value is not None:
            try:
                pid, when = int(getattr(value, "value", value)), record.timestamp
            except (TypeError, ValueError):
                continue
    return pid, when


def process_alive(pid: int, running_since: float | None = None) -> bool:
    """Whether ``pid`` is a live process that was already running at ``running_since``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    stat = Path(f"/proc/{pid}/stat")
    try:  # Linux: a zombie is dead; a process started later is a reused pid
        fields = stat.read_text().rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):
            return False
        if running_since is not None:
            boot = next(
                int(line.split()[1])
                for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime ")
            )
            started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
            if started > running_since + 5:
                return False
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    return True


def release_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Fail runs whose process died and free the warehouse slots they held.

    Why: a run killed with SIGKILL (or a power cut) stays STARTED for ever and keeps
    its ``warehouse`` pool slot, so every later run would wait for ever (and the
    run queue, limited to one run, would stay full). Dagster's run monitoring cannot
    tell for the default run launcher or for ``./dev run``. Assumes the runs execute
    on this machine (the supported single-server setup).
    """
    released: list[str] = []
    host = socket.gethostname()
    started = instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
    )
    for record in started:
        run = record.dagster_run
        if run.tags.get(HOST_TAG, host) != host:
            continue
        pid, since = _run_pid(instance, run.run_id)
        if pid is None or process_alive(pid, since):
            continue
        instance.report_run_failed(run, DEAD_RUN_MESSAGE.format(pid=pid))
        released.append(run.run_id)
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        info = storage.get_concurrency_info(WAREHOUSE_POOL)
        holders = {s.run_id for s in info.claimed_slots} | {p.run_id for p in info.pending_steps}
        for run_id in sorted(holders):
            run = instance.get_run_by_id(run_id)
            if run is None or run.is_finished:
                storage.free_concurrency_slots_for_run(run_id)
                if run_id not in released:
                    released.append(run_id)
    return released


def build_dead_run_janitor(env: Mapping[str, str] | None = None) -> dg.SensorDefinition:
    """A sensor that calls :func:`release_dead_runs` every minute (on by default)."""
    env = os.environ if env is None else env
    running = (
        default_status(env, "OUTCOMES_DEAD_RUN_JANITOR", dg.DefaultScheduleStatus.RUNNING)
        == dg.DefaultScheduleStatus.RUNNING
    )

    @dg.sensor(
        name="dead_run_janitor",
        minimum_interval_seconds=60,
        default_status=(
            dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED
        ),
        description=(
            "Marks runs whose process was killed as failed and frees their warehouse pool "
            "slot, so that a killed run never blocks the next ones. Single-server setups only."
        ),
    )
    def dead_run_janitor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        released = release_dead_runs(context.instance)
        if released:
            context.log.warning(f"released dead runs: {', '.join(released)}")
            return dg.SkipReason(f"marked failed / released the slots of {', '.join(released)}")
        return dg.SkipReason("no dead runs")

    return dead_run_janitor


def build_sensors() -> list[dg.SensorDefinition]:
    return [build_exports_sensor(), build_dead_run_janitor()]
