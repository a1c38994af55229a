"""Engagement curves as tables the reports plot: retention (Kaplan-Meier survival of
"still attending") and dose-response (cumulative share reliably improved by session).
Definitions: docs/metrics.md (section 6).
"""

from __future__ import annotations

import dagster as dg
import duckdb
import numpy as np
import pandas as pd

from assets.service_kpis import (
    CI_LEVEL,
    SERVICE_KEY,
    asset_keys,
    kpi_params,
    null_for_nan,
    params_used,
    table_metadata,
)
from assets.sql_runner import load_sql, replace_tables
from pipelines.resources import WAREHOUSE_POOL, OutcomesResource

RETENTION_TABLE = "marts.retention_curve"
DOSE_TABLE = "marts.dose_response"
RETENTION_DTYPES = {
    "time_scale": "object",
    "clinic_id": "object",
    "time": "int64",
    "n_at_risk": "int64",
    "n_events": "int64",
    "n_censored": "int64",
    "survival": "float64",
    "ci_lower": "float64",
    "ci_upper": "float64",
    "n_clients_at_risk": "int64",
}


def kaplan_meier_table(durations: pd.Series, events: pd.Series, clients: pd.Series) -> pd.DataFrame:
    """Product-limit survival at whole times 0..max duration, with lifelines' 95% CI.

    S(t) = prod over event times t_j <= t of (1 - d_j / n_j), n_j = durations >= t_j.
    The CI is lifelines' default exponential Greenwood ("log-log") interval. At each
    whole time t: n_at_risk = durations >= t, events and censorings in (t - 1, t].
    """
    durations = durations.astype(float).to_numpy()
    events = events.astype(bool).to_numpy()
    clients = clients.to_numpy()
    timeline = np.arange(0, int(np.floor(durations.max())) + 1)
    from lifelines import KaplanMeierFitter  # noqa: PLC0415 (slow import)

    kmf = KaplanMeierFitter(alpha=1 - CI_LEVEL).fit(durations, events, timeline=timeline)
    ci = kmf.confidence_interval_survival_function_
    rows = []
    for t in timeline:
        window = (durations > t - 1) & (durations <= t)
        at_risk = durations >= t
        rows.append(
            {
                "time": int(t),
                "n_at_risk": int(at_risk.sum()),
                "n_events": int((window & events).sum()),
                "n_censored": int((window & ~events).sum()),
                "survival": float(kmf.survival_function_.iloc[t, 0]),
                "ci_lower": float(ci.iloc[t, 0]),
                "ci_upper": float(ci.iloc[t, 1]),
                "n_clients_at_risk": int(len(set(clients[at_risk]))),
            }
        )
    return pd.DataFrame(rows)


def retention_curve(episodes: pd.DataFrame) -> pd.DataFrame:
    """Kaplan-Meier tables by time scale (sessions, weeks), overall and by clinic."""
    if episodes.empty:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in RETENTION_DTYPES.items()})
    frames = []
    groups = [(SERVICE_KEY, episodes)] + list(episodes.groupby("clinic_id", sort=True))
    for scale in ("sessions", "weeks"):
        for clinic_id, group in groups:
            table = kaplan_meier_table(group[scale], group["event"], group["client_id"])
            frames.append(table.assign(time_scale=scale, clinic_id=clinic_id))
    return null_for_nan(pd.concat(frames, ignore_index=True)[list(RETENTION_DTYPES)])


def build_retention_curve(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Write marts.retention_curve from marts.episode_attendance."""
    episodes = con.sql(load_sql("retention_curve_episodes")).df()
    return replace_tables(con, {RETENTION_TABLE: retention_curve(episodes)})


def build_dose_response(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Write marts.dose_response (needs marts.clinic_kpis_episodes)."""
    sql = load_sql("dose_response")
    return replace_tables(con, {DOSE_TABLE: sql}, params_used(sql, kpi_params()))


@dg.asset(
    pool=WAREHOUSE_POOL,
    key=["marts", "retention_curve"],
    group_name="marts",
    kinds={"duckdb", "python"},
    deps=asset_keys("marts/episode_attendance"),
    description=(
        "Kaplan-Meier survival of 'still attending' (lifelines), by attended sessions and by "
        "weeks since the first attended session, overall ('__service__') and by clinic: "
        "survival, 95% CI, numbers at risk, events (dropout) and censored (open or other "
        "ending) at each whole time."
    ),
)
def retention_curve_asset(outcomes: OutcomesResource) -> dg.MaterializeResult:
    with outcomes.connect() as con:
        build_retention_curve(con)
        metadata = table_metadata(con, RETENTION_TABLE, "time_scale, clinic_id, time")
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    pool=WAREHOUSE_POOL,
    key=["marts", "dose_response"],
    group_name="marts",
    kinds={"duckdb", "sql"},
    deps=asset_keys(
        "marts/scores",
        "marts/episode_outcomes",
        "marts/episode_attendance",
        "marts/clinic_kpis_episodes",
    ),
    description=(
        "Cumulative share of finished, paired episodes reliably improved by session number, "
        "per symptom instrument (PHQ-9 first in reports), by clinic and for the service, "
        "with numerator and denominator."
    ),
)
def dose_response_asset(outcomes: OutcomesResource) -> dg.MaterializeResult:
    with outcomes.connect() as con:
        build_dose_response(con)
        metadata = table_metadata(con, DOSE_TABLE)
    return dg.MaterializeResult(metadata=metadata)
