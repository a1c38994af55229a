"""Alliance marts: is the therapeutic relationship working? (METRICS.md "Alliance").

SRS and WAI-SR administrations per session, per episode and per clinician and
month, and the clinic's own alliance-outcome association next to the published
anchor. Thresholds come from staging.instruments (SRS cutoff) and Settings
(alliance_drop_points, early_alliance_sessions).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import dagster as dg
import duckdb
import pandas as pd

from assets.core_marts import GROUP, _mart, _staging
from assets.core_marts import _result as core_result
from assets.sql_runner import load_sql, replace_tables
from pipelines.resources import WAREHOUSE_POOL, OutcomesResource
from schemas.settings import Settings

SRS = "SRS"
WAI_SR = "WAI-SR"
CONFIDENCE = 0.95
# Flückiger, Del Re, Wampold & Horvath (2018), "The alliance in adult
# psychotherapy: a meta-analytic synthesis", Psychotherapy 55(4), 316-340.
ANCHOR_R = 0.28
ANCHOR_SOURCE = "Flückiger et al. 2018, Psychotherapy 55(4): alliance-outcome r = .278"


# --------------------------------------------------------------------------
# helpers shared by the alliance, goals and practice modules


def mart_result(con: duckdb.DuckDBPyConnection, table: str, rows: int) -> dg.MaterializeResult:
    """Row count and preview of one written table (the core marts' metadata helper)."""
    metadata = core_result(con, table, rows).metadata
    return dg.MaterializeResult(asset_key=dg.AssetKey(table.split(".")), metadata=metadata)


def pearson_with_ci(
    x: Sequence[float], y: Sequence[float], confidence: float = CONFIDENCE
) -> dict[str, float | int | None]:
    """Pearson r with a Fisher-z confidence interval (scipy), None where undefined.

    r needs at least 3 pairs and variation in both variables; the interval
    needs at least 4 (its standard error is 1 / sqrt(n - 3)).
    """
    n = len(x)
    out: dict[str, float | int | None] = dict(n=n, r=None, ci_low=None, ci_high=None, p_value=None)
    if n < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from scipy import stats  # noqa: PLC0415 (slow import, only needed here)

        result = stats.pearsonr(x, y)
    out["r"] = float(result.statistic)
    out["p_value"] = float(result.pvalue)
    if n >= 4:
        ci = result.confidence_interval(confidence_level=confidence)
        out["ci_low"], out["ci_high"] = float(ci.low), float(ci.high)
    return out


def outcome_by_band(con: duckdb.DuckDBPyConnection, band_select: str) -> str:
    """SQL of outcome rates by band; ``band_select`` yields (episode_id, band, band_order).

    The band query becomes the temporary view ``episode_band`` that
    ``assets/sql/outcome_by_band.sql`` reads.
    """
    con.execute(f"CREATE OR REPLACE TEMP VIEW episode_band AS {band_select}")
    return load_sql("outcome_by_band")


# --------------------------------------------------------------------------
# builders (plain functions: the assets call them, tests call them directly)


def build_session_alliance(con: duckdb.DuckDBPyConnection, settings: Settings) -> dict[str, int]:
    """Write marts.session_alliance (needs marts.scores); rupture threshold from settings."""
    return replace_tables(
        con,
        {"marts.session_alliance": load_sql("session_alliance")},
        {"srs": SRS, "drop_points": settings.alliance_drop_points},
    )


def build_episode_alliance(con: duckdb.DuckDBPyConnection, settings: Settings) -> dict[str, int]:
    """Write marts.episode_alliance (needs marts.session_alliance)."""
    return replace_tables(
        con,
        {"marts.episode_alliance": load_sql("episode_alliance")},
        {"srs": SRS, "wai": WAI_SR, "early_n": settings.early_alliance_sessions},
    )


def build_alliance_monthly(
    con: duckdb.DuckDBPyConnection, settings: Settings | None = None
) -> dict[str, int]:
    """Write marts.alliance_monthly (needs marts.session_alliance)."""
    return replace_tables(con, {"marts.alliance_monthly": load_sql("alliance_monthly")})


CORRELATION_COLUMNS = {
    "instrument": "string",
    "alliance_measure": "string",
    "early_sessions": "Int64",
    "episodes": "Int64",
    "clients": "Int64",
    "mean_early_srs": "Float64",
    "mean_improvement": "Float64",
    "r": "Float64",
    "ci_low": "Float64",
    "ci_high": "Float64",
    "confidence": "Float64",
    "p_value": "Float64",
    "anchor_r": "Float64",
    "anchor_source": "string",
}


def alliance_correlations(pairs: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """One row per symptom instrument: early SRS vs improvement, with the anchor r."""
    rows = []
    for instrument, group in pairs.groupby("instrument", sort=True):
        x = group["early_srs"].astype(float).tolist()
        y = group["improvement"].astype(float).tolist()
        corr = pearson_with_ci(x, y)
        rows.append(
            {
                "instrument": instrument,
                "alliance_measure": SRS,
                "early_sessions": settings.early_alliance_sessions,
                "episodes": corr["n"],
                "clients": group["client_id"].nunique(),
                "mean_early_srs": sum(x) / len(x),
                "mean_improvement": sum(y) / len(y),
                "r": corr["r"],
                "ci_low": corr["ci_low"],
                "ci_high": corr["ci_high"],
                "confidence": CONFIDENCE,
                "p_value": corr["p_value"],
                "anchor_r": ANCHOR_R,
                "anchor_source": ANCHOR_SOURCE,
            }
        )
    frame = pd.DataFrame(rows, columns=list(CORRELATION_COLUMNS))
    return frame.astype(CORRELATION_COLUMNS)


def build_alliance_outcome(con: duckdb.DuckDBPyConnection, settings: Settings) -> dict[str, int]:
    """Write marts.alliance_outcome and marts.alliance_outcome_bands in one transaction."""
    pairs = con.execute(load_sql("alliance_outcome_pairs")).df()
    bands_sql = outcome_by_band(
        con,
        "SELECT episode_id, early_alliance_band AS band, "
        "early_alliance_band_order AS band_order FROM marts.episode_alliance",
    )
    return replace_tables(
        con,
        {
            "marts.alliance_outcome": alliance_correlations(pairs, settings),
            "marts.alliance_outcome_bands": bands_sql,
        },
    )


# --------------------------------------------------------------------------
# assets


def mart_assets(
    tables: dict[str, str],
    deps: list[dg.AssetKey],
    build: Callable[[duckdb.DuckDBPyConnection, Settings], dict[str, int]],
) -> dg.AssetsDefinition:
    """Assets ``marts/<name>`` for ``tables`` (name -> description), written by ``build``.

    ``build`` writes all of them in one transaction; each gets its row count and
    preview as materialization metadata.
    """
    specs = [
        dg.AssetSpec(_mart(name), group_name=GROUP, deps=deps, description=description)
        for name, description in tables.items()
    ]

    @dg.multi_asset(name=f"build_{next(iter(tables))}", specs=specs, pool=WAREHOUSE_POOL)
    def _assets(outcomes: OutcomesResource):
        with outcomes.connect() as con:
            counts = build(con, outcomes.settings)
            for table, rows in counts.items():
                yield mart_result(con, table, rows)

    return _assets


session_alliance = mart_assets(
    {
        "session_alliance": (
            "Every SRS and WAI-SR administration: total, mean item score, low-alliance flag "
            "(SRS below the registry cutoff, 36), drop from the previous SRS of the episode, "
            "possible rupture (drop >= alliance_drop_points) and whether the next SRS "
            "recovered; with session_id and session number. SQL: session_alliance.sql."
        )
    },
    [_mart("scores"), *_staging("assessments", "episodes")],
    build_session_alliance,
)

episode_alliance = mart_assets(
    {
        "episode_alliance": (
            "Alliance per episode: first, early (mean of the first early_alliance_sessions "
            "SRS), mean, minimum and last SRS; rated sessions, low-alliance sessions, "
            "ruptures and how many recovered at the next SRS; first and last WAI-SR. "
            "SQL: episode_alliance.sql."
        )
    },
    [_mart("session_alliance")],
    build_episode_alliance,
)

alliance_monthly = mart_assets(
    {
        "alliance_monthly": (
            "Alliance by clinic and by clinician within clinic per calendar month and "
            "instrument: administrations, distinct clients and episodes, mean total and item "
            "score, low-alliance administrations and possible ruptures. "
            "SQL: alliance_monthly.sql."
        )
    },
    [_mart("session_alliance")],
    build_alliance_monthly,
)

alliance_outcome = mart_assets(
    {
        "alliance_outcome": (
            "Early alliance (SRS) vs symptom improvement on the clinic's own data, per "
            "symptom instrument: Pearson r with a 95% Fisher-z CI and n, next to the "
            "published anchor r = .28 (Flückiger et al. 2018)."
        ),
        "alliance_outcome_bands": (
            "Symptom outcome rates (reliable improvement, deterioration, recovery) by "
            "early-alliance band (below / at or above the SRS cutoff), with numerators "
            "and denominators. SQL: outcome_by_band.sql."
        ),
    },
    [_mart("episode_alliance"), _mart("episode_outcomes")],
    build_alliance_outcome,
)
