"""marts.retention_curve (Kaplan-Meier) and marts.dose_response, worked by hand."""

from __future__ import annotations

import math

import duckdb
import pytest

from assets.engagement import build_dose_response, build_retention_curve
from assets.service_kpis import SERVICE_KEY, build_clinic_kpis_episodes
from tests.factories import make_warehouse
from tests.test_service_kpis import make_marts, outcome, weekly

Z95 = 1.959963984540054


def loglog_ci(survival: float, greenwood_sum: float) -> tuple[float, float]:
    """Exponential Greenwood CI by hand (Kalbfleisch & Prentice): on log(-log S),
    SE = sqrt(sum d / (n (n - d))) / |log S|; back-transformed with exp(-exp(.))."""
    c = math.log(-math.log(survival))
    se = math.sqrt(greenwood_sum) / abs(math.log(survival))
    return math.exp(-math.exp(c + Z95 * se)), math.exp(-math.exp(c - Z95 * se))


def _episodes_with_attendance(con, rows, as_of="2026-06-30"):
    """rows: (episode, clinic, attended, status, first, last)."""
    make_warehouse(
        con,
        as_of=as_of,
        episodes=[
            {"episode_id": e, "client_id": f"K{e}", "clinic_id": c, "start_date": "2026-01-01"}
            for e, c, *_ in rows
        ],
    )
    make_marts(
        con,
        episode_attendance=[
            {
                "episode_id": e,
                "attended": n,
                "status": status,
                "dropout": status in ("dropout", "disengaged"),
                "first_attended_at": first,
                "last_attended_at": last,
            }
            for e, _, n, status, first, last in rows
        ],
    )


def test_kaplan_meier_by_sessions_matches_the_product_limit_by_hand():
    con = duckdb.connect()
    d = "2026-01-05 10:00"
    _episodes_with_attendance(
        con,
        [
            ("a", "C1", 1, "dropout", d, d),
            ("b", "C1", 2, "disengaged", d, d),
            ("c", "C1", 2, "completed", d, d),  # censored at 2
            ("d", "C2", 3, "dropout", d, d),
            ("e", "C2", 4, "open", d, d),  # censored at 4
            ("f", "C2", 4, "dropout", d, d),
            ("g", "C2", 0, "declined", None, None),  # never attended: not in the curve
        ],
    )
    build_retention_curve(con)
    rows = con.execute(
        """SELECT time, n_at_risk, n_events, n_censored, survival, ci_lower, ci_upper
           FROM marts.retention_curve WHERE time_scale = 'sessions' AND clinic_id = ?
           ORDER BY time""",
        [SERVICE_KEY],
    ).fetchall()
    # t=1: 6 at risk, 1 event: S = 5/6
    # t=2: 5 at risk (b c d e f), 1 event (b), 1 censored (c): S = 5/6 * 4/5 = 2/3
    # t=3: 3 at risk (d e f), 1 event: S = 2/3 * 2/3 = 4/9
    # t=4: 2 at risk (e f), 1 event (f), 1 censored (e): S = 4/9 * 1/2 = 2/9
    expected = [
        (0, 6, 0, 0, 1.0),
        (1, 6, 1, 0, 5 / 6),
        (2, 5, 1, 1, 2 / 3),
        (3, 3, 1, 0, 4 / 9),
        (4, 2, 1, 1, 2 / 9),
    ]
    assert [r[:4] for r in rows] == [e[:4] for e in expected]
    assert [r[4] for r in rows] == pytest.approx([e[4] for e in expected])
    # CI at t=1: Greenwood sum 1 / (6 * 5); at t=3: 1/30 + 1/20 + 1/6
    assert rows[1][5:] == pytest.approx(loglog_ci(5 / 6, 1 / 30))
    assert rows[3][5:] == pytest.approx(loglog_ci(4 / 9, 1 / 30 + 1 / 20 + 1 / 6))
    # By clinic: C1 has a (event 1), b (event 2), c (censored 2):
    # S(1) = 2/3, S(2) = 2/3 * (1 - 1/2) = 1/3
    c1 = con.execute(
        """SELECT survival FROM marts.retention_curve
           WHERE time_scale = 'sessions' AND clinic_id = 'C1' ORDER BY time"""
    ).fetchall()
    assert [r[0] for r in c1] == pytest.approx([1.0, 2 / 3, 1 / 3])


def test_kaplan_meier_by_weeks_censors_open_episodes_at_the_data_cut_date():
    con = duckdb.connect()
    _episodes_with_attendance(
        con,
        [
            ("x", "C1", 3, "dropout", "2026-01-01 10:00", "2026-01-15 10:00"),  # 14 d = 2 weeks
            ("y", "C1", 5, "open", "2026-01-01 10:00", "2026-01-22 10:00"),  # to as-of: 28 d = 4 w
            ("z", "C1", 2, "completed", "2026-01-01 10:00", "2026-01-11 10:00"),  # 10 d = 1.43 w
        ],
        as_of="2026-01-29",
    )
    build_retention_curve(con)
    rows = con.execute(
        """SELECT time, n_at_risk, n_events, n_censored, survival, n_clients_at_risk
           FROM marts.retention_curve WHERE time_scale = 'weeks' AND clinic_id = ?
           ORDER BY time""",
        [SERVICE_KEY],
    ).fetchall()
    # at risk at week t = durations >= t: 3, 3, 2 (x 2.0, y 4.0), 1, 1
    # (1, 2]: x's event at 2.0 among 2 at risk and z censored at 1.43: S(2) = 1/2
    # (3, 4]: y censored at 4.0 (open: followed up to the data cut date)
    assert rows == [
        (0, 3, 0, 0, 1.0, 3),
        (1, 3, 0, 0, 1.0, 3),
        (2, 2, 1, 1, 0.5, 2),
        (3, 1, 0, 0, 0.5, 1),
        (4, 1, 0, 1, 0.5, 1),
    ]


def test_dose_response_cumulative_share_by_hand():
    con = duckdb.connect()
    attended = {"D1": 4, "D2": 2, "D3": 5, "D4": 2, "D5": 2, "D6": 2}
    make_warehouse(
        con,
        episodes=[
            {
                "episode_id": e,
                "client_id": f"K{e}",
                "start_date": "2026-01-05",
                "end_date": None if e == "D5" else "2026-05-29",
                "end_reason": None if e == "D5" else "completed",
            }
            for e in attended
        ],
        sessions=[
            s for e, n in attended.items() for s in weekly(e, f"K{e}", "2026-02-02", "T" * n)
        ],
    )
    scores = {  # (episode, instrument): [(session_number, total), ...]
        ("D1", "PHQ-9"): [(1, 18), (2, 15), (3, 11), (4, 9)],  # 18 - 11 = 7 >= 6 at 3
        ("D2", "PHQ-9"): [(0, 14), (2, 8)],  # exactly 6 at session 2
        ("D3", "PHQ-9"): [(1, 20), (3, 17), (5, 16)],  # 4 at most: never
        ("D4", "PHQ-9"): [(1, 12), (2, 20)],  # worse: never
        ("D5", "PHQ-9"): [(1, 20), (2, 5)],  # open, not finished: outside
        ("D6", "ORS"): [(1, 20), (2, 25)],  # higher is better: +5 >= 5 at session 2
    }
    make_marts(
        con,
        scores=[
            {
                "episode_id": e,
                "instrument": i,
                "session_number": k,
                "total": v,
                "administered_at": f"2026-02-{k + 1:02d} 10:30",
            }
            for (e, i), pts in scores.items()
            for k, v in pts
        ],
        episode_outcomes=[outcome(e, i, pts[0][1], pts[-1][1]) for (e, i), pts in scores.items()],
    )
    build_clinic_kpis_episodes(con)
    build_dose_response(con)
    rows = con.execute(
        """SELECT session_number, numerator, denominator, value, newly_improved,
                  n_reached_session, n_clients
           FROM marts.dose_response WHERE instrument = 'PHQ-9' AND clinic_id = ?
           ORDER BY session_number""",
        [SERVICE_KEY],
    ).fetchall()
    # Finished and paired: D1 D2 D3 D4 -> denominator 4 at every session number.
    # Reliably improved by k: D2 from 2, D1 from 3: 0, 1, 2, 2, 2 (of 4).
    # Attended at least k sessions (D1 4, D2 2, D3 5, D4 2): 4, 4, 2, 2, 1.
    assert rows == [
        (1, 0, 4, 0.0, 0, 4, 4),
        (2, 1, 4, 0.25, 1, 4, 4),
        (3, 2, 4, 0.5, 1, 2, 4),
        (4, 2, 4, 0.5, 0, 2, 4),
        (5, 2, 4, 0.5, 0, 1, 4),
    ]
    ors = con.execute(
        """SELECT session_number, numerator, denominator FROM marts.dose_response
           WHERE instrument = 'ORS' AND clinic_id = 'C1' ORDER BY session_number"""
    ).fetchall()
    assert ors == [(1, 0, 1), (2, 1, 1)]


def test_retention_curve_is_empty_but_typed_when_nobody_attended():
    con = duckdb.connect()
    _episodes_with_attendance(con, [("g", "C1", 0, "declined", None, None)])
    assert build_retention_curve(con) == {"marts.retention_curve": 0}
    types = dict(
        con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'retention_curve'"
        ).fetchall()
    )
    assert (types["survival"], types["n_at_risk"]) == ("DOUBLE", "BIGINT")
