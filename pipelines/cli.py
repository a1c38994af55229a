"""Command line: run ``refresh_all`` in-process and print what it built.

``./dev run`` calls this. It records the run in the Dagster instance
(DAGSTER_HOME), so it shows up in the UI's run history like any other run.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import socket
import sys
import time
from pathlib import Path

import dagster as dg

from schemas.settings import Settings, SettingsError, load_settings


def _step_errors(result: dg.ExecuteInProcessResult) -> list[str]:
    messages = []
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            data = event.step_failure_data
            error = data.error if data else None
            # Dagster wraps what the step raised ("Error occurred while executing op"):
            # the user needs the cause, e.g. "OSError: [Errno 28] No space left on device".
            while error is not None and error.cause is not None:
                error = error.cause
            text = error.message.strip() if error else "unknown error"
            # dg.Failure carries the description as the whole message.
            messages.append(f"{event.step_key}: {text.splitlines()[0] if text else text}")
    return messages


def _failed_checks(result: dg.ExecuteInProcessResult) -> list[str]:
    failed = []
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            if not evaluation.passed:
                failed.append(
                    f"{evaluation.asset_key.to_user_string()} / {evaluation.check_name}: "
                    f"{evaluation.description or 'failed'}"
                )
    return failed


def _summary(settings: Settings) -> str:
    from pipelines.resources import warehouse_connection

    lines = [f"Warehouse: {settings.warehouse}"]
    with warehouse_connection(settings.warehouse, read_only=True) as con:
        info = con.execute("SELECT run_id, as_of, as_of_source FROM staging.run_info").fetchall()
        if info:
            run_id, as_of, source = info[0]
            origin = "OUTCOMES_AS_OF" if source == "config" else "latest date in the data"
            lines.append(f"Data cut date (as of): {as_of} ({origin}); run {run_id}")
        tables = con.execute(
            "SELECT schema_name, table_name, estimated_size FROM duckdb_tables() "
            "WHERE schema_name IN ('staging', 'quarantine', 'marts') ORDER BY 1, 2"
        ).fetchall()
        lines.append("Tables (rows):")
        for schema, name, _ in tables:
            n = con.execute(f'SELECT count(*) FROM {schema}."{name}"').fetchall()[0][0]
            lines.append(f"  {schema}.{name:<28} {n:>10,}")
        rules = con.execute(
            "SELECT table_name, rule, count(*) FROM quarantine.rejected_rows "
            "GROUP BY ALL ORDER BY 1, 3 DESC, 2"
        ).fetchall()
        total = sum(r[2] for r in rules)
        lines.append(f"Quarantined rows: {total:,}" + (" (by table and rule):" if rules else ""))
        for table, rule, n in rules:
            lines.append(f"  {table:<18} {rule:<24} {n:>8,}")
    reports_dir = Path(settings.reports_dir)
    pages = sorted(reports_dir.glob("**/*.html")) if reports_dir.is_dir() else []
    if pages:
        lines.append(f"Reports ({len(pages)} pages) in {reports_dir}:")
        for name in ("index.html", "qi_report/service.html"):
            if (reports_dir / name).is_file():
                lines.append(f"  {reports_dir / name}")
        lines.append(f"  (open {reports_dir / 'index.html'} for every clinic and clinician page)")
    else:
        lines.append(f"Reports folder: {reports_dir} (no reports written)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from pipelines.definitions import defs

    print(f"Running refresh_all on {settings.exports_dir}", file=sys.stderr)
    instance = (
        dg.DagsterInstance.get()
        if os.environ.get("DAGSTER_HOME")
        else (dg.DagsterInstance.ephemeral())
    )
    # A run killed earlier (SIGKILL, power cut) would hold the warehouse pool slot for
    # ever and this run would wait on it: fail such runs and free their slots first.
    from pipelines.sensors import HOST_TAG, release_dead_runs

    for run_id in release_dead_runs(instance):
        print(f"Marked run {run_id} failed: its process was gone", file=sys.stderr)
    started = time.perf_counter()
    job = defs.resolve_job_def("refresh_all")
    run_config = {"loggers": {"console": {"config": {"log_level": args.log_level}}}}
    tags = {HOST_TAG: socket.gethostname()}
    result = job.execute_in_process(
        instance=instance, raise_on_error=False, run_config=run_config, tags=tags
    )
    seconds = time.perf_counter() - started
    failed_checks = _failed_checks(result)
    errors = _step_errors(result)
    if errors or not result.success:
        print(f"\nrefresh_all FAILED after {seconds:.1f}s (run {result.run_id})", file=sys.stderr)
        for message in errors:
            print(f"  {message}", file=sys.stderr)
        for message in failed_checks:
            print(f"  failed check {message}", file=sys.stderr)
        print("The previous marts and reports were left as they were.", file=sys.stderr)
        return 1
    if failed_checks:
        print(
            f"\nrefresh_all STOPPED by a blocking check after {seconds:.1f}s "
            f"(run {result.run_id}):",
            file=sys.stderr,
        )
        for message in failed_checks:
            print(f"  failed check {message}", file=sys.stderr)
        print(
            "Staging and quarantine were written; marts and reports were left as the previous "
            "successful run made them.",
            file=sys.stderr,
        )
        print(_summary(settings))
        return 1
    print(f"\nrefresh_all succeeded in {seconds:.1f}s (run {result.run_id})")
    print(_summary(settings))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="outcomes", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser(
        "run", help="materialize everything (job refresh_all) and print a summary"
    )
    run_parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="Dagster console log level (default INFO)",
    )
    args = parser.parse_args(argv)
    # A crash in native code (DuckDB, Arrow) would otherwise end the run with no
    # word of where: print the Python stack of every thread on SIGSEGV/SIGABRT.
    faulthandler.enable()
    if args.command == "run":
        return run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
