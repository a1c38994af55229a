"""Acceptance example (METRICS.md): Jacobson & Truax (1991) Table 2, DAS data.

30 spouses' Dyadic Adjustment Scale scores before and after marital therapy,
higher = better. The reference file lives outside the repo
(``../shared/external/``, see its README: test data only, never copied here).

Settings of the published example: reliability r = .80; SD and mean from the 30
pre scores (sample SD, n - 1): M_pre = 81.5833, SD_pre = 11.8257;
S_diff = SD_pre x sqrt(2) x sqrt(1 - .80) = 7.4792, so a change is reliable when
|change| > 1.96 x 7.4792 = 14.659 points (strictly); cutoff a = M_pre + 2 SD_pre
= 105.235 (caseness below it). Expected: 10 recovered, 6 improved, 13 unchanged,
1 deteriorated, 0 harmed; case 4 (73.5 -> 88, RCI 14.5 / 7.4792 = 1.9387) is just
short of reliable change.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import duckdb
import pytest

from assets.core_marts import build_episode_outcomes, build_scores
from schemas.registry import jacobson_truax_cutoff, load_registry
from tests.factories import make_warehouse

DAS_CSV = Path(__file__).parents[1].parent / "shared/external/jacobson_truax_1991_table2_das.csv"


@pytest.fixture(scope="module")
def das() -> list[tuple[int, float, float]]:
    if not DAS_CSV.is_file():
        pytest.skip(f"reference data not available: {DAS_CSV} (kept outside the repo)")
    with DAS_CSV.open(encoding="utf-8") as f:
        return [(int(r["ppid"]), float(r["pre"]), float(r["post"])) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def outcomes(das) -> dict[int, dict]:
    pre = [p for _, p, _ in das]
    mean_pre, sd_pre = statistics.mean(pre), statistics.stdev(pre)  # stdev: sample SD
    registry = load_registry(
        [
            {
                "code": "DAS",
                "construct": "symptom",
                "items": 1,
                "item_min": 0,
                "item_max": 151,
                "direction": "higher_better",
                "reliable_change": {"reliability": 0.80, "sd": sd_pre},
                "cutoff": jacobson_truax_cutoff("a", "higher_better", mean_pre, sd_pre),
                "max_missing": 0,
            }
        ]
    )
    das_inst = registry["DAS"]
    assert das_inst.cutoff == pytest.approx(105.235, abs=1e-3)
    assert das_inst.s_diff == pytest.approx(7.4792, abs=1e-4)
    assert das_inst.rc_threshold == pytest.approx(14.659, abs=1e-3)
    assert das_inst.rc_strict is True

    episodes, assessments = [], []
    for ppid, pre_score, post_score in das:
        eid = f"E{ppid:02d}"
        episodes.append(
            {"episode_id": eid, "client_id": f"P{ppid:02d}", "start_date": "1988-01-01"}
        )
        for tag, at, total in (
            ("pre", "1988-01-04 10:00", pre_score),
            ("post", "1988-05-02 10:00", post_score),
        ):
            assessments.append(
                {
                    "assessment_id": f"{eid}-{tag}",
                    "episode_id": eid,
                    "client_id": f"P{ppid:02d}",
                    "instrument": "DAS",
                    "administered_at": at,
                    "total": total,
                }
            )
    con = duckdb.connect()
    make_warehouse(
        con, as_of="1988-06-30", registry=registry, episodes=episodes, assessments=assessments
    )
    build_scores(con)
    assert build_episode_outcomes(con) == 30
    cur = con.execute("SELECT * FROM marts.episode_outcomes WHERE instrument = 'DAS'")
    names = [d[0] for d in cur.description]
    return {int(r[0][1:]): dict(zip(names, r, strict=True)) for r in cur.fetchall()}


def jt_category(row: dict) -> str:
    """Jacobson & Truax's categories from the mart's columns."""
    if row["reliably_recovered"]:
        return "recovered"
    return {
        "reliably_improved": "improved",
        "no_reliable_change": "unchanged",
        "reliably_deteriorated": "deteriorated",
    }[row["outcome_class"]]


def test_all_pre_scores_are_clinical(outcomes):
    # every pre score (max 99.5) is below cutoff a = 105.235
    assert all(r["baseline_caseness"] is True for r in outcomes.values())


def test_classification_matches_published_counts(outcomes):
    counts = {k: 0 for k in ("recovered", "improved", "unchanged", "deteriorated")}
    for row in outcomes.values():
        counts[jt_category(row)] += 1
    assert counts == {"recovered": 10, "improved": 6, "unchanged": 13, "deteriorated": 1}
    assert sum(bool(r["harmed"]) for r in outcomes.values()) == 0


def test_case_4_is_just_short_of_reliable_change(outcomes):
    row = outcomes[4]
    assert (row["baseline_score"], row["final_score"], row["change"]) == (73.5, 88.0, 14.5)
    assert row["rci"] == pytest.approx(1.9387, abs=1e-4)
    assert row["outcome_class"] == "no_reliable_change"
    assert row["reliably_recovered"] is False
