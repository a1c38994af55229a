"""Service-level KPIs by clinic and month (METRICS.md: Attendance, Symptom outcomes,
Measurement completeness), in the long format reports suppress cell by cell.

``marts.clinic_kpis_episodes`` holds the episode-level facts (finished, NHS-style
paired outcome, when the episode left treatment); ``marts.clinic_kpis`` holds one
row per (period, clinic or whole service, KPI, instrument) with the numerator,
denominator and distinct clients behind every value. Definitions and sources:
docs/metrics.md (section 6).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import dagster as dg
import duckdb
import pandas as pd

from assets.sql_runner import load_sql, preview_markdown, replace_tables
from pipelines.resources import WAREHOUSE_POOL, OutcomesResource
from schemas.settings import Settings

# --- definitions that are not registry thresholds (documented in docs/metrics.md (section 6)) ---
SERVICE_KEY = "__service__"  # clinic_id of the whole-service rows
DEPRESSION_INSTRUMENT = "PHQ-9"  # NHS Talking Therapies pair, and the primary instrument
ANXIETY_INSTRUMENT = "GAD-7"
PAIR_LABEL = f"{DEPRESSION_INSTRUMENT}+{ANXIETY_INSTRUMENT}"  # instrument of the NHS-style KPIs
PAIRED_SHARE_AIM = 0.90  # NHS Talking Therapies aims for paired scores in >= 90% of finished
CI_LEVEL = 0.95
# Minami et al. (2008) clinical-trial benchmark of pre-post d for adult depression
# (treatment completers). Verify against the paper before publishing comparisons.
# (Default of the config key effect_size_benchmark_d; a clinic sets its own there.)
MINAMI_DEPRESSION_BENCHMARK_D = Settings.effect_size_benchmark_d
MINAMI_BENCHMARK_SOURCE = (
    "Minami et al. 2008, J Consult Clin Psychol 76(1):116-124 (benchmarks from "
    "Minami et al. 2007, J Consult Clin Psychol 75(2):232-243): clinical-trial "
    "pre-post effect size for treatment completers of adult depression"
)

EPISODES_TABLE = "marts.clinic_kpis_episodes"
KPI_TABLE = "marts.clinic_kpis"
KPI_PARTS = ("clinic_kpis_rates", "clinic_kpis_effect_size", "clinic_kpis_measure_gaps")
KPI_COLUMNS = [
    "period_type",
    "period_start",
    "clinic_id",
    "kpi",
    "instrument",
    "numerator",
    "denominator",
    "value",
    "n_clients",
    "n_episodes",
    "ci_low",
    "ci_high",
    "target",
    "benchmark",
    "benchmark_source",
]


def z_value(level: float = CI_LEVEL) -> float:
    """Two-sided normal quantile for a confidence level (1.959964 for 95%)."""
    from scipy import stats  # noqa: PLC0415 (slow import, only needed here)

    return float(stats.norm.ppf(0.5 + level / 2))


def kpi_params(settings: Settings | None = None) -> dict[str, object]:
    """Every named parameter the service-KPI SQL files may use."""
    settings = settings or Settings()
    return {
        "service_key": SERVICE_KEY,
        "depression_instrument": DEPRESSION_INSTRUMENT,
        "anxiety_instrument": ANXIETY_INSTRUMENT,
        "pair_label": PAIR_LABEL,
        "paired_share_aim": PAIRED_SHARE_AIM,
        "z": z_value(),
        "benchmark_d": settings.effect_size_benchmark_d,
        "benchmark_source": MINAMI_BENCHMARK_SOURCE,
    }


def params_used(sql: str, params: dict[str, object]) -> dict[str, object]:
    """The subset of ``params`` that ``sql`` names (DuckDB rejects unused ones)."""
    names = set(re.findall(r"\$([A-Za-z_]\w*)", sql))
    return {k: v for k, v in params.items() if k in names}


def clinic_kpis_sql() -> str:
    """The KPI parts (rates, effect size, measure gaps) as one long table."""
    parts = "\nUNION ALL BY NAME\n".join(f"SELECT * FROM (\n{load_sql(p)}\n)" for p in KPI_PARTS)
    columns = ", ".join(KPI_COLUMNS)
    return (
        f"SELECT {columns} FROM (\n{parts}\n)\n"
        "ORDER BY period_type, period_start NULLS FIRST, clinic_id, kpi, instrument NULLS FIRST"
    )


def build_clinic_kpis_episodes(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Write marts.clinic_kpis_episodes (needs staging, marts.scores, marts.episode_attendance)."""
    sql = load_sql("clinic_kpis_episodes")
    return replace_tables(con, {EPISODES_TABLE: sql}, params_used(sql, kpi_params()))


def build_clinic_kpis(
    con: duckdb.DuckDBPyConnection, settings: Settings | None = None
) -> dict[str, int]:
    """Write marts.clinic_kpis (needs marts.clinic_kpis_episodes and marts.episode_outcomes)."""
    sql = clinic_kpis_sql()
    return replace_tables(con, {KPI_TABLE: sql}, params_used(sql, kpi_params(settings)))


# --- materialization metadata shared by the service-level mart modules ---


def table_metadata(
    con: duckdb.DuckDBPyConnection, table: str, order_by: str | None = None
) -> dict[str, dg.MetadataValue]:
    """Row count and a five-row preview of a written table."""
    relation = f"(SELECT * FROM {table} ORDER BY {order_by})" if order_by else table
    (rows,) = con.sql(f"SELECT count(*) FROM {table}").fetchall()[0]
    return {
        "dagster/row_count": dg.MetadataValue.int(int(rows)),
        "table": dg.MetadataValue.text(table),
        "preview": dg.MetadataValue.md(preview_markdown(con, relation)),
    }


def null_for_nan(frame: pd.DataFrame) -> pd.DataFrame:
    """NaN -> None, so that a frame written to DuckDB holds NULL, never NaN."""
    return frame.astype(object).where(frame.notna(), None)


def asset_keys(*paths: str) -> list[dg.AssetKey]:
    """``"marts/scores"`` -> ``AssetKey(["marts", "scores"])``."""
    return [dg.AssetKey(p.split("/")) for p in paths]


def _service_headline(con: duckdb.DuckDBPyConnection, kpis: Iterable[str]) -> dict[str, object]:
    """All-time whole-service values, for the run summary."""
    rows = con.execute(
        f"SELECT kpi, coalesce(instrument, ''), numerator, denominator, value FROM {KPI_TABLE} "
        "WHERE period_type = 'all' AND clinic_id = ? AND list_contains(?, kpi) "
        "ORDER BY kpi, instrument",
        [SERVICE_KEY, list(kpis)],
    ).fetchall()
    return {
        f"{kpi} {inst}".strip(): {
            "numerator": num,
            "denominator": den,
            "value": None if val is None or math.isnan(val) else round(val, 4),
        }
        for kpi, inst, num, den, val in rows
    }


@dg.asset(
    pool=WAREHOUSE_POOL,
    key=["marts", "clinic_kpis_episodes"],
    group_name="marts",
    kinds={"duckdb", "sql"},
    deps=asset_keys(
        "staging/episodes", "staging/sessions", "marts/scores", "marts/episode_attendance"
    ),
    description=(
        "One row per episode: when it left treatment, whether it finished a course of "
        "treatment (NHS Talking Therapies: ended with >= 2 attended non-assessment sessions) "
        "and its PHQ-9 + GAD-7 paired outcome (caseness at start, recovered, reliable "
        "improvement / deterioration / recovery). The basis of marts.clinic_kpis."
    ),
)
def clinic_kpis_episodes(outcomes: OutcomesResource) -> dg.MaterializeResult:
    with outcomes.connect() as con:
        build_clinic_kpis_episodes(con)
        metadata = table_metadata(con, EPISODES_TABLE, "episode_id")
        finished, paired = con.sql(
            f"SELECT count(*) FILTER (WHERE finished), "
            f"count(*) FILTER (WHERE finished AND pair_paired) FROM {EPISODES_TABLE}"
        ).fetchall()[0]
    metadata["finished_episodes"] = dg.MetadataValue.int(int(finished))
    metadata["finished_with_paired_phq9_gad7"] = dg.MetadataValue.int(int(paired))
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    pool=WAREHOUSE_POOL,
    key=["marts", "clinic_kpis"],
    group_name="marts",
    kinds={"duckdb", "sql"},
    deps=asset_keys(
        "marts/clinic_kpis_episodes",
        "marts/episode_outcomes",
        "marts/scores",
        "staging/episodes",
        "staging/sessions",
        "staging/assessments",
    ),
    description=(
        "Service KPIs in long format: one row per period (month or all), clinic (or "
        "'__service__'), KPI and instrument, with numerator, denominator, value, n_clients "
        "and n_episodes (for small-cell suppression): attendance, DNA (and NHS variant), "
        "dropout, early dropout, NHS Talking Therapies-style recovery / reliable improvement "
        "/ reliable recovery / reliable deterioration, pre-post effect size d with 95% CI and "
        "the Minami et al. 2008 benchmark, and measurement completeness."
    ),
)
def clinic_kpis(outcomes: OutcomesResource) -> dg.MaterializeResult:
    with outcomes.connect() as con:
        build_clinic_kpis(con, outcomes.settings)
        metadata = table_metadata(con, KPI_TABLE)
        headline = _service_headline(
            con,
            (
                "attendance_rate",
                "dna_rate",
                "dropout_rate",
                "recovery_rate",
                "reliable_improvement_rate",
                "effect_size_d",
                "paired_share_finished",
            ),
        )
    metadata["service_all_time"] = dg.MetadataValue.json(headline)
    return dg.MaterializeResult(metadata=metadata)
