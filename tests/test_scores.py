"""marts.scores: one row per staged administration, session_number, ordering (METRICS.md)."""

from __future__ import annotations

import duckdb
import pytest

from assets.core_marts import build_scores
from tests.factories import make_warehouse

EPISODES = [
    {
        "episode_id": "E1",
        "client_id": "P1",
        "clinician_id": "T9",
        "clinic_id": "C7",
        "start_date": "2026-01-01",
    },
    {"episode_id": "E2", "client_id": "P2", "start_date": "2025-12-01"},
]

# E1: attended Jan 5, no-show Jan 12, attended Jan 19, cancelled Jan 20,
# attended Jan 26, booked Feb 2. E2 has an attended session that must not count for E1.
SESSIONS = [
    {
        "session_id": sid,
        "episode_id": eid,
        "client_id": f"P{eid[1]}",
        "scheduled_at": at,
        "status": status,
    }
    for sid, eid, at, status in [
        ("S1", "E1", "2026-01-05 10:00", "attended"),
        ("S2", "E1", "2026-01-12 10:00", "no_show"),
        ("S3", "E1", "2026-01-19 10:00", "attended"),
        ("S4", "E1", "2026-01-20 10:00", "client_cancelled"),
        ("S5", "E1", "2026-01-26 10:00", "attended"),
        ("S6", "E1", "2026-02-02 10:00", "booked"),
        ("X1", "E2", "2026-01-02 10:00", "attended"),
    ]
]


def _phq(aid: str, at: str, total: float = 10.0, **extra) -> dict:
    return {
        "assessment_id": aid,
        "episode_id": "E1",
        "client_id": "P1",
        "instrument": "PHQ-9",
        "administered_at": at,
        "total": total,
        **extra,
    }


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    make_warehouse(
        con,
        episodes=EPISODES,
        sessions=SESSIONS,
        assessments=[
            _phq("A_before", "2026-01-04 09:00"),  # before any session
            _phq("A_minute_early", "2026-01-05 09:59"),  # one minute before S1
            _phq(
                "A_at_s1",
                "2026-01-05 10:00",
                total=13.5,  # exactly at S1: counts
                items_answered=8,
                prorated=True,
            ),
            _phq("A_after_s3", "2026-01-19 10:00"),  # S1, S3 (S2 was a no-show)
            _phq("A_end", "2026-02-10 12:00"),  # S1, S3, S5 (S4 cancelled, S6 booked)
            {
                "assessment_id": "B1",
                "episode_id": "E2",
                "client_id": "P2",
                "instrument": "SRS",
                "administered_at": "2026-01-02 11:00",
                "total": 38.0,
            },
        ],
    )
    assert build_scores(con) == 6
    return con


def _row(con: duckdb.DuckDBPyConnection, assessment_id: str) -> dict:
    frame = con.execute("SELECT * FROM marts.scores WHERE assessment_id = ?", [assessment_id]).df()
    assert len(frame) == 1
    return frame.iloc[0].to_dict()


@pytest.mark.parametrize(
    ("assessment_id", "expected"),
    [
        ("A_before", 0),
        ("A_minute_early", 0),
        ("A_at_s1", 1),  # scheduled_at <= administered_at is inclusive
        ("A_after_s3", 2),  # S1 + S3; the no-show S2 is not attended
        ("A_end", 3),  # S1 + S3 + S5; cancelled S4 and booked S6 do not count
        ("B1", 1),  # E2's own attended session only
    ],
)
def test_session_number_counts_attended_sessions_up_to_administration(con, assessment_id, expected):
    assert _row(con, assessment_id)["session_number"] == expected


def test_scored_fields_pass_through_from_staging(con):
    row = _row(con, "A_at_s1")
    assert row["total"] == 13.5
    assert row["items_answered"] == 8
    assert bool(row["prorated"]) is True
    assert row["instrument"] == "PHQ-9"
    assert row["client_id"] == "P1"


def test_extras_come_from_registry_and_episode(con):
    row = _row(con, "A_at_s1")
    assert (row["construct"], row["clinic_id"], row["clinician_id"]) == ("symptom", "C7", "T9")
    assert _row(con, "B1")["construct"] == "alliance"


def test_score_ordinal_orders_by_time_within_episode_and_instrument(con):
    got = con.execute(
        "SELECT assessment_id, score_ordinal FROM marts.scores "
        "WHERE episode_id = 'E1' ORDER BY score_ordinal"
    ).fetchall()
    assert got == [
        ("A_before", 1),
        ("A_minute_early", 2),
        ("A_at_s1", 3),
        ("A_after_s3", 4),
        ("A_end", 5),
    ]


def test_ties_in_administered_at_broken_by_assessment_id():
    con = duckdb.connect()
    # Same timestamp: 'K1' sorts before 'K2' whatever order the rows arrive in.
    make_warehouse(
        con,
        episodes=EPISODES[:1],
        assessments=[
            _phq("K2", "2026-01-05 10:00", total=20.0),
            _phq("K1", "2026-01-05 10:00", total=8.0),
            _phq("K0", "2026-01-06 10:00", total=5.0),
        ],
    )
    build_scores(con)
    got = con.execute(
        "SELECT assessment_id, score_ordinal FROM marts.scores ORDER BY score_ordinal"
    ).fetchall()
    assert got == [("K1", 1), ("K2", 2), ("K0", 3)]
