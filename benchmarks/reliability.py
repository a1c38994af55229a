"""The full reliability run: kills, faults, fuzzing, leaks and idempotence at full size.

    ./dev python benchmarks/reliability.py            # everything (about an hour on 2 cores)
    ./dev python benchmarks/reliability.py --only kill,fuzz --seed 7

It runs the same tests CI runs (tests/test_kill.py, test_faults.py, test_fuzz.py,
test_privacy_leaks.py, test_idempotence.py) with ``RELIABILITY_FULL=1``: 20
SIGKILLs on a 2,000-episode export with a recovery run after each, thousands of
Hypothesis examples, every planted identifier through the whole job, the tmpfs
disk-full scenarios. Each test writes its figures to a JSON file; this script
collects them and rewrites the figures table of docs/reliability.md (between the
``figures`` markers), so the table always shows what the last full run saw.
Exit code: pytest's (0 when everything held).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"
RESULTS = ROOT / "bench_results" / "reliability"
SUITES = {
    "kill": "tests/test_kill.py",
    "faults": "tests/test_faults.py",
    "fuzz": "tests/test_fuzz.py",
    "privacy": "tests/test_privacy_leaks.py",
    "idempotence": "tests/test_idempotence.py",
}
# The figures files (bench_results/reliability/<name>.json) each suite writes.
FIGURES = {
    "kill": ("kill", "wal", "wal_ingest"),
    "faults": ("faults",),
    "fuzz": ("fuzz", "formula"),
    "privacy": ("privacy", "suppression"),
    "idempotence": ("idempotence",),
}
# Per suite: the outcome of its last full run, its date and commit (a run of
# some suites with --only keeps the others' last results).
RUNS = "runs.json"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"
# The temp folders of the tests, shortened in the table.
TMP = re.compile(r"/tmp/\S*?/(?=(?:site|wh|not_a_folder)/)")


def _load(name: str) -> dict[str, Any]:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _outcomes(junit: Path) -> dict[str, dict[str, int]]:
    """Per test file: passed, failed, skipped."""
    out: dict[str, dict[str, int]] = {}
    if not junit.is_file():
        return out
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        state = "passed"
        if case.find("failure") is not None or case.find("error") is not None:
            state = "failed"
        elif case.find("skipped") is not None:
            state = "skipped"
        counts = out.setdefault(module, {"passed": 0, "failed": 0, "skipped": 0, "seconds": 0})
        counts[state] += 1
        counts["seconds"] += round(float(case.get("time", 0)))
    return out


def _held(outcomes: dict[str, dict[str, Any]], module: str) -> str:
    o = outcomes.get(module)
    if not o:
        return "not run"
    when = ""
    if o.get("date"):
        when = f" ({o['date']}, {o['commit']}, {o.get('seconds', 0) / 60:.0f} min)"
    if o["failed"]:
        return f"**NO** ({o['failed']} failed){when}"
    return "yes" + (f", {o['skipped']} skipped" if o["skipped"] else "") + when


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip() or "?"


def _remember_runs(outcomes: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    """This run's outcomes merged over the last outcomes of the suites it did not run."""
    path = RESULTS / RUNS
    runs = json.loads(path.read_text()) if path.is_file() else {}
    stamp = {"date": dt.date.today().isoformat(), "commit": _commit()}
    runs.update({module: {**o, **stamp} for module, o in outcomes.items()})
    path.write_text(json.dumps(runs, indent=2, sort_keys=True))
    return runs


def table(outcomes: dict[str, dict[str, int]], seed: int, seconds: float) -> str:
    kill, fuzz, privacy, wal = _load("kill"), _load("fuzz"), _load("privacy"), _load("wal")
    wal_ingest = _load("wal_ingest")
    faults, idem, supp, formula = (
        _load("faults"),
        _load("idempotence"),
        _load("suppression"),
        _load("formula"),
    )
    rows = [
        (
            "SIGKILL of `refresh_all` at random moments, every stage",
            f"{kill.get('survived', '?')} of {kill.get('kills', '?')} kills survived "
            f"({kill.get('episodes', '?')} episodes; by stage running at the kill: "
            f"{kill.get('stages', {})}; WAL left behind {kill.get('kills_with_wal_left', '?')}, "
            f"kills between two tables of a run {kill.get('kills_mid_write', '?')}); "
            f"{kill.get('recovery_runs', '?')} recovery runs equal to a clean run",
            _held(outcomes, "test_kill"),
        ),
        (
            "Write-ahead log torn at random bytes (a kill mid-commit)",
            f"{wal.get('torn_cuts', '?')} cuts of a {wal.get('wal_bytes', '?')}-byte WAL: "
            f"{wal.get('states', {})} - always the previous or the new version, always opens",
            _held(outcomes, "test_kill"),
        ),
        (
            "An ingest killed after its publishing commit (staging built in place), "
            "its WAL torn at random bytes",
            f"{wal_ingest.get('torn_cuts', '?')} cuts of a "
            f"{wal_ingest.get('wal_bytes', '?')}-byte WAL: {wal_ingest.get('states', {})} - "
            "the previous or the new staging (columns and constraints included), never a "
            "part; a killed run's work tables at most, dropped by the next writer",
            _held(outcomes, "test_kill"),
        ),
        (
            "Fault scenarios (disk full, read-only, impossible paths)",
            "; ".join(f"{k}: `{TMP.sub('…/', v)}`" for k, v in faults.get("scenarios", {}).items())
            or "?",
            _held(outcomes, "test_faults"),
        ),
        (
            "Fuzz cases run (Hypothesis + one of each kind)",
            f"{fuzz.get('cases', '?')} cases, outcomes {fuzz.get('outcomes', {})}; "
            "no other exception, conservation held, every quarantine row named file, row, rule",
            _held(outcomes, "test_fuzz"),
        ),
        (
            "Malformed-file kinds covered",
            ", ".join(fuzz.get("file_kinds_covered", [])) or "?",
            _held(outcomes, "test_fuzz"),
        ),
        (
            "Malformed-row kinds covered",
            ", ".join(fuzz.get("row_kinds_covered", [])) or "?",
            _held(outcomes, "test_fuzz"),
        ),
        (
            "Formula / HTML / path payloads in published files",
            f"{formula.get('payloads', '?')} payloads, {formula.get('csv_cells_checked', '?')} "
            f"CSV cells checked, {formula.get('escaped_formula_cells', '?')} escaped, "
            f"{formula.get('unescaped_formula_cells', '?')} unescaped",
            _held(outcomes, "test_fuzz"),
        ),
        (
            "Planted identifiers found (must be 0)",
            f"**{privacy.get('planted_values_found', '?')}** found; "
            f"{privacy.get('plants', '?')} plants ({', '.join(privacy.get('plant_kinds', []))}); "
            f"searched: warehouse bytes and text columns, snapshot, reports, logs, DAGSTER_HOME",
            _held(outcomes, "test_privacy_leaks"),
        ),
        (
            "Small-cell suppression in published aggregates",
            f"k = {supp.get('k', '?')}; "
            + "; ".join(
                f"{f}: {v.get('rows')} rows, {v.get('suppressed')} suppressed"
                for f, v in supp.get("files", {}).items()
            ),
            _held(outcomes, "test_privacy_leaks"),
        ),
        (
            "Idempotence: rerun on the same exports",
            f"{idem.get('tables_compared', '?')} tables, {idem.get('rows_compared', '?')} rows "
            f"identical; {idem.get('published_files_compared', '?')} published files, "
            f"differing: {idem.get('published_files_differ', '?')}",
            _held(outcomes, "test_idempotence"),
        ),
    ]
    lines = [
        f"Full runs (`./dev python benchmarks/reliability.py`, seed {seed}); the last "
        f"took {seconds / 60:.0f} min. Each row comes from the last full run of its "
        "suite: date, commit and duration in the last column.",
        "",
        "| what was tried | what the full run saw | held |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def write_doc(text: str) -> None:
    doc = DOC.read_text(encoding="utf-8")
    if START not in doc or END not in doc:
        raise SystemExit(f"{DOC}: the {START} / {END} markers are missing")
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", default=",".join(SUITES), help="comma list of " + ",".join(SUITES)
    )
    parser.add_argument("--seed", type=int, default=2026, help="kill schedule seed")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/reliability.md")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="only rewrite the table from the results of the last run (bench_results/)",
    )
    args = parser.parse_args(argv)
    chosen = [SUITES[s.strip()] for s in args.only.split(",") if s.strip()]

    junit = RESULTS / "junit.xml"
    names = [s.strip() for s in args.only.split(",") if s.strip()]
    if args.render_only:
        suites = ET.parse(junit).getroot().iter("testsuite") if junit.is_file() else []
        seconds = sum(float(s.get("time", 0)) for s in suites)
        path = RESULTS / RUNS
        text = table(json.loads(path.read_text()) if path.is_file() else {}, args.seed, seconds)
        print(text)
        if not args.no_doc:
            write_doc(text)
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in names:
        for figures in FIGURES[name]:
            (RESULTS / f"{figures}.json").unlink(missing_ok=True)
    env = {
        **os.environ,
        "RELIABILITY_FULL": "1",
        "RELIABILITY_RESULTS": str(RESULTS),
        "RELIABILITY_SEED": str(args.seed),
    }
    started = dt.datetime.now()
    code = subprocess.run(
        [sys.executable, "-m", "pytest", *chosen, "-q", "-p", "no:cacheprovider",
         f"--junitxml={junit}"],
        cwd=ROOT,
        env=env,
    ).returncode  # fmt: skip
    seconds = (dt.datetime.now() - started).total_seconds()
    text = table(_remember_runs(_outcomes(junit)), args.seed, seconds)
    print("\n" + text)
    if not args.no_doc:
        write_doc(text)
        print(f"\nwrote {DOC.relative_to(ROOT)}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
