"""Clinician-level summaries: caseload, attendance, outcome rates and a
severity-adjusted effect size with its uncertainty (ACORN style).

Clinicians are compared on change adjusted for baseline severity, with a
confidence interval and funnel limits, never as a bare league table
(METRICS.md, Symptom outcomes). Method and citations: docs/metrics.md (section 6).
"""

from __future__ import annotations

import math

import dagster as dg
import duckdb
import numpy as np
import pandas as pd

from assets.service_kpis import (
    CI_LEVEL,
    DEPRESSION_INSTRUMENT,
    asset_keys,
    null_for_nan,
    params_used,
    table_metadata,
    z_value,
)
from assets.sql_runner import load_sql, replace_tables
from pipelines.resources import WAREHOUSE_POOL, OutcomesResource

PRIMARY_INSTRUMENT = DEPRESSION_INSTRUMENT  # the instrument clinician_summary carries
FUNNEL_LEVELS = (0.95, 0.998)  # funnel-plot control limits (about 2 and 3 SD)
ADJUSTED_TABLE = "marts.clinician_adjusted_outcomes"
SUMMARY_TABLE = "marts.clinician_summary"
GROUP = ["clinic_id", "clinician_id"]
ADJUSTED_COLUMNS = [
    "instrument",
    "clinic_id",
    "clinician_id",
    "n_episodes",
    "n_clients",
    "mean_baseline",
    "mean_improvement",
    "mean_residual",
    "mean_residual_se",
    "mean_residual_ci_low",
    "mean_residual_ci_high",
    "saes",
    "saes_se",
    "saes_ci_low",
    "saes_ci_high",
    "service_saes",
    "funnel_95_low",
    "funnel_95_high",
    "funnel_998_low",
    "funnel_998_high",
    "model_n",
    "model_intercept",
    "model_slope",
    "model_r_squared",
    "residual_sd",
    "reference_mean_improvement",
    "reference_sd_baseline",
]


def adjusted_outcomes(reference: pd.DataFrame) -> pd.DataFrame:
    """Severity-adjusted change per (instrument, clinic, clinician).

    Per instrument, over the whole service's reference sample, fit
    ``improvement = a + b * baseline`` by OLS (statsmodels). An episode's residual is
    its change beyond what its baseline predicts; its severity-adjusted effect size is
    ``(mean improvement of the reference + residual) / SD of reference baselines``
    (ACORN SAES). A clinician's values are the means over their episodes; the
    standard error uses the model's pooled residual SD (sigma / sqrt(n)), so that
    small caseloads get wide intervals and funnel limits rather than noisy SDs.
    Instruments with fewer than 3 episodes or no spread of baselines are skipped.
    """
    frames = []
    for instrument, sample in reference.groupby("instrument", sort=True):
        sample = sample.reset_index(drop=True)
        baseline = sample["baseline_score"].astype(float)
        improvement = sample["improvement"].astype(float)
        if len(sample) < 3 or not baseline.std(ddof=1) > 0:
            continue
        import statsmodels.api as sm  # noqa: PLC0415 (slow import, only needed here)
        from scipy import stats  # noqa: PLC0415

        model = sm.OLS(improvement.to_numpy(), sm.add_constant(baseline.to_numpy())).fit()
        sigma = math.sqrt(model.mse_resid)
        mean_ref = float(improvement.mean())
        sd_ref = float(baseline.std(ddof=1))
        t_crit = float(stats.t.ppf(0.5 + CI_LEVEL / 2, model.df_resid))
        sample = sample.assign(residual=model.resid)
        per = (
            sample.groupby(GROUP, sort=True)
            .agg(
                n_episodes=("episode_id", "size"),
                n_clients=("client_id", "nunique"),
                mean_baseline=("baseline_score", "mean"),
                mean_improvement=("improvement", "mean"),
                mean_residual=("residual", "mean"),
            )
            .reset_index()
        )
        se = sigma / np.sqrt(per["n_episodes"])
        per["mean_residual_se"] = se
        per["mean_residual_ci_low"] = per["mean_residual"] - t_crit * se
        per["mean_residual_ci_high"] = per["mean_residual"] + t_crit * se
        per["saes"] = (mean_ref + per["mean_residual"]) / sd_ref
        per["saes_se"] = se / sd_ref
        per["saes_ci_low"] = per["saes"] - t_crit * per["saes_se"]
        per["saes_ci_high"] = per["saes"] + t_crit * per["saes_se"]
        per["service_saes"] = mean_ref / sd_ref
        for level in FUNNEL_LEVELS:
            tag = f"{level * 100:g}".replace(".", "")
            z = z_value(level)
            per[f"funnel_{tag}_low"] = per["service_saes"] - z * per["saes_se"]
            per[f"funnel_{tag}_high"] = per["service_saes"] + z * per["saes_se"]
        per["instrument"] = instrument
        per["model_n"] = int(model.nobs)
        per["model_intercept"] = float(model.params[0])
        per["model_slope"] = float(model.params[1])
        per["model_r_squared"] = float(model.rsquared)
        per["residual_sd"] = sigma
        per["reference_mean_improvement"] = mean_ref
        per["reference_sd_baseline"] = sd_ref
        frames.append(per[ADJUSTED_COLUMNS])
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in ADJUSTED_COLUMNS})
    return pd.concat(frames, ignore_index=True)


def _dtype(column: str) -> str:
    if column in ("instrument", "clinic_id", "clinician_id"):
        return "object"
    return "int64" if column in ("n_episodes", "n_clients", "model_n") else "float64"


def build_clinician_marts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Write marts.clinician_adjusted_outcomes and marts.clinician_summary together."""
    reference = con.sql(load_sql("clinician_summary_reference")).df()
    adjusted = adjusted_outcomes(reference)
    summary_sql = load_sql("clinician_summary")
    frame = null_for_nan(adjusted) if len(adjusted) else adjusted
    return replace_tables(
        con,
        {ADJUSTED_TABLE: frame, SUMMARY_TABLE: summary_sql},
        params_used(summary_sql, {"primary_instrument": PRIMARY_INSTRUMENT}),
    )


@dg.multi_asset(
    pool=WAREHOUSE_POOL,
    specs=[
        dg.AssetSpec(
            ["marts", "clinician_adjusted_outcomes"],
            group_name="marts",
            kinds={"duckdb", "python"},
            deps=asset_keys("marts/episode_outcomes", "marts/clinic_kpis_episodes"),
            description=(
                "Severity-adjusted outcomes per symptom instrument and clinician (ACORN "
                "style): OLS of improvement on baseline across the service, each clinician's "
                "mean residual and severity-adjusted effect size with SE, 95% CI and funnel "
                "limits, for caterpillar and funnel plots."
            ),
        ),
        dg.AssetSpec(
            ["marts", "clinician_summary"],
            group_name="marts",
            kinds={"duckdb", "sql"},
            deps=asset_keys(
                "marts/episode_attendance",
                "marts/clinic_kpis_episodes",
                "marts/clinician_adjusted_outcomes",
            ),
            description=(
                "One row per clinic and clinician: caseload (open episodes as of the data cut "
                "date, episodes in total), attendance and DNA rates, dropout, NHS-style outcome "
                "rates with numerators and denominators, and the PHQ-9 severity-adjusted "
                "effect size with its 95% CI."
            ),
        ),
    ],
    can_subset=False,
)
def clinician_marts(outcomes: OutcomesResource):
    with outcomes.connect() as con:
        build_clinician_marts(con)
        adjusted_meta = table_metadata(con, ADJUSTED_TABLE)
        summary_meta = table_metadata(con, SUMMARY_TABLE)
    yield dg.MaterializeResult(
        asset_key=dg.AssetKey(["marts", "clinician_adjusted_outcomes"]), metadata=adjusted_meta
    )
    yield dg.MaterializeResult(
        asset_key=dg.AssetKey(["marts", "clinician_summary"]), metadata=summary_meta
    )
