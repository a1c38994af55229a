"""Faults outside the data: a full disk, a read-only or impossible reports folder or warehouse.

Each run starts from the previous successful run's warehouse, reports and
Dagster home. It must fail with a clear error (exit code 1, the failure summary
names the path or the OS reason, no Python traceback in it) and leave the
previous outputs as they were; after the fault is gone the next run succeeds.

How the faults are made (the suite runs as root in the dev container, where
chmod does not bite):

- "parent is a file": the folder or warehouse path lies under a regular file,
  so nothing can be created there (portable, always runs);
- read-only: a read-only bind mount of the folder (root with mount rights), or
  chmod 555 when not root; skipped when neither is possible;
- disk full: a small tmpfs mounted on the folder, sized to what the previous
  outputs need plus a little (root with mount rights), else skipped; for the
  reports also in-process, portable: every write under the reports folder
  raises ENOSPC in the run's process (injected in the forked child).

CI runs the ENOSPC reports run and the two warehouse faults; RELIABILITY_FULL=1
(benchmarks/reliability.py) runs every scenario.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability import (
    FULL,
    Run,
    Site,
    clean_a,
    copy_site_state,
    file_tree,
    fingerprints,
    record,
    run_to_end,
)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="job runs need os.fork")
RESULTS: dict[str, str] = {}
# CI runs one fault per output (each reports fault costs a whole run); the full run all.
full_only = pytest.mark.skipif(not FULL, reason="RELIABILITY_FULL=1 (benchmarks/reliability.py)")


def _mount(*args: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[str]:
    """``folder`` cannot be written while inside the block; yields how it was done."""
    if _mount("--bind", str(folder), str(folder)):
        try:
            if _mount("-o", "remount,bind,ro", str(folder)):
                yield "read-only bind mount"
            else:
                pytest.skip("cannot remount read-only")
        finally:
            subprocess.run(["umount", str(folder)], check=True)
        return
    if os.geteuid() == 0:
        pytest.skip("running as root without mount rights: cannot make a read-only folder")
    mode = folder.stat().st_mode
    folder.chmod(0o555)
    try:
        yield "chmod 555"
    finally:
        folder.chmod(mode)


@contextlib.contextmanager
def small_disk(folder: Path, size: int) -> Iterator[None]:
    """A tmpfs of ``size`` bytes mounted on ``folder``, holding what ``folder`` held."""
    saved = folder.with_name(folder.name + ".saved")
    shutil.copytree(folder, saved) if folder.is_dir() else None
    folder.mkdir(parents=True, exist_ok=True)
    if not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)):
        shutil.rmtree(saved, ignore_errors=True)
        pytest.skip("no mount rights: cannot make a small disk")
    try:
        if saved.is_dir():
            shutil.copytree(saved, folder, dirs_exist_ok=True)
        yield
    finally:
        kept = folder.with_name(folder.name + ".kept")
        shutil.copytree(folder, kept)
        subprocess.run(["umount", str(folder)], check=True)
        shutil.rmtree(folder)
        kept.rename(folder)
        shutil.rmtree(saved, ignore_errors=True)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _previous(tmp_path: Path) -> tuple[Site, dict]:
    previous = clean_a()
    site = Site(tmp_path / "site", previous.site.exports)
    copy_site_state(previous.site, site)
    return site, previous.tables


def _own_folder(site: Site, folder: Path) -> Path:
    """Move the warehouse and its snapshot into a folder of their own (to mount over it)."""
    folder.mkdir()
    for path in site.root.glob("warehouse*"):
        shutil.move(path, folder / path.name)
    return folder


def _summary(run: Run) -> str:
    """The failure summary the CLI prints at the end (what a user reads)."""
    text = run.stderr
    at = text.rfind("refresh_all FAILED")
    assert at >= 0, f"no failure summary:\n{text[-3000:]}"
    return text[at:]


def assert_clear_failure(run: Run, *expected: str) -> str:
    assert run.returncode == 1, f"expected a clean failure (1), got {run.returncode}"
    summary = _summary(run)
    assert "Traceback" not in summary, summary
    assert any(e in summary for e in expected), f"summary names none of {expected}:\n{summary}"
    return summary


# --------------------------------------------------------------------------- reports folder


@full_only
def test_reports_folder_under_a_file(tmp_path):
    site, tables = _previous(tmp_path)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the reports folder's parent should be\n")
    run = run_to_end(site, "reports_under_file", OUTCOMES_REPORTS_DIR=str(blocker / "reports"))
    summary = assert_clear_failure(run, str(blocker), "Not a directory")
    assert fingerprints(site.warehouse) == tables  # same exports: marts as before
    RESULTS["reports folder under a file"] = summary.splitlines()[1].strip()


@full_only
def test_read_only_reports_folder_keeps_the_previous_reports(tmp_path):
    site, _ = _previous(tmp_path)
    before = file_tree(site.reports)
    with read_only(site.reports) as how:
        run = run_to_end(site, "reports_read_only")
    summary = assert_clear_failure(run, "Read-only file system", "Permission denied")
    assert file_tree(site.reports) == before
    RESULTS[f"read-only reports folder ({how})"] = summary.splitlines()[1].strip()


def _enospc_under(folder: str) -> None:
    """In the run's process: every write under ``folder`` fails as on a full disk."""
    import builtins
    import io
    import pathlib

    real_open = builtins.open

    def full(path: object) -> bool:
        return isinstance(path, str | os.PathLike) and os.fspath(path).startswith(folder)

    def guarded_open(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        if full(file) and any(m in mode for m in "wax+"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(file))
        return real_open(file, mode, *args, **kwargs)

    builtins.open = guarded_open
    io.open = guarded_open
    pathlib.Path.write_text = lambda self, *a, **k: guarded_open(self, "w").close()  # type: ignore[method-assign]
    pathlib.Path.write_bytes = lambda self, *a, **k: guarded_open(self, "wb").close()  # type: ignore[method-assign]


def test_disk_full_while_writing_reports_keeps_the_previous_reports(tmp_path):
    """Portable: ENOSPC injected into every write under the reports folder."""
    site, _ = _previous(tmp_path)
    before = file_tree(site.reports)
    folder = str(site.reports)
    run = run_to_end(site, "reports_enospc", prepare=functools.partial(_enospc_under, folder))
    summary = assert_clear_failure(run, "No space left on device")
    assert file_tree(site.reports) == before
    assert not [p for p in site.reports.iterdir() if p.name.startswith(".")], "temp files left"
    RESULTS["disk full under the reports folder (ENOSPC injected)"] = summary.splitlines()[
        1
    ].strip()


@full_only
def test_small_disk_for_reports_keeps_the_previous_reports(tmp_path):
    site, _ = _previous(tmp_path)
    before = file_tree(site.reports)
    with small_disk(site.reports, _du(site.reports) + 256 * 1024):
        run = run_to_end(site, "reports_tmpfs")
        summary = assert_clear_failure(run, "No space left on device")
    assert file_tree(site.reports) == before
    RESULTS["full tmpfs under the reports folder"] = summary.splitlines()[1].strip()


# --------------------------------------------------------------------------- warehouse


def test_warehouse_under_a_file(tmp_path):
    site, _ = _previous(tmp_path)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x\n")
    run = run_to_end(site, "warehouse_under_file", OUTCOMES_WAREHOUSE=str(blocker / "w.duckdb"))
    summary = assert_clear_failure(run, str(blocker))
    RESULTS["warehouse under a file"] = summary.splitlines()[1].strip()


def test_read_only_warehouse_is_left_as_it_was(tmp_path):
    site, tables = _previous(tmp_path)
    folder = _own_folder(site, tmp_path / "wh")
    warehouse = folder / "warehouse.duckdb"
    with read_only(folder) as how:
        run = run_to_end(site, "warehouse_read_only", OUTCOMES_WAREHOUSE=str(warehouse))
        summary = assert_clear_failure(
            run, "Read-only file system", "Permission denied", "read-only"
        )
    assert fingerprints(warehouse) == tables
    RESULTS[f"read-only warehouse ({how})"] = summary.splitlines()[1].strip()


@full_only
def test_disk_full_under_the_warehouse_then_recovery(tmp_path):
    """Ingest of a new export on a disk with no room: previous warehouse intact; with
    room again, the next run succeeds."""
    from tests.reliability import clean_b

    site, tables = _previous(tmp_path)
    folder = _own_folder(site, tmp_path / "wh")
    warehouse = folder / "warehouse.duckdb"
    other = clean_b()
    env = {"OUTCOMES_WAREHOUSE": str(warehouse), "OUTCOMES_EXPORTS_DIR": str(other.site.exports)}
    with small_disk(folder, _du(folder) + 2 * 1024 * 1024):
        run = run_to_end(site, "warehouse_tmpfs", **env)
        summary = assert_clear_failure(run, "No space left on device", "out of disk", "space")
        assert fingerprints(warehouse) == tables
        assert fingerprints(folder / "warehouse.snapshot.duckdb") == tables
    after = run_to_end(site, "warehouse_after_disk_full", **env)
    assert after.returncode == 0, after.stderr[-3000:]
    assert fingerprints(warehouse) == other.tables
    RESULTS["full tmpfs under the warehouse"] = summary.splitlines()[1].strip()


def test_record_fault_figures():
    record("faults", {"scenarios": RESULTS})
