"""Core metric marts: scores, episode attendance, symptom outcomes and alerts.

Each mart is one SQL file in ``assets/sql/`` (read top to bottom, definitions in
METRICS.md) run by a plain ``build_*`` function, so tests run exactly the SQL
the pipeline runs on a tiny warehouse from ``tests/factories.py``. The Dagster
assets only open the warehouse, call the builder and attach metadata.

Order: scores -> episode_attendance, episode_outcomes -> alerts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import dagster as dg
import duckdb

from assets.ingest import _preview as preview  # the one markdown preview helper
from assets.sql_runner import load_sql, replace_tables
from pipelines.resources import WAREHOUSE_POOL, OutcomesResource
from schemas.settings import Settings

GROUP = "marts"


def _staging(*tables: str) -> list[dg.AssetKey]:
    return [dg.AssetKey(["staging", t]) for t in tables]


def _mart(name: str) -> dg.AssetKey:
    return dg.AssetKey(["marts", name])


# Columns every alert source provides, in this order (CONTRACT.md section 6 plus
# ``instrument``, NULL when the alert is not about one instrument).
ALERT_COLUMNS = (
    "alert_type",
    "episode_id",
    "client_id",
    "clinician_id",
    "raised_at",
    "assessment_id",
    "instrument",
    "detail",
)

# Hook for alert sources built by other marts (issue 5: not_on_track). Each
# table named here is unioned into marts.alerts when it exists, selecting
# ALERT_COLUMNS; its asset key is a dependency of marts/alerts so that it is
# built first. A source that is not built yet shows in Dagster as an external
# (not materializable) asset and is simply skipped.
EXTRA_ALERT_SOURCES: dict[str, dg.AssetKey] = {
    "marts.etr_alerts": _mart("etr_alerts"),
}


# --------------------------------------------------------------------------
# builders (pure: a connection in, tables out)
# --------------------------------------------------------------------------


def build_scores(con: duckdb.DuckDBPyConnection) -> int:
    """Write marts.scores; returns its row count."""
    return replace_tables(con, {"marts.scores": load_sql("scores")})["marts.scores"]


# NHS Talking Therapies: an episode "finished a course of treatment" when it ended with
# at least this many attended non-assessment sessions (METRICS.md, service KPIs).
FINISHED_MIN_SESSIONS = 2


def attendance_params(settings: Settings) -> dict[str, Any]:
    """The tunables episode_attendance.sql takes, from the clinic config."""
    return {
        "disengaged_after_days": settings.disengaged_after_days,
        "early_dropout_max_attended": settings.early_dropout_max_attended,
        "finished_min_sessions": FINISHED_MIN_SESSIONS,
    }


def build_episode_attendance(
    con: duckdb.DuckDBPyConnection, settings: Settings | None = None
) -> int:
    """Write marts.episode_attendance with the thresholds of ``settings``."""
    params = attendance_params(settings or Settings())
    sql = load_sql("episode_attendance")
    return replace_tables(con, {"marts.episode_attendance": sql}, params)[
        "marts.episode_attendance"
    ]


def build_episode_outcomes(con: duckdb.DuckDBPyConnection) -> int:
    """Write marts.episode_outcomes (needs marts.scores)."""
    sql = load_sql("episode_outcomes")
    return replace_tables(con, {"marts.episode_outcomes": sql})["marts.episode_outcomes"]


def _existing_tables(con: duckdb.DuckDBPyConnection, names: Iterable[str]) -> list[str]:
    present = {
        f"{schema}.{table}"
        for schema, table in con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
        ).fetchall()
    }
    return [n for n in names if n in present]


def alerts_sql(con: duckdb.DuckDBPyConnection, extra_sources: Iterable[str] = ()) -> str:
    """alerts.sql plus ``UNION ALL`` of every extra source table that exists."""
    columns = ", ".join(ALERT_COLUMNS)
    parts = [load_sql("alerts").rstrip().rstrip(";")]
    parts += [f"SELECT {columns} FROM {t}" for t in _existing_tables(con, extra_sources)]
    union = "\nUNION ALL\n".join(parts)
    return (
        f"SELECT {columns} FROM (\n{union}\n) "
        "ORDER BY raised_at, alert_type, episode_id, instrument, assessment_id"
    )


def build_alerts(
    con: duckdb.DuckDBPyConnection, extra_sources: Iterable[str] = tuple(EXTRA_ALERT_SOURCES)
) -> int:
    """Write marts.alerts (needs marts.scores and marts.episode_attendance)."""
    sql = alerts_sql(con, extra_sources)
    return replace_tables(con, {"marts.alerts": sql})["marts.alerts"]


# --------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------


def _counts(con: duckdb.DuckDBPyConnection, table: str, column: str) -> dict[str, int]:
    rows = con.execute(
        f"SELECT coalesce(CAST({column} AS VARCHAR), '(null)'), count(*) "
        f"FROM {table} GROUP BY 1 ORDER BY 1"
    ).fetchall()
    return {str(k): int(v) for k, v in rows}


def _result(
    con: duckdb.DuckDBPyConnection, table: str, rows: int, **extra: Any
) -> dg.MaterializeResult:
    metadata: dict[str, Any] = {
        "dagster/row_count": dg.MetadataValue.int(rows),
        "table": dg.MetadataValue.text(table),
        "preview": preview(con, table),
    }
    metadata.update(extra)
    return dg.MaterializeResult(metadata=metadata)


def _as_of(con: duckdb.DuckDBPyConnection) -> str:
    row = con.execute("SELECT CAST(as_of AS VARCHAR) FROM staging.run_info").fetchone()
    return row[0] if row else "(no run_info)"


# --------------------------------------------------------------------------
# assets
# --------------------------------------------------------------------------


@dg.asset(
    pool=WAREHOUSE_POOL,
    key=_mart("scores"),
    group_name=GROUP,
    deps=_staging("episodes", "sessions", "assessments"),
    kinds={"duckdb", "sql"},
    description=(
        "One row per valid (staged) questionnaire administration with its scored total, "
        "items answered, proration flag, the session number it belongs to (attended "
        "sessions up to the administration) and its position within the episode and "
        "instrument. Administrations with too many missing items are in quarantine, not "
        "here. SQL: assets/sql/scores.sql."
    ),
)
def scores(outcomes: OutcomesResource) -> dg.MaterializeResult:
    with outcomes.connect() as con:
        rows = build_scores(con)
        return _result(
            con,
            "marts.scores",
            rows,
            by_instrument=dg.MetadataValue.json(_counts(con, "marts.scores", "instrument")),
            prorated=dg.MetadataValue.json(_counts(con, "marts.scores", "prorated")),
        )


@dg.asset(
    pool=WAREHOUSE_POOL,
    key=_mart("episode_attendance"),
    group_name=GROUP,
    deps=_staging("episodes", "sessions"),
    kinds={"duckdb", "sql"},
    description=(
        "One row per episode: session counts by status (booked sessions excluded), "
        "attendance and DNA rates, gaps between attended sessions, and the episode "
        "status (open, disengaged, completed, dropout, declined, other_end) as of the "
        "data cut date, with dropout and early-dropout flags. "
        "SQL: assets/sql/episode_attendance.sql."
    ),
)
def episode_attendance(outcomes: OutcomesResource) -> dg.MaterializeResult:
    settings = outcomes.settings
    with outcomes.connect() as con:
        rows = build_episode_attendance(con, settings)
        return _result(
            con,
            "marts.episode_attendance",
            rows,
            as_of=dg.MetadataValue.text(_as_of(con)),
            thresholds=dg.MetadataValue.json(attendance_params(settings)),
            by_status=dg.MetadataValue.json(_counts(con, "marts.episode_attendance", "status")),
        )


def _symptom_thresholds(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    rows = con.execute(
        "SELECT code, higher_is_worse, cutoff, rc_threshold, rc_strict "
        "FROM staging.instruments WHERE construct = 'symptom' ORDER BY code"
    ).fetchall()
    out = {}
    for code, worse, cutoff, rc, strict in rows:
        case = "n/a" if cutoff is None else f"{'>=' if worse else '<'} {cutoff:g}"
        change = "n/a" if rc is None else f"{'>' if strict else '>='} {rc:.4g}"
        out[code] = f"caseness {case}; reliable change {change}"
    return out


@dg.asset(
    pool=WAREHOUSE_POOL,
    key=_mart("episode_outcomes"),
    group_name=GROUP,
    deps=[_mart("scores")],
    kinds={"duckdb", "sql"},
    description=(
        "One row per episode and symptom instrument with at least one score: baseline "
        "and final score, change, caseness at both ends, reliable change class, "
        "recovery and reliable recovery (Jacobson & Truax clinically significant "
        "change), harm, and the least-squares slope per week. Thresholds come from the "
        "instrument registry. SQL: assets/sql/episode_outcomes.sql."
    ),
)
def episode_outcomes(outcomes: OutcomesResource) -> dg.MaterializeResult:
    with outcomes.connect() as con:
        rows = build_episode_outcomes(con)
        return _result(
            con,
            "marts.episode_outcomes",
            rows,
            by_outcome_class=dg.MetadataValue.json(
                _counts(con, "marts.episode_outcomes", "outcome_class")
            ),
            thresholds=dg.MetadataValue.json(_symptom_thresholds(con)),
        )


@dg.asset(
    pool=WAREHOUSE_POOL,
    key=_mart("alerts"),
    group_name=GROUP,
    deps=[
        _mart("scores"),
        _mart("episode_attendance"),
        *_staging("assessments"),  # also writes staging.risk_responses
        *EXTRA_ALERT_SOURCES.values(),
    ],
    kinds={"duckdb", "sql"},
    description=(
        "One row per clinical alert for the episode's primary clinician: risk item at "
        "or above threshold (also from administrations quarantined for missing items), "
        "first reliable deterioration against baseline, low alliance (SRS below 36), "
        "disengaged episodes, and not-on-track alerts when that mart exists. "
        "SQL: assets/sql/alerts.sql."
    ),
)
def alerts(outcomes: OutcomesResource) -> dg.MaterializeResult:
    with outcomes.connect() as con:
        sources = _existing_tables(con, EXTRA_ALERT_SOURCES)
        rows = build_alerts(con, sources)
        return _result(
            con,
            "marts.alerts",
            rows,
            by_alert_type=dg.MetadataValue.json(_counts(con, "marts.alerts", "alert_type")),
            extra_sources=dg.MetadataValue.json(sources),
        )
