"""marts.clinician_adjusted_outcomes and marts.clinician_summary on small examples.

The regression adjustment is checked against numpy.linalg.lstsq (an independent
route to the same least-squares fit); caseload and rates are worked out by hand.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from scipy import stats

from assets.clinicians import adjusted_outcomes, build_clinician_marts
from assets.service_kpis import build_clinic_kpis_episodes
from tests.factories import make_warehouse
from tests.test_service_kpis import make_marts, outcome, weekly

# (episode, clinician, PHQ-9 baseline, final): all at caseness at baseline (>= 10)
REFERENCE = [
    ("E1", "T1", 20, 8),
    ("E2", "T1", 15, 6),
    ("E3", "T1", 12, 6),
    ("E4", "T2", 22, 16),
    ("E5", "T2", 18, 12),
    ("E6", "T2", 10, 8),
]


@pytest.fixture
def clinic():
    con = duckdb.connect()
    finished = [e for e, *_ in REFERENCE] + ["E7"]
    clinician = {e: t for e, t, *_ in REFERENCE} | {"E7": "T1", "E8": "T2", "E9": "T1"}
    episodes = [
        {
            "episode_id": e,
            "client_id": f"K{e}",
            "clinician_id": clinician[e],
            "start_date": "2026-01-05",
            "end_date": "2026-04-30",
            "end_reason": "completed",
        }
        for e in finished
    ] + [
        {
            "episode_id": e,
            "client_id": f"K{e}",
            "clinician_id": clinician[e],
            "start_date": "2026-01-05",
        }
        for e in ("E8", "E9")
    ]
    sessions = [  # two attended treatment sessions each; E1 also a no-show
        s
        for e in finished + ["E8"]
        for s in weekly(e, f"K{e}", "2026-01-12", "TTN" if e == "E1" else "TT")
    ]
    sessions += weekly("E9", "KE9", "2026-06-01", "TL")
    make_warehouse(con, as_of="2026-06-30", episodes=episodes, sessions=sessions)
    make_marts(
        con,
        episode_outcomes=[
            *(outcome(e, "PHQ-9", b, f) for e, _, b, f in REFERENCE),
            outcome("E7", "PHQ-9", 8, 3),  # not at caseness at baseline: outside the reference
            outcome("E8", "PHQ-9", 19, 5),  # open episode: not finished, outside the reference
        ],
    )
    build_clinic_kpis_episodes(con)
    build_clinician_marts(con)
    yield con
    con.close()


def test_adjustment_matches_numpy_lstsq(clinic):
    baseline = np.array([b for *_, b, _ in REFERENCE], dtype=float)
    improvement = np.array([b - f for *_, b, f in REFERENCE], dtype=float)  # PHQ-9: lower better
    design = np.column_stack([np.ones_like(baseline), baseline])
    coef, *_ = np.linalg.lstsq(design, improvement, rcond=None)
    residual = improvement - design @ coef
    n = len(baseline)
    sigma = np.sqrt((residual**2).sum() / (n - 2))
    sd_ref = baseline.std(ddof=1)
    t_crit = stats.t.ppf(0.975, n - 2)
    rows = clinic.sql("SELECT * FROM marts.clinician_adjusted_outcomes ORDER BY clinician_id").df()
    assert list(rows["clinician_id"]) == ["T1", "T2"]
    assert rows["model_intercept"].iloc[0] == pytest.approx(coef[0])
    assert rows["model_slope"].iloc[0] == pytest.approx(coef[1])
    assert rows["residual_sd"].iloc[0] == pytest.approx(sigma)
    for i, clinician in enumerate(("T1", "T2")):
        mine = residual[3 * i : 3 * i + 3]  # T1 = E1..E3, T2 = E4..E6
        row = rows.iloc[i]
        assert (row["clinician_id"], row["n_episodes"]) == (clinician, 3)
        assert row["mean_residual"] == pytest.approx(mine.mean())
        assert row["mean_residual_se"] == pytest.approx(sigma / np.sqrt(3))
        assert row["mean_residual_ci_low"] == pytest.approx(
            mine.mean() - t_crit * sigma / np.sqrt(3)
        )
        saes = (improvement.mean() + mine.mean()) / sd_ref
        assert row["saes"] == pytest.approx(saes)
        assert row["saes_ci_high"] == pytest.approx(saes + t_crit * sigma / np.sqrt(3) / sd_ref)
        assert row["service_saes"] == pytest.approx(improvement.mean() / sd_ref)
    # OLS residuals with an intercept sum to zero: the two clinicians' means cancel
    assert rows["mean_residual"].sum() == pytest.approx(0, abs=1e-9)
    # T1's clients improved more than their baselines predict: above the service
    assert rows["saes"].iloc[0] > rows["service_saes"].iloc[0] > rows["saes"].iloc[1]


def test_adjustment_by_hand_when_baselines_do_not_predict_change():
    # Baselines 10, 14, 10, 14 with improvements 2, 2, 6, 6: the fitted slope is 0 and the
    # intercept the mean 4 (least squares by hand: cov(b, imp) = 0).
    # A: residuals -2, -2 -> mean -2; B: +2, +2 -> mean +2. RSS = 4 * 4 = 16, sigma^2 =
    # 16 / (4 - 2) = 8; SE = sqrt(8 / 2) = 2. SD of baselines = sqrt(4 * 4 / 3) = 2.309401.
    # SAES A = (4 - 2) / 2.309401 = 0.866025, B = (4 + 2) / 2.309401 = 2.598076.
    frame = duckdb.sql("""SELECT * FROM (VALUES
        ('PHQ-9', 'C1', 'A', 'k1', 'e1', 10.0, 2.0), ('PHQ-9', 'C1', 'A', 'k2', 'e2', 14.0, 2.0),
        ('PHQ-9', 'C1', 'B', 'k3', 'e3', 10.0, 6.0), ('PHQ-9', 'C1', 'B', 'k4', 'e4', 14.0, 6.0))
        t(instrument, clinic_id, clinician_id, client_id, episode_id, baseline_score,
          improvement)""").df()
    out = adjusted_outcomes(frame).set_index("clinician_id")
    assert out.loc["A", "model_slope"] == pytest.approx(0, abs=1e-12)
    assert out.loc["A", "model_intercept"] == pytest.approx(4)
    assert out.loc["A", "mean_residual"] == pytest.approx(-2)
    assert out.loc["B", "mean_residual"] == pytest.approx(2)
    assert out.loc["B", "mean_residual_se"] == pytest.approx(2)
    assert out.loc["A", "saes"] == pytest.approx(0.866025, abs=1e-6)
    assert out.loc["B", "saes"] == pytest.approx(2.598076, abs=1e-6)
    # 95% funnel around the service SAES 4 / 2.309401 = 1.732051, SE 2 / 2.309401 = 0.866025
    assert out.loc["B", "funnel_95_high"] == pytest.approx(1.732051 + 1.959964 * 0.866025, abs=1e-5)


def test_too_few_episodes_give_no_adjustment():
    frame = duckdb.sql("""SELECT * FROM (VALUES
        ('GAD-7', 'C1', 'A', 'k1', 'e1', 10.0, 2.0), ('GAD-7', 'C1', 'B', 'k2', 'e2', 14.0, 6.0))
        t(instrument, clinic_id, clinician_id, client_id, episode_id, baseline_score,
          improvement)""").df()
    assert adjusted_outcomes(frame).empty


def test_clinician_summary_caseload_and_rates_by_hand(clinic):
    rows = clinic.sql("SELECT * FROM marts.clinician_summary ORDER BY clinician_id").df()
    t1 = rows.set_index("clinician_id").loc["T1"]
    # T1: E1 E2 E3 E7 ended (completed), E9 open -> 5 episodes, caseload 1 open
    assert (t1["episodes_total"], t1["open_episodes"], t1["clients_total"]) == (5, 1, 5)
    # Sessions: 4 ended episodes x 2 attended, E1 one no_show, E9 1 attended + 1 late cancel
    #   attended 9, no_show 1, late 1: attendance 9 / 11, DNA 1 / 11, NHS DNA 1 / 10
    assert t1["attendance_denominator"] == 11
    assert t1["attendance_rate"] == pytest.approx(9 / 11)
    assert t1["dna_rate"] == pytest.approx(1 / 11)
    assert t1["dna_rate_nhs"] == pytest.approx(1 / 10)
    # Dropout: 0 of the 4 that ended
    assert (t1["dropout_numerator"], t1["dropout_denominator"]) == (0, 4)
    # Adjusted effect: only E1..E3 (E7's baseline 8 is below caseness)
    assert (t1["adjusted_instrument"], t1["adjusted_n_episodes"]) == ("PHQ-9", 3)
    t2 = rows.set_index("clinician_id").loc["T2"]
    # T2: E4 E5 E6 finished, E8 open (not finished, so outside the adjustment)
    assert (t2["episodes_total"], t2["open_episodes"], t2["adjusted_n_episodes"]) == (4, 1, 3)
    nan = clinic.execute(
        "SELECT count(*) FROM marts.clinician_adjusted_outcomes WHERE isnan(saes)"
    ).fetchone()[0]
    assert nan == 0


def test_empty_reference_still_writes_both_tables():
    con = duckdb.connect()
    make_warehouse(
        con, episodes=[{"episode_id": "E", "client_id": "K", "start_date": "2026-01-05"}]
    )
    make_marts(con)
    build_clinic_kpis_episodes(con)
    counts = build_clinician_marts(con)
    assert counts == {"marts.clinician_adjusted_outcomes": 0, "marts.clinician_summary": 1}
    row = con.execute(
        "SELECT open_episodes, saes, adjusted_n_episodes FROM marts.clinician_summary"
    ).fetchone()
    assert row == (1, None, 0)
