"""Expected treatment response: marts.expected_trajectory, etr_alerts, etr_backtest.

METRICS.md "Expected treatment response" and "Alerts: not_on_track". The marts
this reads (scores, episode_attendance, episode_outcomes) are written here by
hand with their contract columns, so every number below comes from the rows in
the test, worked out on paper. Percentiles are DuckDB quantile_cont (linear
interpolation): the q-quantile of n sorted values x[0..n-1] sits at position
h = q * (n - 1), value x[floor h] + (h - floor h) * (x[floor h + 1] - x[floor h]).

PHQ-9 registry defaults: cutoff 10, reliable change 6 -> bands subclinical
(< 10), moderate (10..15), severe (>= 16). GAD-7: cutoff 8, reliable change 4.
ORS (higher is better): cutoff 25, reliable change 5 -> severe < 20.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import duckdb
import pytest

from assets.core_marts import ALERT_COLUMNS
from assets.etr import build_etr, etr_settings_frame
from schemas.settings import Settings
from tests.factories import make_warehouse

AS_OF = "2026-06-30"

SCORES_DDL = """
CREATE TABLE marts.scores (
    assessment_id VARCHAR, episode_id VARCHAR, client_id VARCHAR, instrument VARCHAR,
    administered_at TIMESTAMP, total DOUBLE, items_answered INTEGER, prorated BOOLEAN,
    session_number INTEGER)
"""
ATTENDANCE_DDL = """
CREATE TABLE marts.episode_attendance (
    episode_id VARCHAR, client_id VARCHAR, clinic_id VARCHAR, clinician_id VARCHAR,
    scheduled BIGINT, attended BIGINT, no_show BIGINT, late_cancelled BIGINT,
    client_cancelled BIGINT, clinic_cancelled BIGINT, attendance_rate DOUBLE, dna_rate DOUBLE,
    first_attended_at TIMESTAMP, last_attended_at TIMESTAMP, median_gap_days DOUBLE,
    max_gap_days INTEGER, status VARCHAR, dropout BOOLEAN, early_dropout BOOLEAN)
"""
OUTCOMES_DDL = """
CREATE TABLE marts.episode_outcomes (
    episode_id VARCHAR, instrument VARCHAR, n_scores INTEGER, baseline_score DOUBLE,
    baseline_at TIMESTAMP, final_score DOUBLE, final_at TIMESTAMP, change DOUBLE,
    paired BOOLEAN, baseline_caseness BOOLEAN, final_caseness BOOLEAN, outcome_class VARCHAR,
    recovered BOOLEAN, reliably_recovered BOOLEAN, slope_per_week DOUBLE)
"""


@dataclasses.dataclass
class Ep:
    """One episode of one instrument: scores as (session_number, date, total)."""

    eid: str
    scores: list[tuple[int, str, float]]
    instrument: str = "PHQ-9"
    status: str = "open"  # as marts.episode_attendance would say
    end: str | None = None
    outcome: str | None = None  # marts.episode_outcomes.outcome_class


def warehouse(episodes: list[Ep], basis: str = "change", **settings) -> duckdb.DuckDBPyConnection:
    """make_warehouse + hand-written marts, then build_etr with ``settings`` overrides.

    The hand-worked values below are for the 90th percentile (Lambert's convention,
    a valid setting), so it is the tolerance here unless a test says otherwise; the
    project default (80th) has its own hand-worked test.
    """
    settings.setdefault("etr_tolerance_percentile", 90.0)
    con = duckdb.connect()
    make_warehouse(
        con,
        as_of=AS_OF,
        episodes=[
            {
                "episode_id": e.eid,
                "client_id": f"P-{e.eid}",
                "clinician_id": f"T-{e.eid}",
                "start_date": "2025-12-01",
                "end_date": e.end,
                "end_reason": None if e.end is None else "completed",
            }
            for e in episodes
        ],
    )
    con.execute(SCORES_DDL)
    con.execute(ATTENDANCE_DDL)
    con.execute(OUTCOMES_DDL)
    for e in episodes:
        con.execute(
            "INSERT INTO marts.episode_attendance (episode_id, client_id, status) VALUES (?, ?, ?)",
            [e.eid, f"P-{e.eid}", e.status],
        )
        for i, (session, day, total) in enumerate(e.scores, start=1):
            con.execute(
                "INSERT INTO marts.scores VALUES (?, ?, ?, ?, ?, ?, NULL, false, ?)",
                [f"{e.eid}-{i}", e.eid, f"P-{e.eid}", e.instrument, f"{day} 10:00", total, session],
            )
        if e.outcome:
            con.execute(
                "INSERT INTO marts.episode_outcomes (episode_id, instrument, n_scores, paired, "
                "outcome_class) VALUES (?, ?, ?, ?, ?)",
                [e.eid, e.instrument, len(e.scores), len(e.scores) >= 2, e.outcome],
            )
    build_etr(con, dataclasses.replace(Settings(), **settings), basis=basis)
    return con


def rows(con: duckdb.DuckDBPyConnection, table: str, where: str = "true") -> list[dict]:
    cur = con.execute(f"SELECT * FROM {table} WHERE {where}")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def trajectory(con: duckdb.DuckDBPyConnection, assessment_id: str) -> dict:
    (row,) = rows(con, "marts.expected_trajectory", f"assessment_id = '{assessment_id}'")
    return row


# --------------------------------------------------------------------------
# The hand-worked reference: 30 completed PHQ-9 episodes R01..R30, baseline 14
# (moderate) at session 1 on 2026-01-05, then the same score at sessions 2 and 3
# (01-12, 01-13), ended 2026-01-15. Session-2/3 scores: 5,5,5,6,6,6,...,14,14,14
# (each of 5..14 three times, x[k] = 5 + k // 3).
#   90th percentile: h = 0.9 * 29 = 26.1 -> x[26] + 0.1 * (x[27] - x[26]) = 13 + 0.1 = 13.1
#   median:          h = 0.5 * 29 = 14.5 -> 9 + 0.5 * (10 - 9) = 9.5
#   10th percentile: h = 0.1 * 29 = 2.9  -> 5 + 0.9 * (6 - 5) = 5.9
# Basis 'change' (the default) uses score - 14 instead: -9..0, percentiles -0.9,
# -4.5, -8.1, placed on the episode's own baseline. The targets below start at
# 14 too (except C), so both bases give the same bounds 5.9 / 9.5 / 13.1.


def reference() -> list[Ep]:
    out = []
    for k in range(30):
        v = 5 + k // 3
        out.append(
            Ep(
                f"R{k + 1:02d}",
                [(1, "2026-01-05", 14), (2, "2026-01-12", v), (3, "2026-01-13", v)],
                status="completed",
                end="2026-01-15",
            )
        )
    return out


@pytest.fixture(scope="module", params=["change", "score"])
def phq(request) -> duckdb.DuckDBPyConnection:
    targets = [
        # A: moderate, 13 <= 13.1 -> on track
        Ep("A", [(1, "2026-02-02", 14), (2, "2026-02-09", 13)]),
        # B: 14 > 13.1 at session 2 -> off track; 15 > 13.1 at session 3 -> off track
        # again, but the one alert is raised at session 2
        Ep("B", [(1, "2026-02-02", 14), (2, "2026-02-09", 14), (3, "2026-02-16", 15)]),
        # C: severe (20 >= 10 + 6): no severe reference -> coarse cell (all bands), the
        # same 30 episodes. 'change': 20 + (-0.9) = 19.1, expected 20 - 4.5 = 15.5;
        # 'score': 13.1, expected 9.5. C's 20 is off track either way.
        Ep("C", [(1, "2026-02-02", 20), (2, "2026-02-09", 20)]),
        # D: session 4 has no reference at all -> fallback rule; session 4 < 6 -> on track
        Ep("D", [(1, "2026-02-02", 14), (4, "2026-02-23", 20)]),
        # Z: completed, ended 2026-02-20; its own session-2 score 27 is evaluated in
        # February against R01..R30 only (n = 30): 27 > 13.1 -> off track
        Ep(
            "Z",
            [(1, "2026-02-02", 14), (2, "2026-02-09", 27)],
            status="completed",
            end="2026-02-20",
        ),
        # T: 2026-02-25 is after Z ended, but Z ended in February, not before it:
        # reference still R01..R30 (n = 30), 14 > 13.1 -> off track
        Ep("T", [(1, "2026-02-16", 14), (2, "2026-02-25", 14)]),
        # U: March: reference R01..R30 + Z (n = 31; values 5..14 x3 then 27):
        # 90th percentile h = 0.9 * 30 = 27 -> x[27] = 14, so 14 > 14 is false -> on track
        # (L ends 2026-03-31, after U's administration: not in the reference, else n = 32)
        Ep("U", [(1, "2026-03-02", 14), (2, "2026-03-09", 14)]),
        # L: completed in March; its own scores never enter its reference (n = 31, not 32)
        Ep(
            "L",
            [(1, "2026-03-02", 14), (2, "2026-03-09", 27)],
            status="completed",
            end="2026-03-31",
        ),
    ]
    con = warehouse(reference() + targets, basis=request.param)
    return con


def basis_of(con: duckdb.DuckDBPyConnection) -> str:
    return con.execute("SELECT basis FROM marts.etr_settings").fetchone()[0]


def test_percentile_band_and_bounds_worked_by_hand(phq):
    a = trajectory(phq, "A-2")
    assert (a["method"], a["severity_band"], a["reference_band"], a["reference_n"]) == (
        "percentile",
        "moderate",
        "moderate",
        30,
    )
    assert (a["expected_score"], a["tolerance_lower"], a["tolerance_upper"]) == (9.5, 5.9, 13.1)
    assert a["tolerance_bound"] == 13.1 and a["tolerance_percentile"] == 90.0
    assert a["reference_month"] == dt.date(2026, 2, 1)
    assert a["off_track"] is False
    assert trajectory(phq, "B-2")["off_track"] is True  # 14 > 13.1
    assert trajectory(phq, "B-3")["off_track"] is True  # 15 > 13.1 at session 3


def test_baseline_is_not_evaluated(phq):
    # only score_ordinal > 1 is compared with a reference
    assert rows(phq, "marts.expected_trajectory", "score_ordinal = 1") == []


def test_coarse_band_when_own_band_is_thin(phq):
    c = trajectory(phq, "C-2")
    assert (c["severity_band"], c["method"], c["reference_band"], c["reference_n"]) == (
        "severe",
        "coarse",
        "all",
        30,
    )
    expected = {"change": (15.5, 19.1), "score": (9.5, 13.1)}[basis_of(phq)]
    assert (c["expected_score"], c["tolerance_upper"], c["off_track"]) == (*expected, True)


def test_fallback_rule_before_fallback_session_is_on_track(phq):
    d = trajectory(phq, "D-2")
    assert (d["method"], d["reference_n"], d["expected_score"], d["off_track"]) == (
        "fallback_rule",
        0,
        None,
        False,
    )


def test_leakage_guard_own_episode_and_episodes_ending_later(phq):
    # Z is evaluated against R01..R30 only: its own 27 is not in its reference
    z = trajectory(phq, "Z-2")
    assert (z["reference_n"], z["tolerance_upper"], z["off_track"]) == (30, 13.1, True)
    # T: same month as Z's end -> Z not yet in the reference
    t = trajectory(phq, "T-2")
    assert (t["reference_n"], t["tolerance_upper"], t["off_track"]) == (30, 13.1, True)
    # U in March: Z (ended 02-20) now in, L (ends 03-31, after U's administration) not
    u = trajectory(phq, "U-2")
    assert (u["reference_n"], u["tolerance_upper"], u["off_track"]) == (31, 14.0, False)
    # L: evaluated in March, its own episode is not in its reference
    assert trajectory(phq, "L-2")["reference_n"] == 31


def test_one_alert_per_episode_at_first_off_track(phq):
    alerts = rows(phq, "marts.etr_alerts")
    got = [
        (a["episode_id"], a["assessment_id"], a["raised_at"], a["clinician_id"], a["method"])
        for a in alerts
    ]
    # raised_at order; B, C and Z share 02-09 10:00 (then episode_id)
    assert got == [
        ("B", "B-2", dt.datetime(2026, 2, 9, 10), "T-B", "percentile"),
        ("C", "C-2", dt.datetime(2026, 2, 9, 10), "T-C", "coarse"),
        ("Z", "Z-2", dt.datetime(2026, 2, 9, 10), "T-Z", "percentile"),
        ("T", "T-2", dt.datetime(2026, 2, 25, 10), "T-T", "percentile"),
        ("L", "L-2", dt.datetime(2026, 3, 9, 10), "T-L", "percentile"),
    ]
    assert {a["alert_type"] for a in alerts} == {"not_on_track"}
    b = alerts[0]
    assert b["detail"] == (
        "PHQ-9 14 at session 2: worse than the 90th percentile (13.1) of 30 reference "
        "episodes (moderate baseline band); expected 9.5"
    )
    assert alerts[1]["detail"].startswith("PHQ-9 20 at session 2: worse than the 90th")
    assert "all baseline bands" in alerts[1]["detail"]


def test_alert_columns_follow_the_alerts_hook(phq):
    cols = [r[0] for r in phq.execute("DESCRIBE marts.etr_alerts").fetchall()]
    assert cols[: len(ALERT_COLUMNS)] == list(ALERT_COLUMNS)


# --------------------------------------------------------------------------
# Smaller reference sets: etr_min_reference lowered so the arithmetic stays short.


def test_post_end_scores_are_neither_evaluated_nor_reference():
    # R1, R2: completed, ended 01-15, session-2 scores 10 and 12 on 01-12; R2 also
    # has a session-2 administration on 01-20, after its end: not in the reference.
    # E (open, February, session 2 = 11.5): reference {10, 12}, n = 2:
    #   90th percentile h = 0.9 -> 10 + 0.9 * 2 = 11.8 -> 11.5 on track.
    #   (With R2's post-end 27 as its session-2 value: {10, 27} -> 25.3.)
    # P: dropout, ended 01-20, its 02-10 administration is after its end: not evaluated.
    con = warehouse(
        [
            Ep(
                "R1",
                [(1, "2026-01-05", 14), (2, "2026-01-12", 10)],
                "PHQ-9",
                "completed",
                "2026-01-15",
            ),
            Ep(
                "R2",
                [(1, "2026-01-05", 14), (2, "2026-01-12", 12), (2, "2026-01-20", 27)],
                "PHQ-9",
                "completed",
                "2026-01-15",
            ),
            Ep("E", [(1, "2026-02-02", 14), (2, "2026-02-09", 11.5)]),
            Ep(
                "P",
                [(1, "2026-01-05", 14), (2, "2026-02-10", 20)],
                "PHQ-9",
                "dropout",
                "2026-01-20",
            ),
        ],
        etr_min_reference=2,
    )
    e = trajectory(con, "E-2")
    assert (e["reference_n"], e["tolerance_upper"], e["off_track"]) == (2, 11.8, False)
    # R1-2 and R2-2 are evaluated too (January: no reference yet); R2-3 and P-2 are not
    assert [r["assessment_id"] for r in rows(con, "marts.expected_trajectory")] == [
        "E-2",
        "R1-2",
        "R2-2",
    ]


def _ors_reference() -> list[Ep]:
    # 5 completed ORS episodes, baseline 15 (severe: 15 < 25 - 5), session 2 =
    # 16, 18, 20, 22, 24:
    #   10th percentile h = 0.4 -> 16 + 0.4 * 2 = 16.8; median 20;
    #   90th percentile h = 3.6 -> 22 + 0.6 * 2 = 23.2
    # (targets start at 15 as well, so basis 'change' gives the same bounds)
    return [
        Ep(
            f"O{v}",
            [(1, "2026-01-05", 15), (2, "2026-01-12", v)],
            "ORS",
            "completed",
            "2026-01-15",
        )
        for v in (16, 18, 20, 22, 24)
    ]


def test_higher_is_better_uses_the_lower_percentile():
    con = warehouse(
        _ors_reference()
        + [
            Ep("X", [(1, "2026-02-02", 15), (2, "2026-02-09", 16.5)], "ORS"),  # < 16.8: off
            Ep("Y", [(1, "2026-02-02", 15), (2, "2026-02-09", 16.8)], "ORS"),  # not below
        ],
        etr_min_reference=5,
    )
    x, y = trajectory(con, "X-2"), trajectory(con, "Y-2")
    assert (x["severity_band"], x["method"], x["reference_n"]) == ("severe", "percentile", 5)
    assert (x["tolerance_lower"], x["expected_score"], x["tolerance_upper"]) == (16.8, 20, 23.2)
    assert x["tolerance_bound"] == 16.8
    assert (x["off_track"], y["off_track"]) == (True, False)
    (alert,) = rows(con, "marts.etr_alerts")
    assert alert["detail"].startswith(
        "ORS 16.5 at session 2: worse than the 10th percentile (16.8)"
    )


def test_min_reference_threshold_switches_to_fallback():
    # the same 5 ORS references with etr_min_reference = 6: band and coarse cells
    # hold 5 < 6 -> fallback rule; session 2 < 6 -> on track
    con = warehouse(
        _ors_reference() + [Ep("X", [(1, "2026-02-02", 15), (2, "2026-02-09", 16.5)], "ORS")],
        etr_min_reference=6,
    )
    x = trajectory(con, "X-2")
    assert (x["method"], x["reference_n"], x["off_track"]) == ("fallback_rule", 5, False)


def test_tolerance_percentile_is_configurable():
    # 80th percentile of {16, 18, 20, 22, 24}: h = 3.2 -> 22 + 0.2 * 2 = 22.4;
    # 20th: h = 0.8 -> 16 + 0.8 * 2 = 17.6 -> ORS 17 < 17.6 off track
    con = warehouse(
        _ors_reference() + [Ep("X", [(1, "2026-02-02", 15), (2, "2026-02-09", 17)], "ORS")],
        etr_min_reference=5,
        etr_tolerance_percentile=80.0,
    )
    x = trajectory(con, "X-2")
    assert (x["tolerance_lower"], x["tolerance_upper"], x["off_track"]) == (17.6, 22.4, True)


@pytest.mark.parametrize(
    ("basis", "lower", "expected", "upper", "off_track"),
    [
        # Change from baseline 15 in the ORS reference: +1, +3, +5, +7, +9:
        #   10th percentile 1.8, median 5, 90th 8.2. X starts at 12: band
        #   12 + 1.8 = 13.8 .. 12 + 8.2 = 20.2, expected 17; 15 >= 13.8 -> on track.
        ("change", 13.8, 17, 20.2, False),
        # The scores themselves: band 16.8 .. 23.2 whatever X's baseline; 15 < 16.8.
        ("score", 16.8, 20, 23.2, True),
    ],
)
def test_basis_places_the_band(basis, lower, expected, upper, off_track):
    con = warehouse(
        _ors_reference() + [Ep("X", [(1, "2026-02-02", 12), (2, "2026-02-09", 15)], "ORS")],
        etr_min_reference=5,
        basis=basis,
    )
    x = trajectory(con, "X-2")
    assert (x["severity_band"], x["reference_n"]) == ("severe", 5)
    assert (x["tolerance_lower"], x["expected_score"], x["tolerance_upper"]) == (
        lower,
        expected,
        upper,
    )
    assert x["off_track"] is off_track


@pytest.mark.parametrize(
    ("session", "score", "off_track"),
    [
        (5, 12, False),  # before the fallback session
        (6, 9, True),  # improvement 3 < 4 and 9 >= 8 (caseness)
        (6, 8, False),  # improvement 4 >= 4: reliably improved
        (7, 7.5, False),  # improvement 4.5 >= 4
    ],
)
def test_fallback_rule_no_reliable_improvement_by_session_6(session, score, off_track):
    # GAD-7 (cutoff 8, reliable change 4), no reference at all, baseline 12
    con = warehouse([Ep("G", [(1, "2026-02-02", 12), (session, "2026-03-16", score)], "GAD-7")])
    g = trajectory(con, "G-2")
    assert (g["method"], g["off_track"]) == ("fallback_rule", off_track)


def test_fallback_rule_needs_caseness():
    # baseline 9, session 6 score 7: improvement 2 is not reliable, but 7 < 8 -> on track
    con = warehouse([Ep("G", [(1, "2026-02-02", 9), (6, "2026-03-16", 7)], "GAD-7")])
    assert trajectory(con, "G-2")["off_track"] is False


def test_fallback_alert_detail():
    con = warehouse([Ep("G", [(1, "2026-02-02", 12), (6, "2026-03-16", 9)], "GAD-7")])
    (alert,) = rows(con, "marts.etr_alerts")
    assert alert["detail"] == (
        'GAD-7 9 at session 6: fewer than 30 reference episodes, so the rule "no reliable '
        'improvement by session 6 while at caseness" applies: baseline 12, improvement 3 '
        "(reliable change >= 4), caseness >= 8"
    )


# --------------------------------------------------------------------------
# Backtest. GAD-7 episodes ended 2026-05-31, no earlier reference -> every
# administration uses the fallback rule, which can only flag from session 6.
# Plain rule: worse than baseline by >= 4.
#   E1 12 -> s4 17 (rule flags, +5) -> s6 17 (ETR flags) -> s8 18   reliably_deteriorated
#   E2 12 -> s6 11 (ETR flags: improvement 1, at caseness) -> s8 11 no_reliable_change
#   E3 12 -> s3 10 -> s6 7 (not at caseness) -> s8 6                 reliably_improved
#   E4 12 -> s2 16 (rule flags, +4) -> s6 6 -> s8 5                  reliably_improved
#   E5 12 -> s4 12 -> s5 13 (last session 5: eligible by 4 only)    no_reliable_change
#   O  open (not ended): never in the backtest
# By session 4 (eligible: last session > 4 -> E1..E5):
#   positives E1 E2 E5 = 3 (deteriorated E1 = 1), negatives E3 E4 = 2
#   not_on_track: 0/3, 0/1, 0/2;  reliable_deterioration: E1 -> 1/3, 1/1; E4 -> 1/2
# By session 6 (last session > 6 -> E1..E4):
#   positives E1 E2 = 2 (deteriorated 1), negatives E3 E4 = 2
#   not_on_track: E1 E2 -> 2/2, 1/1, 0/2;  reliable_deterioration: 1/2, 1/1, 1/2


@pytest.fixture(scope="module")
def backtest() -> duckdb.DuckDBPyConnection:
    def ended(eid: str, scores: list[tuple[int, str, float]], outcome: str) -> Ep:
        return Ep(eid, scores, "GAD-7", "completed", "2026-05-31", outcome)

    return warehouse(
        [
            ended(
                "E1",
                [
                    (1, "2026-03-02", 12),
                    (4, "2026-03-23", 17),
                    (6, "2026-04-06", 17),
                    (8, "2026-04-20", 18),
                ],
                "reliably_deteriorated",
            ),
            ended(
                "E2",
                [(1, "2026-03-02", 12), (6, "2026-04-06", 11), (8, "2026-04-20", 11)],
                "no_reliable_change",
            ),
            ended(
                "E3",
                [
                    (1, "2026-03-02", 12),
                    (3, "2026-03-16", 10),
                    (6, "2026-04-06", 7),
                    (8, "2026-04-20", 6),
                ],
                "reliably_improved",
            ),
            ended(
                "E4",
                [
                    (1, "2026-03-02", 12),
                    (2, "2026-03-09", 16),
                    (6, "2026-04-06", 6),
                    (8, "2026-04-20", 5),
                ],
                "reliably_improved",
            ),
            ended(
                "E5",
                [(1, "2026-03-02", 12), (4, "2026-03-23", 12), (5, "2026-03-30", 13)],
                "no_reliable_change",
            ),
            Ep("O", [(1, "2026-03-02", 12), (2, "2026-03-09", 20), (8, "2026-04-20", 20)], "GAD-7"),
        ]
    )


def test_backtest_episode_drill_down(backtest):
    got = {
        (r["episode_id"], r["by_session"]): (
            r["outcome_group"],
            r["flagged_not_on_track"],
            r["flagged_reliable_deterioration"],
        )
        for r in rows(backtest, "marts.etr_backtest_episodes")
    }
    assert got == {
        ("E1", 4): ("deteriorated_or_not_improved", False, True),
        ("E1", 6): ("deteriorated_or_not_improved", True, True),
        ("E2", 4): ("deteriorated_or_not_improved", False, False),
        ("E2", 6): ("deteriorated_or_not_improved", True, False),
        ("E3", 4): ("improved", False, False),
        ("E3", 6): ("improved", False, False),
        ("E4", 4): ("improved", False, True),
        ("E4", 6): ("improved", False, True),
        ("E5", 4): ("deteriorated_or_not_improved", False, False),
    }


@pytest.mark.parametrize("instrument", ["GAD-7", "all"])
def test_backtest_rates_worked_by_hand(backtest, instrument):
    got = {
        (r["by_session"], r["rule"]): (
            r["positives_flagged"],
            r["positives"],
            r["deteriorated_flagged"],
            r["deteriorated"],
            r["negatives_flagged"],
            r["negatives"],
        )
        for r in rows(backtest, "marts.etr_backtest", f"instrument = '{instrument}'")
    }
    assert got == {
        (4, "not_on_track"): (0, 3, 0, 1, 0, 2),
        (4, "reliable_deterioration"): (1, 3, 1, 1, 1, 2),
        (6, "not_on_track"): (2, 2, 1, 1, 0, 2),
        (6, "reliable_deterioration"): (1, 2, 1, 1, 1, 2),
    }
    (six,) = rows(
        backtest,
        "marts.etr_backtest",
        f"instrument = '{instrument}' AND by_session = 6 AND rule = 'not_on_track'",
    )
    assert (six["sensitivity"], six["sensitivity_deteriorated"], six["false_alarm_rate"]) == (
        1.0,
        1.0,
        0.0,
    )


def test_backtest_leaves_out_open_episodes():
    con = warehouse([Ep("G", [(1, "2026-02-02", 12), (6, "2026-03-16", 9)], "GAD-7")])
    assert rows(con, "marts.etr_backtest") == []


def test_settings_validation():
    with pytest.raises(ValueError, match="between 50 and 100"):
        etr_settings_frame(dataclasses.replace(Settings(), etr_tolerance_percentile=40.0))
    cfg = etr_settings_frame(Settings())  # default (METRICS.md): the 90th percentile
    assert cfg.iloc[0][["q_lower", "q_upper", "min_reference", "fallback_session"]].tolist() == [
        0.1,
        0.9,
        30,
        6,
    ]
    assert Settings().etr_basis == "score"  # METRICS.md: the distribution of scores


def test_recommended_80th_percentile_worked_by_hand():
    # The 30 reference episodes above (session-2 scores x[k] = 5 + k // 3, baseline 14):
    #   80th percentile: h = 0.8 * 29 = 23.2 -> x[23] + 0.2 * (x[24] - x[23]) = 12 + 0.2 = 12.2
    #   median 9.5; 20th: h = 0.2 * 29 = 5.8 -> x[5] + 0.8 * (x[6] - x[5]) = 6 + 0.8 = 6.8
    # A (13 at session 2) is on track at the 90th percentile (13.1) but off track here.
    con = warehouse(
        reference() + [Ep("A", [(1, "2026-02-02", 14), (2, "2026-02-09", 13)])],
        etr_tolerance_percentile=80.0,
    )
    a = trajectory(con, "A-2")
    assert a["tolerance_percentile"] == 80.0
    assert (a["tolerance_lower"], a["expected_score"], a["tolerance_upper"]) == (6.8, 9.5, 12.2)
    assert a["off_track"] is True
    (alert,) = rows(con, "marts.etr_alerts", "episode_id = 'A'")
    assert alert["detail"] == (
        "PHQ-9 13 at session 2: worse than the 80th percentile (12.2) of 30 reference "
        "episodes (moderate baseline band); expected 9.5"
    )


# --------------------------------------------------------------------------
# The percentiles come from value counts per month (bounded memory), not from
# quantile_cont over every reference row copied into every later month. They
# must be the numbers quantile_cont gives.


def test_percentiles_from_value_counts_equal_quantile_cont():
    # 120 completed PHQ-9 episodes ending in January or February with awkward
    # values (prorated eighths, six decimals, ties, a NULL total); a target in
    # February sees the January ones, a target in March sees all of them.
    import random

    rnd = random.Random(5)
    refs = []
    for k in range(120):
        end = "2026-01-20" if k < 70 else "2026-02-10"
        day = "2026-01-12" if k < 70 else "2026-02-03"
        v2 = rnd.choice([rnd.randint(0, 27), rnd.randint(0, 216) / 8, round(rnd.uniform(0, 27), 6)])
        v3 = None if k == 7 else rnd.randint(5, 9)
        refs.append(
            Ep(
                f"R{k:03d}",
                [(1, day, 14), (2, day, v2), (3, day, v3)],
                status="completed",
                end=end,
            )
        )
    targets = [
        Ep("F", [(1, "2026-02-02", 14), (2, "2026-02-09", 12), (3, "2026-02-16", 7)]),
        Ep("M", [(1, "2026-03-02", 14), (2, "2026-03-09", 12), (3, "2026-03-16", 7)]),
    ]
    con = warehouse(refs + targets)
    for q in (90.0, 80.0, 70.0):
        build_etr(con, dataclasses.replace(Settings(), etr_tolerance_percentile=q))
        lo, hi = round(1 - q / 100, 10), round(q / 100, 10)
        for target, cutoff in (("F", "2026-02-01"), ("M", "2026-03-01")):
            for session in (2, 3):
                want = con.execute(
                    f"""
                    SELECT count(*), list_transform(quantile_cont(v, [{lo}, 0.5, {hi}]),
                                                    lambda x: round(14 + x, 6))
                    FROM (SELECT arg_max(s.total - 14, s.assessment_id) AS v
                          FROM marts.scores AS s JOIN staging.episodes AS e USING (episode_id)
                          WHERE e.end_date < DATE '{cutoff}' AND s.session_number = {session}
                          GROUP BY s.episode_id)
                    """
                ).fetchone()
                got = trajectory(con, f"{target}-{session}")
                assert got["reference_n"] == want[0]
                bounds = [got["tolerance_lower"], got["expected_score"], got["tolerance_upper"]]
                assert bounds == want[1]


def test_memory_limit_is_restored_after_the_build():
    con = duckdb.connect()
    con.execute("SET memory_limit = '3GiB'")
    make_warehouse(con, as_of=AS_OF, episodes=[])
    con.execute(SCORES_DDL)
    con.execute(ATTENDANCE_DDL)
    con.execute(OUTCOMES_DDL)
    build_etr(con, Settings(), memory="256MiB")
    assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "3.0 GiB"
