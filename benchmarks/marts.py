"""Benchmark (not a test): rebuild marts one at a time on a copy of a built warehouse.

    ./dev python benchmarks/marts.py --warehouse /tmp/w200k/warehouse.duckdb
    ./dev python benchmarks/marts.py --warehouse W --marts scores,clinic_kpis,dose_response

Why: ``benchmarks/scale.py`` times whole runs, where each step's memory is the
process's peak so far and one slow step hides the next. Here each mart is
materialized by its Dagster asset (SQL, write, metadata: what a run does) in a
FRESH process, on a copy of the warehouse (the original is never written), so
its wall time, CPU time and peak resident memory are its own. The process's
memory before the step (imports) is reported too.

Build the warehouse once with the tier's exports, e.g. ``scale.py --tiers 200k
--keep``. The marts are rebuilt in the order given (default: every mart, in
dependency order); each reads the tables the copy holds, so rebuilding one
needs its upstream marts built, not rebuilt. A multi-asset (e.g.
``alliance_outcome``) is rebuilt whole. Results are printed and appended to
``bench_results/marts.jsonl``. The machine is shared: the load average is
recorded; compare CPU seconds when the wall time looks off.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench_results" / "marts.jsonl"


def _asset_groups() -> list[list[str]]:
    """Every mart's keys, one list per asset definition, in dependency order."""
    from pipelines.definitions import all_assets, defs

    rank = {key: i for i, key in enumerate(defs.resolve_asset_graph().toposorted_asset_keys)}
    groups = []
    for assets_def in all_assets:
        keys = sorted((k for k in assets_def.keys if k.path[0] == "marts"), key=rank.__getitem__)
        if keys:
            groups.append(keys)
    groups.sort(key=lambda keys: rank[keys[0]])
    return [[key.to_user_string() for key in keys] for keys in groups]


def _child(keys: list[str]) -> dict[str, Any]:
    """Materialize ``keys`` (one asset definition) here; this process is fresh."""
    import dagster as dg

    from pipelines.definitions import all_assets
    from pipelines.resources import OutcomesResource

    before = resource.getrusage(resource.RUSAGE_SELF)
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        all_assets,
        selection=dg.AssetSelection.assets(*[dg.AssetKey(k.split("/")) for k in keys]),
        resources={"outcomes": OutcomesResource()},
        instance=instance,
        raise_on_error=False,
    )
    started = seconds = None
    for entry in instance.all_logs(result.run_id):
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            started = entry.timestamp
        elif event.event_type in (
            dg.DagsterEventType.STEP_SUCCESS,
            dg.DagsterEventType.STEP_FAILURE,
        ):
            seconds = entry.timestamp - started if started is not None else None
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "marts": keys,
        "ok": result.success,
        "seconds": None if seconds is None else round(seconds, 2),
        # includes Dagster's own work for one step (about 2 CPU s)
        "cpu_seconds": round(
            after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2
        ),
        "rss_before_gb": round(before.ru_maxrss / 1024**2, 2),  # Linux: KiB
        "peak_rss_gb": round(after.ru_maxrss / 1024**2, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warehouse", type=Path, help="a built warehouse (copied, not written)")
    parser.add_argument(
        "--marts", help="comma-separated mart names (default: every mart, dependency order)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON-lines results file")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: keys to materialize
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child.split(","))))
        return 0
    if args.warehouse is None or not args.warehouse.is_file():
        parser.error("--warehouse must name a built warehouse file")

    groups = _asset_groups()
    if args.marts:
        wanted = [f"marts/{m.strip()}" for m in args.marts.split(",")]
        known = {k for g in groups for k in g}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            parser.error(f"unknown marts: {', '.join(unknown)}")
        groups = [next(g for g in groups if w in g) for w in wanted]

    results = []
    with tempfile.TemporaryDirectory(prefix="marts-bench-") as tmp:
        copy = Path(tmp) / "warehouse.duckdb"
        print(f"[marts] copying {args.warehouse} to {copy}", file=sys.stderr, flush=True)
        shutil.copyfile(args.warehouse, copy)
        env = {
            **os.environ,
            "OUTCOMES_WAREHOUSE": str(copy),
            "OUTCOMES_REPORTS_DIR": str(Path(tmp) / "reports"),
            "OUTCOMES_STATIC_EXPORT": "off",
        }
        for keys in groups:
            load = os.getloadavg()[0]
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--child", ",".join(keys)],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode != 0 or not lines:
                tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
                row: dict[str, Any] = {"marts": keys, "ok": False, "error": tail}
            else:
                row = json.loads(lines[-1])
            row["process_seconds"] = round(time.perf_counter() - started, 1)
            row["load_avg_1m"] = round(load, 2)
            results.append(row)
            print(json.dumps(row), flush=True)

    record = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "warehouse": str(args.warehouse),
        "warehouse_gb": round(args.warehouse.stat().st_size / 1024**3, 2),
        "cpus": os.cpu_count(),
        "results": results,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")
    return 0 if all(r.get("ok") for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
