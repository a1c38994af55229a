"""Expected treatment response: not-on-track alerts from the clinic's own history.

METRICS.md "Expected treatment response" and "Alerts: not_on_track"; method and
reasons in docs/decisions/005-etr-method.md. Four tables, written in one
transaction by :func:`build_etr`:

- ``marts.etr_settings``: the one row of tunables the SQL reads (and the audit
  record of what produced the other tables).
- ``marts.expected_trajectory`` (assets/sql/etr_expected_trajectory.sql): per
  symptom administration after the baseline, the expected score and tolerance
  band from reference episodes that ended before the administration's month.
- ``marts.etr_alerts`` (assets/sql/etr_alerts.sql): the first off-track
  administration per episode and instrument; unioned into ``marts.alerts`` by
  ``assets.core_marts.EXTRA_ALERT_SOURCES``.
- ``marts.etr_backtest_episodes`` / ``marts.etr_backtest``: sensitivity and
  false-alarm rate by session 4 and 6 next to the plain "reliable deterioration
  so far" rule.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import dagster as dg
import duckdb
import pandas as pd

from assets.core_marts import GROUP, _counts, _mart, _result, _staging
from assets.sql_runner import load_sql, preview_markdown, replace_tables
from pipelines.resources import WAREHOUSE_POOL, OutcomesResource
from schemas.settings import Settings

Basis = Literal["score", "change"]

# "By session 4 and by session 6" (issue 5): the horizons of the backtest.
BACKTEST_SESSIONS: tuple[int, ...] = (4, 6)
# Reference values: 'change' = score minus the episode's baseline, so the band is
# placed on each client's own starting point (Lambert's expected-recovery curves
# are conditional on the intake score); 'score' = the raw scores of the band.
# Both are backtested by benchmarks/etr_backtest.py; 'change' was better on every
# figure (docs/decisions/005-etr-method.md).
DEFAULT_BASIS: Basis = Settings.etr_basis  # config key etr_basis

# DuckDB's buffer pool while the ETR tables are built. The windows and sorts over
# every symptom administration spill to disk beyond it (in <warehouse>.tmp), so
# memory no longer grows with the clinic's history: 1.3 GB peak at 200k and at 1M
# episodes (2.1 and 9.1 GB before), about as fast as an unlimited pool at 200k
# (decision 005, "Scale").
ETR_MEMORY_LIMIT = "1GiB"

TABLES = (
    "marts.etr_settings",
    "marts.expected_trajectory",
    "marts.etr_alerts",
    "marts.etr_backtest_episodes",
    "marts.etr_backtest",
)


def etr_settings_frame(
    settings: Settings,
    basis: Basis | None = None,
    backtest_sessions: tuple[int, ...] = BACKTEST_SESSIONS,
) -> pd.DataFrame:
    """The one-row ``marts.etr_settings`` table: tunables as the SQL reads them.

    The tolerance percentile is the worse side of the band: 90 means the 90th
    percentile for higher-is-worse instruments and the 10th for higher-is-better
    ones, so the band runs from quantile 1 - p/100 to p/100.
    """
    basis = basis or settings.etr_basis
    p = float(settings.etr_tolerance_percentile)
    if not 50 < p < 100:
        raise ValueError(f"etr_tolerance_percentile must be between 50 and 100, got {p:g}")
    if settings.etr_min_reference < 1:
        raise ValueError("etr_min_reference must be at least 1")
    if basis not in ("score", "change"):
        raise ValueError(f"basis must be 'score' or 'change', got {basis!r}")
    frame = pd.DataFrame(
        {
            "tolerance_percentile": [p],
            "q_lower": [round(1 - p / 100, 10)],
            "q_upper": [round(p / 100, 10)],
            "min_reference": [int(settings.etr_min_reference)],
            "fallback_session": [int(settings.etr_fallback_session)],
            "basis": [basis],
            "backtest_sessions": [list(backtest_sessions)],
        }
    )
    return frame.astype({"min_reference": "int32", "fallback_session": "int32"})


@contextlib.contextmanager
def memory_limit(con: duckdb.DuckDBPyConnection, limit: str) -> Iterator[None]:
    """Cap DuckDB's buffer pool for a block, then restore the connection's own setting.

    Why: DuckDB otherwise takes up to 80% of the machine's memory before it spills,
    and the pipeline shares the machine with other steps and other work.
    """
    (previous,) = con.execute("SELECT current_setting('memory_limit')").fetchone()
    con.execute(f"SET memory_limit = '{limit}'")
    try:
        yield
    finally:
        con.execute(f"SET memory_limit = '{previous}'")


def build_etr(
    con: duckdb.DuckDBPyConnection,
    settings: Settings | None = None,
    basis: Basis | None = None,
    backtest_sessions: tuple[int, ...] = BACKTEST_SESSIONS,
    memory: str = ETR_MEMORY_LIMIT,
) -> dict[str, int]:
    """Write the ETR tables (needs marts.scores, episode_attendance, episode_outcomes).

    All the work is SQL inside DuckDB under a ``memory`` cap (it spills beyond it);
    nothing of row count is pulled into Python.
    """
    cfg = etr_settings_frame(settings or Settings(), basis, backtest_sessions)
    # the band's fractions, as session variables the SQL reads with getvariable()
    con.execute("SET VARIABLE etr_q_lower = ?", [float(cfg.at[0, "q_lower"])])
    con.execute("SET VARIABLE etr_q_upper = ?", [float(cfg.at[0, "q_upper"])])
    tables: dict[str, str | pd.DataFrame] = {
        "marts.etr_settings": cfg,
        "marts.expected_trajectory": load_sql("etr_expected_trajectory"),
        "marts.etr_alerts": load_sql("etr_alerts"),
        "marts.etr_backtest_episodes": load_sql("etr_backtest_episodes"),
        "marts.etr_backtest": load_sql("etr_backtest"),
    }
    with memory_limit(con, memory):
        return replace_tables(con, tables)


# --------------------------------------------------------------------------
# metadata


BACKTEST_SUMMARY = """(
    SELECT by_session, rule,
           positives_flagged || '/' || positives AS flagged_of_positives,
           round(100 * sensitivity, 1) AS sensitivity_pct,
           deteriorated_flagged || '/' || deteriorated AS flagged_of_deteriorated,
           round(100 * sensitivity_deteriorated, 1) AS sensitivity_deteriorated_pct,
           negatives_flagged || '/' || negatives AS flagged_of_improved,
           round(100 * false_alarm_rate, 1) AS false_alarm_pct
    FROM marts.etr_backtest
    WHERE instrument = 'all'
    ORDER BY by_session, rule
)"""


def _json_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: (None if pd.isna(v) else v) for k, v in row.items()}
        for row in frame.to_dict(orient="records")
    ]


# --------------------------------------------------------------------------
# asset

_DEPS = [
    _mart("scores"),
    _mart("episode_attendance"),
    _mart("episode_outcomes"),
    *_staging("episodes"),
]


@dg.multi_asset(
    pool=WAREHOUSE_POOL,
    specs=[
        dg.AssetSpec(
            ["marts", "etr_settings"],
            group_name=GROUP,
            deps=_DEPS,
            kinds={"duckdb"},
            description=(
                "One row: the expected-treatment-response tunables (tolerance percentile, "
                "minimum reference episodes, fallback session, basis, backtest horizons) "
                "that produced marts.expected_trajectory, etr_alerts and etr_backtest."
            ),
        ),
        dg.AssetSpec(
            ["marts", "expected_trajectory"],
            group_name=GROUP,
            deps=_DEPS,
            kinds={"duckdb", "sql"},
            description=(
                "Per symptom administration after the baseline: expected (median) score and "
                "tolerance band from the clinic's completed, paired episodes of the same "
                "instrument and baseline severity band at the same session number, using "
                "only episodes that ended before the administration's month (no leakage); "
                "coarse (all bands) or fallback-rule when a cell has too few episodes; and "
                "whether the score is off track. SQL: assets/sql/etr_expected_trajectory.sql."
            ),
        ),
        dg.AssetSpec(
            ["marts", "etr_alerts"],
            group_name=GROUP,
            deps=[_mart("expected_trajectory")],
            kinds={"duckdb", "sql"},
            description=(
                "not_on_track alerts: the first off-track administration per episode and "
                "symptom instrument, in the marts.alerts columns (unioned into marts.alerts). "
                "SQL: assets/sql/etr_alerts.sql."
            ),
        ),
        dg.AssetSpec(
            ["marts", "etr_backtest_episodes"],
            group_name=GROUP,
            deps=[_mart("etr_alerts"), _mart("episode_outcomes")],
            kinds={"duckdb", "sql"},
            description=(
                "Backtest drill-down: per ended, paired episode, instrument and horizon "
                "(session 4, 6) with a later score, the final outcome and whether the "
                "not_on_track alert and the plain reliable-deterioration rule had fired by "
                "then. SQL: assets/sql/etr_backtest_episodes.sql."
            ),
        ),
        dg.AssetSpec(
            ["marts", "etr_backtest"],
            group_name=GROUP,
            deps=[_mart("etr_backtest_episodes")],
            kinds={"duckdb", "sql"},
            description=(
                "How well the not_on_track alert predicted the final outcome on the clinic's "
                "history: sensitivity (ended reliably deteriorated or not improved, flagged) "
                "and false-alarm rate (ended reliably improved, flagged) by session 4 and 6, "
                "with counts, next to the plain rule 'reliable deterioration so far'. "
                "SQL: assets/sql/etr_backtest.sql."
            ),
        ),
    ],
    can_subset=False,
)
def expected_treatment_response(outcomes: OutcomesResource):
    """Build the ETR tables in one transaction and report the backtest."""
    settings = outcomes.settings
    with outcomes.connect() as con:
        counts = build_etr(con, settings)
        trajectory, alerts = "marts.expected_trajectory", "marts.etr_alerts"
        extra: dict[str, dict[str, Any]] = {
            trajectory: {
                "by_method": dg.MetadataValue.json(_counts(con, trajectory, "method")),
                "by_band": dg.MetadataValue.json(_counts(con, trajectory, "severity_band")),
            },
            alerts: {
                "by_instrument": dg.MetadataValue.json(_counts(con, alerts, "instrument")),
                "by_method": dg.MetadataValue.json(_counts(con, alerts, "method")),
            },
            "marts.etr_backtest": {
                "backtest_all_instruments": dg.MetadataValue.md(
                    preview_markdown(con, BACKTEST_SUMMARY, limit=20)
                ),
                "backtest": dg.MetadataValue.json(
                    _json_rows(con.execute("SELECT * FROM marts.etr_backtest").df())
                ),
            },
        }
        for table in TABLES:
            metadata = _result(con, table, counts[table], **extra.get(table, {})).metadata
            yield dg.MaterializeResult(asset_key=dg.AssetKey(table.split(".")), metadata=metadata)
