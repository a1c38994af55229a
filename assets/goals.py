"""Goal marts: is the client moving toward the goals they set? (METRICS.md "Goals").

Per goal the first and last GBO rating and whether the change reaches the
registry's reliable change (2.45 points, Edbrooke-Childs et al. 2015); per
episode the mean change and the share of goals reliably improved, by horizon.
"""

from __future__ import annotations

import duckdb

from assets.alliance import mart_assets
from assets.core_marts import _mart, _staging
from assets.sql_runner import load_sql, replace_tables
from schemas.settings import Settings

GBO = "GBO"


def build_goal_progress(
    con: duckdb.DuckDBPyConnection, settings: Settings | None = None
) -> dict[str, int]:
    """Write marts.goal_progress (settings unused: the threshold is the registry's)."""
    return replace_tables(con, {"marts.goal_progress": load_sql("goal_progress")}, {"gbo": GBO})


def build_episode_goals(
    con: duckdb.DuckDBPyConnection, settings: Settings | None = None
) -> dict[str, int]:
    """Write marts.episode_goals (needs marts.goal_progress)."""
    return replace_tables(con, {"marts.episode_goals": load_sql("episode_goals")})


goal_progress = mart_assets(
    {
        "goal_progress": (
            "One row per goal: horizon, first and last GBO rating, change, and reliably "
            "improved / deteriorated against the registry's GBO reliable change (2.45). "
            "SQL: goal_progress.sql."
        )
    },
    _staging("goals", "assessments", "assessment_items", "episodes"),
    build_goal_progress,
)

episode_goals = mart_assets(
    {
        "episode_goals": (
            "One row per episode with goals: mean goal change and share of paired goals "
            "reliably improved, overall and for short-term and long-term goals. "
            "SQL: episode_goals.sql."
        )
    },
    [_mart("goal_progress")],
    build_episode_goals,
)
