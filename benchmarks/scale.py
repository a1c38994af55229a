"""Benchmark (not a test): ``refresh_all`` on a national-size service, on this machine.

    ./dev python benchmarks/scale.py --tiers 10k,200k --timeout 450   # the usual run
    ./dev python benchmarks/scale.py --tiers 1m --max-rss-gb 14       # 126M item rows, 2.4 GB

For each tier (episodes: 10k, 200k, 1m or any number):

1. Generates exports with ``pipelines.generate`` (about 9 sessions per episode and
   2-3 item-level questionnaires per attended session; ``assessment_items`` as
   Parquet, the rest CSV; a few planted bad rows), cached in
   ``data/generated/scale/`` (same arguments, same files: reused).
2. Times the floor: a bare DuckDB ``count(*)`` over every export file (CSV read as
   text), in a fresh DuckDB connection of this process; the load floor, the same
   files copied as read into tables of a new DuckDB file with no rule (what any
   pipeline that keeps the rows pays at least); and ``host_probe``, fixed work that
   shows how fast the (shared, drifting) host is at that moment.
3. Runs ``python -m pipelines.cli run`` (job ``refresh_all``) in a FRESH process with
   a temporary DAGSTER_HOME, warehouse and reports folder, polling the resident
   memory of its whole process tree; then reads the step timings and row counts
   from that Dagster instance's event log.
4. Prints wall time and rows per second per step, total wall and CPU time, peak
   resident memory, warehouse size, the floor and the ratio; checks them against
   the targets of issue 8; appends the figures to ``bench_results/scale.jsonl``
   (one JSON object per tier and run, so runs can be compared).

The machine is shared: the load average when each run started is recorded too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import duckdb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.generate import generate  # noqa: E402
from schemas.staging import STAGING_TABLES  # noqa: E402

CACHE = ROOT / "data" / "generated" / "scale"
RESULTS = ROOT / "bench_results" / "scale.jsonl"
SEED = 2026
TIERS = {"10k": 10_000, "200k": 200_000, "1m": 1_000_000}
# Targets of issue 8 (2 cores, 24 GB).
TARGETS = {
    200_000: {"seconds": 90.0, "peak_gb": 4.0, "floor_ratio": 4.0},
    1_000_000: {"seconds": 600.0, "peak_gb": 8.0},
}
GROWTH_200K_TO_1M = 5.5
GB = 1024**3


def log(message: str) -> None:
    print(f"[scale] {message}", file=sys.stderr, flush=True)


def parse_tier(text: str) -> int:
    text = text.strip().lower()
    if text in TIERS:
        return TIERS[text]
    if text.endswith("k"):
        return int(float(text[:-1]) * 1_000)
    if text.endswith("m"):
        return int(float(text[:-1]) * 1_000_000)
    return int(text)


def tier_label(episodes: int) -> str:
    if episodes % 1_000_000 == 0:
        return f"{episodes // 1_000_000}m"
    if episodes % 1_000 == 0:
        return f"{episodes // 1_000}k"
    return str(episodes)


# --------------------------------------------------------------------------- exports


def exports_for(episodes: int, seed: int, fresh: bool) -> tuple[Path, dict[str, int]]:
    """The cached export folder of a tier (generated when missing) and its row counts."""
    folder = CACHE / f"episodes-{episodes}-seed-{seed}"
    exports, done = folder / "exports", folder / "generated.json"
    if fresh or not done.exists():
        done.unlink(missing_ok=True)
        need = 2_500 * episodes  # bytes of exports per episode, rounded up
        free = shutil.disk_usage(CACHE.parent if CACHE.parent.exists() else ROOT).free
        if free < 4 * need:  # exports, work tables, warehouse and its snapshot
            raise SystemExit(
                f"not enough disk for the {tier_label(episodes)} tier: about "
                f"{4 * need / GB:.1f} GB needed, {free / GB:.1f} GB free"
            )
        log(f"generating {episodes:,} episodes into {exports} (cached for later runs)")
        t0 = time.perf_counter()
        counts = generate(
            exports,
            episodes,
            seed,
            items_format="parquet",
            bad_rows=max(50, episodes // 1_000),
            progress=True,
        )
        counts["generate_seconds"] = round(time.perf_counter() - t0, 1)
        done.write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")
    return exports, json.loads(done.read_text(encoding="utf-8"))


def export_files(exports: Path) -> list[Path]:
    return sorted(p for p in exports.rglob("*") if p.suffix in (".csv", ".parquet"))


def files_bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def floor_scan(exports: Path) -> dict[str, Any]:
    """Seconds DuckDB takes to count(*) every export file (CSV as text): the floor."""
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    rows: dict[str, int] = {}
    t0 = time.perf_counter()
    for path in export_files(exports):
        if path.suffix == ".parquet":
            sql = f"SELECT count(*) FROM read_parquet('{path}')"
        else:
            sql = f"SELECT count(*) FROM read_csv('{path}', all_varchar = true, header = true)"
        rows[path.relative_to(exports).as_posix()] = con.execute(sql).fetchone()[0]
    seconds = time.perf_counter() - t0
    con.close()
    return {"seconds": round(seconds, 2), "rows": rows}


def load_floor(exports: Path, workdir: Path) -> dict[str, Any]:
    """Seconds DuckDB takes to copy every export file into a table of a new database file.

    A second reference beside :func:`floor_scan`: the same files stored as read (CSV
    as text, Parquet as typed), with no rule, no order and no other table, then
    checkpointed. ``count(*)`` of a Parquet file reads only its footer, so the bare
    scan never touches the item rows; any pipeline that keeps the rows pays at least
    this.
    """
    path = workdir / "load-floor.duckdb"
    con = duckdb.connect(str(path))
    con.execute("SET enable_progress_bar = false")
    t0 = time.perf_counter()
    for i, file in enumerate(export_files(exports)):
        if file.suffix == ".parquet":
            source = f"read_parquet('{file}')"
        else:
            source = f"read_csv('{file}', all_varchar = true, header = true)"
        con.execute(f"CREATE TABLE t{i} AS SELECT * FROM {source}")
    con.execute("CHECKPOINT")
    con.close()
    seconds = time.perf_counter() - t0
    size = path.stat().st_size
    path.unlink()
    return {"seconds": round(seconds, 2), "database_bytes": size}


def host_probe() -> dict[str, float]:
    """Seconds of two fixed workloads: how fast the host is right now.

    The VM's speed drifts by 20 % or more within an hour (the same code's ingest took
    40-55 s at 200k), so each run records the time of the same pure-Python loop (one
    core, the GIL) and the same DuckDB aggregate (both cores) just before it. Runs
    whose probes differ were taken on a differently fast host.
    """
    t0 = time.perf_counter()
    total = 0
    for i in range(3_000_000):
        total += i * i % 7
    python_seconds = time.perf_counter() - t0
    con = duckdb.connect()
    t0 = time.perf_counter()
    con.execute("SELECT sum(hash(i) % 1000) FROM range(200_000_000) t(i)").fetchone()
    duckdb_seconds = time.perf_counter() - t0
    con.close()
    return {"python_seconds": round(python_seconds, 3), "duckdb_seconds": round(duckdb_seconds, 3)}


# --------------------------------------------------------------------------- the run


def _tree_rss(root: int) -> int:
    """Resident bytes of a process and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)  # field 4: ppid
        rss[pid] = int(fields[21]) * resource.getpagesize()  # field 24: rss pages
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


class MemoryPoller(threading.Thread):
    """Peak resident memory of a process tree, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.2, cap: float | None = None):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak, self.cap = pid, interval, 0, cap
        self.capped = False  # the tree went over ``cap`` bytes and was killed
        self.samples: list[tuple[float, int]] = []  # (unix time, bytes)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss = _tree_rss(self.pid)
            self.samples.append((time.time(), rss))
            self.peak = max(self.peak, rss)
            if self.cap and rss > self.cap and not self.capped:
                self.capped = True  # protect a shared machine: stop the run
                os.killpg(self.pid, signal.SIGKILL)
            self._stop_event.wait(self.interval)

    def peak_between(self, start: float, end: float | None) -> int:
        end = end if end is not None else float("inf")
        return max((rss for t, rss in self.samples if start <= t <= end), default=0)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def step_timings(dagster_home: Path) -> tuple[str | None, list[dict[str, Any]]]:
    """Per step of the run recorded in ``dagster_home``: seconds, assets and row counts."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs(limit=1)
        if not runs:
            return None, []
        run_id = runs[0].run_id
        steps: dict[str, dict[str, Any]] = {}
        for record in instance.all_logs(run_id):
            event = record.dagster_event
            if event is None or event.step_key is None:
                continue
            step = steps.setdefault(
                event.step_key,
                {"step": event.step_key, "start": None, "end": None, "status": None,
                 "assets": [], "rows": 0, "rows_read": 0},
            )  # fmt: skip
            kind = event.event_type
            if kind == dg.DagsterEventType.STEP_START:
                step["start"] = record.timestamp
            elif kind in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                step["end"] = record.timestamp
                step["status"] = "ok" if kind == dg.DagsterEventType.STEP_SUCCESS else "failed"
            elif kind == dg.DagsterEventType.ASSET_MATERIALIZATION:
                mat = event.event_specific_data.materialization
                step["assets"].append(mat.asset_key.to_user_string())
                meta = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
                for key, field in (("dagster/row_count", "rows"), ("rows_read", "rows_read")):
                    if isinstance(meta.get(key), int):
                        step[field] += meta[key]
        out = []
        for step in steps.values():
            if step["start"] is None:
                continue
            finished = step["end"] is not None
            seconds = step["end"] - step["start"] if finished else None
            rows = step["rows_read"] or step["rows"]
            out.append(
                {
                    "step": step["step"],
                    "status": step["status"] if finished else "unfinished",
                    "seconds": round(seconds, 2) if finished else None,
                    "assets": step["assets"],
                    "rows": rows,
                    "rows_per_second": round(rows / seconds) if seconds and rows else None,
                    "start": step["start"],
                    "end": step["end"],
                }
            )
        out.sort(key=lambda s: s["start"])
        return run_id, out


def run_refresh(
    exports: Path, workdir: Path, timeout: float | None, max_rss: float | None = None
) -> dict[str, Any]:
    """``python -m pipelines.cli run`` in a fresh process; wall, CPU, peak memory, sizes.

    After ``timeout`` seconds, or once the process tree holds more than
    ``max_rss`` bytes, the run's process group is killed; the steps finished by
    then are still reported (exit code "timeout" or "memory cap").
    """
    home = workdir / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    warehouse, reports = workdir / "warehouse.duckdb", workdir / "reports"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "OUTCOMES_EXPORTS_DIR": str(exports),
        "OUTCOMES_WAREHOUSE": str(warehouse),
        "OUTCOMES_REPORTS_DIR": str(reports),
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("OUTCOMES_AS_OF", "OUTCOMES_CONFIG"):
        env.pop(name, None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    t0, started_at = time.perf_counter(), time.time()
    with (workdir / "stdout.txt").open("wb") as out, (workdir / "stderr.txt").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "run", "--log-level", "INFO"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        poller = MemoryPoller(proc.pid, cap=max_rss)
        poller.start()
        try:
            code: int | str = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = "timeout"
        poller.stop()
        if poller.capped:
            code = "memory cap"
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    run_id, steps = step_timings(home)
    startup = steps[0]["start"] - started_at if steps else None
    for s in steps:
        s["peak_rss_bytes"] = poller.peak_between(s.pop("start"), s.pop("end"))
    sizes = {p.name: p.stat().st_size for p in sorted(workdir.glob("*.duckdb*")) if p.is_file()}
    return {
        "exit_code": code,
        "run_id": run_id,
        "wall_seconds": round(wall, 1),
        "startup_seconds": round(startup, 1) if startup is not None else None,
        "cpu_seconds": round(
            (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1
        ),
        "peak_rss_tree_bytes": poller.peak,
        "max_rss_single_process_bytes": after.ru_maxrss * 1024,
        "load_average_at_start": round(load, 2),
        "warehouse_bytes": sizes.get("warehouse.duckdb", 0),
        "files_bytes": sizes,
        "steps": steps,
        "stderr_tail": (workdir / "stderr.txt").read_text(errors="replace").splitlines()[-15:]
        if code
        else [],
    }


# --------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(mem / GB, 1),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "platform": platform.platform(),
    }


def print_tier(result: dict[str, Any]) -> None:
    run, floor = result["run"], result["floor"]
    rows = result["export_rows"]
    print(
        f"\n=== tier {result['tier']}: {rows.get('episodes', 0):,} episodes, "
        f"{rows.get('sessions', 0):,} sessions, {rows.get('assessments', 0):,} assessments, "
        f"{rows.get('assessment_items', 0):,} item rows, {rows.get('goals', 0):,} goals "
        f"({result['export_bytes'] / GB:.2f} GB of exports) ==="
    )
    print(f"{'step':<44}{'seconds':>9}{'rows':>14}{'rows/s':>12}{'peak GB':>9}")
    for s in run["steps"]:
        rate = f"{s['rows_per_second']:,}" if s["rows_per_second"] else ""
        rows_text = f"{s['rows']:,}" if s["rows"] else ""
        flag = "" if s["status"] == "ok" else f"  [{s['status']}]"
        seconds = f"{s['seconds']:.1f}" if s["seconds"] is not None else "-"
        peak = f"{s['peak_rss_bytes'] / GB:.2f}"
        print(f"{s['step']:<44}{seconds:>9}{rows_text:>14}{rate:>12}{peak:>9}{flag}")
    step_total = sum(s["seconds"] or 0 for s in run["steps"])
    print(
        f"total wall {run['wall_seconds']:.1f}s (finished steps {step_total:.1f}s; process "
        f"start-up to the first step {run['startup_seconds']}s); CPU {run['cpu_seconds']:.1f}s; "
        f"exit code {run['exit_code']}"
    )
    print(
        f"peak resident memory {run['peak_rss_tree_bytes'] / GB:.2f} GB (process tree; largest "
        f"single process {run['max_rss_single_process_bytes'] / GB:.2f} GB); warehouse "
        f"{run['warehouse_bytes'] / GB:.2f} GB"
    )
    ratio = result["floor_ratio"]
    print(
        f"floor: DuckDB count(*) of the same files {floor['seconds']:.2f}s; refresh_all / floor = "
        + (f"{ratio:.1f}x" if ratio is not None else "n/a (the run did not finish)")
        + (
            f"; ingest step / floor = {result['ingest_floor_ratio']:.1f}x"
            if result.get("ingest_floor_ratio")
            else ""
        )
        + f"; load average at start {run['load_average_at_start']}"
    )
    loaded = result.get("load_floor")
    if loaded:
        ratio = result["load_floor_ratio"]
        print(
            f"load floor: DuckDB copying the same files into a table, no rules, "
            f"{loaded['seconds']:.2f}s ({result['load_over_scan']}x the bare scan); "
            "refresh_all / load floor = "
            + (f"{ratio:.1f}x" if ratio is not None else "n/a (the run did not finish)")
        )
    probe = result.get("host_probe")
    if probe:
        print(
            f"host probe (fixed work, lower = faster host): Python loop "
            f"{probe['python_seconds']:.2f}s, DuckDB aggregate {probe['duckdb_seconds']:.2f}s"
        )
    for message in run["stderr_tail"]:
        print(f"  | {message}")


def earlier_results(path: Path, seed: int) -> dict[int, dict[str, Any]]:
    """Per tier, the median of the latest commit's runs in the results file (to compare
    tiers run apart)."""
    runs: dict[int, list[dict[str, Any]]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            if r.get("seed") == seed and "steps" in r.get("run", {}):
                same = runs.setdefault(r["episodes"], [])
                if same and same[-1].get("git_commit") != r.get("git_commit"):
                    same.clear()  # a newer commit: its runs only
                same.append(r)
    return {n: median_run(rs) for n, rs in runs.items()}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run in the middle by wall time (an unfinished run counts as the slowest)."""

    def key(r: dict[str, Any]) -> tuple[bool, float]:
        return (r["run"]["exit_code"] != 0, r["run"]["wall_seconds"])

    return sorted(runs, key=key)[(len(runs) - 1) // 2]


def check_targets(
    results: list[dict[str, Any]], earlier: dict[int, dict[str, Any]] | None = None
) -> list[str]:
    lines = []
    by_n = {}
    for n in dict.fromkeys(r["episodes"] for r in results):
        runs = [r for r in results if r["episodes"] == n]
        by_n[n] = median_run(runs)
        if len(runs) > 1:
            walls = ", ".join(f"{r['run']['wall_seconds']:.1f}" for r in runs)
            lines.append(
                f"{tier_label(n)}: {len(runs)} runs ({walls} s); the median run is checked"
            )
    for n, r in (earlier or {}).items():
        if n not in by_n and n in (200_000, 1_000_000):
            by_n[n] = r
            lines.append(f"({tier_label(n)} from an earlier run, measured {r['measured_at']})")
    for n, target in TARGETS.items():
        r = by_n.get(n)
        if r is None:
            continue
        run = r["run"]
        ok = run["exit_code"] == 0
        lines.append(
            f"{tier_label(n)}: {run['wall_seconds']:.0f}s (target <= {target['seconds']:.0f}s: "
            f"{'met' if ok and run['wall_seconds'] <= target['seconds'] else 'NOT met'}), "
            f"peak {run['peak_rss_tree_bytes'] / GB:.2f} GB (target < {target['peak_gb']:.0f} GB: "
            f"{'met' if run['peak_rss_tree_bytes'] < target['peak_gb'] * GB else 'NOT met'})"
        )
        if "floor_ratio" in target:
            ratio = r["floor_ratio"]
            lines.append(
                f"{tier_label(n)}: "
                + (f"{ratio:.1f}x" if ratio is not None else "n/a (unfinished)")
                + f" the bare scan (target <= {target['floor_ratio']:.0f}x: "
                + ("met" if ratio is not None and ratio <= target["floor_ratio"] else "NOT met")
                + ")"
            )
            if r.get("load_floor"):
                lines.append(
                    f"{tier_label(n)}: for scale, copying the files into DuckDB with no rule "
                    f"took {r['load_floor']['seconds']:.1f}s, {r['load_over_scan']}x the bare scan"
                )
    small, large = by_n.get(200_000), by_n.get(1_000_000)
    if small and large:
        finished = small["run"]["exit_code"] == 0 and large["run"]["exit_code"] == 0
        growth = large["run"]["wall_seconds"] / small["run"]["wall_seconds"]
        lines.append(
            f"200k -> 1m: time grew {growth:.2f}x (target <= {GROWTH_200K_TO_1M}x: "
            f"{'met' if finished and growth <= GROWTH_200K_TO_1M else 'NOT met'}"
            + ("" if finished else "; a run did not finish")
            + ")"
        )
    for step in ("ingest_exports",):
        times = {
            n: next((s["seconds"] for s in r["run"]["steps"] if s["step"] == step), None)
            for n, r in ((200_000, small), (1_000_000, large))
            if r
        }
        if len(times) == 2 and all(times.values()):
            lines.append(
                f"{step} alone, 200k -> 1m: {times[200_000]:.0f}s -> {times[1_000_000]:.0f}s "
                f"({times[1_000_000] / times[200_000]:.2f}x)"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tiers",
        action="append",
        default=None,
        help="comma-separated tiers: 10k, 200k, 1m or a number of episodes "
        "(repeatable; default 10k,200k)",
    )
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--fresh", action="store_true", help="regenerate the cached exports")
    parser.add_argument("--keep", action="store_true", help="keep each run's warehouse folder")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per tier (default 1); with more, every run is printed and recorded and "
        "the targets are checked on the median run (runs vary by about 10%% on a VM)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON-lines results file")
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600,
        help="seconds before a run is stopped and reported as such (default 3600)",
    )
    parser.add_argument(
        "--max-rss-gb",
        type=float,
        default=16.0,
        help="stop a run whose processes hold more memory than this (default 16; the "
        "machine is shared), reported as such",
    )
    args = parser.parse_args(argv)
    tiers = [parse_tier(t) for group in (args.tiers or ["10k,200k"]) for t in group.split(",")]

    earlier = earlier_results(args.results, args.seed)
    results = []
    for episodes in tiers:
        exports, counts = exports_for(episodes, args.seed, args.fresh)
        files = export_files(exports)
        for repeat in range(1, args.repeat + 1):
            # Dirty pages of earlier runs (2-3 GB of reports and warehouse) are written
            # out now, not by the kernel in the middle of this run.
            os.sync()
            log(f"{tier_label(episodes)}: floor scan of {len(files)} files")
            floor = floor_scan(exports)
            workdir = Path(tempfile.mkdtemp(prefix="run-", dir=exports.parent))
            log(f"{tier_label(episodes)}: load floor (the files copied into DuckDB)")
            loaded = load_floor(exports, workdir)
            probe = host_probe()
            log(
                f"{tier_label(episodes)}: refresh_all in a fresh process, run {repeat} of "
                f"{args.repeat} (work folder {workdir})"
            )
            os.sync()
            try:
                run = run_refresh(exports, workdir, args.timeout, args.max_rss_gb * GB)
            finally:
                if not args.keep:
                    shutil.rmtree(workdir, ignore_errors=True)
            result = {
                "tier": tier_label(episodes),
                "episodes": episodes,
                "seed": args.seed,
                "repeat": repeat,
                "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "git_commit": subprocess.run(
                    ["git", "rev-parse", "--short", "HEAD"],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                ).stdout.strip(),
                "machine": machine(),
                "export_rows": {t: counts.get(t, 0) for t in STAGING_TABLES},
                "export_bytes": files_bytes(files),
                "floor": floor,
                "load_floor": loaded,
                "host_probe": probe,
                "run": run,
                "floor_ratio": round(run["wall_seconds"] / floor["seconds"], 2)
                if floor["seconds"] and run["exit_code"] == 0
                else None,
                "load_floor_ratio": round(run["wall_seconds"] / loaded["seconds"], 2)
                if loaded["seconds"] and run["exit_code"] == 0
                else None,
                "load_over_scan": round(loaded["seconds"] / floor["seconds"], 1)
                if floor["seconds"]
                else None,
                "ingest_floor_ratio": next(
                    (
                        round(s["seconds"] / floor["seconds"], 1)
                        for s in run["steps"]
                        if s["step"] == "ingest_exports" and s["seconds"] and floor["seconds"]
                    ),
                    None,
                ),
            }
            results.append(result)
            print_tier(result)
            args.results.parent.mkdir(parents=True, exist_ok=True)
            with args.results.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(result, default=str) + "\n")
    lines = check_targets(results, earlier)
    if lines:
        print("\n=== targets (issue 8) ===")
        print("\n".join(lines))
    print(f"\nfigures appended to {args.results}")
    return 0 if all(r["run"]["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
