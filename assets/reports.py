"""Report assets: the service QI report and the clinician caseload pages.

Flow (DESIGN.md): query the marts -> one frame per report section holding every
cell any page will show (the whole service, each clinic, and the totals that
link them) -> ``assets.suppression.suppress`` once per section -> slice per
page -> figures from ``assets.figures`` -> self-contained HTML under
``settings.reports_dir`` (plotly.js embedded once per page, no network).

A section appears only when the marts it reads exist in the warehouse; until
then the page says "not available" and names them. Definitions of every number
are in METRICS.md / docs/metrics*.md; what each section shows is in
docs/reports.md.
"""

import calendar
import contextlib
import datetime as dt
import functools
import gc
import html
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline
from plotly.utils import PlotlyJSONEncoder
from pydantic import Field

from assets import figures
from assets.alliance import SRS
from assets.background import in_background
from assets.service_kpis import PAIR_LABEL, PAIRED_SHARE_AIM, SERVICE_KEY, asset_keys
from assets.sql_runner import load_sql
from assets.suppression import (
    SUPPRESSED,
    Additive,
    CellSpec,
    Cumulative,
    suppress,
    suppressed_cells,
    write_csv,
)
from pipelines.resources import WAREHOUSE_POOL, OutcomesResource
from schemas.settings import Settings

GROUP = "reports"
TEMPLATES = Path(__file__).resolve().parent / "report_templates"
QI_DIR = "qi_report"
# Sorts after qi_report so that `./dev run`'s list of report paths starts with the QI pages.
CASELOAD_DIR = "therapist_caseload"
ALL = "__all__"  # the total row of a breakdown (months -> window, bands -> all)
TREND_MONTHS = 12
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------
# reporting period


@dataclass(frozen=True)
class Period:
    """The reporting month, the month before it and the trailing trend window."""

    month: dt.date  # first day of the reporting month
    as_of: dt.date

    @property
    def month_end(self) -> dt.date:
        return self.month.replace(day=calendar.monthrange(self.month.year, self.month.month)[1])

    @property
    def previous(self) -> dt.date:
        return add_months(self.month, -1)

    @property
    def window_start(self) -> dt.date:
        return add_months(self.month, -(TREND_MONTHS - 1))

    def label(self, month: dt.date | None = None) -> str:
        return (month or self.month).strftime("%B %Y")

    def window_label(self) -> str:
        return f"{self.window_start:%b %Y} to {self.month:%b %Y}"


def add_months(day: dt.date, months: int) -> dt.date:
    index = day.year * 12 + day.month - 1 + months
    return dt.date(index // 12, index % 12 + 1, 1)


def reporting_period(as_of: dt.date, month: str | dt.date | None = None) -> Period:
    """Default: the last full calendar month up to the data cut date.

    A month is full when its last day is on or before as-of: as-of 2026-06-30
    reports June 2026, as-of 2026-06-29 reports May 2026. ``month`` ('YYYY-MM'
    or a date) overrides it.
    """
    if month:
        if isinstance(month, str):
            try:
                year, mon = (int(p) for p in month.strip()[:7].split("-"))
                chosen = dt.date(year, mon, 1)
            except ValueError as exc:
                raise ValueError(f"reporting period {month!r} is not YYYY-MM") from exc
        else:
            chosen = month.replace(day=1)
        return Period(chosen, as_of)
    first = as_of.replace(day=1)
    last_day = calendar.monthrange(as_of.year, as_of.month)[1]
    return Period(first if as_of.day == last_day else add_months(first, -1), as_of)


# --------------------------------------------------------------------------
# reading the warehouse


def existing_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    """``schema.table`` of every table and view (information_schema)."""
    rows = con.execute("SELECT table_schema, table_name FROM information_schema.tables").fetchall()
    return {f"{s}.{t}" for s, t in rows}


def _df(con: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any] | None = None):
    used = {k: v for k, v in (params or {}).items() if f"${k}" in sql}
    return con.execute(sql, used).df() if used else con.execute(sql).df()


def _nulls(frame: pd.DataFrame) -> pd.DataFrame:
    """NaN -> None in object columns, so that 'missing' is one thing."""
    return frame.astype(object).where(frame.notna(), None)


@dataclass
class Section:
    """One report section's published (suppressed) frame, or why it is absent."""

    name: str
    frame: pd.DataFrame | None = None
    missing: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.frame is not None

    def status(self) -> str:
        if self.frame is None:
            return "not available (missing " + ", ".join(self.missing) + ")"
        return f"{len(self.frame)} cells, {int(self.frame[SUPPRESSED].sum())} suppressed"


def _needs(tables: set[str], *names: str) -> list[str]:
    return [n for n in names if n not in tables]


def with_rate_counts(frame: pd.DataFrame, is_rate: pd.Series | None = None) -> pd.DataFrame:
    """Add the two counts a published rate gives away: ``events`` (numerator) and
    ``non_events`` (denominator - numerator), for the small-count rule; NULL where the
    row is not a rate (a mean, a median)."""
    num = pd.to_numeric(frame["numerator"], errors="coerce")
    den = pd.to_numeric(frame["denominator"], errors="coerce")
    rate = pd.Series(True, index=frame.index) if is_rate is None else is_rate.astype(bool)
    rate &= num.notna() & den.notna()
    return frame.assign(
        events=num.where(rate).astype(object).where(rate, None),
        non_events=(den - num).where(rate).astype(object).where(rate, None),
    )


# --------------------------------------------------------------------------
# section frames: what is published, and the equations between cells

# (kpi, instrument) of the monthly KPI cells; '' = not about one instrument.
TREND_KPIS: tuple[tuple[str, str], ...] = (
    ("attendance_rate", ""),
    ("dna_rate", ""),
    ("dropout_rate", ""),
    ("early_dropout_rate", ""),
    ("recovery_rate", PAIR_LABEL),
    ("reliable_recovery_rate", PAIR_LABEL),
    ("reliable_improvement_rate", PAIR_LABEL),
    ("reliable_deterioration_rate", PAIR_LABEL),
    ("paired_share_finished", PAIR_LABEL),
    ("paired_share_finished", ""),
    ("sessions_with_symptom_measure", ""),
    ("sessions_with_alliance_measure", ""),
    ("median_days_between_measures", ""),
)
NOT_RATES = ("median_days_between_measures",)
EQUITY_KPIS: tuple[tuple[str, str], ...] = (
    ("dropout_rate", ""),
    ("recovery_rate", PAIR_LABEL),
    ("reliable_improvement_rate", PAIR_LABEL),
    ("reliable_deterioration_rate", PAIR_LABEL),
)
KPI_LABELS = {
    "attendance_rate": "Attendance",
    "dna_rate": "Did not attend (DNA)",
    "dropout_rate": "Dropout",
    "early_dropout_rate": "Early dropout",
    "recovery_rate": "Recovery",
    "reliable_recovery_rate": "Reliable recovery",
    "reliable_improvement_rate": "Reliable improvement",
    "reliable_deterioration_rate": "Reliable deterioration",
    "paired_share_finished": "Paired scores (finished episodes)",
    "sessions_with_symptom_measure": "Sessions with a symptom measure",
    "sessions_with_alliance_measure": "Sessions with an alliance measure",
    "median_days_between_measures": "Median days between measures",
    "mean_srs": "Mean SRS",
    "low_alliance_share": "Low-alliance ratings (SRS)",
}

RATE_COUNTS = ("events", "non_events")
# Rates over one denominator (same clinic, instrument, breakdown, band and period).
# Published together they give away a third count: the denominator less both
# numerators (disjoint events: late cancellations; neither improved nor
# deteriorated) or the difference of the numerators (nested: recovered but not
# reliably). That count is a small count too, and the pair is suppressed together.
SIBLING_RATES = {
    "attendance_rate": ("attendance", "disjoint"),
    "dna_rate": ("attendance", "disjoint"),
    "reliable_improvement_rate": ("reliable_change", "disjoint"),
    "reliable_deterioration_rate": ("reliable_change", "disjoint"),
    "recovery_rate": ("recovery", "nested"),
    "reliable_recovery_rate": ("recovery", "nested"),
}
SIBLING_COUNTS = ("sibling_rest",)


def with_sibling_counts(cells: pd.DataFrame) -> pd.DataFrame:
    """Add ``siblings`` (the key shared by rates over one denominator) and
    ``sibling_rest`` (the count the pair gives away, see SIBLING_RATES)."""
    cells = cells.copy()
    group = cells["kpi"].map(lambda k: SIBLING_RATES.get(k, (None, None))[0])
    unit = ["clinic_id", "instrument", "breakdown", "band", "period"]
    cells["siblings"] = [
        None if g is None else "|".join(map(str, [*u, g]))
        for g, u in zip(group, cells[unit].itertuples(index=False, name=None), strict=True)
    ]
    cells["sibling_rest"] = None
    num = pd.to_numeric(cells["numerator"], errors="coerce")
    den = pd.to_numeric(cells["denominator"], errors="coerce")
    for _, rows in cells[cells["siblings"].notna()].groupby("siblings").groups.items():
        if len(rows) != 2 or num[rows].isna().any() or den[rows].nunique() != 1:
            continue
        kind = SIBLING_RATES[cells.at[rows[0], "kpi"]][1]
        a, b = num[rows[0]], num[rows[1]]
        rest = den[rows[0]] - a - b if kind == "disjoint" else abs(a - b)
        cells.loc[rows, "sibling_rest"] = rest
    return cells


KPI_SPEC = CellSpec(
    keys=("clinic_id", "kpi", "instrument", "breakdown", "band", "period", "quantity"),
    small_counts=RATE_COUNTS + SIBLING_COUNTS,
    additive=(
        # clinics add up to the service
        Additive(
            by=("kpi", "instrument", "breakdown", "band"), over="clinic_id", total=SERVICE_KEY
        ),
        # months add up to the 12-month window; age bands and genders too
        Additive(by=("clinic_id", "kpi", "instrument", "breakdown"), over="band", total=ALL),
    ),
    same_as="quantity",  # the window total is shown in each breakdown
    linked=("siblings",),
    rounded=("numerator", "denominator", "n_clients", "n_episodes"),
    private=RATE_COUNTS + SIBLING_COUNTS + ("siblings",),
)

KPI_MONTHS_SQL = """
SELECT clinic_id, kpi, coalesce(instrument, '') AS instrument,
       'month' AS breakdown, strftime(period_start, '%Y-%m') AS band, period_start AS period,
       numerator, denominator, value, n_clients, n_episodes, target
FROM marts.clinic_kpis
WHERE period_type = 'month' AND period_start BETWEEN $start AND $month
ORDER BY kpi, instrument, clinic_id, period_start
"""


def with_kpi_counts(cells: pd.DataFrame) -> pd.DataFrame:
    """The private counts KPI_SPEC decides on: the rates' and their siblings'."""
    return with_sibling_counts(with_rate_counts(cells, ~cells["kpi"].isin(NOT_RATES)))


def kpi_cells(con: duckdb.DuckDBPyConnection, period: Period, tables: set[str]) -> Section:
    """Monthly KPI cells (trends, tiles, completeness) and the equity breakdown."""
    section = Section("kpis", missing=_needs(tables, "marts.clinic_kpis"))
    if section.missing:
        return section
    params = {
        "start": period.window_start,
        "month": period.month,
        "pair_label": PAIR_LABEL,
        "service_key": SERVICE_KEY,
    }
    months = _df(con, KPI_MONTHS_SQL, params)
    wanted = set(TREND_KPIS)
    keep = [(k, i) in wanted for k, i in zip(months["kpi"], months["instrument"], strict=True)]
    # a boolean Series, not a list: an empty list would select zero *columns*
    months = months[pd.Series(keep, index=months.index, dtype=bool)]
    frames = [months]
    if "marts.clinic_kpis_episodes" in tables:
        equity = _df(con, load_sql("qi_equity"), params)
        totals = equity[(equity["breakdown"] == "age_band") & (equity["band"] == ALL)]
        frames += [equity, totals.assign(breakdown="month")]
        section.extra["equity"] = True
    else:
        section.extra["equity_missing"] = ["marts.clinic_kpis_episodes"]
    cells = pd.concat(frames, ignore_index=True)
    cells["period"] = pd.to_datetime(cells["period"])
    cells = with_kpi_counts(cells)
    cells["quantity"] = [
        f"{c}|{k}|{i}|window" if b == ALL else None
        for c, k, i, b in zip(
            cells["clinic_id"], cells["kpi"], cells["instrument"], cells["band"], strict=True
        )
    ]
    section.frame = cells
    return section


ALLIANCE_SPEC = CellSpec(
    keys=("clinic_id", "kpi", "period"),
    small_counts=RATE_COUNTS,
    additive=(Additive(by=("kpi", "period"), over="clinic_id", total=SERVICE_KEY),),
    rounded=("numerator", "denominator", "n_clients"),
    private=RATE_COUNTS,
)

ALLIANCE_SQL = """
WITH clinic AS (
    SELECT clinic_id, month AS period, administrations, clients AS n_clients, mean_total,
           low_alliance_administrations AS low, low_alliance_share AS low_share
    FROM marts.alliance_monthly
    WHERE level = 'clinic' AND instrument = $srs AND month BETWEEN $start AND $month
),
service AS (
    SELECT $service_key AS clinic_id, date_trunc('month', administered_at)::DATE AS period,
           count(*) AS administrations, count(DISTINCT client_id) AS n_clients,
           avg(total) AS mean_total,
           count(*) FILTER (WHERE low_alliance) AS low,
           count(*) FILTER (WHERE low_alliance) / nullif(count(low_alliance), 0) AS low_share
    FROM marts.session_alliance
    WHERE instrument = $srs
      AND date_trunc('month', administered_at)::DATE BETWEEN $start AND $month
    GROUP BY 2
),
cells AS (SELECT * FROM clinic UNION ALL SELECT * FROM service)
SELECT clinic_id, 'mean_srs' AS kpi, period, NULL::DOUBLE AS numerator,
       administrations::DOUBLE AS denominator, mean_total AS value, n_clients
FROM cells
UNION ALL
SELECT clinic_id, 'low_alliance_share', period, low::DOUBLE, administrations::DOUBLE, low_share,
       n_clients
FROM cells
ORDER BY kpi, clinic_id, period
"""


def alliance_cells(con: duckdb.DuckDBPyConnection, period: Period, tables: set[str]) -> Section:
    section = Section(
        "alliance", missing=_needs(tables, "marts.alliance_monthly", "marts.session_alliance")
    )
    if section.missing:
        return section
    frame = _df(
        con,
        ALLIANCE_SQL,
        {
            "srs": SRS,
            "start": period.window_start,
            "month": period.month,
            "service_key": SERVICE_KEY,
        },
    )
    frame["period"] = pd.to_datetime(frame["period"])
    section.frame = with_rate_counts(frame, frame["kpi"] == "low_alliance_share")
    cutoff = con.execute(
        "SELECT max(cutoff) FROM staging.instruments WHERE code = ?", [SRS]
    ).fetchone()
    section.extra["cutoff"] = cutoff[0] if cutoff else None
    return section


OUTCOME_SPEC = CellSpec(
    keys=("clinic_id", "instrument", "outcome_class"),
    additive=(
        Additive(by=("clinic_id", "instrument"), over="outcome_class", total=ALL),
        Additive(by=("instrument", "outcome_class"), over="clinic_id", total=SERVICE_KEY),
    ),
    rounded=("n_episodes", "n_clients"),
)
OUTCOME_CLASSES = {
    "reliably_improved": "Reliably improved",
    "no_reliable_change": "No reliable change",
    "reliably_deteriorated": "Reliably deteriorated",
    "not_paired": "Not paired (one score)",
    "no_threshold": "No reliable-change threshold",
}
OUTCOME_SQL = """
WITH eps AS (
    SELECT o.episode_id, o.instrument, coalesce(o.outcome_class, 'no_threshold') AS outcome_class,
           k.client_id, k.clinic_id
    FROM marts.episode_outcomes o
    JOIN marts.clinic_kpis_episodes k ON k.episode_id = o.episode_id
    WHERE k.finished AND k.ended_month BETWEEN $start AND $month
)
SELECT CASE WHEN grouping(clinic_id) = 0 THEN clinic_id ELSE $service_key END AS clinic_id,
       instrument,
       CASE WHEN grouping(outcome_class) = 0 THEN outcome_class ELSE '__all__' END AS outcome_class,
       count(*) AS n_episodes,
       count(DISTINCT client_id) AS n_clients
FROM eps
GROUP BY GROUPING SETS ((instrument, outcome_class, clinic_id), (instrument, outcome_class),
                        (instrument, clinic_id), (instrument))
ORDER BY instrument, clinic_id, outcome_class
"""


def outcome_cells(con: duckdb.DuckDBPyConnection, period: Period, tables: set[str]) -> Section:
    section = Section(
        "outcomes", missing=_needs(tables, "marts.episode_outcomes", "marts.clinic_kpis_episodes")
    )
    if not section.missing:
        section.frame = _df(
            con,
            OUTCOME_SQL,
            {"start": period.window_start, "month": period.month, "service_key": SERVICE_KEY},
        )
    return section


EFFECT_SPEC = CellSpec(
    keys=("clinic_id", "instrument", "benchmark", "benchmark_source"),
    rounded=("n_clients", "n_episodes"),
)


def effect_cells(con: duckdb.DuckDBPyConnection, tables: set[str]) -> Section:
    section = Section("effect_size", missing=_needs(tables, "marts.clinic_kpis"))
    if not section.missing:
        section.frame = _df(
            con,
            "SELECT clinic_id, instrument, value, ci_low, ci_high, n_clients, n_episodes, "
            "benchmark, benchmark_source FROM marts.clinic_kpis "
            "WHERE kpi = 'effect_size_d' AND period_type = 'all' ORDER BY instrument, clinic_id",
        )
    return section


RETENTION_SPEC = CellSpec(
    keys=("time_scale", "clinic_id", "time"),
    clients="n_clients_at_risk",
    small_counts=("cum_events",),
    additive=(Additive(by=("time_scale", "time"), over="clinic_id", total=SERVICE_KEY),),
    cumulative=(
        Cumulative(
            by=("time_scale", "clinic_id"), order="time", counts=("n_at_risk", "cum_events")
        ),
    ),
    rounded=("n_at_risk", "n_clients_at_risk"),
    private=("cum_events",),
)


def retention_cells(con: duckdb.DuckDBPyConnection, tables: set[str]) -> Section:
    section = Section("retention", missing=_needs(tables, "marts.retention_curve"))
    if not section.missing:
        section.frame = _df(
            con,
            "SELECT time_scale, clinic_id, time, n_at_risk, survival, ci_lower, ci_upper, "
            "n_clients_at_risk, sum(n_events) OVER (PARTITION BY time_scale, clinic_id "
            "ORDER BY time) AS cum_events FROM marts.retention_curve "
            "WHERE time_scale = 'sessions' ORDER BY clinic_id, time",
        )
    return section


DOSE_SPEC = CellSpec(
    keys=("instrument", "clinic_id", "session_number"),
    small_counts=RATE_COUNTS,
    additive=(Additive(by=("instrument", "session_number"), over="clinic_id", total=SERVICE_KEY),),
    cumulative=(
        Cumulative(by=("instrument", "clinic_id"), order="session_number", counts=("numerator",)),
    ),
    rounded=("numerator", "denominator", "n_clients"),
    private=RATE_COUNTS,
)


def dose_cells(con: duckdb.DuckDBPyConnection, tables: set[str]) -> Section:
    section = Section("dose_response", missing=_needs(tables, "marts.dose_response"))
    if not section.missing:
        section.frame = _df(
            con,
            "SELECT instrument, clinic_id, session_number, numerator, denominator, value, "
            "n_clients FROM marts.dose_response ORDER BY instrument, clinic_id, session_number",
        )
        section.frame = with_rate_counts(section.frame)
    return section


CLINICIAN_SPEC = CellSpec(
    keys=("instrument", "clinic_id", "clinician_id"),
    # the service line of the funnel is the total: residuals add up to zero
    additive=(Additive(by=("instrument",), over="clinician_id", total=SERVICE_KEY),),
    rounded=("n_episodes", "n_clients"),
)
CLINICIAN_SQL = """
WITH reference AS (
    SELECT instrument, count(DISTINCT client_id) AS n_clients, count(*) AS n_episodes
    FROM ($reference) GROUP BY instrument
)
SELECT instrument, clinic_id, clinician_id, n_episodes, n_clients, saes, saes_ci_low,
       saes_ci_high, NULL::DOUBLE AS unit_se
FROM marts.clinician_adjusted_outcomes
UNION ALL
SELECT a.instrument, '__service__', '__service__', any_value(r.n_episodes), any_value(r.n_clients),
       any_value(a.service_saes), NULL, NULL,
       any_value(a.residual_sd / nullif(a.reference_sd_baseline, 0))
FROM marts.clinician_adjusted_outcomes a
JOIN reference r ON r.instrument = a.instrument
GROUP BY a.instrument
ORDER BY 1, 2, 3
"""


def clinician_cells(con: duckdb.DuckDBPyConnection, tables: set[str]) -> Section:
    section = Section(
        "clinicians",
        missing=_needs(tables, "marts.clinician_adjusted_outcomes", "marts.clinic_kpis_episodes"),
    )
    if not section.missing:
        reference = load_sql("clinician_summary_reference").strip().rstrip(";")
        section.frame = _df(con, CLINICIAN_SQL.replace("$reference", reference))
    return section


ALERT_SPEC = CellSpec(
    keys=("clinic_id", "alert_type", "period"),
    additive=(Additive(by=("alert_type", "period"), over="clinic_id", total=SERVICE_KEY),),
    rounded=("alerts", "n_clients"),
)
ALERT_TYPES = {
    "risk_item": "Risk item at or above threshold",
    "reliable_deterioration": "Reliable deterioration",
    "not_on_track": "Not on track (expected response)",
    "low_alliance": "Low alliance (SRS)",
    "disengaged": "Disengaged",
}
ALERT_SQL = """
WITH a AS (
    SELECT a.alert_type, a.client_id, e.clinic_id, a.raised_at::DATE AS day
    FROM marts.alerts a JOIN staging.episodes e ON e.episode_id = a.episode_id
),
p AS (
    SELECT *, 'month' AS period FROM a WHERE day BETWEEN $month AND $month_end
    UNION ALL
    SELECT *, 'window' AS period FROM a WHERE day BETWEEN $start AND $month_end
)
SELECT CASE WHEN grouping(clinic_id) = 0 THEN clinic_id ELSE $service_key END AS clinic_id,
       alert_type, period, count(*) AS alerts, count(DISTINCT client_id) AS n_clients
FROM p
GROUP BY GROUPING SETS ((alert_type, period, clinic_id), (alert_type, period))
ORDER BY alert_type, period, clinic_id
"""


def alert_cells(con: duckdb.DuckDBPyConnection, period: Period, tables: set[str]) -> Section:
    section = Section("alerts", missing=_needs(tables, "marts.alerts"))
    if not section.missing:
        section.frame = _df(
            con,
            ALERT_SQL,
            {
                "month": period.month,
                "month_end": period.month_end,
                "start": period.window_start,
                "service_key": SERVICE_KEY,
            },
        )
    return section


BACKTEST_SPEC = CellSpec(
    keys=("instrument", "by_session", "rule", "measure"),
    small_counts=RATE_COUNTS,
    additive=(Additive(by=("by_session", "rule", "measure"), over="instrument", total="all"),),
    rounded=("numerator", "denominator", "n_clients"),
    private=RATE_COUNTS,
)
BACKTEST_SQL = """
WITH clients AS (
    SELECT CASE WHEN grouping(instrument) = 0 THEN instrument ELSE 'all' END AS instrument,
           by_session, outcome_group, count(DISTINCT client_id) AS n_clients
    FROM marts.etr_backtest_episodes
    GROUP BY GROUPING SETS ((instrument, by_session, outcome_group), (by_session, outcome_group))
)
SELECT b.instrument, b.by_session, b.rule, 'sensitivity' AS measure,
       b.positives_flagged::DOUBLE AS numerator, b.positives::DOUBLE AS denominator,
       b.sensitivity AS value, coalesce(c.n_clients, 0) AS n_clients
FROM marts.etr_backtest b
LEFT JOIN clients c ON c.instrument = b.instrument AND c.by_session = b.by_session
     AND c.outcome_group = 'deteriorated_or_not_improved'
UNION ALL
SELECT b.instrument, b.by_session, b.rule, 'false_alarm_rate',
       b.negatives_flagged::DOUBLE, b.negatives::DOUBLE, b.false_alarm_rate,
       coalesce(c.n_clients, 0)
FROM marts.etr_backtest b
LEFT JOIN clients c ON c.instrument = b.instrument AND c.by_session = b.by_session
     AND c.outcome_group = 'improved'
ORDER BY 1, 2, 3, 4
"""


def backtest_cells(con: duckdb.DuckDBPyConnection, tables: set[str]) -> Section:
    section = Section(
        "backtest", missing=_needs(tables, "marts.etr_backtest", "marts.etr_backtest_episodes")
    )
    if not section.missing:
        section.frame = with_rate_counts(_df(con, BACKTEST_SQL))
    return section


SPECS: dict[str, CellSpec] = {
    "kpis": KPI_SPEC,
    "alliance": ALLIANCE_SPEC,
    "outcomes": OUTCOME_SPEC,
    "effect_size": EFFECT_SPEC,
    "retention": RETENTION_SPEC,
    "dose_response": DOSE_SPEC,
    "clinicians": CLINICIAN_SPEC,
    "alerts": ALERT_SPEC,
    "backtest": BACKTEST_SPEC,
}


def raw_qi_sections(con: duckdb.DuckDBPyConnection, period: Period) -> dict[str, Section]:
    """Every QI section as queried from the marts, NOT yet suppressed (tests and
    ``qi_sections`` only: nothing published may use these frames)."""
    tables = existing_tables(con)
    sections = [
        kpi_cells(con, period, tables),
        alliance_cells(con, period, tables),
        outcome_cells(con, period, tables),
        effect_cells(con, tables),
        retention_cells(con, tables),
        dose_cells(con, tables),
        clinician_cells(con, tables),
        alert_cells(con, period, tables),
        backtest_cells(con, tables),
    ]
    for section in sections:
        if section.frame is not None:
            section.frame = _nulls(section.frame)
    return {s.name: s for s in sections}


def qi_sections(
    con: duckdb.DuckDBPyConnection, settings: Settings, period: Period
) -> dict[str, Section]:
    """Every QI section, published: each frame has been through ``suppress`` once."""
    sections = raw_qi_sections(con, period)
    for section in sections.values():
        if section.frame is not None:
            section.frame = suppress(
                section.frame, SPECS[section.name], settings.min_cell_size, settings.round_counts_to
            )
    return sections


# --------------------------------------------------------------------------
# HTML


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _pct(value: Any, digits: int = 1) -> str:
    number = figures._num(value)
    return "–" if number is None else f"{100 * number:.{digits}f}%"


def _count(value: Any) -> str:
    number = figures._num(value)
    return "–" if number is None else f"{number:,.0f}"


def _fmt(value: Any, digits: int = 2) -> str:
    number = figures._num(value)
    return "–" if number is None else f"{number:.{digits}f}"


class Page:
    """Accumulates the HTML of one page; figures share the page's one plotly.js."""

    def __init__(self, slug: str, title: str = "", nav: str = ""):
        self.slug = re.sub(r"[^A-Za-z0-9_-]", "-", slug)
        self.title = title
        self.nav = nav
        self.parts: list[str] = []
        self.figures: dict[str, go.Figure | dict[str, Any]] = {}

    def add(self, text: str) -> None:
        self.parts.append(text)

    def figure(self, fig: go.Figure | dict[str, Any], name: str) -> str:
        """The figure's div; a plain dict (``figures.trajectory_spec``) is written as is."""
        div_id = f"fig-{self.slug}-{len(self.figures) + 1}"
        self.figures[name] = fig
        if isinstance(fig, dict) and fig["layout"].get("template") is figures.template_json():
            return _spec_html(fig, div_id)
        return _figure_html(fig, div_id)

    def body(self) -> str:
        return "\n".join(self.parts)


def _figure_html(fig: go.Figure | dict[str, Any], div_id: str) -> str:
    return pio.to_html(
        fig,
        include_plotlyjs=False,
        full_html=False,
        div_id=div_id,
        config=PLOTLY_CONFIG,
        validate=False,
    )


# Stand-ins while plotly writes the HTML around a figure (``_div_parts``).
_MARKS = {
    "div": "__report_div__",
    "data": '"__report_data__"',
    "layout": '{"__report_layout__":true}',
}
_TEMPLATE_MARK = {"__report_template__": True}
_TEMPLATE_MARK_JSON = '{"__report_template__":true}'
_JSON_SWAPS = (("<", "\\u003c"), (">", "\\u003e"), ("/", "\\u002f"))


def _plotly_json(value: Any) -> str:
    """The JSON plotly's "json" engine writes for ``value`` (``to_json_plotly``), without
    its per-call module lookups: inline-script-safe, NaN and infinities as null."""
    text = json.dumps(value, cls=PlotlyJSONEncoder, separators=(",", ":"))
    for unsafe, safe in _JSON_SWAPS:
        if unsafe in text:
            text = text.replace(unsafe, safe)
    return text


@functools.cache
def _template_text() -> str:
    return _plotly_json(figures.template_json())


@functools.cache
def _div_parts(height: Any, width: Any) -> tuple[str, ...] | None:
    """``pio.to_html``'s text around a figure of this size, as plotly writes it, split at
    the div id, the data and the layout; None if plotly's JSON is not ``_plotly_json``'s
    (another JSON engine): then each figure goes through ``pio.to_html``."""
    size = {k: v for k, v in (("height", height), ("width", width)) if v is not None}
    layout = {"template": figures.template_json(), **size}
    text = _figure_html({"data": "__report_data__", "layout": layout}, _MARKS["div"])
    if _plotly_json(layout) not in text or _MARKS["data"] not in text:
        return None
    text = text.replace(_plotly_json(layout), _MARKS["layout"], 1)
    pattern = "|".join(re.escape(m) for m in _MARKS.values())
    return tuple(re.split(f"({pattern})", text))


def _spec_html(spec: Mapping[str, Any], div_id: str) -> str:
    """``pio.to_html`` of a plain figure dict whose template is ``figures.template_json()``,
    the same text (tests/test_reports.py), at a fraction of the cost: a caseload draws one
    chart per open episode, and the template's JSON (7 KB, the same in every chart) and
    plotly's HTML around it are written once per process and pasted in."""
    parts = _div_parts(spec["layout"].get("height"), spec["layout"].get("width"))
    if parts is None:
        return _figure_html(spec, div_id)
    layout = {**spec["layout"], "template": _TEMPLATE_MARK}  # keeps the key's place
    values = {
        _MARKS["div"]: div_id,
        _MARKS["data"]: _plotly_json(spec["data"]),
        _MARKS["layout"]: _plotly_json(layout).replace(_TEMPLATE_MARK_JSON, _template_text(), 1),
    }
    return "".join(values.get(part, part) for part in parts)


def message(text: str) -> str:
    return f'<div class="message">{_esc(text)}</div>'


def section(title: str, lead: str, content: str, anchor: str) -> str:
    return (
        f'<section id="{anchor}"><h2>{_esc(title)}</h2>'
        f'<p class="lead">{lead}</p>{content}</section>'
    )


def add_unavailable(page: "Page", sec: Section, title: str, lead: str, anchor: str) -> bool:
    """Add the section's 'not available' box when its mart is missing; True if added."""
    if sec.frame is not None:
        return False
    page.add(section(title, lead, not_available(sec), anchor))
    return True


def not_available(sec: Section) -> str:
    return message(
        "Not available: " + ", ".join(sec.missing) + " has not been built in this warehouse yet."
    )


PageText = str | Sequence[bytes]  # HTML, or its UTF-8 pieces (render_page)


def render_page(
    *,
    title: str,
    subtitle: str,
    nav: str,
    body: str,
    footer: str,
    run_id: str,
    bundle: str = "full",
) -> tuple[bytes, ...]:
    """A complete page as UTF-8 pieces: the template, the stylesheet and plotly.js
    (``bundle``, see ``plotly_js``) inlined once. The bundle is one piece, encoded once
    per process and written as is: a national caseload has hundreds of pages, and
    copying the bundle into each page's text and encoding it again cost ~4 ms a page,
    as much as its cards at 10k episodes."""
    values = {
        "title": _esc(title),
        "subtitle": subtitle,
        "nav": nav,
        "body": body,
        "footer": footer,
        "run_id": _esc(run_id),
        "style": _template_file("style.css"),
    }
    head, tail = (
        Template(part).substitute(values).encode("utf-8")
        for part in _template_file("page.html").split("$plotlyjs", 1)
    )
    return head, _plotly_js_bytes(bundle), tail


@functools.cache
def _template_file(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


# The plotly.js embedded in a page: "full", the bundle plotly.py ships (4.8 MB), or
# "basic", plotly.js's own partial bundle of scatter, bar and pie traces (1.2 MB,
# the same version, vendored: assets/vendor/README.md). The caseload pages draw
# scatter traces only and are hundreds of pages nationally: they embed the basic
# bundle (2.3 GB -> 0.6 GB of pages at 200k episodes; decision 008). The QI pages
# use more trace types and keep the full bundle.
BASIC_BUNDLE = Path(__file__).resolve().parent / "vendor" / "plotly-basic.min.js"
BASIC_TRACE_TYPES = frozenset({"scatter", "bar", "pie"})


@functools.cache
def plotly_js(bundle: str = "full") -> str:
    """The bundle's text, safe inside an inline script element."""
    if bundle == "full":
        text = plotly.offline.get_plotlyjs()
    elif bundle == "basic":
        text = BASIC_BUNDLE.read_text(encoding="utf-8")
    else:
        raise ValueError(f"unknown plotly.js bundle {bundle!r}")
    # "</script" cannot occur inside an inline script element
    return text.replace("</script", "<\\/script")


@functools.cache
def _plotly_js_bytes(bundle: str = "full") -> bytes:
    return plotly_js(bundle).encode("utf-8")


# --------------------------------------------------------------------------
# QI report pages


@dataclass(frozen=True)
class Tile:
    kpi: str
    instrument: str
    label: str
    higher_is_better: bool
    section: str = "kpis"
    percent: bool = True


TILES = (
    Tile("attendance_rate", "", "Attendance", True),
    Tile("dna_rate", "", "Did not attend (DNA)", False),
    Tile("dropout_rate", "", "Dropout (episodes that ended)", False),
    Tile("recovery_rate", PAIR_LABEL, f"Recovery ({PAIR_LABEL})", True),
    Tile("reliable_improvement_rate", PAIR_LABEL, f"Reliable improvement ({PAIR_LABEL})", True),
    Tile(
        "reliable_deterioration_rate", PAIR_LABEL, f"Reliable deterioration ({PAIR_LABEL})", False
    ),
    Tile("paired_share_finished", PAIR_LABEL, f"Paired scores ({PAIR_LABEL})", True),
    Tile("mean_srs", "", "Mean SRS", True, "alliance", percent=False),
    Tile("low_alliance_share", "", "Low-alliance ratings (SRS)", False, "alliance"),
)


def _cell(frame: pd.DataFrame, **where: Any) -> pd.Series | None:
    rows = frame
    for column, value in where.items():
        rows = rows[rows[column] == value]
    return None if rows.empty else rows.iloc[0]


def _tile_html(tile: Tile, sections: Mapping[str, Section], clinic: str, period: Period) -> str:
    sec = sections[tile.section]
    label = f'<div class="label">{_esc(tile.label)}</div>'
    if sec.frame is None:
        return f'<div class="tile">{label}<div class="value nodata">not available</div></div>'
    frame = sec.frame[sec.frame["clinic_id"] == clinic]
    where: dict[str, Any] = {"kpi": tile.kpi}
    if tile.section == "kpis":
        where |= {"instrument": tile.instrument, "breakdown": "month"}
    now = _cell(frame, period=pd.Timestamp(period.month), **where)
    before = _cell(frame, period=pd.Timestamp(period.previous), **where)
    show = _pct if tile.percent else (lambda v: _fmt(v, 1))
    k = sec.frame.attrs.get("min_cell_size")
    if now is None:
        value = '<div class="value nodata">no data this month</div>'
    elif now[SUPPRESSED]:
        value = f'<div class="value suppressed">suppressed (fewer than {k} clients)</div>'
    else:
        value = f'<div class="value">{show(now["value"])}</div>'
    change = ""
    if now is not None and not now[SUPPRESSED]:
        if before is None:
            change = f'<div class="change">no data for {period.previous:%b %Y}</div>'
        elif before[SUPPRESSED]:
            change = f'<div class="change">{period.previous:%b %Y} suppressed</div>'
        else:
            a, b = figures._num(now["value"]), figures._num(before["value"])
            if a is not None and b is not None:
                diff = a - b
                better = (diff > 0) == tile.higher_is_better
                cls = "" if abs(diff) < 1e-12 else ("better" if better else "worse")
                unit = " pp" if tile.percent else ""
                amount = 100 * diff if tile.percent else diff
                change = (
                    f'<div class="change {cls}">{amount:+.1f}{unit} '
                    f"vs {period.previous:%b %Y}</div>"
                )
    n = ""
    if now is not None and not now[SUPPRESSED]:
        n = f'<div class="n">n = {_count(now["denominator"])}</div>'
    year = ""
    if tile.section == "kpis":
        window = _cell(frame, kpi=tile.kpi, instrument=tile.instrument, breakdown="month", band=ALL)
        if window is not None:
            shown = (
                "suppressed"
                if window[SUPPRESSED]
                else (f"{show(window['value'])} (n = {_count(window['denominator'])})")
            )
            year = f'<div class="n">12 months: {shown}</div>'
    return f'<div class="tile">{label}{value}{change}{n}{year}</div>'


def _month_frame(sec: Section, clinic: str, pairs: Iterable[tuple[str, str]]) -> pd.DataFrame:
    frame = sec.frame
    keep = set(pairs)
    wanted = pd.Series(
        [(k, i) in keep for k, i in zip(frame["kpi"], frame["instrument"], strict=True)],
        index=frame.index,
        dtype=bool,
    )
    rows = frame[
        (frame["clinic_id"] == clinic)
        & (frame["breakdown"] == "month")
        & (frame["band"] != ALL)
        & wanted
    ]
    return rows.assign(
        series=[f"{k}|{i}" for k, i in zip(rows["kpi"], rows["instrument"], strict=True)]
    )


def _labels(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {
        f"{k}|{i}": KPI_LABELS[k] + (f" ({i})" if i and i != PAIR_LABEL else "") for k, i in pairs
    }


def chart(
    page: Page,
    frame: pd.DataFrame,
    build: Callable[[pd.DataFrame], go.Figure],
    name: str,
    title: str | None = None,
    empty: str = "No data in this window.",
) -> str:
    """A figure from a published frame, or a message when there is nothing to draw:
    no rows, or every cell suppressed."""
    head = f"<h3>{_esc(title)}</h3>" if title else ""
    if frame is None or frame.empty:
        return head + message(empty)
    if frame[SUPPRESSED].all():
        k = frame.attrs.get("min_cell_size")
        return head + message(
            f"Suppressed: every value here rests on fewer than {k} clients "
            "(or would let a suppressed value be recovered)."
        )
    return head + page.figure(build(frame), name)


def _kpi_sections(page: Page, sections: Mapping[str, Section], clinic: str, period: Period) -> None:
    kpis = sections["kpis"]
    tiles = "".join(_tile_html(t, sections, clinic, period) for t in TILES)
    page.add(
        section(
            f"Headline KPIs, {period.label()}",
            f"Each tile: the value for {period.label()}, the change against "
            f"{period.label(period.previous)} (pp = percentage points) and n, the denominator. "
            f"Recovery and reliable change follow NHS Talking Therapies ({PAIR_LABEL} together, "
            "finished episodes).",
            f'<div class="tiles">{tiles}</div>',
            "kpis",
        )
    )
    charts = [] if kpis.frame is not None else [not_available(kpis)]
    groups = [
        ("Attendance and DNA", [("attendance_rate", ""), ("dna_rate", "")]),
        ("Dropout", [("dropout_rate", ""), ("early_dropout_rate", "")]),
        (
            f"Outcomes of finished episodes ({PAIR_LABEL})",
            [
                ("recovery_rate", PAIR_LABEL),
                ("reliable_improvement_rate", PAIR_LABEL),
                ("reliable_deterioration_rate", PAIR_LABEL),
            ],
        ),
    ]
    for title, pairs in groups if kpis.frame is not None else []:
        labels = _labels(pairs)
        charts.append(
            chart(
                page,
                _month_frame(kpis, clinic, pairs),
                lambda f, labels=labels: figures.trend_lines(
                    f, x="period", series="series", labels=labels
                ),
                f"trend {title}",
                title,
            )
        )
    alliance = sections["alliance"]
    if alliance.frame is None:
        charts.append("<h3>Alliance (SRS)</h3>" + not_available(alliance))
    else:
        charts.append(
            chart(
                page,
                alliance.frame[alliance.frame["clinic_id"] == clinic],
                lambda f: figures.alliance_trend(f, cutoff=alliance.extra.get("cutoff")),
                "alliance trend",
                "Alliance (SRS)",
                "No SRS ratings in this window.",
            )
        )
    page.add(
        section(
            "Monthly trends",
            f"{period.window_label()}. Attendance and DNA count held or missed appointments in "
            "the month; dropout and outcomes count episodes in the month they ended. A gap in a "
            "line is a suppressed month.",
            "".join(charts),
            "trends",
        )
    )


def _outcome_section(page: Page, sec: Section, clinic: str, period: Period) -> None:
    title = "Outcome categories per instrument"
    lead = (
        f"Finished episodes that ended {period.window_label()}, by their reliable-change class on "
        "each symptom instrument (baseline vs last score; thresholds in the methods box)."
    )
    if add_unavailable(page, sec, title, lead, "outcomes"):
        return
    content = chart(
        page,
        sec.frame[sec.frame["clinic_id"] == clinic],
        lambda f: figures.outcome_categories(f, categories=OUTCOME_CLASSES),
        "outcome categories",
        empty="No finished episodes with scores in this window.",
    )
    page.add(section(title, lead, content, "outcomes"))


def _effect_section(page: Page, sec: Section, clinic: str) -> None:
    title = "Effect size against the benchmark"
    lead = (
        "Pre-post effect size d = mean improvement / SD of baseline, finished episodes with paired "
        "scores, all time to the data cut date, with its 95% CI; the diamond is the published "
        "benchmark where one exists."
    )
    if add_unavailable(page, sec, title, lead, "effect"):
        return
    frame = sec.frame
    rows = frame[frame["clinic_id"] == clinic]
    if clinic != SERVICE_KEY:
        service = frame[frame["clinic_id"] == SERVICE_KEY]
        rows = pd.concat(
            [
                rows.assign(label=rows["instrument"] + " (this clinic)"),
                service.assign(label=service["instrument"] + " (service)"),
            ]
        ).sort_values(["instrument", "label"])
    else:
        rows = rows.assign(label=rows["instrument"])
    rows.attrs = frame.attrs
    content = chart(
        page,
        rows,
        lambda f: figures.effect_size_forest(f, label="label", benchmark_label="Benchmark"),
        "effect size",
        empty="No finished episodes with paired scores yet.",
    )
    sources = sorted({s for s in frame["benchmark_source"].dropna() if s})
    content += "".join(f'<p class="lead">Benchmark: {_esc(s)}</p>' for s in sources)
    page.add(section(title, lead, content, "effect"))


def _retention_section(page: Page, sec: Section, clinic: str) -> None:
    lead = (
        "Kaplan-Meier share of episodes still attending after each number of attended sessions "
        "(event: dropout or disengagement; open or otherwise ended episodes are censored), all "
        "time, with its 95% band. Points resting on too few clients, or whose step from the last "
        "shown point would, are left out."
    )
    if add_unavailable(page, sec, "Retention", lead, "retention"):
        return
    frame = sec.frame
    keys = [SERVICE_KEY] if clinic == SERVICE_KEY else [clinic, SERVICE_KEY]
    rows = frame[frame["clinic_id"].isin(keys)]
    rows = rows.assign(
        label=["Service" if c == SERVICE_KEY else "This clinic" for c in rows["clinic_id"]]
    )
    content = chart(
        page,
        rows,
        lambda f: figures.retention_curve(f, series="label"),
        "retention",
        empty="No episode has attended a session yet.",
    )
    page.add(section("Retention", lead, content, "retention"))


def _dose_section(page: Page, sec: Section, clinic: str) -> None:
    lead = (
        "Cumulative share of finished, paired episodes that had reached reliable improvement by "
        "each attended session number, per symptom instrument, all time."
    )
    if add_unavailable(page, sec, "Dose-response", lead, "dose"):
        return
    content = chart(
        page,
        sec.frame[sec.frame["clinic_id"] == clinic],
        figures.dose_response,
        "dose response",
        empty="No finished episodes with paired scores yet.",
    )
    page.add(section("Dose-response", lead, content, "dose"))


def _completeness_section(page: Page, sec: Section, clinic: str, period: Period) -> None:
    lead = (
        f"{period.window_label()}. Share of finished episodes with paired scores against the "
        f"NHS Talking Therapies aim of {PAIRED_SHARE_AIM:.0%}, share of attended sessions with a "
        "measure, and the median days between administrations of the same instrument."
    )
    if add_unavailable(page, sec, "Measurement completeness", lead, "completeness"):
        return
    paired = [("paired_share_finished", PAIR_LABEL), ("paired_share_finished", "")]
    labels = {
        f"paired_share_finished|{PAIR_LABEL}": f"Paired {PAIR_LABEL}",
        "paired_share_finished|": "Paired on any symptom measure",
    }
    parts = [
        chart(
            page,
            _month_frame(sec, clinic, paired),
            lambda f: figures.trend_lines(
                f,
                x="period",
                series="series",
                labels=labels,
                target=PAIRED_SHARE_AIM,
                target_label=f"Aim {PAIRED_SHARE_AIM:.0%}",
            ),
            "paired share",
            "Finished episodes with paired scores",
            "No finished episodes in this window.",
        )
    ]
    sessions = [("sessions_with_symptom_measure", ""), ("sessions_with_alliance_measure", "")]
    parts.append(
        chart(
            page,
            _month_frame(sec, clinic, sessions),
            lambda f: figures.trend_lines(f, x="period", series="series", labels=_labels(sessions)),
            "sessions measured",
            "Attended sessions with a measure",
            "No attended sessions in this window.",
        )
    )
    gap = _month_frame(sec, clinic, [("median_days_between_measures", "")])
    now = _cell(gap, period=pd.Timestamp(period.month))
    if now is not None:
        text = (
            f"suppressed (fewer than {sec.frame.attrs.get('min_cell_size')} clients)"
            if now[SUPPRESSED]
            else f"{_fmt(now['value'], 1)} days"
        )
        parts.append(
            f"<p>Median days between administrations of the same instrument, "
            f"{period.label()}: <strong>{_esc(text)}</strong></p>"
        )
    page.add(section("Measurement completeness", lead, "".join(parts), "completeness"))


def _clinician_section(page: Page, sec: Section, clinic: str) -> None:
    title = "Clinician comparison (funnel plot)"
    lead = (
        "Severity-adjusted effect size (change beyond what the baseline predicts, ACORN style) of "
        "each clinician's finished, paired episodes that started at caseness, all time, against "
        "the number of such episodes, inside funnel limits around the service value. Not a "
        "league table: points inside the funnel are consistent with the service; clinicians "
        "with too few clients are left out."
    )
    if add_unavailable(page, sec, title, lead, "clinicians"):
        return
    parts = []
    for instrument, rows in sec.frame.groupby("instrument", sort=True):
        service = _cell(rows, clinician_id=SERVICE_KEY)
        people = rows[rows["clinician_id"] != SERVICE_KEY]
        if clinic != SERVICE_KEY:
            people = people[people["clinic_id"] == clinic]
        people.attrs = sec.frame.attrs
        shown = service is not None and not service[SUPPRESSED]
        parts.append(
            chart(
                page,
                people,
                lambda f, service=service, shown=shown: figures.clinician_funnel(
                    f,
                    service_value=figures._num(service["saes"]) if shown else None,
                    unit_se=figures._num(service["unit_se"]) if shown else None,
                ),
                f"funnel {instrument}",
                str(instrument),
                "No clinician here has finished, paired episodes on this instrument.",
            )
        )
    content = "".join(parts) or message("No clinician has finished, paired episodes yet.")
    page.add(section(title, lead, content, "clinicians"))


def _equity_section(page: Page, sec: Section, clinic: str, period: Period) -> None:
    lead = (
        f"Episodes that ended {period.window_label()}: dropout, and the {PAIR_LABEL} outcomes of "
        "finished episodes, by age band and by gender ('All' is the whole group)."
    )
    if sec.frame is None or not sec.extra.get("equity"):
        missing = sec.missing or sec.extra.get("equity_missing", [])
        page.add(
            section("Equity", lead, not_available(Section("equity", missing=missing)), "equity")
        )
        return
    frame = sec.frame
    parts = []
    for breakdown, title in (("age_band", "By age band"), ("gender", "By gender")):
        rows = frame[(frame["clinic_id"] == clinic) & (frame["breakdown"] == breakdown)]
        rows = rows.assign(
            series=[f"{k}|{i}" for k, i in zip(rows["kpi"], rows["instrument"], strict=True)],
            category=["All" if b == ALL else b for b in rows["band"]],
        )
        bands = ["All", *sorted(b for b in rows["category"].unique() if b != "All")]
        parts.append(
            chart(
                page,
                rows,
                lambda f, bands=bands: figures.grouped_bars(
                    f, x="category", series="series", labels=_labels(EQUITY_KPIS), x_order=bands
                ),
                f"equity {breakdown}",
                title,
                "No episodes ended in this window.",
            )
        )
    page.add(section("Equity", lead, "".join(parts), "equity"))


def _alerts_section(
    page: Page, sec: Section, backtest: Section, clinic: str, period: Period
) -> None:
    lead = (
        f"Alerts raised in {period.label()} and in the 12 months {period.window_label()}, by type "
        "(marts.alerts; pseudonymous detail is in the clinician caseload pages)."
    )
    if add_unavailable(page, sec, "Alerts", lead, "alerts"):
        return
    rows = sec.frame[sec.frame["clinic_id"] == clinic]
    rows = rows.assign(type=[ALERT_TYPES.get(t, t) for t in rows["alert_type"]])
    parts = [
        chart(
            page,
            rows,
            lambda f: figures.grouped_bars(
                f,
                x="type",
                series="period",
                y="alerts",
                percent=False,
                horizontal=True,
                labels={"month": period.label(), "window": "12 months"},
                y_title="Alerts",
                height=140 + 50 * f["type"].nunique(),
            ),
            "alerts",
            empty="No alerts in this window.",
        )
    ]
    if clinic == SERVICE_KEY:
        parts.append(_backtest_html(page, backtest))
    page.add(section("Alerts", lead, "".join(parts), "alerts"))


RULE_LABELS = {
    "not_on_track": "Not on track",
    "reliable_deterioration": "Reliable deterioration so far",
}


def _backtest_html(page: Page, sec: Section) -> str:
    title = "Not-on-track alert on the clinic's own history"
    lead = (
        '<p class="lead">Ended, paired episodes, all symptom instruments. Sensitivity: share of '
        "episodes that ended reliably deteriorated or without reliable change that the rule had "
        "flagged by the session shown; false-alarm rate: share of episodes that ended reliably "
        "improved that it had flagged.</p>"
    )
    if sec.frame is None:
        return f"<h3>{_esc(title)}</h3>" + not_available(sec)
    rows = sec.frame[sec.frame["instrument"] == "all"]
    rows = rows.assign(
        test=[
            f"{RULE_LABELS.get(r, r)}, by session {s}"
            for r, s in zip(rows["rule"], rows["by_session"], strict=True)
        ]
    )
    return (
        f"<h3>{_esc(title)}</h3>"
        + lead
        + chart(
            page,
            rows,
            lambda f: figures.grouped_bars(
                f,
                x="test",
                series="measure",
                labels={"sensitivity": "Sensitivity", "false_alarm_rate": "False-alarm rate"},
            ),
            "backtest",
            empty="No ended episode has a score after session 4 yet.",
        )
    )


def _methods_html(
    con: duckdb.DuckDBPyConnection, settings: Settings, period: Period, run: dict
) -> str:
    instruments = con.execute(
        "SELECT code, construct, direction, cutoff, rc_threshold, rc_strict, risk_item, "
        "risk_threshold FROM staging.instruments ORDER BY construct DESC, code"
    ).fetchall()
    rows = []
    for code, construct, direction, cutoff, rc, strict, risk, risk_t in instruments:
        worse = direction == "higher_worse"
        case = "–" if cutoff is None else f"{'&ge;' if worse else '&lt;'} {cutoff:g}"
        change = "–" if rc is None else f"{'&gt;' if strict else '&ge;'} {rc:.3g} points"
        risk_text = "–" if risk is None else f"item {risk} &ge; {risk_t:g}"
        rows.append(
            f"<tr><td>{_esc(code)}</td><td>{_esc(construct)}</td>"
            f"<td>{'higher is worse' if worse else 'higher is better'}</td>"
            f"<td>{case}</td><td>{change}</td><td>{risk_text}</td></tr>"
        )
    table = (
        "<table><tr><th>Instrument</th><th>Construct</th><th>Direction</th>"
        "<th>Caseness (clinical cutoff)</th><th>Reliable change</th><th>Risk item</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    k = settings.min_cell_size
    rounding = (
        f"Published counts are rounded to the nearest {settings.round_counts_to}."
        if settings.round_counts_to
        else "Counts are not rounded (round_counts_to is not set)."
    )
    definitions = {
        "Attendance rate": "attended / (attended + no-show + late cancellation); cancellations "
        "made in advance are not missed appointments. DNA rate: no-shows over the same "
        "denominator.",
        "Dropout": "episodes that ended in the month with end reason dropout, or disengaged "
        f"(no attended session for {settings.disengaged_after_days} days and none booked), over "
        f"all episodes that ended; early dropout: at most {settings.early_dropout_max_attended} "
        "sessions attended.",
        "Finished episode": "ended with at least 2 attended sessions that were not assessments "
        "(NHS Talking Therapies).",
        f"Recovery ({PAIR_LABEL})": "at caseness on either measure at the first paired "
        "administration and on neither at the last, over finished episodes at caseness at start.",
        "Reliable improvement / deterioration": "reliable decrease on at least one measure and "
        "reliable increase on neither / reliable increase on at least one, over finished "
        "episodes with paired scores.",
        "Effect size d": "mean improvement / SD of baseline scores, finished paired episodes; "
        "95% CI from the large-sample variance of a standardized mean change.",
        "Severity-adjusted effect size": "improvement regressed on baseline across the service; "
        "a clinician's value is (service mean improvement + mean residual) / SD of baseline, "
        "with funnel limits from the pooled residual SD.",
        "Alerts": "risk item at or above threshold; first reliable deterioration; SRS below the "
        "cutoff; disengaged episodes; not on track against the expected trajectory.",
    }
    defs = "".join(f"<dt>{_esc(t)}</dt><dd>{_esc(d)}</dd>" for t, d in definitions.items())
    return (
        '<div class="methods"><dl>'
        f"<dt>Reporting period</dt><dd>{_esc(period.label())}; "
        f"trends {_esc(period.window_label())}</dd>"
        f"<dt>Data cut date</dt><dd>{_esc(run.get('as_of'))} ({_esc(run.get('as_of_source'))})</dd>"
        f"<dt>Run id</dt><dd>{_esc(run.get('run_id'))}</dd>"
        f"<dt>Small cells</dt><dd>Any count, rate or mean resting on fewer than {k} distinct "
        f"clients is shown as suppressed, and so is a rate whose numerator, or denominator "
        f"minus numerator, is between 1 and {k - 1} (both follow from the rate and its n). "
        "Further cells are suppressed so that no suppressed value can be recovered from a "
        "total by subtraction, and a cumulative curve only shows steps of at least "
        f"{k}. {_esc(rounding)}</dd>"
        f"{defs}</dl>"
        f"<h3>Thresholds used (instrument registry)</h3>{table}</div>"
    )


def run_info(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    row = con.execute("SELECT run_id, as_of, as_of_source FROM staging.run_info").fetchone()
    if row is None:
        raise ValueError("staging.run_info is empty: run the ingest first")
    return {"run_id": row[0], "as_of": row[1], "as_of_source": row[2]}


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(value))


def _clinics(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [
        r[0]
        for r in con.execute(
            "SELECT DISTINCT clinic_id FROM staging.episodes ORDER BY 1"
        ).fetchall()
    ]


def qi_page(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    sections: Mapping[str, Section],
    period: Period,
    run: dict[str, Any],
    clinic: str,
    clinics: list[str],
) -> Page:
    """The page of the whole service (clinic = SERVICE_KEY) or of one clinic."""
    page = Page("service" if clinic == SERVICE_KEY else f"clinic-{clinic}")
    _kpi_sections(page, sections, clinic, period)
    _outcome_section(page, sections["outcomes"], clinic, period)
    _effect_section(page, sections["effect_size"], clinic)
    _retention_section(page, sections["retention"], clinic)
    _dose_section(page, sections["dose_response"], clinic)
    _completeness_section(page, sections["kpis"], clinic, period)
    _clinician_section(page, sections["clinicians"], clinic)
    _equity_section(page, sections["kpis"], clinic, period)
    _alerts_section(page, sections["alerts"], sections["backtest"], clinic, period)
    page.add(section("Methods", "", _methods_html(con, settings, period, run), "methods"))
    who = "Whole service" if clinic == SERVICE_KEY else f"Clinic {clinic}"
    links = ['<a href="../index.html">All reports</a>', '<a href="service.html">Service</a>']
    links += [f'<a href="clinic_{_slug(c)}.html">Clinic {_esc(c)}</a>' for c in clinics]
    page.title = f"Quality improvement report: {who}, {period.label()}"
    page.nav = " ".join(links)
    return page


@dataclass
class ReportResult:
    """What a report asset wrote."""

    main: Path
    pages: list[Path]
    sections: dict[str, str] = field(default_factory=dict)
    suppressed: int = 0
    static: list[Path] = field(default_factory=list)
    csv: list[Path] = field(default_factory=list)
    period: str = ""

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.pages)


def _footer(run: dict[str, Any]) -> str:
    return (
        f"Data cut date {_esc(run['as_of'])} · run {_esc(run['run_id'])} · small cells "
        "suppressed · pseudonymous ids only · this page makes no network requests"
    )


def build_qi_report(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    period_month: str | dt.date | None = None,
    logger: Any = None,
    meanwhile: Callable[[], None] | None = None,
) -> ReportResult:
    """Write the service page, one page per clinic and the published KPI CSV.

    The PNG/PDF export of the service page's figures (Chromium, several seconds,
    mostly waiting) starts its browser first, renders as soon as those figures
    exist, in a process of its own beside the clinic pages and ``meanwhile``
    (the caseload pages, in a full run).
    """
    logger = logger or log
    target = Path(settings.reports_dir) / QI_DIR
    with StaticFiles(target, logger) as static:
        return _build_qi_report(con, settings, period_month, meanwhile, target, static)


def _build_qi_report(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    period_month: str | dt.date | None,
    meanwhile: Callable[[], None] | None,
    target: Path,
    static: "StaticFiles",
) -> ReportResult:
    run = run_info(con)
    period = reporting_period(run["as_of"], period_month)
    sections = qi_sections(con, settings, period)
    clinics = _clinics(con)
    service_page = qi_page(con, settings, sections, period, run, SERVICE_KEY, clinics)
    static.render(service_page.figures)

    def pages() -> Iterator[tuple[str, PageText]]:
        for clinic in [SERVICE_KEY, *clinics]:
            page = (
                service_page
                if clinic == SERVICE_KEY
                else qi_page(con, settings, sections, period, run, clinic, clinics)
            )
            name = "service.html" if clinic == SERVICE_KEY else f"clinic_{_slug(clinic)}.html"
            yield (
                name,
                render_page(
                    title=page.title,
                    subtitle=f"Reporting period {_esc(period.label())}; "
                    f"trends {_esc(period.window_label())}; data cut date {_esc(run['as_of'])}",
                    nav=page.nav,
                    body=page.body(),
                    footer=_footer(run),
                    run_id=str(run["run_id"]),
                ),
            )

    def extra(folder: Path) -> list[Path]:
        written = []
        kpis = sections["kpis"].frame
        if kpis is not None:
            written.append(
                write_csv(kpis.drop(columns=["quantity"]), folder / "kpis_published.csv")
            )
        return written

    written, csvs = write_folder(target, pages(), extra)
    if meanwhile is not None:
        meanwhile()
    static_files = static.place(target / "static")
    write_index(Path(settings.reports_dir), run)
    return ReportResult(
        main=target / "service.html",
        pages=written,
        sections={name: s.status() for name, s in sections.items()},
        suppressed=suppressed_cells(s.frame for s in sections.values()),
        static=static_files,
        csv=csvs,
        period=period.month.strftime("%Y-%m"),
    )


# --------------------------------------------------------------------------
# writing: a folder at a time, all or nothing


def write_folder(
    target: Path,
    pages: Mapping[str, PageText] | Iterable[tuple[str, PageText]],
    extra: Callable[[Path], list[Path]] | None = None,
) -> tuple[list[Path], list[Path]]:
    """Write ``pages`` (name -> HTML as text or as UTF-8 pieces, or (name, HTML) pairs,
    written as they come so that a generator holds one page at a time) into a fresh
    sibling folder, then swap it in for ``target``.

    A failure leaves the previous reports as they were.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    # Leftovers of a run killed mid-write (other pids): a kill between the two renames
    # below leaves the previous reports only in '.old-<pid>': put them back first.
    for stale in sorted(target.parent.glob(f".{target.name}.old-*")):
        if not target.exists():
            stale.rename(target)
        else:
            shutil.rmtree(stale, ignore_errors=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    names: dict[str, None] = {}
    try:
        # A generator builds the next page in a second thread while this one writes
        # the last (each page carries plotly.js: 1.2 MB to 4.8 MB to copy).
        if isinstance(pages, Mapping):
            items: Iterable[tuple[str, PageText]] = pages.items()
        else:
            items = in_background(iter(pages), 2, "report-pages")
        for name, text in items:
            _write_page(tmp / name, text)
            names[name] = None
        others = extra(tmp) if extra else []
        if target.exists():
            target.rename(old)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return [target / n for n in names], [target / p.relative_to(tmp) for p in others]


def _write_page(path: Path, text: PageText) -> None:
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        with path.open("wb") as fh:
            fh.writelines(text)


def write_index(reports_dir: Path, run: Mapping[str, Any]) -> Path:
    """reports/index.html: links to every report page (no scripts)."""
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)

    def links(folder: str) -> str:
        files = sorted((reports_dir / folder).glob("*.html"))
        if folder == QI_DIR:
            files.sort(key=lambda p: (p.name != "service.html", p.name))
        items = "".join(f'<li><a href="{folder}/{p.name}">{_esc(p.stem)}</a></li>' for p in files)
        return f"<ul>{items}</ul>" if items else "<p>Not built yet.</p>"

    text = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\"><title>Outcome reports</title>"
        "<style>body{font-family:system-ui,Arial,sans-serif;margin:2rem;max-width:50rem}</style>"
        "</head><body><h1>Outcome reports</h1>"
        f"<p>Data cut date {_esc(run.get('as_of'))}, run {_esc(run.get('run_id'))}.</p>"
        f"<h2>Quality improvement report</h2>{links(QI_DIR)}"
        f"<h2>Clinician caseloads (pseudonymous ids; for the clinician)</h2>{links(CASELOAD_DIR)}"
        "</body></html>"
    )
    path = reports_dir / "index.html"
    tmp = reports_dir / f".index.html.tmp-{os.getpid()}"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------
# optional static export (kaleido + Chrome)

ENABLE_PDF_HINT = (
    "To also get PNG/PDF files of the QI figures, install a Chrome or Chromium "
    "(Debian/Ubuntu: apt-get install chromium) or point BROWSER_PATH at one; kaleido "
    "(pinned in the project) finds it. "
    "The HTML reports never need them."
)


def find_chrome() -> str | None:
    """A Chrome/Chromium binary, as kaleido would find it (BROWSER_PATH first)."""
    explicit = os.environ.get("BROWSER_PATH")
    if explicit and Path(explicit).exists():
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def static_export_available(logger: Any = None) -> bool:
    """Whether PNG/PDF files can be made here; if not, a log line says why and how."""
    logger = logger or log
    if os.environ.get("OUTCOMES_STATIC_EXPORT", "auto").lower() in ("off", "0", "false", "no"):
        logger.info("Static export skipped: OUTCOMES_STATIC_EXPORT is off.")
        return False
    try:
        import kaleido  # noqa: F401  (optional dependency, imported lazily)
    except ImportError:
        logger.info("Static export skipped: kaleido is not installed. " + ENABLE_PDF_HINT)
        return False
    if find_chrome() is None:
        logger.info("Static export skipped: no Chrome/Chromium found. " + ENABLE_PDF_HINT)
        return False
    return True


# The worker (assets/static_export.py) as a command; tests swap in a stand-in.
STATIC_EXPORT_COMMAND = [sys.executable, "-m", "assets.static_export"]
STATIC_EXPORT_TIMEOUT = 600  # seconds for the whole export (kaleido: 90 s an image)


class StaticExport:
    """PNG and PDF of the QI figures, made by a worker process beside the report.

    ``start`` launches the worker (and with it Chromium) before the report's
    tables are queried; ``render`` hands it the figures once they exist;
    ``wait`` collects the files. The files go to ``folder``; nothing here ever
    fails the report: a missing browser or a broken export is a log line.
    """

    def __init__(self, folder: Path, logger: Any = None) -> None:
        self.folder = Path(folder)
        self.logger = logger or log
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: Any = None
        self._paths: list[Path] = []

    def start(self) -> "StaticExport":
        if not static_export_available(self.logger):
            return self
        root = str(Path(__file__).resolve().parents[1])
        env = {
            **os.environ,
            "BROWSER_PATH": os.environ.get("BROWSER_PATH") or find_chrome() or "",
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
        }
        kopts: dict[str, Any] = {}
        if pio.defaults.plotlyjs:
            kopts["plotlyjs"] = str(pio.defaults.plotlyjs)
        if pio.defaults.mathjax is not None:
            mathjax = pio.defaults.mathjax
            kopts["mathjax"] = mathjax if isinstance(mathjax, bool) else str(mathjax)
        # Output to a file, not a pipe: a chatty browser can never block the worker.
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 (closed by wait())
        try:
            self._proc = subprocess.Popen(
                [*STATIC_EXPORT_COMMAND, json.dumps(kopts)],
                stdin=subprocess.PIPE,
                stdout=self._out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=root,
            )
        except OSError as exc:
            self.logger.warning(f"Static export failed to start ({exc}). {ENABLE_PDF_HINT}")
            self._out.close()
            self._proc = None
        return self

    def render(self, figs: Mapping[str, go.Figure | dict[str, Any]]) -> None:
        """Hand the figures to the worker: ``NN_<name>.png`` and ``.pdf`` in ``folder``."""
        if self._proc is None or self._proc.stdin is None or self._proc.stdin.closed:
            return
        items = []
        if figs:
            self.folder.mkdir(parents=True, exist_ok=True)
        for n, (name, fig) in enumerate(figs.items(), start=1):
            spec = fig.to_dict() if hasattr(fig, "to_dict") else fig
            for ext in ("png", "pdf"):
                path = self.folder / f"{n:02d}_{_slug(name)}.{ext}"
                opts = {
                    "format": ext,
                    "width": pio.defaults.default_width,
                    "height": pio.defaults.default_height,
                    "scale": pio.defaults.default_scale,
                }
                items.append((spec, str(path), opts))
                self._paths.append(path)
        payload = ",".join(
            f'{{"fig": {pio.to_json(spec, validate=False)}, "path": {json.dumps(path)}, '
            f'"opts": {json.dumps(opts)}}}'
            for spec, path, opts in items
        )
        try:
            with self._proc.stdin:
                if items:
                    self._proc.stdin.write(f'{{"items": [{payload}]}}'.encode())
        except OSError:  # the worker died early: wait() reports what it said
            pass

    def wait(self) -> list[Path]:
        """The files written (all of them, or none and a warning)."""
        proc = self._proc
        if proc is None:
            return []
        self._proc = None
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()  # no figures: the worker ends
        try:
            code = proc.wait(timeout=STATIC_EXPORT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = "timeout"
        self._out.seek(0)
        said = self._out.read().decode("utf-8", "replace")
        self._out.close()
        missing = [p for p in self._paths if not p.exists()]
        if code != 0 or missing:
            last = said.strip().splitlines()[-1:] or [f"exit code {code}"]
            self.logger.warning(
                f"Static export failed ({last[0][:300]}; {len(missing)} of "
                f"{len(self._paths)} files missing). {ENABLE_PDF_HINT}"
            )
            return []
        return list(self._paths)


def export_static(
    figs: Mapping[str, go.Figure | dict[str, Any]], folder: Path, logger: Any = None
) -> list[Path]:
    """PNG and PDF of each figure when kaleido and a Chrome are present; else a log line."""
    if not figs:
        return []
    export = StaticExport(folder, logger).start()
    export.render(figs)
    files = export.wait()
    if files:
        export.logger.info(f"Static export: {len(files)} files in {folder}")
    return files


class StaticFiles:
    """``StaticExport`` into a folder beside ``target``, moved under it at the end.

    The worker starts on entering (Chromium launches while the report's tables
    are queried), renders in its own process beside the pages (``render``), and
    ``place`` waits for it and moves the files into the published folder.
    Leaving the block any other way stops it and deletes its files.
    """

    def __init__(self, target: Path, logger: Any) -> None:
        self.folder = target.parent / f".{target.name}.static-{os.getpid()}"
        self.logger = logger or log
        self.export = StaticExport(self.folder, self.logger)

    def __enter__(self) -> "StaticFiles":
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        # Leftovers of a run killed mid-export (any pid, this one included).
        for stale in self.folder.parent.glob(f"{self.folder.name.rsplit('-', 1)[0]}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        self.export.start()
        return self

    def render(self, figs: Mapping[str, go.Figure | dict[str, Any]]) -> None:
        self.export.render(figs)

    def place(self, destination: Path) -> list[Path]:
        """Wait for the export and move its files to ``destination``; their new paths."""
        files = self.export.wait()
        if not files:
            return []
        shutil.rmtree(destination, ignore_errors=True)
        destination.parent.mkdir(parents=True, exist_ok=True)
        self.folder.rename(destination)
        self.logger.info(f"Static export: {len(files)} files in {destination}")
        return [destination / f.name for f in files]

    def __exit__(self, *exc: object) -> None:
        try:
            self.export.wait()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


# --------------------------------------------------------------------------
# clinician caseload pages (per-client views: pseudonymous ids, not aggregates)

OPEN_STATUSES = ("open", "disengaged")
ALERTS_SHOWN = 10  # per card; the rest are counted


@dataclass
class CaseloadFrames:
    """What the caseload cards show, as few rows as the cards need.

    Every frame but ``episodes`` and ``instruments`` has ``ep``, the row of its episode
    in ``episodes``, and is sorted by it, so a card reads its rows as one slice: filtering
    whole frames per episode made the pages quadratic in the number of open episodes.
    """

    episodes: pd.DataFrame  # open episodes, by clinician and episode id
    latest: pd.DataFrame  # latest score per episode and instrument, with the outcome so far
    main: pd.DataFrame  # per episode: the symptom instrument with the most scores
    trajectory: pd.DataFrame  # scores on the main instrument
    alliance: pd.DataFrame  # SRS scores
    sessions: pd.DataFrame  # sessions up to the data cut date
    alerts: pd.DataFrame | None  # the first ALERTS_SHOWN alerts, newest first, and n_alerts
    expected: pd.DataFrame | None  # expected trajectory on the main instrument
    instruments: pd.DataFrame
    missing: list[str]  # card parts whose mart is not built yet


CASELOAD_LATEST_SQL = """
WITH s AS (
    SELECT o.ep, s.episode_id, s.instrument, s.administered_at, s.total, s.session_number,
           row_number() OVER (PARTITION BY o.ep, s.instrument
                              ORDER BY s.administered_at DESC) AS k
    FROM marts.scores s JOIN _open_episodes o USING (episode_id)
    JOIN staging.instruments i ON i.code = s.instrument
)
SELECT s.ep, s.instrument, s.administered_at, s.total, s.session_number, $outcome
FROM s $outcome_join
WHERE s.k = 1
ORDER BY s.ep, s.instrument
"""
CASELOAD_OUTCOME_JOIN = """
LEFT JOIN (SELECT DISTINCT ON (episode_id, instrument) episode_id, instrument,
                  baseline_score, change, outcome_class
           FROM marts.episode_outcomes) eo
       ON eo.episode_id = s.episode_id AND eo.instrument = s.instrument
"""
CASELOAD_MAIN_SQL = """
SELECT ep, instrument FROM (
    SELECT o.ep, s.instrument, count(*) AS n
    FROM marts.scores s JOIN _open_episodes o USING (episode_id)
    JOIN staging.instruments i ON i.code = s.instrument
    WHERE i.construct = 'symptom'
    GROUP BY ALL
)
QUALIFY row_number() OVER (PARTITION BY ep ORDER BY n DESC, instrument) = 1
ORDER BY ep
"""
CASELOAD_ALERTS_SQL = """
SELECT ep, alert_type, raised_at, detail, n_alerts FROM (
    SELECT o.ep, a.alert_type, a.raised_at, a.detail,
           count(*) OVER (PARTITION BY o.ep) AS n_alerts,
           -- ties (alerts raised by one administration) in a fixed order
           row_number() OVER (PARTITION BY o.ep ORDER BY a.raised_at DESC, a.alert_type,
                              a.instrument, a.detail) AS k
    FROM marts.alerts a JOIN _open_episodes o USING (episode_id)
)
WHERE k <= $shown
ORDER BY ep, k
"""


def caseload_frames(con: duckdb.DuckDBPyConnection) -> CaseloadFrames | None:
    """The caseload's frames, aggregated in DuckDB; None while marts.episode_attendance or
    marts.scores is missing (other missing marts leave their part of each card out)."""
    tables = existing_tables(con)
    if _needs(tables, "marts.episode_attendance", "marts.scores"):
        return None
    episodes = con.execute(
        "SELECT a.episode_id, a.client_id, a.clinic_id, a.clinician_id, a.status, a.attended, "
        "a.no_show, a.late_cancelled, a.last_attended_at, e.start_date "
        "FROM marts.episode_attendance a JOIN staging.episodes e ON e.episode_id = a.episode_id "
        "WHERE a.status IN ('open', 'disengaged') ORDER BY a.clinician_id, a.episode_id"
    ).df()
    has_outcomes = "marts.episode_outcomes" in tables
    con.register(
        "_open_episodes", pd.DataFrame({"episode_id": episodes["episode_id"], "ep": episodes.index})
    )
    try:
        latest = _df(
            con,
            CASELOAD_LATEST_SQL.replace(
                "$outcome_join", CASELOAD_OUTCOME_JOIN if has_outcomes else ""
            ).replace(
                "$outcome",
                "eo.episode_id IS NOT NULL AS has_outcome, eo.baseline_score, eo.change, "
                "eo.outcome_class"
                if has_outcomes
                else "false AS has_outcome, NULL::DOUBLE AS baseline_score, "
                "NULL::DOUBLE AS change, NULL::VARCHAR AS outcome_class",
            ),
        )
        main = _df(con, CASELOAD_MAIN_SQL)
        con.register("_main", main)
        try:
            trajectory = _df(
                con,
                "SELECT m.ep, s.administered_at, s.total FROM marts.scores s "
                "JOIN _open_episodes o USING (episode_id) "
                "JOIN _main m ON m.ep = o.ep AND m.instrument = s.instrument "
                "ORDER BY m.ep, s.administered_at",
            )
            expected = (
                _df(
                    con,
                    "SELECT m.ep, t.administered_at, t.expected_score, t.tolerance_lower, "
                    "t.tolerance_upper FROM marts.expected_trajectory t "
                    "JOIN _open_episodes o USING (episode_id) "
                    "JOIN _main m ON m.ep = o.ep AND m.instrument = t.instrument "
                    "WHERE t.expected_score IS NOT NULL ORDER BY m.ep, t.administered_at",
                )
                if "marts.expected_trajectory" in tables
                else None
            )
        finally:
            con.unregister("_main")
        alliance = _df(
            con,
            "SELECT o.ep, s.administered_at, s.total FROM marts.scores s "
            "JOIN _open_episodes o USING (episode_id) "
            "JOIN staging.instruments i ON i.code = s.instrument "
            "WHERE s.instrument = $srs ORDER BY o.ep, s.administered_at",
            {"srs": SRS},
        )
        sessions = _df(
            con,
            "SELECT o.ep, s.scheduled_at, s.status FROM staging.sessions s "
            "JOIN _open_episodes o USING (episode_id) "
            "WHERE s.scheduled_at::DATE <= (SELECT as_of FROM staging.run_info) "
            "ORDER BY o.ep, s.scheduled_at",
        )
        alerts = (
            _df(con, CASELOAD_ALERTS_SQL, {"shown": ALERTS_SHOWN})
            if "marts.alerts" in tables
            else None
        )
    finally:
        con.unregister("_open_episodes")
    return CaseloadFrames(
        episodes=episodes,
        latest=latest,
        main=main,
        trajectory=trajectory,
        alliance=alliance,
        sessions=sessions,
        alerts=alerts,
        expected=expected,
        instruments=con.execute("SELECT * FROM staging.instruments").df(),
        missing=[
            name
            for name, table in (
                ("alerts", "marts.alerts"),
                ("outcomes", "marts.episode_outcomes"),
                ("expected", "marts.expected_trajectory"),
            )
            if table not in tables
        ],
    )


def _bounds(frame: pd.DataFrame, n_episodes: int) -> np.ndarray:
    """Rows of open episode i in ``frame`` (sorted by ``ep``): ``bounds[i]:bounds[i + 1]``."""
    return np.searchsorted(frame["ep"].to_numpy(), np.arange(n_episodes + 1))


@dataclass
class _Slices:
    """A frame sorted by ``ep`` as lists (times as ``figures.times_text``, converted for
    the whole column at once), sliced per open episode."""

    columns: dict[str, list[Any]]
    bounds: list[int]

    @classmethod
    def of(cls, frame: pd.DataFrame, n_episodes: int) -> "_Slices":
        columns = {
            c: figures.times_text(frame[c])
            if pd.api.types.is_datetime64_any_dtype(frame[c])
            else frame[c].tolist()
            for c in frame.columns
            if c != "ep"
        }
        return cls(columns, _bounds(frame, n_episodes).tolist())

    def count(self, i: int) -> int:
        return self.bounds[i + 1] - self.bounds[i]

    def rows(self, i: int) -> dict[str, list[Any]]:
        a, b = self.bounds[i], self.bounds[i + 1]
        return {c: v[a:b] for c, v in self.columns.items()}


def _grouped_html(frame: pd.DataFrame, html_rows: list[str], n_episodes: int) -> list[str]:
    """Per open episode, the HTML of its rows of ``frame`` (sorted by ``ep``), joined."""
    bounds = _bounds(frame, n_episodes).tolist()
    return ["".join(html_rows[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]


def _days(values: pd.Series, missing: str = "NaT") -> list[str]:
    """Timestamps as YYYY-MM-DD, the whole column at once."""
    return pd.to_datetime(values).dt.strftime("%Y-%m-%d").fillna(missing).tolist()


class _Caseload:
    """The caseload cards of all open episodes.

    The HTML of each card's head, score table and alert list is built for every episode
    in one pass over each frame; a card then joins it and slices its chart's rows.
    """

    def __init__(self, frames: CaseloadFrames):
        self.frames = frames
        n = len(frames.episodes)
        self.ids: list[str] = frames.episodes["episode_id"].tolist()
        self.instruments: dict[str, dict[str, Any]] = {}
        for row in frames.instruments.to_dict("records"):
            self.instruments.setdefault(row["code"], row)
        self.heads = self._heads()
        self.tables = self._tables()
        self.alert_counts = np.zeros(n, dtype=int)
        self.alert_items = [""] * n
        if frames.alerts is not None:
            alerts = frames.alerts
            self.alert_counts[alerts["ep"].to_numpy()] = alerts["n_alerts"].to_numpy()
            self.alert_items = self._alert_items()
        self.main: list[str | None] = [None] * n
        main = frames.main
        for ep, code in zip(main["ep"].tolist(), main["instrument"].tolist(), strict=True):
            self.main[ep] = code
        self.trajectory = _Slices.of(frames.trajectory, n)
        self.alliance = _Slices.of(frames.alliance, n)
        self.sessions = _Slices.of(frames.sessions, n)
        self.expected = None if frames.expected is None else _Slices.of(frames.expected, n)

    def _heads(self) -> list[str]:
        """Per open episode, its heading and attendance line."""
        e = self.frames.episodes
        columns = zip(
            e["episode_id"].tolist(),
            e["client_id"].tolist(),
            e["status"].tolist(),
            _days(e["start_date"]),
            e["attended"].tolist(),
            e["no_show"].tolist(),
            e["late_cancelled"].tolist(),
            _days(e["last_attended_at"], missing="none"),
            strict=True,
        )
        return [
            f"<h3>Episode {_esc(eid)} · client {_esc(client)} · {_esc(status)}</h3>"
            f"<p class='lead'>Started {start}; {int(attended)} attended, {int(no_show)} "
            f"no-show, {int(late)} late-cancelled; last attended {last}.</p>"
            for eid, client, status, start, attended, no_show, late, last in columns
        ]

    def _tables(self) -> list[str]:
        """Per open episode, the rows of its table: the latest score on each instrument,
        caseness at that score and the outcome so far."""
        latest = self.frames.latest
        columns = zip(
            latest["instrument"].tolist(),
            latest["total"].tolist(),
            _days(latest["administered_at"]),
            latest["session_number"].tolist(),
            latest["has_outcome"].tolist(),
            latest["change"].tolist(),
            latest["baseline_score"].tolist(),
            latest["outcome_class"].tolist(),
            strict=True,
        )
        rows = []
        escaped = {code: _esc(code) for code in set(latest["instrument"])}
        for code, total, day, session, has_outcome, change, baseline, cls in columns:
            info = self.instruments.get(code, {})
            case = ""
            cutoff = figures._num(info.get("cutoff"))
            if cutoff is not None:
                at = total >= cutoff if info.get("higher_is_worse") else total < cutoff
                case = (
                    ("low alliance" if info.get("construct") == "alliance" else "at caseness")
                    if at
                    else "no"
                )
            outcome = ""
            if has_outcome:
                change = figures._num(change)
                outcome = (
                    f"{change:+g} since baseline {baseline:g}; {str(cls).replace('_', ' ')}"
                    if change is not None
                    else "baseline only"
                )
            rows.append(
                f"<tr><td>{escaped[code]}</td><td class='num'>{total:g}</td><td>{day}</td>"
                f"<td class='num'>{_esc(session)}</td><td>{case}</td>"  # case: plain words
                f"<td>{_esc(outcome)}</td></tr>"
            )
        return _grouped_html(latest, rows, len(self.ids))

    def _alert_items(self) -> list[str]:
        """Per open episode, the list items of its shown alerts, newest first."""
        alerts = self.frames.alerts
        items = [
            f"<li class='alert'><strong>{_esc(ALERT_TYPES.get(t, t))}</strong> {day}: "
            f"{_esc(detail)}</li>"
            for t, day, detail in zip(
                alerts["alert_type"].tolist(),
                _days(alerts["raised_at"]),
                alerts["detail"].tolist(),
                strict=True,
            )
        ]
        return _grouped_html(alerts, items, len(self.ids))

    def card(self, page: Page, i: int) -> str:
        """The card of open episode ``i``: head, score table, open alerts, trajectory."""
        eid = self.ids[i]
        table = (
            "<table><tr><th>Instrument</th><th>Latest</th><th>Date</th><th>Session</th>"
            "<th>Caseness</th><th>So far</th></tr>" + self.tables[i] + "</table>"
            if self.tables[i]
            else message("No scores yet.")
        )
        alert_html = ""
        n_alerts = int(self.alert_counts[i])
        if n_alerts:
            more = f"<li>and {n_alerts - ALERTS_SHOWN} more</li>" if n_alerts > ALERTS_SHOWN else ""
            alert_html = f"<h4>Open alerts ({n_alerts})</h4><ul>{self.alert_items[i]}{more}</ul>"
        main = self.main[i]
        if main is None:
            chart = message("No symptom scores to draw yet.")
        else:
            spec = figures.trajectory_spec(
                self.trajectory.rows(i),
                self.instruments.get(main, {}),
                sessions=self.sessions.rows(i),
                alliance=self.alliance.rows(i) if self.alliance.count(i) else None,
                alliance_instrument=self.instruments.get(SRS, {}),
                expected=None if self.expected is None else self.expected.rows(i),
                height=360,
                legend_below=True,
            )
            chart = page.figure(spec, f"trajectory {eid}")
        return (
            f'<div class="episode" id="ep-{_slug(eid)}">{self.heads[i]}<div class="grid2">'
            f"<div>{table}{alert_html}</div><div>{chart}</div></div></div>"
        )

    def pages(self) -> Iterator[tuple[Any, list[int]]]:
        """(clinician, the rows of their open episodes, episodes with alerts first)."""
        by_clinician: dict[Any, list[int]] = {}
        for i, clinician in enumerate(self.frames.episodes["clinician_id"].tolist()):
            if clinician is not None and clinician == clinician:  # as groupby: no missing key
                by_clinician.setdefault(clinician, []).append(i)
        for clinician in sorted(by_clinician):
            rows = by_clinician[clinician]
            yield clinician, sorted(rows, key=lambda i: (not self.alert_counts[i], self.ids[i]))


def build_caseload_reports(
    con: duckdb.DuckDBPyConnection, settings: Settings, logger: Any = None
) -> ReportResult:
    """One page per clinician with open episodes: latest scores, open alerts, trajectories.

    Pages are rendered and written one at a time (each holds plotly.js's basic
    bundle, 1.2 MB: ``plotly_js``).
    """
    run = run_info(con)
    frames = caseload_frames(con)
    target = Path(settings.reports_dir) / CASELOAD_DIR
    sections: dict[str, str] = {}

    def pages() -> Iterator[tuple[str, PageText]]:
        if frames is None:
            sections["caseload"] = (
                "not available (missing marts.episode_attendance or marts.scores)"
            )
            return
        caseload = _Caseload(frames)
        clinic_ids = frames.episodes["clinic_id"].tolist()
        note = message("Not available yet: " + ", ".join(frames.missing)) if frames.missing else ""
        for clinician, rows in caseload.pages():
            page = Page(f"clinician-{clinician}")
            for i in rows:
                page.add(caseload.card(page, i))
            clinics = ", ".join(sorted({clinic_ids[i] for i in rows}))
            body = (
                f"<p class='lead'>{len(rows)} open episode(s) as of {_esc(run['as_of'])}, "
                "episodes with alerts first. Pseudonymous ids only; per-client views for the "
                "clinician, not for publication.</p>" + note + page.body()
            )
            sections[str(clinician)] = f"{len(rows)} open episodes"
            yield (
                f"clinician_{_slug(clinician)}.html",
                render_page(
                    title=f"Caseload: clinician {clinician}",
                    subtitle=f"Clinic {_esc(clinics)} · data cut date {_esc(run['as_of'])}",
                    nav='<a href="../index.html">All reports</a>',
                    body=body,
                    footer=_footer(run),
                    run_id=str(run["run_id"]),
                    bundle="basic",  # trajectory charts: scatter traces only
                ),
            )

    with _cycle_collector_paused():
        written, _ = write_folder(target, pages())
    write_index(Path(settings.reports_dir), run)
    return ReportResult(
        main=Path(settings.reports_dir) / "index.html", pages=written, sections=sections
    )


@contextlib.contextmanager
def _cycle_collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (reference counting still frees everything).

    The cards allocate millions of small dicts and lists, none in a reference cycle; the
    collector's passes over them and over the rest of the process took a quarter of the
    cards' time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# --------------------------------------------------------------------------
# Dagster assets


class QIReportConfig(dg.Config):
    period: str = Field(
        default="",
        description="Reporting month YYYY-MM; empty: the last full month up to the data cut date",
    )


def _report_metadata(result: ReportResult) -> dict[str, Any]:
    sizes = {str(p.name): p.stat().st_size for p in result.pages}
    return {
        "path": dg.MetadataValue.path(str(result.main)),
        "size_bytes": dg.MetadataValue.int(
            result.main.stat().st_size if result.main.exists() else 0
        ),
        "pages": dg.MetadataValue.int(len(result.pages)),
        "total_bytes": dg.MetadataValue.int(sum(sizes.values())),
        "page_sizes": dg.MetadataValue.json(sizes),
        "sections": dg.MetadataValue.json(result.sections),
    }


QI_KEY = dg.AssetKey(["reports", "qi_report"])
CASELOAD_KEY = dg.AssetKey(["reports", "clinician_caseload"])


@dg.multi_asset(
    name="reports",
    pool=WAREHOUSE_POOL,
    can_subset=True,
    specs=[
        dg.AssetSpec(
            QI_KEY,
            group_name=GROUP,
            deps=asset_keys(
                "staging/episodes",
                "marts/clinic_kpis",
                "marts/clinic_kpis_episodes",
                "marts/episode_outcomes",
                "marts/alerts",
                "marts/alliance_monthly",
                "marts/session_alliance",
                "marts/clinician_adjusted_outcomes",
                "marts/retention_curve",
                "marts/dose_response",
                "marts/etr_backtest",
                "marts/etr_backtest_episodes",
            ),
            kinds={"plotly", "html"},
            description=(
                "Service quality-improvement report: one self-contained HTML page for the whole "
                "service and one per clinic (reports/qi_report/), for the last full month (trends "
                "over 12 months): KPI tiles, trends, outcome categories, effect size vs "
                "benchmark, retention, dose-response, measurement completeness, clinician funnel "
                "plot, equity, alerts and a methods box. Every number goes through small-cell "
                "suppression; opens offline."
            ),
        ),
        dg.AssetSpec(
            CASELOAD_KEY,
            group_name=GROUP,
            deps=asset_keys(
                "staging/episodes",
                "staging/sessions",
                "marts/episode_attendance",
                "marts/scores",
                "marts/episode_outcomes",
                "marts/alerts",
                "marts/expected_trajectory",
            ),
            kinds={"plotly", "html"},
            description=(
                "One HTML page per clinician (reports/therapist_caseload/): each open episode "
                "with its latest scores, open alerts and a small trajectory (cutoff, "
                "reliable-change band, expected range, SRS, attended and missed sessions). "
                "Pseudonymous ids only."
            ),
        ),
    ],
)
def report_assets(
    context: dg.AssetExecutionContext, config: QIReportConfig, outcomes: OutcomesResource
) -> Iterator[dg.MaterializeResult]:
    """Both reports in one step: the caseload pages are written while Chromium renders
    the QI report's PNG/PDF files (mostly waiting, not computing), instead of after.

    A failing caseload still lets the QI report finish and materialize; its error is
    raised afterwards.
    """
    settings = outcomes.settings
    selected = context.selected_asset_keys
    caseload: list[ReportResult] = []
    caseload_error: list[BaseException] = []

    def write_caseload() -> None:
        try:
            caseload.append(build_caseload_reports(con, settings, context.log))
        except Exception as exc:  # noqa: BLE001 (raised below, once the QI report is done)
            caseload_error.append(exc)

    with outcomes.connect(read_only=True) as con:
        if QI_KEY in selected:
            meanwhile = write_caseload if CASELOAD_KEY in selected else None
            result = build_qi_report(con, settings, config.period or None, context.log, meanwhile)
            yield _qi_materialization(context, result, settings)
        elif CASELOAD_KEY in selected:
            write_caseload()
    if caseload_error:
        raise caseload_error[0]
    if caseload:
        result = caseload[0]
        context.log.info(f"Clinician caseload pages: {len(result.pages)} in {result.main.parent}")
        metadata = _report_metadata(result)
        metadata["path"] = dg.MetadataValue.path(str(Path(settings.reports_dir) / CASELOAD_DIR))
        yield dg.MaterializeResult(asset_key=CASELOAD_KEY, metadata=metadata)


def _qi_materialization(
    context: dg.AssetExecutionContext, result: ReportResult, settings: Settings
) -> dg.MaterializeResult:
    context.log.info(f"QI report (open offline in a browser): {result.main}")
    metadata = _report_metadata(result)
    metadata["period"] = dg.MetadataValue.text(result.period)
    metadata["suppressed_cells"] = dg.MetadataValue.int(result.suppressed)
    metadata["min_cell_size"] = dg.MetadataValue.int(settings.min_cell_size)
    metadata["static_files"] = dg.MetadataValue.int(len(result.static))
    if result.csv:
        metadata["kpis_csv"] = dg.MetadataValue.path(str(result.csv[0]))
    return dg.MaterializeResult(asset_key=QI_KEY, metadata=metadata)
