"""The main job end to end, as a user runs it: a subprocess with env vars only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.exports import base_tables, write_exports

ROOT = Path(__file__).resolve().parent.parent


def run_job(tmp_path: Path, exports: Path, **env: str) -> subprocess.CompletedProcess:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    full_env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "OUTCOMES_EXPORTS_DIR": str(exports),
        "OUTCOMES_WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
        "OUTCOMES_REPORTS_DIR": str(tmp_path / "reports"),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--log-level", "WARNING"],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def query(tmp_path: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("job")
    exports = write_exports(tmp_path / "exports", base_tables())
    result = run_job(tmp_path, exports)
    return tmp_path, exports, result


def test_job_builds_staging_and_marts_and_prints_a_summary(first_run):
    tmp_path, _, result = first_run
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "refresh_all succeeded" in out
    assert "staging.sessions" in out and "marts.episode_outcomes" in out
    assert "Quarantined rows: 0" in out
    assert "Data cut date (as of): 2026-01-12" in out
    assert query(tmp_path, "SELECT count(*) FROM staging.sessions") == [(3,)]
    # E1 has one PHQ-9 (16) and one GAD-7 (12): two unpaired outcome rows.
    assert query(
        tmp_path,
        "SELECT instrument, baseline_score, outcome_class FROM marts.episode_outcomes ORDER BY 1",
    ) == [("GAD-7", 12.0, "not_paired"), ("PHQ-9", 16.0, "not_paired")]


def test_blocking_check_keeps_previous_marts_and_names_the_check(first_run, tmp_path):
    run_dir, exports, _ = first_run
    for name in ("warehouse.duckdb", "dagster_home"):
        src = run_dir / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    tables = base_tables()
    tables["sessions"][1]["status"] = "Attended"  # 1 of 3 sessions: 33% > 5%
    bad = write_exports(tmp_path / "bad", tables)
    result = run_job(tmp_path, bad)
    assert result.returncode == 1
    assert "staging/sessions / max_rejected_share" in result.stderr
    assert "mostly bad_enum" in result.stderr
    # Staging and quarantine are this run's; marts stay as the previous run left them.
    assert query(tmp_path, "SELECT count(*) FROM staging.sessions") == [(2,)]
    assert query(tmp_path, "SELECT rule FROM quarantine.rejected_rows") == [("bad_enum",)]
    assert query(
        tmp_path,
        "SELECT count(*) FROM marts.episode_attendance WHERE episode_id = 'E1' AND attended = 2",
    ) == [(1,)]


def test_privacy_refusal_exits_non_zero_and_names_the_column(tmp_path):
    tables = base_tables()
    for row in tables["episodes"]:
        row["client_email"] = "someone@example.org"
    exports = write_exports(tmp_path / "exports", tables)
    result = run_job(tmp_path, exports)
    assert result.returncode == 1
    assert "client_email" in result.stderr
    assert "someone@example.org" not in result.stderr + result.stdout


def test_bad_config_is_a_clear_error(tmp_path):
    config = tmp_path / "outcomes.yaml"
    config.write_text("min_cel_size: 5\n")
    result = run_job(tmp_path, tmp_path, OUTCOMES_CONFIG=str(config))
    assert result.returncode == 2
    assert "unknown config keys ['min_cel_size']" in result.stderr
