"""marts.alerts: risk item, reliable deterioration, low alliance, disengaged (METRICS.md;
CONTRACT.md edge rules 6 and 11), and the hook for not_on_track sources.

As-of 2026-06-30. Episodes' primary clinician is T-<episode>; sessions are run by
someone else ('S-OTHER') so the test sees which clinician an alert carries.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest

from assets.core_marts import (
    ALERT_COLUMNS,
    build_alerts,
    build_episode_attendance,
    build_scores,
)
from tests.factories import make_warehouse

AS_OF = "2026-06-30"


def episode(eid: str) -> dict:
    return {
        "episode_id": eid,
        "client_id": f"P-{eid}",
        "clinician_id": f"T-{eid}",
        "start_date": "2026-06-01",
    }


def score(aid: str, eid: str, instrument: str, at: str, total: float) -> dict:
    return {
        "assessment_id": aid,
        "episode_id": eid,
        "client_id": f"P-{eid}",
        "instrument": instrument,
        "administered_at": at,
        "total": total,
    }


def insert_risk(con: duckdb.DuckDBPyConnection, rows: list[tuple]) -> None:
    """(assessment_id, episode_id, instrument, administered_at, item, score, staged)."""
    for aid, eid, instrument, at, item, value, staged in rows:
        con.execute(
            "INSERT INTO staging.risk_responses VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [aid, eid, f"P-{eid}", instrument, at, item, value, staged],
        )


def alerts(episodes, assessments=(), sessions=(), risk=(), etr_rows=None) -> list[dict]:
    con = duckdb.connect()
    make_warehouse(
        con,
        as_of=AS_OF,
        episodes=list(episodes),
        assessments=list(assessments),
        sessions=list(sessions),
    )
    insert_risk(con, list(risk))
    build_scores(con)
    build_episode_attendance(con)
    if etr_rows is not None:
        con.execute(
            "CREATE TABLE marts.etr_alerts (alert_type VARCHAR, episode_id VARCHAR, "
            "client_id VARCHAR, clinician_id VARCHAR, raised_at TIMESTAMP, "
            "assessment_id VARCHAR, instrument VARCHAR, detail VARCHAR, band VARCHAR)"
        )
        for r in etr_rows:
            con.execute("INSERT INTO marts.etr_alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'x')", r)
    build_alerts(con)
    cur = con.execute("SELECT * FROM marts.alerts")
    names = [d[0] for d in cur.description]
    assert names == list(ALERT_COLUMNS)
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def of_type(rows: list[dict], alert_type: str) -> list[dict]:
    return [r for r in rows if r["alert_type"] == alert_type]


def active(eid: str) -> dict:
    """An attended session on as-of, so the episode is not disengaged."""
    return {
        "session_id": f"S-{eid}",
        "episode_id": eid,
        "client_id": f"P-{eid}",
        "clinician_id": "S-OTHER",
        "scheduled_at": "2026-06-30 09:00",
        "status": "attended",
    }


def test_risk_item_at_threshold_including_quarantined_administration():
    rows = alerts(
        [episode("E1")],
        assessments=[
            score("A0", "E1", "PHQ-9", "2026-06-02 10:00", 12),
            score("A1", "E1", "PHQ-9", "2026-06-09 10:00", 12),
        ],
        sessions=[active("E1")],
        risk=[
            ("A0", "E1", "PHQ-9", "2026-06-02 10:00", 9, 0.0, True),  # 0 < 1: no alert
            ("A1", "E1", "PHQ-9", "2026-06-09 10:00", 9, 1.0, True),  # 1 >= 1: alert
            # administration quarantined as too_many_missing_items: still an alert
            ("AQ", "E1", "PHQ-9", "2026-06-16 10:00", 9, 1.0, False),
            ("C1", "E1", "CORE-10", "2026-06-23 10:00", 6, 2.0, True),  # CORE-10 item 6
            ("X8", "E1", "PHQ-9", "2026-06-23 11:00", 8, 3.0, True),  # item 8 is not the risk item
        ],
    )
    risk = of_type(rows, "risk_item")
    assert [(r["assessment_id"], r["raised_at"], r["instrument"]) for r in risk] == [
        ("A1", dt.datetime(2026, 6, 9, 10), "PHQ-9"),
        ("AQ", dt.datetime(2026, 6, 16, 10), "PHQ-9"),
        ("C1", dt.datetime(2026, 6, 23, 10), "CORE-10"),
    ]
    assert {(r["episode_id"], r["client_id"], r["clinician_id"]) for r in risk} == {
        ("E1", "P-E1", "T-E1")
    }
    assert "quarantined" in risk[1]["detail"] and "quarantined" not in risk[0]["detail"]


def test_reliable_deterioration_first_administration_reaching_threshold():
    rows = alerts(
        [episode("E1"), episode("E2"), episode("E3")],
        assessments=[
            # PHQ-9 (worse = higher, threshold 6): 8 -> 13 (+5 no) -> 14 (+6 yes) -> 20 (yes,
            # but only the first raises an alert)
            score("p1", "E1", "PHQ-9", "2026-06-02 10:00", 8),
            score("p2", "E1", "PHQ-9", "2026-06-09 10:00", 13),
            score("p3", "E1", "PHQ-9", "2026-06-16 10:00", 14),
            score("p4", "E1", "PHQ-9", "2026-06-23 10:00", 20),
            # ORS (worse = lower, threshold 5): 30 -> 26 (-4 no) -> 25 (-5 yes)
            score("o1", "E1", "ORS", "2026-06-02 10:00", 30),
            score("o2", "E1", "ORS", "2026-06-09 10:00", 26),
            score("o3", "E1", "ORS", "2026-06-16 10:00", 25),
            # E2: baseline tie at 06-02: 'b1' 9 and 'a1' 5 -> baseline is 'a1' (5), and
            # 'b1' (+4) is the second score. (Were 'b1' the baseline, 'y9' would be +3.)
            # Later tie at 06-09: 'z9' 11 (+6) and 'y9' 12 (+7) -> first is 'y9'.
            score("b1", "E2", "PHQ-9", "2026-06-02 10:00", 9),
            score("a1", "E2", "PHQ-9", "2026-06-02 10:00", 5),
            score("z9", "E2", "PHQ-9", "2026-06-09 10:00", 11),
            score("y9", "E2", "PHQ-9", "2026-06-09 10:00", 12),
            # E3: improving PHQ-9 and falling SRS (alliance: no deterioration alert)
            score("q1", "E3", "PHQ-9", "2026-06-02 10:00", 20),
            score("q2", "E3", "PHQ-9", "2026-06-09 10:00", 10),
            score("s1", "E3", "SRS", "2026-06-02 10:00", 40),
            score("s2", "E3", "SRS", "2026-06-09 10:00", 36),
        ],
        sessions=[active("E1"), active("E2"), active("E3")],
    )
    got = [
        (r["episode_id"], r["instrument"], r["assessment_id"], r["raised_at"], r["clinician_id"])
        for r in of_type(rows, "reliable_deterioration")
    ]
    assert sorted(got) == [
        ("E1", "ORS", "o3", dt.datetime(2026, 6, 16, 10), "T-E1"),
        ("E1", "PHQ-9", "p3", dt.datetime(2026, 6, 16, 10), "T-E1"),
        ("E2", "PHQ-9", "y9", dt.datetime(2026, 6, 9, 10), "T-E2"),
    ]


@pytest.mark.parametrize(("total", "alert"), [(35.9, True), (36.0, False), (40.0, False)])
def test_low_alliance_below_srs_cutoff(total, alert):
    rows = alerts(
        [episode("E1")],
        assessments=[score("s", "E1", "SRS", "2026-06-02 10:00", total)],
        sessions=[active("E1")],
    )
    low = of_type(rows, "low_alliance")
    assert len(low) == int(alert)
    if alert:
        assert (low[0]["assessment_id"], low[0]["raised_at"], low[0]["clinician_id"]) == (
            "s",
            dt.datetime(2026, 6, 2, 10),
            "T-E1",
        )


def test_low_alliance_one_per_administration():
    rows = alerts(
        [episode("E1")],
        sessions=[active("E1")],
        assessments=[
            score("s1", "E1", "SRS", "2026-06-02 10:00", 30),
            score("s2", "E1", "SRS", "2026-06-09 10:00", 31),
            score("w1", "E1", "WAI-SR", "2026-06-09 10:00", 14),  # no cutoff in the registry
        ],
    )
    assert [r["assessment_id"] for r in of_type(rows, "low_alliance")] == ["s1", "s2"]


def test_disengaged_alert_at_as_of_midnight_without_assessment():
    # E1: no attended session since start 2026-04-01 -> 90 days -> disengaged.
    # E2: attended on as-of -> open, no alert.
    e1 = {**episode("E1"), "start_date": "2026-04-01"}
    rows = alerts([e1, episode("E2")], sessions=[active("E2")])
    assert rows == [
        {
            "alert_type": "disengaged",
            "episode_id": "E1",
            "client_id": "P-E1",
            "clinician_id": "T-E1",
            "raised_at": dt.datetime(2026, 6, 30, 0, 0),
            "assessment_id": None,
            "instrument": None,
            "detail": "no attended session for 90 days (none attended since the start) "
            "and none scheduled after 2026-06-30",
        }
    ]


def test_extra_alert_source_is_unioned_when_present():
    etr = (
        "not_on_track",
        "E1",
        "P-E1",
        "T-E1",
        dt.datetime(2026, 6, 9, 10),
        "p2",
        "PHQ-9",
        "PHQ-9 above the 90th percentile band at session 2",
    )
    rows = alerts([episode("E1")], sessions=[active("E1")], etr_rows=[etr])
    assert [tuple(r.values()) for r in rows] == [etr]
    # without the table: nothing, and no error
    assert alerts([episode("E1")], sessions=[active("E1")]) == []
