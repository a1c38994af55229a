"""Between-session practice marts: is the client doing the work between sessions?

Per episode the share of attended sessions with practice completed (yes /
partial / no; `not_assigned` and unrecorded sessions excluded from the
denominator), and symptom outcome rates by practice band.
"""

from __future__ import annotations

import duckdb

from assets.alliance import mart_assets, outcome_by_band
from assets.core_marts import _mart, _staging
from assets.sql_runner import load_sql, replace_tables
from schemas.settings import Settings

# Practice band on share_yes (share of assigned practice fully completed):
# low < 0.5 <= medium < 0.75 <= high. Project defaults, not a published standard.
BAND_MEDIUM = 0.5
BAND_HIGH = 0.75


def build_episode_practice(
    con: duckdb.DuckDBPyConnection, settings: Settings | None = None
) -> dict[str, int]:
    """Write marts.episode_practice with the practice bands of this module."""
    return replace_tables(
        con,
        {"marts.episode_practice": load_sql("episode_practice")},
        {"band_medium": BAND_MEDIUM, "band_high": BAND_HIGH},
    )


def build_practice_outcome(
    con: duckdb.DuckDBPyConnection, settings: Settings | None = None
) -> dict[str, int]:
    """Write marts.practice_outcome (needs marts.episode_practice, marts.episode_outcomes)."""
    sql = outcome_by_band(
        con,
        "SELECT episode_id, practice_band AS band, practice_band_order AS band_order "
        "FROM marts.episode_practice",
    )
    return replace_tables(con, {"marts.practice_outcome": sql})


episode_practice = mart_assets(
    {
        "episode_practice": (
            "Between-session practice per episode (attended sessions): counts of yes / "
            "partial / no / not_assigned, shares over yes + partial + no, and the practice "
            "band. SQL: episode_practice.sql."
        )
    },
    _staging("sessions", "episodes"),
    build_episode_practice,
)

practice_outcome = mart_assets(
    {
        "practice_outcome": (
            "Symptom outcome rates (reliable improvement, deterioration, recovery) by "
            "practice band, per symptom instrument, with numerators and denominators. "
            "SQL: outcome_by_band.sql."
        )
    },
    [_mart("episode_practice"), _mart("episode_outcomes")],
    build_practice_outcome,
)
