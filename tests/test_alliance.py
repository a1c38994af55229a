"""Alliance marts, on hand-made warehouses with values worked out by hand.

marts.scores and marts.episode_outcomes belong to the core metrics; the tests
build them here with plain CREATE TABLE statements (contract columns only), so
they do not depend on that code.
"""

from __future__ import annotations

import dataclasses
import math

import dagster as dg
import duckdb
import pytest

from assets.alliance import (
    alliance_monthly,
    alliance_outcome,
    build_alliance_monthly,
    build_alliance_outcome,
    build_episode_alliance,
    build_session_alliance,
    episode_alliance,
    pearson_with_ci,
    session_alliance,
)
from pipelines.resources import OutcomesResource
from schemas.settings import Settings
from tests.factories import make_warehouse

SETTINGS = Settings()  # alliance_drop_points 5, early_alliance_sessions 3

SCORES_DDL = """
CREATE OR REPLACE TABLE marts.scores AS
SELECT a.assessment_id, a.episode_id, a.client_id, a.instrument, a.administered_at,
       a.total, a.items_answered, a.prorated,
       (SELECT count(*) FROM staging.sessions AS s
         WHERE s.episode_id = a.episode_id AND s.status = 'attended'
           AND s.scheduled_at <= a.administered_at) AS session_number
FROM staging.assessments AS a
"""

OUTCOMES_DDL = """
CREATE OR REPLACE TABLE marts.episode_outcomes (
    episode_id VARCHAR, instrument VARCHAR, n_scores INTEGER,
    baseline_score DOUBLE, baseline_at TIMESTAMP, final_score DOUBLE, final_at TIMESTAMP,
    change DOUBLE, paired BOOLEAN, baseline_caseness BOOLEAN, final_caseness BOOLEAN,
    outcome_class VARCHAR, recovered BOOLEAN, reliably_recovered BOOLEAN,
    slope_per_week DOUBLE
)
"""


def create_episode_outcomes(con: duckdb.DuckDBPyConnection, rows: list[tuple]) -> None:
    """marts.episode_outcomes from (episode, instrument, baseline, final, outcome_class,
    baseline_caseness, final_caseness, recovered, reliably_recovered); final None = unpaired."""
    con.execute(OUTCOMES_DDL)
    for ep, inst, base, final, cls, b_case, f_case, rec, rrec in rows:
        paired = final is not None
        con.execute(
            "INSERT INTO marts.episode_outcomes VALUES (?, ?, ?, ?, TIMESTAMP '2026-01-05', "
            "?, TIMESTAMP '2026-03-02', ?, ?, ?, ?, ?, ?, ?, NULL)",
            [
                ep,
                inst,
                2 if paired else 1,
                base,
                final if paired else base,
                final - base if paired else None,
                paired,
                b_case,
                f_case,
                cls,
                rec,
                rrec,
            ],
        )


def episode(eid: str, client: str, clinician: str = "T1") -> dict:
    return {
        "episode_id": eid,
        "client_id": client,
        "clinician_id": clinician,
        "start_date": "2026-01-01",
    }


def session(sid: str, eid: str, client: str, at: str, status: str = "attended") -> dict:
    return {
        "session_id": sid,
        "episode_id": eid,
        "client_id": client,
        "scheduled_at": at,
        "status": status,
    }


def srs(aid: str, eid: str, client: str, at: str, total: float, sid: str | None = None) -> dict:
    return {
        "assessment_id": aid,
        "episode_id": eid,
        "client_id": client,
        "instrument": "SRS",
        "administered_at": at,
        "total": total,
        "items_answered": 4,
        "session_id": sid,
    }


# E1: eight weekly SRS with a no-show in between. Drops from the previous SRS:
#   a1 38.0  first, no drop
#   a2 32.5  38.0 - 32.5 = 5.5 >= 5 -> rupture; next a3 38.0 >= 38.0 -> recovered
#   a3 38.0
#   a4 36.8  drop 1.2
#   a5 31.8  36.8 - 31.8 = 5 (4.9999999999999964 in binary floating point) -> rupture;
#            next a6 35.9 < 36.8 -> not recovered
#   a6 35.9  low (35.9 < 36)
#   a7 36.0  not low (36 is not < 36)
#   a8 31.1  36.0 - 31.1 = 4.9 < 5 -> no rupture
E1_SRS = [
    ("a1", "2026-01-05", 38.0),
    ("a2", "2026-01-12", 32.5),
    ("a3", "2026-01-26", 38.0),
    ("a4", "2026-02-02", 36.8),
    ("a5", "2026-02-09", 31.8),
    ("a6", "2026-02-16", 35.9),
    ("a7", "2026-02-23", 36.0),
    ("a8", "2026-03-02", 31.1),
]


def alliance_warehouse(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    sessions = [session(f"s{aid}", "E1", "A", f"{day} 10:00") for aid, day, _ in E1_SRS]
    sessions.append(session("sE1-noshow", "E1", "A", "2026-01-19 10:00", "no_show"))
    assessments = [
        srs(aid, "E1", "A", f"{day} 10:50", total, f"s{aid}") for aid, day, total in E1_SRS
    ]
    assessments.append(
        {
            "assessment_id": "p1",
            "episode_id": "E1",
            "client_id": "A",
            "instrument": "PHQ-9",
            "administered_at": "2026-01-05 09:50",
            "total": 14.0,
            "items_answered": 9,
        }
    )
    # E2 (clinician T2): SRS 37 then 30 (drop 7, rupture with no later SRS yet);
    # the second SRS follows a late-cancelled session, so both are session number 1.
    sessions += [
        session("sE2-1", "E2", "B", "2026-03-02 10:00"),
        session("sE2-2", "E2", "B", "2026-03-09 10:00", "late_cancelled"),
    ]
    assessments += [
        srs("b1", "E2", "B", "2026-03-02 10:50", 37.0),
        srs("b2", "E2", "B", "2026-03-09 10:50", 30.0),
    ]
    # WAI-SR (12 items, 1..5). w1: all 12 answered, 4+4+3+5+4+3+4+4+5+3+4+4 = 47 ->
    # mean item 47 / 12 = 3.916667. w2: 11 answered summing to 44, prorated at ingest to
    # 44 / 11 x 12 = 48 -> mean item 48 / 12 = 4.0 (= the mean of the answered items).
    assessments += [
        {
            "assessment_id": "w1",
            "episode_id": "E2",
            "client_id": "B",
            "instrument": "WAI-SR",
            "administered_at": "2026-03-02 10:55",
            "total": 47.0,
            "items_answered": 12,
        },
        {
            "assessment_id": "w2",
            "episode_id": "E2",
            "client_id": "B",
            "instrument": "WAI-SR",
            "administered_at": "2026-03-09 10:55",
            "total": 48.0,
            "items_answered": 11,
            "prorated": True,
        },
    ]
    # E3 (clinician T2): one SRS of 40 in January.
    sessions.append(session("sE3-1", "E3", "C", "2026-01-20 09:00"))
    assessments.append(srs("c1", "E3", "C", "2026-01-20 09:50", 40.0, "sE3-1"))
    make_warehouse(
        con,
        episodes=[
            episode("E1", "A"),
            episode("E2", "B", "T2"),
            episode("E3", "C", "T2"),
            episode("E4", "D"),
        ],
        sessions=sessions,
        assessments=assessments,
    )
    con.execute(SCORES_DDL)
    return con


@pytest.fixture
def con():
    connection = alliance_warehouse(duckdb.connect())
    build_session_alliance(connection, SETTINGS)
    build_episode_alliance(connection, SETTINGS)
    build_alliance_monthly(connection)
    yield connection
    connection.close()


def rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict]:
    frame = con.execute(sql).df()
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in frame.astype(object).where(frame.notna(), None).to_dict("records")
    ]


def test_srs_sequence_ruptures_recovered_and_not(con):
    got = rows(
        con,
        "SELECT assessment_id, session_number, session_id, drop_points, "
        "possible_rupture, rupture_recovered FROM marts.session_alliance "
        "WHERE episode_id = 'E1' ORDER BY administration_number",
    )
    # session numbers: the no-show on 19 Jan is not counted, so a3 is session 3
    assert [r["session_number"] for r in got] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert got[0]["session_id"] == "sa1"
    assert [r["drop_points"] for r in got] == [None, 5.5, -5.5, 1.2, 5.0, -4.1, -0.1, 4.9]
    assert [r["possible_rupture"] for r in got] == [
        False,
        True,
        False,
        False,
        True,
        False,
        False,
        False,
    ]
    # a2: next SRS 38.0 is back to the pre-drop 38.0 -> recovered;
    # a5: next SRS 35.9 is below the pre-drop 36.8 -> not recovered
    assert [r["rupture_recovered"] for r in got] == [
        None,
        True,
        None,
        None,
        False,
        None,
        None,
        None,
    ]


def test_low_alliance_boundary_35_9_vs_36(con):
    got = dict(
        con.execute(
            "SELECT total, low_alliance FROM marts.session_alliance WHERE episode_id = 'E1'"
        ).fetchall()
    )
    assert got[35.9] is True  # 35.9 < 36
    assert got[36.0] is False  # 36 is not below the cutoff
    assert got[31.1] is True and got[38.0] is False


def test_wai_sr_mean_item_score_and_no_srs_flags(con):
    got = rows(
        con,
        "SELECT assessment_id, total, mean_item_score, low_alliance, "
        "possible_rupture, prorated FROM marts.session_alliance "
        "WHERE instrument = 'WAI-SR' ORDER BY assessment_id",
    )
    assert got[0]["mean_item_score"] == pytest.approx(47 / 12)  # 3.916667
    assert got[1]["mean_item_score"] == pytest.approx(4.0)  # 48 / 12
    assert got[1]["prorated"] is True
    # WAI-SR has no cutoff and no rupture rule: NULL, not false
    assert all(r["low_alliance"] is None and r["possible_rupture"] is None for r in got)


def test_rupture_without_a_later_srs_is_pending(con):
    got = rows(
        con,
        "SELECT assessment_id, session_number, session_id, drop_points, "
        "possible_rupture, rupture_recovered FROM marts.session_alliance "
        "WHERE instrument = 'SRS' AND episode_id = 'E2' ORDER BY assessment_id",
    )
    assert [r["session_number"] for r in got] == [1, 1]  # 9 March was late-cancelled
    assert got[1]["session_id"] is None
    assert got[1]["drop_points"] == 7.0 and got[1]["possible_rupture"] is True
    assert got[1]["rupture_recovered"] is None


def test_episode_alliance(con):
    got = {r["episode_id"]: r for r in rows(con, "SELECT * FROM marts.episode_alliance")}
    assert set(got) == {"E1", "E2", "E3"}  # E4 has no alliance measure
    e1 = got["E1"]
    assert e1["rated_sessions"] == 8
    assert e1["first_srs"] == 38.0
    # early = mean of the first three SRS = (38.0 + 32.5 + 38.0) / 3 = 108.5 / 3 = 36.1667
    assert e1["early_srs"] == pytest.approx(108.5 / 3)
    assert e1["early_srs_n"] == 3
    assert e1["early_alliance_band"] == "adequate"  # 36.17 is not below 36
    # mean = (38 + 32.5 + 38 + 36.8 + 31.8 + 35.9 + 36 + 31.1) / 8 = 280.1 / 8 = 35.0125
    assert e1["mean_srs"] == pytest.approx(35.0125)
    assert e1["min_srs"] == 31.1 and e1["last_srs"] == 31.1
    assert e1["low_alliance_sessions"] == 4  # 32.5, 31.8, 35.9, 31.1
    assert (
        e1["ruptures"],
        e1["ruptures_recovered"],
        e1["ruptures_not_recovered"],
        e1["ruptures_pending"],
    ) == (2, 1, 1, 0)
    assert e1["wai_sr_administrations"] == 0 and e1["first_wai_sr"] is None

    e2 = got["E2"]
    # only two SRS: early = (37 + 30) / 2 = 33.5 from 2 administrations -> low band
    assert e2["early_srs"] == 33.5 and e2["early_srs_n"] == 2
    assert e2["early_alliance_band"] == "low" and e2["early_alliance_band_order"] == 1
    assert (e2["ruptures"], e2["ruptures_recovered"], e2["ruptures_pending"]) == (1, 0, 1)
    assert (e2["first_wai_sr"], e2["last_wai_sr"]) == (47.0, 48.0)
    assert e2["first_wai_sr_item_mean"] == pytest.approx(47 / 12)
    assert e2["last_wai_sr_item_mean"] == pytest.approx(4.0)


def test_drop_points_from_settings():
    connection = alliance_warehouse(duckdb.connect())
    build_session_alliance(connection, dataclasses.replace(SETTINGS, alliance_drop_points=6.0))
    ruptures = connection.execute(
        "SELECT assessment_id FROM marts.session_alliance WHERE possible_rupture ORDER BY 1"
    ).fetchall()
    assert ruptures == [("b2",)]  # only the drop of 7; 5.5 and 5 are below 6


def test_alliance_monthly(con):
    got = {
        (r["level"], r["clinician_id"], str(r["month"])[:7], r["instrument"]): r
        for r in rows(con, "SELECT * FROM marts.alliance_monthly")
    }
    # January SRS: E1 (T1) 38.0, 32.5, 38.0 and E3 (T2) 40.0
    clinic = got[("clinic", None, "2026-01", "SRS")]
    assert (clinic["administrations"], clinic["clients"], clinic["episodes"]) == (4, 2, 2)
    assert clinic["mean_total"] == pytest.approx(148.5 / 4)  # 37.125
    assert (clinic["low_alliance_administrations"], clinic["possible_ruptures"]) == (1, 1)
    assert clinic["low_alliance_share"] == pytest.approx(0.25)  # 1 / 4
    t1 = got[("clinician", "T1", "2026-01", "SRS")]
    assert (t1["administrations"], t1["clients"]) == (3, 1)
    assert t1["mean_total"] == pytest.approx(108.5 / 3)
    t2 = got[("clinician", "T2", "2026-01", "SRS")]
    assert (t2["administrations"], t2["mean_total"], t2["low_alliance_administrations"]) == (
        1,
        40.0,
        0,
    )
    # February SRS, T1 only: 36.8, 31.8, 35.9, 36.0 -> 2 low, 1 rupture (a5)
    feb = got[("clinic", None, "2026-02", "SRS")]
    assert (
        feb["administrations"],
        feb["low_alliance_administrations"],
        feb["possible_ruptures"],
    ) == (4, 2, 1)
    # March SRS: E1 31.1 (T1), E2 37.0 and 30.0 (T2): 3 administrations, 2 clients,
    # mean 98.1 / 3 = 32.7, low 31.1 and 30.0, one rupture (E2's drop of 7)
    mar = got[("clinic", None, "2026-03", "SRS")]
    assert (
        mar["administrations"],
        mar["clients"],
        mar["low_alliance_administrations"],
        mar["possible_ruptures"],
    ) == (3, 2, 2, 1)
    assert mar["mean_total"] == pytest.approx(32.7)
    # March WAI-SR: 47 and 48 -> mean item (47/12 + 48/12) / 2 = 3.958333; no cutoff
    wai = got[("clinic", None, "2026-03", "WAI-SR")]
    assert wai["mean_total"] == 47.5
    assert wai["mean_item_score"] == pytest.approx((47 / 12 + 4.0) / 2)
    assert wai["low_alliance_administrations"] is None and wai["possible_ruptures"] is None
    # Jan SRS: clinic, T1, T2 (3); Feb SRS: clinic, T1 (2); Mar SRS: clinic, T1, T2 (3);
    # Mar WAI-SR: clinic, T2 (2) -> 10 rows
    assert len(got) == 10


# --------------------------------------------------------------------------
# alliance-outcome relation: five episodes worked by hand
#
# Early SRS x (mean of the first three SRS, x-1, x, x+1) and PHQ-9 improvement y
# (baseline - final):
#   episode  x   y   x - 35  y - 6
#   P1      31   2    -4     -4
#   P2      33   6    -2      0
#   P3      35   4     0     -2
#   P4      37  10     2      4
#   P5      39   8     4      2
# mean x = 35, mean y = 6; Sxx = 16+4+0+4+16 = 40; Syy = 16+0+4+16+4 = 40;
# Sxy = 16+0+0+8+8 = 32; r = 32 / sqrt(40 x 40) = 0.8.
# Fisher z = atanh(0.8) = 0.5 ln(1.8 / 0.2) = 0.5 ln 9 = ln 3 = 1.098612;
# SE = 1 / sqrt(n - 3) = 1 / sqrt(2) = 0.707107; 1.959964 x 0.707107 = 1.385904;
# z in [1.098612 - 1.385904, 1.098612 + 1.385904] = [-0.287292, 2.484516];
# r = tanh(z): tanh(-0.287292) = -(e^0.574584 - 1) / (e^0.574584 + 1)
#   = -0.776388 / 2.776388 = -0.279640; tanh(2.484516) = (e^4.969032 - 1) / (e^4.969032 + 1)
#   = 142.889 / 144.889 = 0.986196.
# p: t = r sqrt(n - 2) / sqrt(1 - r^2) = 0.8 x 1.732051 / 0.6 = 2.309401, df 3, two-sided
#   p = 0.1041.
#
# PHQ-9 (reliable change 6, caseness >= 10):
#   P1 14 -> 12 (2)  no reliable change, still at caseness -> not recovered
#   P2 16 -> 10 (6)  reliably improved, final 10 still at caseness -> not recovered
#   P3  9 -> 5  (4)  no reliable change, not at caseness at baseline -> recovered NULL
#   P4 18 -> 8 (10)  reliably improved and recovered
#   P5 15 -> 7  (8)  reliably improved and recovered
# Bands on the SRS cutoff 36: low = P1, P2, P3 (31, 33, 35); adequate = P4, P5 (37, 39).
#   low: reliably improved 1/3, recovered 0/2 (P3 excluded), mean improvement 12/3 = 4
#   adequate: reliably improved 2/2, recovered 2/2, mean improvement 18/2 = 9
# Excluded: P6 (early SRS but PHQ-9 unpaired) and P7 (paired PHQ-9, no SRS).
# ORS (higher is better) for P1 20 -> 30 (+10) and P2 22 -> 24 (+2): n = 2 < 3, r NULL.

FIVE = [
    ("P1", 31, 14, 12, "no_reliable_change", True, True, False, False),
    ("P2", 33, 16, 10, "reliably_improved", True, True, False, False),
    ("P3", 35, 9, 5, "no_reliable_change", False, False, None, None),
    ("P4", 37, 18, 8, "reliably_improved", True, False, True, True),
    ("P5", 39, 15, 7, "reliably_improved", True, False, True, True),
]


def outcome_warehouse(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    episodes, assessments = [], []
    for ep, x, *_ in [*FIVE, ("P6", 30)]:
        episodes.append(episode(ep, f"c{ep}"))
        # x-1, x, x+1 in the first three weeks, then 20 (after the early window)
        for week, total in enumerate([x - 1, x, x + 1, 20]):
            assessments.append(
                srs(f"{ep}-{week}", ep, f"c{ep}", f"2026-01-{5 + 7 * week:02d} 10:50", float(total))
            )
    episodes.append(episode("P7", "cP7"))
    make_warehouse(con, episodes=episodes, assessments=assessments)
    con.execute(SCORES_DDL)
    create_episode_outcomes(
        con,
        [
            (ep, "PHQ-9", float(b), float(f), cls, bc, fc, rec, rrec)
            for ep, _, b, f, cls, bc, fc, rec, rrec in FIVE
        ]
        + [
            ("P6", "PHQ-9", 12.0, None, "not_paired", True, None, None, None),
            ("P7", "PHQ-9", 20.0, 5.0, "reliably_improved", True, False, True, True),
            ("P1", "ORS", 20.0, 30.0, "reliably_improved", True, False, True, True),
            ("P2", "ORS", 22.0, 24.0, "no_reliable_change", True, True, False, False),
        ],
    )
    build_session_alliance(con, SETTINGS)
    build_episode_alliance(con, SETTINGS)
    return con


def test_alliance_outcome_correlation_five_episodes():
    con = outcome_warehouse(duckdb.connect())
    counts = build_alliance_outcome(con, SETTINGS)
    assert counts == {"marts.alliance_outcome": 2, "marts.alliance_outcome_bands": 3}
    got = {r["instrument"]: r for r in rows(con, "SELECT * FROM marts.alliance_outcome")}
    phq = got["PHQ-9"]
    assert (phq["episodes"], phq["clients"]) == (5, 5)
    assert phq["mean_early_srs"] == 35.0 and phq["mean_improvement"] == 6.0
    assert phq["r"] == pytest.approx(0.8)
    assert phq["ci_low"] == pytest.approx(-0.279640, abs=1e-6)
    assert phq["ci_high"] == pytest.approx(0.986196, abs=1e-6)
    assert phq["p_value"] == pytest.approx(0.1041, abs=1e-4)
    assert phq["anchor_r"] == 0.28 and "Flückiger" in phq["anchor_source"]
    ors = got["ORS"]
    assert ors["episodes"] == 2 and ors["r"] is None and ors["ci_low"] is None
    assert ors["mean_improvement"] == 6.0  # (10 + 2) / 2, higher is better: final - baseline


def test_alliance_outcome_rates_by_band():
    con = outcome_warehouse(duckdb.connect())
    build_alliance_outcome(con, SETTINGS)
    got = {
        (r["instrument"], r["band"]): r
        for r in rows(con, "SELECT * FROM marts.alliance_outcome_bands")
    }
    low, adequate = got[("PHQ-9", "low")], got[("PHQ-9", "adequate")]
    assert (low["episodes"], low["mean_improvement"]) == (5 - 2, 4.0)
    assert (low["reliably_improved_num"], low["reliably_improved_den"]) == (1, 3)
    assert low["reliably_improved_rate"] == pytest.approx(1 / 3)
    assert (low["recovered_num"], low["recovered_den"], low["recovered_rate"]) == (0, 2, 0.0)
    assert (low["reliably_deteriorated_num"], low["reliably_deteriorated_den"]) == (0, 3)
    assert (adequate["episodes"], adequate["mean_improvement"]) == (2, 9.0)
    assert (adequate["reliably_improved_num"], adequate["reliably_improved_den"]) == (2, 2)
    assert (adequate["reliably_recovered_num"], adequate["reliably_recovered_den"]) == (2, 2)
    ors = got[("ORS", "low")]
    assert (ors["episodes"], ors["reliably_improved_num"], ors["mean_improvement"]) == (2, 1, 6.0)


def test_pearson_needs_three_pairs_and_four_for_the_interval():
    assert pearson_with_ci([1.0, 2.0], [2.0, 1.0])["r"] is None
    three = pearson_with_ci([1.0, 2.0, 3.0], [1.0, 3.0, 2.0])
    # Sxy = (-1)(-1) + 0 + (1)(0) = 1, Sxx = Syy = 2 -> r = 0.5; no CI with n - 3 = 0
    assert three["r"] == pytest.approx(0.5) and three["ci_low"] is None
    assert pearson_with_ci([1.0, 2.0, 3.0, 4.0], [5.0] * 4)["r"] is None  # no variation


def test_assets_materialize(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        outcome_warehouse(con)
    result = dg.materialize(
        [session_alliance, episode_alliance, alliance_monthly, alliance_outcome],
        resources={"outcomes": OutcomesResource(warehouse=str(path))},
    )
    assert result.success
    with duckdb.connect(str(path), read_only=True) as con:
        # 6 episodes x 4 SRS; P1..P6 in marts.episode_alliance
        assert con.execute("SELECT count(*) FROM marts.session_alliance").fetchone()[0] == 24
        assert con.execute("SELECT count(*) FROM marts.episode_alliance").fetchone()[0] == 6
        assert con.execute("SELECT count(*) FROM marts.alliance_outcome").fetchone()[0] == 2
