"""Schedules and the exports sensor, evaluated with Dagster's test contexts."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from pipelines.schedules import build_schedules, month_just_closed
from pipelines.sensors import build_exports_sensor, fingerprint, scan
from schemas.settings import SettingsError

NO_CONFIG: dict[str, str] = {}  # no OUTCOMES_CONFIG: timezone UTC


def _schedules(env: dict[str, str]) -> dict[str, dg.ScheduleDefinition]:
    return {s.name: s for s in build_schedules(env)}


def _evaluate(schedule: dg.ScheduleDefinition, when: dt.datetime) -> dg.RunRequest:
    context = dg.build_schedule_context(scheduled_execution_time=when)
    data = schedule.evaluate_tick(context)
    assert data.skip_message is None
    assert len(data.run_requests) == 1
    return data.run_requests[0]


# --------------------------------------------------------------------------- schedules


def test_monthly_schedule_reports_the_month_just_closed() -> None:
    monthly = _schedules({"OUTCOMES_MONTHLY_DAY": "3", "OUTCOMES_MONTHLY_HOUR": "7"})[
        "monthly_qi_report"
    ]
    assert monthly.cron_schedule == "0 7 3 * *"
    assert monthly.execution_timezone == "UTC"
    assert monthly.job_name == "refresh_all"

    request = _evaluate(monthly, dt.datetime(2026, 7, 3, 7, tzinfo=dt.UTC))
    # July 3rd closes June: report month 2026-06, data cut on its last day, the 30th.
    assert request.run_key == "monthly-2026-06"
    assert request.tags["outcomes/report_month"] == "2026-06"
    assert request.tags["outcomes/trigger"] == "monthly_qi_report"
    assert request.run_config == {
        "ops": {"reports": {"config": {"period": "2026-06"}}},
        "resources": {"outcomes": {"config": {"as_of": "2026-06-30"}}},
    }

    january = _evaluate(monthly, dt.datetime(2027, 1, 3, 7, tzinfo=dt.UTC))
    assert january.run_key == "monthly-2026-12"  # across the year boundary
    assert january.run_config["resources"]["outcomes"]["config"]["as_of"] == "2026-12-31"


def test_monthly_run_config_is_valid_for_refresh_all() -> None:
    from pipelines.definitions import defs

    job = defs.resolve_job_def("refresh_all")
    monthly = _schedules(NO_CONFIG)["monthly_qi_report"]
    request = _evaluate(monthly, dt.datetime(2026, 3, 2, 6, tzinfo=dt.UTC))
    dg.validate_run_config(job, request.run_config)  # raises on a bad key


def test_monthly_schedule_data_cut_from_the_data() -> None:
    monthly = _schedules({"OUTCOMES_MONTHLY_AS_OF": "data"})["monthly_qi_report"]
    request = _evaluate(monthly, dt.datetime(2026, 3, 2, 6, tzinfo=dt.UTC))
    assert request.run_key == "monthly-2026-02"
    assert request.run_config == {"ops": {"reports": {"config": {"period": "2026-02"}}}}


def test_schedules_run_in_the_clinic_time_zone(tmp_path: Path) -> None:
    config = tmp_path / "outcomes.yaml"
    config.write_text("timezone: Europe/Berlin\n", encoding="utf-8")
    schedules = _schedules({"OUTCOMES_CONFIG": str(config), "OUTCOMES_MONTHLY_HOUR": "0"})
    assert {s.execution_timezone for s in schedules.values()} == {"Europe/Berlin"}
    # 2026-06-30 22:30 UTC is 2026-07-01 00:30 in Berlin (CEST, UTC+2): June has closed there.
    moment = dt.datetime(2026, 6, 30, 22, 30, tzinfo=dt.UTC)
    assert month_just_closed(moment, "Europe/Berlin") == ("2026-06", dt.date(2026, 6, 30))
    assert month_just_closed(moment, "UTC") == ("2026-05", dt.date(2026, 5, 31))
    request = _evaluate(schedules["monthly_qi_report"], moment.astimezone(ZoneInfo("UTC")))
    assert request.run_key == "monthly-2026-06"


def test_default_states_monthly_on_nightly_off_and_env_overrides() -> None:
    defaults = _schedules(NO_CONFIG)
    assert defaults["monthly_qi_report"].default_status == dg.DefaultScheduleStatus.RUNNING
    assert defaults["nightly_refresh"].default_status == dg.DefaultScheduleStatus.STOPPED
    assert defaults["monthly_qi_report"].cron_schedule == "0 6 2 * *"
    assert defaults["nightly_refresh"].cron_schedule == "0 2 * * *"

    flipped = _schedules(
        {
            "OUTCOMES_MONTHLY_SCHEDULE": "off",
            "OUTCOMES_NIGHTLY_SCHEDULE": "on",
            "OUTCOMES_NIGHTLY_HOUR": "23",
        }
    )
    assert flipped["monthly_qi_report"].default_status == dg.DefaultScheduleStatus.STOPPED
    assert flipped["nightly_refresh"].default_status == dg.DefaultScheduleStatus.RUNNING
    assert flipped["nightly_refresh"].cron_schedule == "0 23 * * *"


def test_nightly_schedule_one_run_per_night() -> None:
    nightly = _schedules(NO_CONFIG)["nightly_refresh"]
    request = _evaluate(nightly, dt.datetime(2026, 11, 5, 2, tzinfo=dt.UTC))
    assert request.run_key == "nightly-2026-11-05"
    assert request.tags["outcomes/trigger"] == "nightly_refresh"


@pytest.mark.parametrize(
    "env",
    [
        {"OUTCOMES_MONTHLY_DAY": "29"},  # not every month has it
        {"OUTCOMES_MONTHLY_HOUR": "24"},
        {"OUTCOMES_MONTHLY_HOUR": "six"},
        {"OUTCOMES_NIGHTLY_SCHEDULE": "maybe"},
        {"OUTCOMES_MONTHLY_AS_OF": "yesterday"},
    ],
)
def test_bad_schedule_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match=next(iter(env))):
        build_schedules(env)


def test_definitions_carry_the_schedules_and_the_sensor() -> None:
    from pipelines.definitions import defs

    for name in ("monthly_qi_report", "nightly_refresh"):
        assert defs.resolve_schedule_def(name).job_name == "refresh_all"
    sensor = defs.resolve_sensor_def("exports_sensor")
    assert sensor.job_name == "refresh_all"
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED


# --------------------------------------------------------------------------- exports sensor

SETTLE = 60


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _age(root: Path, seconds: float) -> None:
    """Backdate every file and folder under root (the copy finished ``seconds`` ago)."""
    past = time.time() - seconds
    for folder, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.utime(Path(folder) / name, (past, past))
    os.utime(root, (past, past))


class Looker:
    """Evaluates the sensor tick after tick, carrying the cursor like the daemon does."""

    def __init__(self, root: Path) -> None:
        self.sensor = build_exports_sensor(root, settle_seconds=SETTLE, interval_seconds=30)
        self.cursor: str | None = None

    def look(self):
        data = self.sensor.evaluate_tick(dg.build_sensor_context(cursor=self.cursor))
        self.cursor = data.cursor
        return data


def test_new_files_give_one_run_once_settled(tmp_path: Path) -> None:
    root = tmp_path / "exports"
    for table in ("episodes", "sessions", "assessments"):
        _write(root / f"{table}.csv", f"{table}_id\nX1\n")
    _age(root, 3600)
    looker = Looker(root)

    first = looker.look()  # a first look cannot tell whether the copy is finished
    assert first.run_requests == []
    assert "waiting" in first.skip_message and "3 changed" in first.skip_message

    second = looker.look()  # same state twice, nothing modified for an hour: one run
    assert second.skip_message is None
    assert len(second.run_requests) == 1  # one run for the whole drop, not one per file
    request = second.run_requests[0]
    assert request.run_key == "exports-" + fingerprint(scan(root).files)[:16]
    assert request.tags["outcomes/trigger"] == "exports_sensor"

    third = looker.look()
    assert third.run_requests == []
    assert "no new or changed export files" in third.skip_message
    assert json.loads(third.cursor)["seen"] == json.loads(second.cursor)["seen"]


def test_unchanged_folder_skips(tmp_path: Path) -> None:
    root = tmp_path / "exports"
    _write(root / "episodes.csv", "episode_id\nE1\n")
    _age(root, 3600)
    looker = Looker(root)
    looker.look()
    assert len(looker.look().run_requests) == 1
    for _ in range(3):
        data = looker.look()
        assert data.run_requests == []
        assert data.skip_message.startswith("no new or changed export files")


def test_half_written_and_hidden_files_are_ignored(tmp_path: Path) -> None:
    root = tmp_path / "exports"
    _write(root / "episodes.csv.part", "episode_id\nE1\n")
    _write(root / "sessions.tmp", "session_id\n")
    _write(root / ".assessments.csv", "assessment_id\n")
    _write(root / ".sync" / "episodes.csv", "episode_id\n")  # hidden folder
    _write(root / "sessions" / "2026-10.csv.tmp", "session_id\n")
    _age(root, 3600)
    looker = Looker(root)
    for _ in range(2):
        data = looker.look()
        assert data.run_requests == []
        assert data.skip_message.startswith("no export files")

    # The copy finishes: the .part file is renamed to its real name.
    (root / "episodes.csv.part").rename(root / "episodes.csv")
    _age(root, 3600)
    looker.look()
    data = looker.look()
    assert len(data.run_requests) == 1
    assert set(json.loads(data.cursor)["seen"]) == {"episodes.csv"}


def test_a_file_still_growing_waits(tmp_path: Path) -> None:
    root = tmp_path / "exports"
    _write(root / "episodes.csv", "episode_id\nE1\n")  # mtime: just now
    looker = Looker(root)
    looker.look()
    data = looker.look()  # same size and mtime twice, but written seconds ago
    assert data.run_requests == []
    assert "quiet for 60s" in data.skip_message

    _age(root, SETTLE + 5)
    looker.look()  # the mtime moved (backdated): one more look to confirm
    assert len(looker.look().run_requests) == 1


def test_a_file_that_changes_between_two_looks_waits(tmp_path: Path) -> None:
    root = tmp_path / "exports"
    path = _write(root / "sessions.csv", "session_id\nS1\n")
    _age(root, 3600)
    looker = Looker(root)
    looker.look()
    # A copier that keeps the source mtime: the size grows but the mtime stays old.
    with path.open("a", encoding="utf-8") as handle:
        handle.write("S2\n")
    _age(root, 3600)
    data = looker.look()
    assert data.run_requests == []
    assert "unchanged between two looks" in data.skip_message
    assert len(looker.look().run_requests) == 1


def test_changed_and_removed_files_trigger_a_new_run(tmp_path: Path) -> None:
    root = tmp_path / "exports"
    _write(root / "episodes.csv", "episode_id\nE1\n")
    _write(root / "sessions" / "2026-09.csv", "session_id\nS1\n")
    _age(root, 3600)
    looker = Looker(root)
    looker.look()
    first_key = looker.look().run_requests[0].run_key

    _write(root / "sessions" / "2026-10.csv", "session_id\nS2\n")  # the next monthly drop
    _age(root, 3600)
    assert looker.look().run_requests == []
    second = looker.look().run_requests
    assert len(second) == 1 and second[0].run_key != first_key

    (root / "sessions" / "2026-09.csv").unlink()
    _age(root, 3600)
    waiting = looker.look()
    assert "sessions/2026-09.csv (removed)" in waiting.skip_message
    third = looker.look().run_requests
    assert len(third) == 1 and third[0].run_key not in (first_key, second[0].run_key)


def test_missing_folder_and_unreadable_cursor(tmp_path: Path) -> None:
    looker = Looker(tmp_path / "nowhere")
    data = looker.look()
    assert data.run_requests == [] and "does not exist" in data.skip_message

    root = tmp_path / "exports"
    _write(root / "episodes.csv", "episode_id\nE1\n")
    _age(root, 3600)
    looker = Looker(root)
    looker.cursor = "{not json"
    looker.look()  # treated as a first look
    assert len(looker.look().run_requests) == 1
