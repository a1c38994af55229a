"""Goal marts (GBO), on a hand-made warehouse with values worked out by hand."""

from __future__ import annotations

import dagster as dg
import duckdb
import pytest

from assets.goals import build_episode_goals, build_goal_progress, episode_goals, goal_progress
from pipelines.resources import OutcomesResource
from tests.factories import make_warehouse

# G1 has four goals; three are rated on GBO (item number = goal number):
#   goal  horizon     5 Jan  2 Feb  2 Mar   change
#   1     short_term  2      4      7       7 - 2 = 5          >= 2.45 -> reliably improved
#   2     long_term   3      4      5       5 - 3 = 2          <  2.45 -> not
#   3     long_term   0.1    -      2.55    2.55 - 0.1 = 2.45  (2.4499999999999997 in binary
#                                                               floating point) -> reliably improved
#   4     short_term  never rated           NULL (not paired)
# G1 overall: 4 goals, 3 paired, mean change (5 + 2 + 2.45) / 3 = 9.45 / 3 = 3.15,
#   2 reliably improved -> share 2 / 3.
# short_term: goals 1 and 4; paired 1 (goal 1): mean change 5, share 1 / 1.
# long_term: goals 2 and 3, both paired: mean change (2 + 2.45) / 2 = 2.225, share 1 / 2.
#
# G2: goal 1 (short_term) rated once (not paired); item 5 is rated 10 then 6 but is
# not in staging.goals (kept, in_goals false, horizon NULL): change -4 -> reliably
# deteriorated. G2 overall: 2 goals, 1 paired, mean change -4, share 0 / 1;
# short_term: 1 goal, 0 paired -> mean and share NULL.
# G3 has a totals-only GBO (no items) and no goals: not in the goal marts.

G1_RATINGS = {
    "2026-01-05": {1: 2.0, 2: 3.0, 3: 0.1},
    "2026-02-02": {1: 4.0, 2: 4.0},
    "2026-03-02": {1: 7.0, 2: 5.0, 3: 2.55},
}


def goals_warehouse(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    assessments, items = [], []

    def gbo(aid: str, eid: str, client: str, day: str, ratings: dict[int, float]) -> None:
        assessments.append(
            {
                "assessment_id": aid,
                "episode_id": eid,
                "client_id": client,
                "instrument": "GBO",
                "administered_at": f"{day} 11:00",
                "total": sum(ratings.values()) / len(ratings),
                "items_answered": len(ratings),
            }
        )
        items.extend(
            {"assessment_id": aid, "item": goal, "score": r, "keyed_score": r}
            for goal, r in ratings.items()
        )

    for k, (day, ratings) in enumerate(G1_RATINGS.items()):
        gbo(f"g1-{k}", "G1", "A", day, ratings)
    gbo("g2-0", "G2", "B", "2026-01-06", {1: 4.0, 5: 10.0})
    gbo("g2-1", "G2", "B", "2026-02-03", {5: 6.0})
    assessments.append(
        {
            "assessment_id": "g3-0",
            "episode_id": "G3",
            "client_id": "C",
            "instrument": "GBO",
            "administered_at": "2026-01-07 11:00",
            "total_score": 5.0,
            "total": 5.0,
        }
    )
    goals = [
        {"episode_id": "G1", "goal_number": n, "set_at": "2026-01-05", "horizon": h}
        for n, h in [(1, "short_term"), (2, "long_term"), (3, "long_term"), (4, "short_term")]
    ]
    goals.append(
        {"episode_id": "G2", "goal_number": 1, "set_at": "2026-01-06", "horizon": "short_term"}
    )
    episodes = [
        {"episode_id": e, "client_id": c, "start_date": "2026-01-01"}
        for e, c in [("G1", "A"), ("G2", "B"), ("G3", "C")]
    ]
    return make_warehouse(
        con, episodes=episodes, assessments=assessments, assessment_items=items, goals=goals
    )


@pytest.fixture
def con():
    connection = goals_warehouse(duckdb.connect())
    build_goal_progress(connection)
    build_episode_goals(connection)
    yield connection
    connection.close()


def test_goal_progress_three_goals_of_different_horizons(con):
    got = {
        (r[0], r[1]): r[2:]
        for r in con.execute(
            "SELECT episode_id, goal_number, horizon, in_goals, n_ratings, first_rating, "
            "last_rating, change, reliably_improved, reliably_deteriorated "
            "FROM marts.goal_progress"
        ).fetchall()
    }
    assert got[("G1", 1)] == ("short_term", True, 3, 2.0, 7.0, 5.0, True, False)
    assert got[("G1", 2)] == ("long_term", True, 3, 3.0, 5.0, 2.0, False, False)
    # 2.45 is reliable: the boundary counts (>=), after rounding away the float error
    assert got[("G1", 3)] == ("long_term", True, 2, 0.1, 2.55, 2.45, True, False)
    assert got[("G1", 4)] == ("short_term", True, 0, None, None, None, None, None)
    assert got[("G2", 1)] == ("short_term", True, 1, 4.0, 4.0, None, None, None)
    assert got[("G2", 5)] == (None, False, 2, 10.0, 6.0, -4.0, False, True)
    assert len(got) == 6  # G3's totals-only GBO has no per-goal ratings


def test_goal_progress_dates_of_first_and_last_rating(con):
    first, last = con.execute(
        "SELECT first_rated_at, last_rated_at FROM marts.goal_progress "
        "WHERE episode_id = 'G1' AND goal_number = 3"
    ).fetchone()
    assert (str(first), str(last)) == ("2026-01-05 11:00:00", "2026-03-02 11:00:00")


def test_episode_goals_overall_and_by_horizon(con):
    frame = con.execute("SELECT * FROM marts.episode_goals ORDER BY episode_id").df()
    assert frame["episode_id"].tolist() == ["G1", "G2"]
    g1, g2 = (frame.iloc[i].to_dict() for i in range(2))
    assert (g1["goals"], g1["goals_paired"], g1["goals_reliably_improved"]) == (4, 3, 2)
    assert g1["mean_goal_change"] == pytest.approx(3.15)  # 9.45 / 3
    assert g1["share_reliably_improved"] == pytest.approx(2 / 3)
    assert (g1["short_term_goals"], g1["short_term_paired"]) == (2, 1)
    assert g1["short_term_mean_change"] == 5.0 and g1["short_term_share_reliably_improved"] == 1.0
    assert (g1["long_term_goals"], g1["long_term_paired"]) == (2, 2)
    assert g1["long_term_mean_change"] == pytest.approx(2.225)
    assert g1["long_term_share_reliably_improved"] == 0.5

    assert (g2["goals"], g2["goals_paired"], g2["goals_reliably_improved"]) == (2, 1, 0)
    assert g2["mean_goal_change"] == -4.0 and g2["share_reliably_improved"] == 0.0
    assert g2["short_term_goals"] == 1 and g2["short_term_paired"] == 0
    nulls = con.execute(
        "SELECT short_term_mean_change IS NULL, short_term_share_reliably_improved IS NULL, "
        "long_term_share_reliably_improved IS NULL FROM marts.episode_goals "
        "WHERE episode_id = 'G2'"
    ).fetchone()
    assert nulls == (True, True, True)  # NULL, never NaN


def test_assets_materialize(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        goals_warehouse(con)
    result = dg.materialize(
        [goal_progress, episode_goals],
        resources={"outcomes": OutcomesResource(warehouse=str(path))},
    )
    assert result.success
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM marts.goal_progress").fetchone()[0] == 6
        assert con.execute("SELECT count(*) FROM marts.episode_goals").fetchone()[0] == 2
