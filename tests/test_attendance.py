"""marts.episode_attendance: counts, rates, gaps and status (METRICS.md; edge rules 9, 10, 13).

As-of is 2026-06-30 throughout. Day counts: 2026-05-01 -> 2026-06-30 is 60 days
(30 days to May 31, 30 more to June 30); 2026-05-02 is 59 days; 2026-04-30 is 61.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from itertools import count

import duckdb
import pytest

from assets.core_marts import build_episode_attendance
from schemas.settings import Settings
from tests.factories import make_warehouse

AS_OF = "2026-06-30"
CONTRACT_COLUMNS = [
    "episode_id",
    "client_id",
    "clinic_id",
    "clinician_id",
    "scheduled",
    "attended",
    "no_show",
    "late_cancelled",
    "client_cancelled",
    "clinic_cancelled",
    "attendance_rate",
    "dna_rate",
    "first_attended_at",
    "last_attended_at",
    "median_gap_days",
    "max_gap_days",
    "status",
    "dropout",
    "early_dropout",
]

_ids = count(1)


def episode(eid: str, start: str = "2026-01-01", **extra) -> dict:
    return {"episode_id": eid, "client_id": f"P-{eid}", "start_date": start, **extra}


def session(eid: str, at: str, status: str = "attended", **extra) -> dict:
    return {
        "session_id": f"S{next(_ids)}",
        "episode_id": eid,
        "client_id": f"P-{eid}",
        "scheduled_at": at,
        "status": status,
        **extra,
    }


def build(episodes: list[dict], sessions: list[dict], settings: Settings | None = None) -> dict:
    """Attendance rows by episode_id, as dicts of plain Python values."""
    con = duckdb.connect()
    make_warehouse(con, as_of=AS_OF, episodes=episodes, sessions=sessions)
    assert build_episode_attendance(con, settings) == len(episodes)
    cur = con.execute("SELECT * FROM marts.episode_attendance")
    names = [d[0] for d in cur.description]
    return {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}


def test_contract_columns_come_first_in_order():
    con = duckdb.connect()
    make_warehouse(con, as_of=AS_OF, episodes=[episode("E1")])
    build_episode_attendance(con)
    names = [d[0] for d in con.execute("SELECT * FROM marts.episode_attendance").description]
    assert names[: len(CONTRACT_COLUMNS)] == CONTRACT_COLUMNS


def test_counts_and_rates_leave_booked_sessions_out():
    rows = build(
        [episode("E1")],
        [
            session("E1", "2026-06-01 10:00", "attended"),
            session("E1", "2026-06-08 10:00", "attended"),
            session("E1", "2026-06-15 10:00", "attended"),
            session("E1", "2026-06-16 10:00", "no_show"),
            session("E1", "2026-06-17 10:00", "late_cancelled"),
            session("E1", "2026-06-18 10:00", "client_cancelled"),
            session("E1", "2026-06-19 10:00", "clinic_cancelled"),
            session("E1", "2026-07-06 10:00", "booked"),
        ],
    )
    r = rows["E1"]
    # scheduled = 3 + 1 + 1 + 1 + 1 = 7 (the booked one is not counted)
    assert (
        r["scheduled"],
        r["attended"],
        r["no_show"],
        r["late_cancelled"],
        r["client_cancelled"],
        r["clinic_cancelled"],
    ) == (7, 3, 1, 1, 1, 1)
    # denominator attended + no_show + late_cancelled = 3 + 1 + 1 = 5
    assert r["attendance_rate"] == pytest.approx(3 / 5)
    assert r["dna_rate"] == pytest.approx(1 / 5)
    # NHS Talking Therapies variant: 1 / (3 + 1)
    assert r["dna_rate_nhs"] == pytest.approx(0.25)


def test_rates_are_null_without_a_denominator_and_episode_without_sessions_counts_zero():
    rows = build(
        [episode("E1"), episode("E2")],
        [session("E1", "2026-06-01 10:00", "client_cancelled")],
    )
    r = rows["E1"]
    assert (r["scheduled"], r["attended"], r["client_cancelled"]) == (1, 0, 1)
    assert (r["attendance_rate"], r["dna_rate"], r["dna_rate_nhs"]) == (None, None, None)
    r = rows["E2"]
    assert (r["scheduled"], r["attended"], r["attendance_rate"]) == (0, 0, None)
    assert (r["first_attended_at"], r["last_attended_at"]) == (None, None)
    assert (r["median_gap_days"], r["max_gap_days"]) == (None, None)


def test_gaps_odd_count_use_dates_not_times():
    # Attended Jan 1 18:00, Jan 8 09:00, Jan 22, Feb 1 -> gaps 7, 14, 10 (whole days
    # between dates; Jan 1 18:00 -> Jan 8 09:00 is 6.6 days of clock time but 7 dates).
    # Sorted 7, 10, 14: median 10, max 14. A no-show in between is ignored.
    rows = build(
        [episode("E1")],
        [
            session("E1", "2026-01-01 18:00"),
            session("E1", "2026-01-08 09:00"),
            session("E1", "2026-01-15 09:00", "no_show"),
            session("E1", "2026-01-22 09:00"),
            session("E1", "2026-02-01 09:00"),
        ],
    )
    r = rows["E1"]
    assert (r["median_gap_days"], r["max_gap_days"]) == (10.0, 14)
    assert r["first_attended_at"] == dt.datetime(2026, 1, 1, 18, 0)
    assert r["last_attended_at"] == dt.datetime(2026, 2, 1, 9, 0)


def test_gaps_even_count_median_is_mean_of_middle_two():
    # Jan 1, Jan 4, Jan 14, Jan 16, Jan 30 -> gaps 3, 10, 2, 14; sorted 2, 3, 10, 14:
    # median (3 + 10) / 2 = 6.5, max 14.
    rows = build(
        [episode("E1")],
        [session("E1", f"2026-01-{d:02d} 10:00") for d in (1, 4, 14, 16, 30)],
    )
    assert (rows["E1"]["median_gap_days"], rows["E1"]["max_gap_days"]) == (6.5, 14)


def test_gaps_null_with_one_attended_session():
    rows = build([episode("E1")], [session("E1", "2026-06-01 10:00")])
    r = rows["E1"]
    assert (r["median_gap_days"], r["max_gap_days"]) == (None, None)
    assert r["first_attended_at"] == r["last_attended_at"] == dt.datetime(2026, 6, 1, 10, 0)


@pytest.mark.parametrize(
    ("last_attended", "days", "status"),
    [
        ("2026-05-02 23:00", 59, "open"),
        ("2026-05-01 23:00", 60, "disengaged"),  # >= 60: disengaged exactly at the threshold
        ("2026-04-30 08:00", 61, "disengaged"),
    ],
)
def test_disengaged_boundary(last_attended, days, status):
    rows = build([episode("E1")], [session("E1", last_attended)])
    assert rows["E1"]["days_inactive"] == days
    assert rows["E1"]["status"] == status
    assert rows["E1"]["dropout"] is (status == "disengaged")


@pytest.mark.parametrize(
    ("start", "status"), [("2026-05-02", "open"), ("2026-05-01", "disengaged")]
)
def test_no_attended_session_counts_from_start_date(start, status):
    rows = build([episode("E1", start=start)], [session("E1", "2026-06-20 10:00", "no_show")])
    assert rows["E1"]["status"] == status


@pytest.mark.parametrize(
    ("later_status", "later_at", "status"),
    [
        ("booked", "2026-07-03 10:00", "open"),  # a future appointment keeps it open
        ("no_show", "2026-07-01 00:00", "open"),  # non-cancelled, after as-of
        ("client_cancelled", "2026-07-03 10:00", "disengaged"),
        ("clinic_cancelled", "2026-07-03 10:00", "disengaged"),
        ("late_cancelled", "2026-07-03 10:00", "disengaged"),
        # "after as-of" means a later date: a booking on the as-of day itself does not count
        ("booked", "2026-06-30 15:00", "disengaged"),
    ],
)
def test_session_scheduled_after_as_of(later_status, later_at, status):
    # last attended 2026-04-01: 90 days before as-of
    rows = build(
        [episode("E1")],
        [session("E1", "2026-04-01 10:00"), session("E1", later_at, later_status)],
    )
    assert rows["E1"]["status"] == status


def test_only_sessions_up_to_as_of_count_as_last_attended():
    # An attended session dated after as-of (as-of set earlier than the data) does not
    # reset the inactivity clock: 2026-04-01 -> 2026-06-30 is 90 days. It is still a
    # non-cancelled session after as-of, so the episode stays open.
    rows = build(
        [episode("E1")],
        [session("E1", "2026-04-01 10:00"), session("E1", "2026-07-10 10:00")],
    )
    r = rows["E1"]
    assert (r["days_inactive"], r["status"]) == (90, "open")
    assert r["last_attended_at"] == dt.datetime(2026, 7, 10, 10, 0)


@pytest.mark.parametrize(
    ("end_reason", "status", "dropout"),
    [
        ("completed", "completed", False),
        ("mutual_agreement", "completed", False),
        ("dropout", "dropout", True),
        ("declined", "declined", False),
        ("transferred", "other_end", False),
        ("moved_away", "other_end", False),
        ("other", "other_end", False),
    ],
)
def test_ended_episode_status_from_end_reason(end_reason, status, dropout):
    # Long inactive, but an ended episode is never 'disengaged'.
    rows = build(
        [episode("E1", end_date="2026-02-01", end_reason=end_reason)],
        [session("E1", "2026-01-10 10:00")],
    )
    assert (rows["E1"]["status"], rows["E1"]["dropout"]) == (status, dropout)


@pytest.mark.parametrize(("attended", "early"), [(3, True), (4, False)])
def test_early_dropout_at_three_and_four_attended(attended, early):
    days = [f"2026-01-{d:02d} 10:00" for d in (5, 12, 19, 26)][:attended]
    rows = build(
        [episode("D", end_date="2026-02-01", end_reason="dropout"), episode("G")],
        [session("D", d) for d in days] + [session("G", d) for d in days],
    )
    # D ended as dropout; G is open but last attended in January -> disengaged
    assert rows["D"]["status"] == "dropout" and rows["G"]["status"] == "disengaged"
    assert rows["D"]["attended"] == rows["G"]["attended"] == attended
    assert rows["D"]["early_dropout"] is early
    assert rows["G"]["early_dropout"] is early


def test_completed_episode_is_never_early_dropout():
    rows = build(
        [episode("E1", end_date="2026-02-01", end_reason="completed")],
        [session("E1", "2026-01-05 10:00")],
    )
    assert (rows["E1"]["dropout"], rows["E1"]["early_dropout"]) == (False, False)


def test_thresholds_come_from_settings():
    # Last attended 2026-05-31: 30 days. Default (60): open. With 30: disengaged.
    # Dropout with 4 attended: early only when early_dropout_max_attended >= 4.
    eps = [episode("E1"), episode("D", end_date="2026-02-01", end_reason="dropout")]
    sess = [session("E1", "2026-05-31 10:00")] + [
        session("D", f"2026-01-{d:02d} 10:00") for d in (5, 12, 19, 26)
    ]
    default = build(eps, sess)
    tuned = build(
        eps, sess, replace(Settings(), disengaged_after_days=30, early_dropout_max_attended=4)
    )
    assert (default["E1"]["status"], tuned["E1"]["status"]) == ("open", "disengaged")
    assert (default["D"]["early_dropout"], tuned["D"]["early_dropout"]) == (False, True)


def test_finished_needs_an_ended_episode_with_two_attended_non_assessment_sessions():
    ended = {"end_date": "2026-03-01", "end_reason": "completed"}
    rows = build(
        [episode("F2", **ended), episode("F1", **ended), episode("OPEN")],
        [
            session("F2", "2026-01-05 10:00", session_type="assessment"),
            session("F2", "2026-01-12 10:00"),
            session("F2", "2026-01-19 10:00", session_type="review"),
            session("F1", "2026-01-05 10:00", session_type="assessment"),
            session("F1", "2026-01-12 10:00"),
            session("F1", "2026-01-19 10:00", "no_show"),
        ]
        + [session("OPEN", f"2026-06-{d:02d} 10:00") for d in (1, 8, 15)],
    )
    assert (rows["F2"]["attended_non_assessment"], rows["F2"]["finished"]) == (2, True)
    assert (rows["F1"]["attended_non_assessment"], rows["F1"]["finished"]) == (1, False)
    assert (rows["OPEN"]["attended_non_assessment"], rows["OPEN"]["finished"]) == (3, False)
