"""Between-session practice marts, on a hand-made warehouse with values worked out by hand."""

from __future__ import annotations

import dagster as dg
import duckdb
import pytest

from assets.practice import (
    build_episode_practice,
    build_practice_outcome,
    episode_practice,
    practice_outcome,
)
from pipelines.resources import OutcomesResource
from tests.factories import make_warehouse
from tests.test_alliance import create_episode_outcomes

# practice_completed of the attended sessions of each episode:
#   Q1: yes, yes, partial, no, not_assigned, not_assigned, (none recorded)
#       + a no-show marked yes (not attended: left out)
#       recorded 6, assigned = yes + partial + no = 2 + 1 + 1 = 4 (not_assigned and the
#       unrecorded session excluded) -> share yes 2/4 = 0.5, partial 1/4, no 1/4;
#       band: 0.5 >= 0.5 -> medium (boundary)
#   Q2: not_assigned, not_assigned -> assigned 0: shares and band NULL
#   Q3: yes, yes, yes, partial -> share yes 3/4 = 0.75 -> high (boundary)
#   Q4: yes, no, no -> share yes 1/3 -> low
#   Q5: no sessions at all -> zeros, shares NULL
#   Q6: no -> share yes 0 -> low
PRACTICE = {
    "Q1": ["yes", "yes", "partial", "no", "not_assigned", "not_assigned", None],
    "Q2": ["not_assigned", "not_assigned"],
    "Q3": ["yes", "yes", "yes", "partial"],
    "Q4": ["yes", "no", "no"],
    "Q5": [],
    "Q6": ["no"],
}


def practice_warehouse(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    episodes, sessions = [], []
    for ep, values in PRACTICE.items():
        episodes.append({"episode_id": ep, "client_id": f"c{ep}", "start_date": "2026-01-01"})
        for week, value in enumerate(values):
            sessions.append(
                {
                    "session_id": f"{ep}-{week}",
                    "episode_id": ep,
                    "client_id": f"c{ep}",
                    "status": "attended",
                    "scheduled_at": f"2026-01-{5 + 3 * week:02d} 10:00",
                    "practice_completed": value,
                }
            )
    sessions.append(
        {
            "session_id": "Q1-noshow",
            "episode_id": "Q1",
            "client_id": "cQ1",
            "status": "no_show",
            "scheduled_at": "2026-03-02 10:00",
            "practice_completed": "yes",
        }
    )
    return make_warehouse(con, episodes=episodes, sessions=sessions)


@pytest.fixture
def con():
    connection = practice_warehouse(duckdb.connect())
    build_episode_practice(connection)
    yield connection
    connection.close()


def test_practice_share_excludes_not_assigned(con):
    got = {
        r[0]: r[1:]
        for r in con.execute(
            "SELECT episode_id, attended_sessions, practice_recorded, practice_yes, "
            "practice_partial, practice_no, practice_not_assigned, practice_assigned, "
            "share_yes, share_partial, share_no, practice_band FROM marts.episode_practice"
        ).fetchall()
    }
    assert got["Q1"] == (7, 6, 2, 1, 1, 2, 4, 0.5, 0.25, 0.25, "medium")
    assert got["Q2"] == (2, 2, 0, 0, 0, 2, 0, None, None, None, None)
    assert got["Q3"] == (4, 4, 3, 1, 0, 0, 4, 0.75, 0.25, 0.0, "high")
    assert got["Q4"][7] == pytest.approx(1 / 3) and got["Q4"][10] == "low"
    assert got["Q5"] == (0, 0, 0, 0, 0, 0, 0, None, None, None, None)
    assert got["Q6"][7:] == (0.0, 0.0, 1.0, "low")


# PHQ-9 outcomes (improvement = baseline - final; reliable change 6, caseness >= 10):
#   Q1 medium 15 -> 8  (+7) reliably improved, recovered
#   Q2 (no band) 16 -> 9: left out, its practice share is undefined
#   Q3 high   20 -> 12 (+8) reliably improved, still at caseness -> not recovered
#   Q4 low    12 -> 14 (-2) no reliable change, not recovered
#   Q6 low    14 -> 21 (-7) reliably deteriorated, not recovered
#   Q3 GAD-7 unpaired: left out
# low: 2 episodes, mean improvement (-2 - 7) / 2 = -4.5, improved 0/2, deteriorated 1/2,
#      recovered 0/2; medium: 1 episode, improved 1/1, recovered 1/1; high: improved 1/1,
#      recovered 0/1.
def test_practice_outcome_by_band(con):
    create_episode_outcomes(
        con,
        [
            ("Q1", "PHQ-9", 15.0, 8.0, "reliably_improved", True, False, True, True),
            ("Q2", "PHQ-9", 16.0, 9.0, "reliably_improved", True, False, True, True),
            ("Q3", "PHQ-9", 20.0, 12.0, "reliably_improved", True, True, False, False),
            ("Q4", "PHQ-9", 12.0, 14.0, "no_reliable_change", True, True, False, False),
            ("Q6", "PHQ-9", 14.0, 21.0, "reliably_deteriorated", True, True, False, False),
            ("Q3", "GAD-7", 12.0, None, "not_paired", True, None, None, None),
        ],
    )
    build_practice_outcome(con)
    frame = con.execute("SELECT * FROM marts.practice_outcome ORDER BY band_order").df()
    assert frame["instrument"].tolist() == ["PHQ-9"] * 3
    assert frame["band"].tolist() == ["low", "medium", "high"]
    low, medium, high = (frame.iloc[i].to_dict() for i in range(3))
    assert (low["episodes"], low["clients"], low["mean_improvement"]) == (2, 2, -4.5)
    assert (low["reliably_improved_num"], low["reliably_improved_den"]) == (0, 2)
    assert (low["reliably_deteriorated_num"], low["reliably_deteriorated_den"]) == (1, 2)
    assert low["reliably_deteriorated_rate"] == 0.5
    assert (low["recovered_num"], low["recovered_den"]) == (0, 2)
    assert (medium["episodes"], medium["mean_improvement"]) == (1, 7.0)
    assert (medium["reliably_improved_num"], medium["recovered_num"], medium["recovered_den"]) == (
        1,
        1,
        1,
    )
    assert (high["reliably_improved_num"], high["recovered_num"], high["recovered_den"]) == (
        1,
        0,
        1,
    )


def test_assets_materialize(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        practice_warehouse(con)
        create_episode_outcomes(
            con, [("Q1", "PHQ-9", 15.0, 8.0, "reliably_improved", True, False, True, True)]
        )
    result = dg.materialize(
        [episode_practice, practice_outcome],
        resources={"outcomes": OutcomesResource(warehouse=str(path))},
    )
    assert result.success
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM marts.episode_practice").fetchone()[0] == 6
        assert con.execute("SELECT count(*) FROM marts.practice_outcome").fetchone()[0] == 1
