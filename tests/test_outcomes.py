"""marts.episode_outcomes: reliable and clinically significant change (METRICS.md; rules 7, 8).

Shipped thresholds: PHQ-9 (higher worse) caseness >= 10, reliable change 6 points
(improvement >= 6); ORS (higher better) caseness < 25, reliable change 5 points.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest

from assets.core_marts import build_episode_outcomes, build_scores
from tests.factories import make_warehouse

CONTRACT_COLUMNS = [
    "episode_id",
    "instrument",
    "n_scores",
    "baseline_score",
    "baseline_at",
    "final_score",
    "final_at",
    "change",
    "paired",
    "baseline_caseness",
    "final_caseness",
    "outcome_class",
    "recovered",
    "reliably_recovered",
    "slope_per_week",
]
T0, T1 = "2026-01-05 10:00", "2026-03-02 10:00"


def outcomes(scores: dict[str, list[tuple]]) -> dict[tuple[str, str], dict]:
    """scores: episode_id -> [(instrument, administered_at, total[, assessment_id])]."""
    episodes, assessments = [], []
    for eid, rows in scores.items():
        episodes.append({"episode_id": eid, "client_id": f"P-{eid}", "start_date": "2026-01-01"})
        for n, (instrument, at, total, *aid) in enumerate(rows):
            assessments.append(
                {
                    "assessment_id": aid[0] if aid else f"{eid}-{instrument}-{n}",
                    "episode_id": eid,
                    "client_id": f"P-{eid}",
                    "instrument": instrument,
                    "administered_at": at,
                    "total": total,
                }
            )
    con = duckdb.connect()
    make_warehouse(con, episodes=episodes, assessments=assessments)
    build_scores(con)
    build_episode_outcomes(con)
    cur = con.execute("SELECT * FROM marts.episode_outcomes")
    names = [d[0] for d in cur.description]
    assert names[: len(CONTRACT_COLUMNS)] == CONTRACT_COLUMNS
    return {(r[0], r[1]): dict(zip(names, r, strict=True)) for r in cur.fetchall()}


def pick(row: dict, *keys: str) -> tuple:
    return tuple(row[k] for k in keys)


CLASS = (
    "change",
    "baseline_caseness",
    "final_caseness",
    "outcome_class",
    "recovered",
    "reliably_recovered",
    "harmed",
)


@pytest.mark.parametrize(
    ("baseline", "final", "expected"),
    [
        # 10 -> 4: improvement 6 = threshold (>=): reliable; 10 is caseness (at cutoff),
        # 4 is not: recovered and reliably recovered.
        (10, 4, (-6, True, False, "reliably_improved", True, True, False)),
        # 15 -> 10: improvement 5 < 6; final 10 is still caseness: not recovered.
        (15, 10, (-5, True, True, "no_reliable_change", False, False, False)),
        # 12 -> 9: improvement 3: recovered (12 >= 10, 9 < 10) but not reliably.
        (12, 9, (-3, True, False, "no_reliable_change", True, False, False)),
        # 9 -> 15: worse by 6 = threshold: reliably deteriorated; 9 not caseness, 15 is:
        # harmed. recovered NULL because baseline is not at caseness.
        (9, 15, (6, False, True, "reliably_deteriorated", None, None, True)),
        # 20 -> 25: worse by 5 < 6: no reliable change.
        (20, 25, (5, True, True, "no_reliable_change", False, False, False)),
        # 12 -> 18: reliably deteriorated but already at caseness: not harmed.
        (12, 18, (6, True, True, "reliably_deteriorated", False, False, False)),
    ],
)
def test_phq9_higher_is_worse_boundaries(baseline, final, expected):
    row = outcomes({"E": [("PHQ-9", T0, baseline), ("PHQ-9", T1, final)]})[("E", "PHQ-9")]
    assert pick(row, *CLASS) == expected
    assert row["paired"] is True and row["n_scores"] == 2
    assert row["improvement"] == baseline - final


@pytest.mark.parametrize(
    ("baseline", "final", "expected"),
    [
        # 20 -> 25: improvement 5 = threshold: reliable; 20 < 25 caseness, 25 is not
        # (caseness is strictly below the cutoff): reliably recovered.
        (20, 25, (5, True, False, "reliably_improved", True, True, False)),
        # 25 -> 20: exactly at cutoff is not caseness; worse by 5: reliably deteriorated,
        # crossing into caseness: harmed.
        (25, 20, (-5, False, True, "reliably_deteriorated", None, None, True)),
        # 24.9 -> 29.8: improvement 4.9 < 5; recovered (24.9 < 25 -> 29.8) but not reliably.
        (24.9, 29.8, (4.9, True, False, "no_reliable_change", True, False, False)),
        # 3.2 -> 8.2: in floating point 8.2 - 3.2 = 4.999999999999999; the totals are
        # compared rounded to 6 decimals, so this is exactly the threshold: reliable.
        (3.2, 8.2, (5.0, True, True, "reliably_improved", False, False, False)),
    ],
)
def test_ors_higher_is_better_boundaries(baseline, final, expected):
    row = outcomes({"E": [("ORS", T0, baseline), ("ORS", T1, final)]})[("E", "ORS")]
    assert pick(row, *CLASS) == expected
    assert row["improvement"] == pytest.approx(final - baseline)


def test_one_score_is_not_paired_edge_rule_7():
    row = outcomes({"E": [("PHQ-9", T0, 14)]})[("E", "PHQ-9")]
    assert pick(
        row, "n_scores", "paired", "baseline_score", "final_score", "baseline_at", "final_at"
    ) == (1, False, 14.0, 14.0, dt.datetime(2026, 1, 5, 10), dt.datetime(2026, 1, 5, 10))
    assert row["baseline_caseness"] is True  # 14 >= 10: known even without a pair
    assert (
        pick(
            row,
            "change",
            "final_caseness",
            "recovered",
            "reliably_recovered",
            "slope_per_week",
            "improvement",
            "harmed",
        )
        == (None,) * 7
    )
    assert row["outcome_class"] == "not_paired"


def test_ties_broken_by_assessment_id_and_slope_over_tied_times():
    # t0 = Jan 5: 'b' 20 and 'a' 8 -> baseline is 'a' (8).
    # t1 = Jan 12 (exactly 1 week): 'c' 3 and 'd' 12 -> final is 'd' (12). change = 4.
    # Slope: x = 0, 0, 1, 1 weeks; y = 8, 20, 3, 12. With two groups of equal size the
    # least-squares slope is mean(t1) - mean(t0) = 7.5 - 14 = -6.5 per week.
    row = outcomes(
        {
            "E": [
                ("PHQ-9", T0, 20, "b"),
                ("PHQ-9", T0, 8, "a"),
                ("PHQ-9", "2026-01-12 10:00", 12, "d"),
                ("PHQ-9", "2026-01-12 10:00", 3, "c"),
            ]
        }
    )[("E", "PHQ-9")]
    assert pick(row, "n_scores", "baseline_score", "final_score", "change") == (4, 8.0, 12.0, 4.0)
    assert pick(row, "baseline_assessment_id", "final_assessment_id") == ("a", "d")
    assert row["slope_per_week"] == pytest.approx(-6.5)


def test_slope_uses_exact_time_edge_rule_8():
    # x = 0, 0.5, 2 weeks (Jan 1 00:00, Jan 4 12:00 = 3.5 days, Jan 15 00:00 = 14 days)
    # y = 20, 18, 12.  x_mean = 5/6, y_mean = 50/3.
    # dx = -5/6, -2/6, 7/6 -> Sxx = (25 + 4 + 49) / 36 = 78/36
    # Sxy = (-5/6)(10/3) + (-2/6)(4/3) + (7/6)(-14/3) = (-50 - 8 - 98) / 18 = -156/18
    # slope = (-156/18) / (78/36) = -4.0 per week. (Whole dates would give x = 3/7 for
    # Jan 4 and a different slope.)
    row = outcomes(
        {
            "E": [
                ("PHQ-9", "2026-01-01 00:00", 20),
                ("PHQ-9", "2026-01-04 12:00", 18),
                ("PHQ-9", "2026-01-15 00:00", 12),
            ]
        }
    )[("E", "PHQ-9")]
    assert row["slope_per_week"] == pytest.approx(-4.0)
    assert pick(row, "n_scores", "baseline_score", "final_score", "change") == (3, 20.0, 12.0, -8.0)


def test_slope_null_not_nan_with_one_distinct_time():
    # Paired (two scores) but both at the same moment: slope undefined -> NULL.
    row = outcomes({"E": [("PHQ-9", T0, 15, "x1"), ("PHQ-9", T0, 7, "x2")]})[("E", "PHQ-9")]
    assert row["paired"] is True
    assert row["slope_per_week"] is None
    assert pick(row, "baseline_score", "final_score", "outcome_class") == (
        15.0,
        7.0,
        "reliably_improved",
    )


def test_one_row_per_episode_and_symptom_instrument_only():
    rows = outcomes(
        {
            "E1": [
                ("PHQ-9", T0, 12),
                ("GAD-7", T0, 9),
                ("SRS", T0, 30),
                ("WAI-SR", T0, 40),
                ("GBO", T0, 3),
                ("PHQ-9", T1, 6),
            ],
            "E2": [("SRS", T0, 38)],
        }
    )
    assert sorted(rows) == [("E1", "GAD-7"), ("E1", "PHQ-9")]
    assert rows[("E1", "PHQ-9")]["n_scores"] == 2
    assert rows[("E1", "GAD-7")]["outcome_class"] == "not_paired"


def test_rci_only_for_jacobson_truax_instruments():
    row = outcomes({"E": [("PHQ-9", T0, 15), ("PHQ-9", T1, 5)]})[("E", "PHQ-9")]
    assert row["rci"] is None  # PHQ-9 threshold is given in points, no S_diff
