"""Shared machinery of the reliability suite (tests/test_kill.py, test_faults.py, ...).

Why a module of its own: the kill, fault, idempotence and leak tests all need
the same three things - an installation in a temp folder (exports, warehouse,
reports, Dagster home), a way to run ``refresh_all`` exactly as a user does
(``pipelines.cli run``) in a child process that can be SIGKILLed, and an
order-independent fingerprint of every warehouse table.

Child runs are forked from a fork server (multiprocessing's ``forkserver``) that
imported ``pipelines.definitions`` once and has done nothing else: the child
then calls ``pipelines.cli.main(["run", ...])`` with only environment variables
set, like ``./dev run``, but skips the seconds of imports a fresh interpreter
pays. That keeps twenty kills affordable. Not forked from the test process
itself: by then it has run DuckDB and Arrow thread pools, and a child forked
from a process with busy threads inherits their locks and allocator state
mid-flight (a CI recovery run once died of SIGSEGV that way).

Bounds: CI runs a bounded number of kills and examples; ``RELIABILITY_FULL=1``
(set by ``benchmarks/reliability.py``) runs the full numbers. Figures each test
wants in docs/reliability.md go to ``$RELIABILITY_RESULTS/<name>.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from schemas.staging import work_tables

ROOT = Path(__file__).resolve().parent.parent
FULL = os.environ.get("RELIABILITY_FULL", "") == "1"
# Columns that legitimately differ between two runs on the same exports: the run id,
# and the paths of the installation recorded with the run's settings.
VOLATILE_COLUMNS = {"run_id"}
VOLATILE_BY_TABLE = {"staging.run_info": {"exports_dir", "settings_json"}}
# Tables that keep a history across runs instead of being replaced.
HISTORY_TABLES = {"quarantine.ingest_history"}
WAREHOUSE_SCHEMAS = ("staging", "quarantine", "marts")


def bound(ci: int, full: int) -> int:
    """``full`` under RELIABILITY_FULL=1, else the CI bound."""
    return full if FULL else ci


def record(name: str, figures: dict[str, Any]) -> None:
    """Write figures for docs/reliability.md when the full command collects them."""
    folder = os.environ.get("RELIABILITY_RESULTS")
    if not folder:
        return
    path = Path(folder) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(path.read_text()) if path.is_file() else {}
    previous.update(figures)
    path.write_text(json.dumps(previous, indent=2, sort_keys=True, default=str))


# --------------------------------------------------------------------------- installations


@dataclass
class Site:
    """One installation: where the exports are read and everything is written."""

    root: Path
    exports: Path

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "dagster_home" / "dagster.yaml", self.home / "dagster.yaml")

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def home(self) -> Path:
        return self.root / "dagster_home"

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("OUTCOMES_", "RELIABILITY_", "PYTEST_"))
        }
        env.update(
            DAGSTER_HOME=str(self.home),
            OUTCOMES_EXPORTS_DIR=str(self.exports),
            OUTCOMES_WAREHOUSE=str(self.warehouse),
            OUTCOMES_REPORTS_DIR=str(self.reports),
            # Runs here are forked from the test process (threads already started):
            # starting kaleido's Chromium bridge in such a child can crash it, and
            # the PNG/PDF side files are not what these tests check.
            OUTCOMES_STATIC_EXPORT="off",
        )
        env.update(extra)
        return env


def generated_exports(folder: Path, episodes: int, seed: int, **kwargs: Any) -> Path:
    """A realistic export folder from pipelines.generate (cached by arguments in ``folder``)."""
    from pipelines.generate import generate

    stamp = folder / ".generated"
    key = json.dumps({"episodes": episodes, "seed": seed, **kwargs}, sort_keys=True, default=str)
    if not (stamp.is_file() and stamp.read_text() == key):
        generate(folder, episodes, seed, progress=False, **kwargs)
        stamp.write_text(key)
    return folder


# Hostile text for the published outputs: formula, HTML and path payloads as clinic,
# clinician and band values (they reach CSV cells, HTML pages and file names).
CLINIC_PAYLOADS = {
    "CLINIC01": '=HYPERLINK("http://evil.example","x")',
    "CLINIC02": "<script>alert(1)</script>",
    "CLINIC03": "../../escaped",
    "CLINIC04": "+cmd|' /C calc'!A0",
    "CLINIC05": "@SUM(1+1)",
}
CLINICIAN_PAYLOADS = {
    "T0101": "-2+3",
    "T0102": "../../../pwn",
    "T0103": "<img src=x onerror=alert(2)>",
}
BAND_PAYLOADS = {"male": "=1+1", "female": "@female"}
HTML_PAYLOADS = ("<script>alert(1)</script>", "<img src=x onerror=alert(2)>")


def rewrite_csv(path: Path, columns: dict[str, dict[str, str]]) -> None:
    """Map values of some columns of a CSV file (the rest byte-for-byte as parsed)."""
    import csv

    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        names, rows = list(reader.fieldnames or []), list(reader)
    for row in rows:
        for column, mapping in columns.items():
            if column in row:
                row[column] = mapping.get(row[column], row[column])
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)


def make_hostile(exports: Path) -> Path:
    """Put the payloads into a generated export (once)."""
    marker = exports / ".hostile"
    if not marker.is_file():
        rewrite_csv(
            exports / "episodes.csv",
            {
                "clinic_id": CLINIC_PAYLOADS,
                "clinician_id": CLINICIAN_PAYLOADS,
                "gender": BAND_PAYLOADS,
            },
        )
        rewrite_csv(exports / "sessions.csv", {"clinician_id": CLINICIAN_PAYLOADS})
        marker.write_text("payloads in clinic_id, clinician_id, gender\n")
    return exports


# --------------------------------------------------------------------------- child runs

STEP_EVENT = re.compile(
    r" - (?P<step>[A-Za-z0-9_]+) - (?P<event>STEP_START|STEP_SUCCESS|STEP_FAILURE) - "
)


@dataclass
class Run:
    """A ``pipelines.cli run`` in a forked child: its output files and step timeline."""

    pid: int
    out: Path
    err: Path
    started: float
    returncode: int | None = None
    killed: bool = False
    steps: dict[str, dict[str, float]] = field(default_factory=dict)
    _read: int = 0
    process: Any = field(default=None, repr=False)  # multiprocessing.Process of a live run

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def poll_steps(self) -> None:
        """Note when each step started and ended (from the DEBUG console log)."""
        with self.err.open("rb") as fh:
            fh.seek(self._read)
            chunk = fh.read()
        cut = chunk.rfind(b"\n") + 1
        self._read += cut
        now = time.perf_counter() - self.started
        for line in chunk[:cut].decode(errors="replace").splitlines():
            m = STEP_EVENT.search(line)
            if m:
                self.steps.setdefault(m["step"], {})[m["event"]] = now

    def running_step(self) -> str | None:
        """The step started last and not finished (None between steps)."""
        open_steps = [
            (t["STEP_START"], s)
            for s, t in self.steps.items()
            if "STEP_START" in t and "STEP_SUCCESS" not in t and "STEP_FAILURE" not in t
        ]
        return max(open_steps)[1] if open_steps else None

    def poll(self) -> int | None:
        if self.returncode is None and self.process is not None:
            self.returncode = self.process.exitcode  # -N when killed by signal N
        self.poll_steps()
        return self.returncode

    def wait(self, timeout: float = 600) -> int:
        deadline = time.perf_counter() + timeout
        while self.poll() is None:
            if time.perf_counter() > deadline:
                self.kill()
                raise TimeoutError(f"run did not finish in {timeout}s:\n{self.stderr[-3000:]}")
            time.sleep(0.02)
        return self.returncode  # type: ignore[return-value]

    def kill(self) -> None:
        """SIGKILL: no cleanup handler, no finally block, no flush runs."""
        if self.returncode is None:
            self.process.kill()  # SIGKILL; a child that already ended is left as it is
            self.process.join()
            self.returncode = self.process.exitcode
            self.killed = True
        self.poll_steps()


def preload() -> None:
    """Import the code location once in this process so forked children start at once."""
    import pipelines.cli  # noqa: F401
    from pipelines.definitions import defs

    defs.resolve_job_def("refresh_all")


_FORKSERVER: Any = None


def _forkserver() -> Any:
    """The multiprocessing context whose server process preloads the code location."""
    global _FORKSERVER
    if _FORKSERVER is None:
        import multiprocessing

        context = multiprocessing.get_context("forkserver")
        # The server imports these and nothing else: no DuckDB connection, no query.
        context.set_forkserver_preload(["tests.forkserver_preload"])
        _FORKSERVER = context
    return _FORKSERVER


NETWORK_LOG = "network_attempts.log"


def _cut_network(log: Path) -> str:
    """In a child: take the network away; returns how ('namespace' or 'sockets').

    As root, a new network namespace leaves only a loopback that is down, for Python
    and for native code (DuckDB, sqlite) alike. Without that privilege, Python's
    socket layer refuses and records every connect and name lookup.
    """
    import socket

    mode = "sockets"
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x40000000) == 0:  # CLONE_NEWNET
            mode = "namespace"
    except (OSError, AttributeError):
        pass

    def refuse(what: str, target: object) -> None:
        with log.open("a") as fh:
            fh.write(f"{what} {target!r}\n")
        raise OSError(f"network access refused by the reliability suite: {what} {target!r}")

    real_connect = socket.socket.connect

    def connect(self, address):  # type: ignore[no-untyped-def]
        if self.family == socket.AF_UNIX:
            return real_connect(self, address)
        refuse("connect", address)

    def connect_ex(self, address):  # type: ignore[no-untyped-def]
        if self.family == socket.AF_UNIX:
            return socket.socket.connect_ex(self, address)
        refuse("connect", address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = lambda host, *a, **k: refuse("getaddrinfo", host)  # type: ignore[assignment]
    socket.create_connection = lambda address, *a, **k: refuse("connect", address)  # type: ignore[assignment]
    return mode


def _child(
    env: dict[str, str],
    out: Path,
    err: Path,
    argv: list[str],
    offline: bool = False,
    prepare: Callable[[], None] | None = None,
) -> None:
    code = 70
    try:
        os.setsid()
        if offline:
            mode = _cut_network(out.with_name(NETWORK_LOG))
            out.with_name("network_mode").write_text(mode)
        for fd, path in ((1, out), (2, err)):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.environ.clear()
        os.environ.update(env)
        os.chdir(ROOT)
        if prepare is not None:  # fault injection, in the child only
            prepare()
        from pipelines import cli

        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - report and exit like an uncaught error
        traceback.print_exc()
        code = 70
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def run_forked(target: Callable[..., None], *args: Any, timeout: float = 300) -> int:
    """``target(*args)`` in a child of the fork server; its exit code (-N: killed by signal N).

    For children that are not job runs (e.g. one DuckDB transaction killed mid-way);
    ``target`` must be a module-level function (it is pickled).
    """
    process = _forkserver().Process(target=target, args=args)
    process.start()
    process.join(timeout)
    if process.exitcode is None:
        process.kill()
        process.join()
        raise TimeoutError(f"{target.__name__} did not finish in {timeout}s")
    return process.exitcode


def start_run(
    site: Site,
    tag: str,
    log_level: str = "DEBUG",
    offline: bool = True,
    prepare: Callable[[], None] | None = None,
    **env: str,
) -> Run:
    """Fork a child (from the fork server) that runs ``refresh_all`` via the CLI.

    ``offline``: the child has no network (see :func:`_cut_network`); attempts are
    logged to ``logs/network_attempts.log``. ``prepare`` runs in the child first; it
    is pickled, so a module-level function or a ``functools.partial`` of one.
    """
    logs = site.root / "logs"
    logs.mkdir(exist_ok=True)
    out, err = logs / f"{tag}.out", logs / f"{tag}.err"
    argv = ["run", "--log-level", log_level]
    full_env = site.env(**env)
    out.touch()
    err.touch()
    process = _forkserver().Process(
        target=_child, args=(full_env, out, err, argv, offline, prepare), daemon=False
    )
    started = time.perf_counter()
    process.start()
    return Run(process.pid, out, err, started, process=process)


def run_to_end(
    site: Site,
    tag: str,
    timeout: float = 600,
    offline: bool = True,
    prepare: Callable[[], None] | None = None,
    **env: str,
) -> Run:
    run = start_run(site, tag, offline=offline, prepare=prepare, **env)
    run.wait(timeout)
    return run


def run_cli_subprocess(site: Site, *args: str, timeout: float = 600, **env: str):
    """``python -m pipelines.cli run`` in a fresh interpreter (slow; for exit-code checks)."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", *args],
        cwd=ROOT,
        env=site.env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------------- fingerprints


@contextlib.contextmanager
def open_warehouse(path: Path, read_only: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect(str(path), read_only=read_only)
    try:
        yield con
    finally:
        con.close()


def warehouse_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Published tables; a killed ingest's work tables are temp leftovers (``work_tables``)."""
    rows = con.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() WHERE schema_name IN "
        f"{WAREHOUSE_SCHEMAS} ORDER BY 1, 2"
    ).fetchall()
    work = set(work_tables(con))
    return [f"{s}.{t}" for s, t in rows if not (s == "staging" and t in work)]


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    schema, name = table.split(".", 1)
    rows = con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE schema_name = ? AND table_name = ? "
        "ORDER BY column_index",
        [schema, name],
    ).fetchall()
    skip = VOLATILE_COLUMNS | VOLATILE_BY_TABLE.get(table, set())
    return [r[0] for r in rows if r[0] not in skip]


def fingerprint(con: duckdb.DuckDBPyConnection, table: str) -> tuple[int, str]:
    """(rows, order-independent checksum of every row without run ids)."""
    cols = ", ".join(f'"{c}"' for c in _columns(con, table))
    schema, name = table.split(".", 1)
    rows, checksum = con.execute(
        f'SELECT count(*), coalesce(sum(hash({cols})::HUGEINT), 0)::VARCHAR FROM {schema}."{name}"'
    ).fetchall()[0]
    return rows, checksum


def fingerprints(path: Path) -> dict[str, tuple[int, str]]:
    """Fingerprint of every replaced table of a warehouse file (history tables excluded)."""
    with open_warehouse(path) as con:
        return {t: fingerprint(con, t) for t in warehouse_tables(con) if t not in HISTORY_TABLES}


def ordered_dump(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple]:
    """Every row of a table without run ids, sorted on all columns: a row-for-row dump."""
    cols = ", ".join(f'"{c}"' for c in _columns(con, table))
    schema, name = table.split(".", 1)
    return con.execute(f'SELECT {cols} FROM {schema}."{name}" ORDER BY ALL').fetchall()


PDF_DATES = re.compile(rb"/(?:CreationDate|ModDate) \(D:[0-9+\-Z']*\)")


def file_tree(folder: Path, strip: list[str] | None = None) -> dict[str, str]:
    """Relative path -> content hash of every file under ``folder``; ``strip`` removed first,
    and the creation and modification dates a PDF writer stamps in."""
    import hashlib

    out: dict[str, str] = {}
    if not folder.is_dir():
        return out
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for text in strip or []:
            data = data.replace(text.encode(), b"")
        if path.suffix == ".pdf":
            data = PDF_DATES.sub(b"", data)
        out[path.relative_to(folder).as_posix()] = hashlib.sha256(data).hexdigest()
    return out


def snapshot_of(site: Site) -> Path:
    """The published read-only copy of the site's warehouse (pipelines/snapshot.py default)."""
    return site.warehouse.with_name(f"{site.warehouse.stem}.snapshot.duckdb")


def copy_site_state(src: Site, dst: Site) -> None:
    """Copy warehouse (+WAL), reports and Dagster home of ``src`` over ``dst``."""
    for suffix in ("", ".wal"):
        s = Path(f"{src.warehouse}{suffix}")
        d = Path(f"{dst.warehouse}{suffix}")
        d.unlink(missing_ok=True)
        if s.is_file():
            shutil.copy2(s, d)
    snap_src, snap_dst = snapshot_of(src), snapshot_of(dst)
    snap_dst.unlink(missing_ok=True)
    if snap_src.is_file():
        shutil.copy2(snap_src, snap_dst)
    for a, b in ((src.reports, dst.reports), (src.home, dst.home)):
        shutil.rmtree(b, ignore_errors=True)
        if a.is_dir():
            shutil.copytree(a, b)


# --------------------------------------------------------------------------- shared clean runs

_SESSION_DIR: Path | None = None


def session_dir() -> Path:
    """A temp folder for this test session's shared clean runs (removed at exit)."""
    global _SESSION_DIR
    if _SESSION_DIR is None and os.environ.get("RELIABILITY_CACHE"):
        # Development aid: keep clean runs between pytest invocations.
        _SESSION_DIR = Path(os.environ["RELIABILITY_CACHE"])
        _SESSION_DIR.mkdir(parents=True, exist_ok=True)
    if _SESSION_DIR is None:
        import atexit
        import tempfile

        _SESSION_DIR = Path(tempfile.mkdtemp(prefix="reliability-"))
        atexit.register(shutil.rmtree, _SESSION_DIR, True)
    return _SESSION_DIR


@dataclass
class CleanRun:
    """A successful run on a fresh installation: the reference the other runs compare to."""

    site: Site
    run: Run
    run_id: str
    tables: dict[str, tuple[int, str]]
    seconds: float


_CLEAN: dict[tuple, CleanRun] = {}
# The two exports the kill and idempotence tests share (one clean run each per session).
SUITE_EPISODES = bound(500, 2000)


def clean_a() -> CleanRun:
    return clean_run("A", SUITE_EPISODES, seed=11, bad_rows=SUITE_EPISODES // 100)


def clean_b() -> CleanRun:
    """Export B also carries the hostile payloads (tests/test_fuzz.py checks what it published)."""
    return clean_run("B", SUITE_EPISODES, seed=12, bad_rows=SUITE_EPISODES // 50, hostile=True)


def run_id_of(run: Run) -> str | None:
    """The Dagster run id a child printed in its log lines."""
    m = re.search(r" - refresh_all - ([0-9a-f-]{36}) - ", run.stderr)
    return m[1] if m else None


def clean_run(
    name: str, episodes: int, seed: int, bad_rows: int = 0, hostile: bool = False
) -> CleanRun:
    """``refresh_all`` on fresh generated exports, once per test session and arguments."""
    key = (name, episodes, seed, bad_rows, hostile)
    if key not in _CLEAN:
        root = session_dir() / name
        exports = generated_exports(root / "exports", episodes, seed, bad_rows=bad_rows)
        if hostile:
            make_hostile(exports)
        stamp = root / "clean.json"
        if stamp.is_file() and os.environ.get("RELIABILITY_CACHE"):
            saved = json.loads(stamp.read_text())
            site = Site(root / "site", exports)
            run = Run(-1, Path(saved["out"]), Path(saved["err"]), 0.0, 0, steps=saved["steps"])
            tables = {t: tuple(v) for t, v in saved["tables"].items()}
            _CLEAN[key] = CleanRun(site, run, saved["run_id"], tables, saved["seconds"])  # type: ignore[arg-type]
            return _CLEAN[key]
        shutil.rmtree(root / "site", ignore_errors=True)
        site = Site(root / "site", exports)
        run = run_to_end(site, "clean")
        assert run.returncode == 0, run.stderr[-4000:]
        seconds = time.perf_counter() - run.started
        clean = CleanRun(site, run, run_id_of(run) or "", fingerprints(site.warehouse), seconds)
        stamp.write_text(
            json.dumps(
                {
                    "out": str(run.out),
                    "err": str(run.err),
                    "steps": run.steps,
                    "run_id": clean.run_id,
                    "tables": clean.tables,
                    "seconds": seconds,
                }
            )
        )
        _CLEAN[key] = clean
    return _CLEAN[key]


# --------------------------------------------------------------------------- published reports

RUN_ID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass
class ReportState:
    """What the reports folder holds: which run wrote each report, and what is broken."""

    versions: dict[str, set[str]]  # top-level entry -> run ids named by its HTML pages
    incomplete: list[str]  # HTML pages cut short (no closing </html>)
    leftovers: list[str]  # temp files/folders a killed writer left behind


def report_state(folder: Path) -> ReportState:
    versions: dict[str, set[str]] = {}
    incomplete: list[str] = []
    leftovers: list[str] = []
    if not folder.is_dir():
        return ReportState(versions, incomplete, leftovers)
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or ".tmp" in entry.name or ".old" in entry.name:
            leftovers.append(entry.name)
            continue
        pages = [entry] if entry.is_file() else sorted(entry.rglob("*.html"))
        ids: set[str] = set()
        for page in pages:
            if page.suffix != ".html":
                continue
            with page.open("rb") as fh:  # head and tail only: pages embed plotly.js
                head = fh.read(4096)
                fh.seek(max(0, page.stat().st_size - 8192))
                tail = fh.read()
            if not tail.rstrip().endswith(b"</html>"):
                incomplete.append(page.relative_to(folder).as_posix())
            ids |= {m.decode() for m in RUN_ID.findall(head + b" " + tail)}
        versions[entry.name] = ids
    return ReportState(versions, incomplete, leftovers)
