"""Schedules of ``refresh_all``: a monthly run for the QI report, an optional nightly run.

The monthly run sets the QI report's reporting month (op config ``period`` of
``reports/qi_report``) to the month just closed, in clinic time, and by default
cuts the data at that month's last day (resource config ``as_of``), so that
re-running a month gives the report the committee saw.

Both run in the clinic time zone (config key ``timezone``) and can be switched on
and off in the Dagster UI (Automation); the daemon that ``dagster dev`` starts
runs them. Defaults and the env vars that change them:

- ``OUTCOMES_MONTHLY_DAY`` (default ``2``): day of the month of the monthly run, 1-28;
- ``OUTCOMES_MONTHLY_HOUR`` (``6``): its hour, 0-23, clinic time;
- ``OUTCOMES_MONTHLY_SCHEDULE`` (``on``): initial state of ``monthly_qi_report``;
- ``OUTCOMES_MONTHLY_AS_OF`` (``month_end``): data cut of the monthly run, the last
  day of the month just closed (``month_end``) or the latest date in the data
  (``data``);
- ``OUTCOMES_NIGHTLY_HOUR`` (``2``): hour of the nightly run;
- ``OUTCOMES_NIGHTLY_SCHEDULE`` (``off``): initial state of ``nightly_refresh``.

The state set in the UI wins over these defaults once it has been toggled there.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from zoneinfo import ZoneInfo

import dagster as dg

from schemas.settings import SettingsError, load_settings

JOB_NAME = "refresh_all"
TRIGGER_TAG = "outcomes/trigger"
REPORT_MONTH_TAG = "outcomes/report_month"
AS_OF_MODES = ("month_end", "data")
QI_REPORT_OP = "reports"  # the step of assets reports/qi_report and reports/clinician_caseload


def int_env(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise SettingsError(f"{name}={text!r} is not a whole number") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}={value} must be between {low} and {high}")
    return value


def default_status(
    env: Mapping[str, str], name: str, default: dg.DefaultScheduleStatus
) -> dg.DefaultScheduleStatus:
    """``on``/``off`` from env var ``name`` (also true/false, 1/0, running/stopped)."""
    text = env.get(name, "").strip().lower()
    if not text:
        return default
    if text in ("on", "true", "1", "yes", "running"):
        return dg.DefaultScheduleStatus.RUNNING
    if text in ("off", "false", "0", "no", "stopped"):
        return dg.DefaultScheduleStatus.STOPPED
    raise SettingsError(f"{name}={text!r}: use on or off")


def month_just_closed(
    moment: dt.datetime | dt.date, timezone: str | None = None
) -> tuple[str, dt.date]:
    """(``YYYY-MM``, last day) of the month before the one ``moment`` falls in (clinic time)."""
    if isinstance(moment, dt.datetime):
        if timezone and moment.tzinfo is not None:
            moment = moment.astimezone(ZoneInfo(timezone))
        moment = moment.date()
    first = moment.replace(day=1)
    last = first - dt.timedelta(days=1)
    return f"{last:%Y-%m}", last


def build_schedules(env: Mapping[str, str] | None = None) -> list[dg.ScheduleDefinition]:
    """The monthly and nightly schedules, configured from ``env`` (default: os.environ)."""
    env = os.environ if env is None else env
    timezone = load_settings(dict(env)).timezone
    day = int_env(env, "OUTCOMES_MONTHLY_DAY", 2, 1, 28)
    hour = int_env(env, "OUTCOMES_MONTHLY_HOUR", 6, 0, 23)
    nightly_hour = int_env(env, "OUTCOMES_NIGHTLY_HOUR", 2, 0, 23)
    as_of_mode = env.get("OUTCOMES_MONTHLY_AS_OF", "").strip() or "month_end"
    if as_of_mode not in AS_OF_MODES:
        raise SettingsError(f"OUTCOMES_MONTHLY_AS_OF={as_of_mode!r}: use one of {AS_OF_MODES}")

    @dg.schedule(
        name="monthly_qi_report",
        job_name=JOB_NAME,
        cron_schedule=f"0 {hour} {day} * *",
        execution_timezone=timezone,
        default_status=default_status(
            env, "OUTCOMES_MONTHLY_SCHEDULE", dg.DefaultScheduleStatus.RUNNING
        ),
        description=(
            f"Refresh everything on day {day} at {hour:02d}:00 ({timezone}) and write the QI "
            "report for the month just closed"
            + (", data cut at that month's last day." if as_of_mode == "month_end" else ".")
        ),
    )
    def monthly_qi_report(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        moment = context.scheduled_execution_time or dt.datetime.now(ZoneInfo(timezone))
        month, last_day = month_just_closed(moment, timezone)
        run_config: dict[str, object] = {"ops": {QI_REPORT_OP: {"config": {"period": month}}}}
        if as_of_mode == "month_end":
            run_config["resources"] = {"outcomes": {"config": {"as_of": last_day.isoformat()}}}
        return dg.RunRequest(
            run_key=f"monthly-{month}",
            run_config=run_config,
            tags={TRIGGER_TAG: "monthly_qi_report", REPORT_MONTH_TAG: month},
        )

    @dg.schedule(
        name="nightly_refresh",
        job_name=JOB_NAME,
        cron_schedule=f"0 {nightly_hour} * * *",
        execution_timezone=timezone,
        default_status=default_status(
            env, "OUTCOMES_NIGHTLY_SCHEDULE", dg.DefaultScheduleStatus.STOPPED
        ),
        description=(
            f"Refresh everything every night at {nightly_hour:02d}:00 ({timezone}); off by "
            "default (the exports sensor refreshes when new files arrive)."
        ),
    )
    def nightly_refresh(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        night = context.scheduled_execution_time
        if night is not None and night.tzinfo is not None:
            night = night.astimezone(ZoneInfo(timezone))
        return dg.RunRequest(
            run_key=f"nightly-{night:%Y-%m-%d}" if night else None,
            tags={TRIGGER_TAG: "nightly_refresh"},
        )

    return [monthly_qi_report, nightly_refresh]
