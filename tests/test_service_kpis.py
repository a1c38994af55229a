"""Hand-worked tests of marts.clinic_kpis_episodes and marts.clinic_kpis.

The upstream marts (scores, episode_attendance, episode_outcomes) are built here
by ``make_marts`` with the CONTRACT.md section 6 columns, so these tests do not
depend on the code that computes them.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import duckdb
import pytest

from assets.service_kpis import (
    PAIR_LABEL,
    SERVICE_KEY,
    build_clinic_kpis,
    build_clinic_kpis_episodes,
)
from schemas.registry import load_registry
from tests.factories import make_warehouse

MART_COLUMNS: dict[str, str] = {
    "scores": """assessment_id VARCHAR, episode_id VARCHAR, client_id VARCHAR,
        instrument VARCHAR, administered_at TIMESTAMP, total DOUBLE, items_answered INTEGER,
        prorated BOOLEAN, session_number INTEGER, construct VARCHAR, clinic_id VARCHAR,
        clinician_id VARCHAR""",
    "episode_attendance": """episode_id VARCHAR, client_id VARCHAR, clinic_id VARCHAR,
        clinician_id VARCHAR, scheduled INTEGER, attended INTEGER, no_show INTEGER,
        late_cancelled INTEGER, client_cancelled INTEGER, clinic_cancelled INTEGER,
        attendance_rate DOUBLE, dna_rate DOUBLE, first_attended_at TIMESTAMP,
        last_attended_at TIMESTAMP, median_gap_days DOUBLE, max_gap_days INTEGER,
        status VARCHAR, dropout BOOLEAN, early_dropout BOOLEAN,
        attended_non_assessment INTEGER, finished BOOLEAN""",
    "episode_outcomes": """episode_id VARCHAR, instrument VARCHAR, n_scores INTEGER,
        baseline_score DOUBLE, baseline_at TIMESTAMP, final_score DOUBLE, final_at TIMESTAMP,
        change DOUBLE, paired BOOLEAN, baseline_caseness BOOLEAN, final_caseness BOOLEAN,
        outcome_class VARCHAR, recovered BOOLEAN, reliably_recovered BOOLEAN,
        slope_per_week DOUBLE, improvement DOUBLE, harmed BOOLEAN""",
    "alerts": """alert_type VARCHAR, episode_id VARCHAR, client_id VARCHAR,
        clinician_id VARCHAR, raised_at TIMESTAMP, assessment_id VARCHAR, detail VARCHAR""",
}


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict[str, Any]]) -> None:
    con.execute(f"CREATE OR REPLACE TABLE marts.{table} ({MART_COLUMNS[table]})")
    for row in rows:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        con.execute(f"INSERT INTO marts.{table} ({cols}) VALUES ({marks})", list(row.values()))


def make_marts(
    con: duckdb.DuckDBPyConnection,
    *,
    scores: list[dict[str, Any]] = (),
    episode_attendance: list[dict[str, Any]] = (),
    episode_outcomes: list[dict[str, Any]] = (),
) -> None:
    """Upstream marts with the contract columns, on top of a ``make_warehouse`` staging.

    scores: give episode_id, instrument, administered_at, total (+ session_number);
    ids, client, clinic, clinician and construct are filled in from staging.
    episode_attendance: one row per staged episode; a stand-in derivation (status from
    end_reason, counts and ``finished`` from staged sessions) that the given rows
    override by episode_id.
    episode_outcomes: rows as given (see ``outcome``).
    """
    _insert(
        con,
        "scores",
        [
            {"assessment_id": f"A{i}", "prorated": False, "session_number": 0, **r}
            for i, r in enumerate(scores, start=1)
        ],
    )
    con.execute("""
        UPDATE marts.scores s SET client_id = e.client_id, clinic_id = e.clinic_id,
               clinician_id = e.clinician_id, construct = i.construct
        FROM staging.episodes e, staging.instruments i
        WHERE e.episode_id = s.episode_id AND i.code = s.instrument""")
    given = {r["episode_id"]: r for r in episode_attendance}
    derived = con.execute("""
        SELECT e.episode_id, e.client_id, e.clinic_id, e.clinician_id,
               count(s.session_id) FILTER (WHERE s.status <> 'booked')::INTEGER AS scheduled,
               count(s.session_id) FILTER (WHERE s.status = 'attended')::INTEGER AS attended,
               count(s.session_id) FILTER (WHERE s.status = 'no_show')::INTEGER AS no_show,
               count(s.session_id) FILTER (WHERE s.status = 'late_cancelled')::INTEGER
                   AS late_cancelled,
               min(s.scheduled_at) FILTER (WHERE s.status = 'attended') AS first_attended_at,
               max(s.scheduled_at) FILTER (WHERE s.status = 'attended') AS last_attended_at,
               count(s.session_id) FILTER (WHERE s.status = 'attended'
                                           AND s.session_type <> 'assessment')::INTEGER
                   AS attended_non_assessment,
               CASE WHEN e.end_date IS NULL THEN 'open'
                    WHEN e.end_reason IN ('completed', 'mutual_agreement') THEN 'completed'
                    WHEN e.end_reason IN ('dropout', 'declined') THEN e.end_reason
                    ELSE 'other_end' END AS status
        FROM staging.episodes e LEFT JOIN staging.sessions s ON s.episode_id = e.episode_id
        GROUP BY ALL ORDER BY e.episode_id""").df()
    rows = []
    for rec in derived.astype(object).where(derived.notna(), None).to_dict("records"):
        row = {**rec, **given.get(rec["episode_id"], {})}
        row.setdefault("dropout", row["status"] in ("dropout", "disengaged"))
        row.setdefault("early_dropout", False)
        # NHS "finished": ended with 2+ attended non-assessment sessions (METRICS.md).
        row.setdefault("finished", rec["status"] != "open" and row["attended_non_assessment"] >= 2)
        rows.append(row)
    _insert(con, "episode_attendance", rows)
    _insert(con, "episode_outcomes", list(episode_outcomes))
    _insert(con, "alerts", [])


def outcome(episode_id: str, instrument: str, baseline: float, final: float | None) -> dict:
    """An episode_outcomes row for a baseline and final score, classified with the registry."""
    inst = load_registry()[instrument]

    def caseness(score: float) -> bool:
        return score >= inst.cutoff if inst.higher_is_worse else score < inst.cutoff

    paired = final is not None
    improvement = None
    if paired:
        improvement = baseline - final if inst.higher_is_worse else final - baseline
    if not paired:
        outcome_class = "not_paired"
    elif improvement >= inst.rc_threshold:
        outcome_class = "reliably_improved"
    elif improvement <= -inst.rc_threshold:
        outcome_class = "reliably_deteriorated"
    else:
        outcome_class = "no_reliable_change"
    recovered = None
    if paired and caseness(baseline):
        recovered = not caseness(final)
    return {
        "episode_id": episode_id,
        "instrument": instrument,
        "n_scores": 2 if paired else 1,
        "baseline_score": baseline,
        "final_score": baseline if final is None else final,
        "change": None if final is None else final - baseline,
        "paired": paired,
        "baseline_caseness": caseness(baseline),
        "final_caseness": caseness(final) if paired else None,
        "outcome_class": outcome_class,
        "recovered": recovered,
        "reliably_recovered": None
        if recovered is None
        else recovered and outcome_class == "reliably_improved",
        "improvement": improvement,
    }


SESSION_CODES = {  # code -> (status, session_type)
    "A": ("attended", "assessment"),
    "T": ("attended", "treatment"),
    "N": ("no_show", "treatment"),
    "L": ("late_cancelled", "treatment"),
    "C": ("client_cancelled", "treatment"),
    "K": ("clinic_cancelled", "treatment"),
    "B": ("booked", "treatment"),
}


def weekly(episode_id: str, client_id: str, first_day: str, codes: str) -> list[dict]:
    """Sessions one week apart from ``first_day``, one per code of SESSION_CODES
    (e.g. "ATTN": assessment, two treatment sessions, a no-show); ids E-S1, E-S2, ..."""
    start = dt.date.fromisoformat(first_day)
    return [
        {
            "session_id": f"{episode_id}-S{i}",
            "episode_id": episode_id,
            "client_id": client_id,
            "scheduled_at": f"{start + dt.timedelta(weeks=i - 1)} 10:00",
            "status": SESSION_CODES[code][0],
            "session_type": SESSION_CODES[code][1],
        }
        for i, code in enumerate(codes, start=1)
    ]


def pair_scores(episode_id: str, first: tuple[str, float, float], last: tuple[str, float, float]):
    """PHQ-9 and GAD-7 administered together on two days: (date, phq9, gad7)."""
    rows = []
    for day, phq, gad in (first, last):
        rows.append(
            {
                "episode_id": episode_id,
                "instrument": "PHQ-9",
                "administered_at": f"{day} 10:05",
                "total": phq,
            }
        )
        rows.append(
            {
                "episode_id": episode_id,
                "instrument": "GAD-7",
                "administered_at": f"{day} 10:10",
                "total": gad,
            }
        )
    return rows


def kpi(con, kpi_name, *, clinic=SERVICE_KEY, month=None, instrument=None) -> dict:
    """One cell of marts.clinic_kpis as a dict (month None = the all-time row)."""
    cur = con.execute(
        """SELECT * FROM marts.clinic_kpis
           WHERE kpi = ? AND clinic_id = ? AND instrument IS NOT DISTINCT FROM ?
             AND period_type = CASE WHEN ?::DATE IS NULL THEN 'all' ELSE 'month' END
             AND period_start IS NOT DISTINCT FROM ?::DATE""",
        [kpi_name, clinic, instrument, month, month],
    )
    rows = cur.fetchall()
    assert len(rows) == 1, f"{kpi_name} {clinic} {month} {instrument}: {len(rows)} rows"
    return dict(zip([d[0] for d in cur.description], rows[0], strict=True))


def build(con) -> None:
    build_clinic_kpis_episodes(con)
    build_clinic_kpis(con)


def finished_warehouse(con, ids: tuple[str, ...], **marts: list[dict[str, Any]]) -> None:
    """Episodes (client id = episode id) that finished on 2026-03-31 after two attended
    treatment sessions, with the given upstream mart rows."""
    make_warehouse(
        con,
        episodes=[
            {
                "episode_id": e,
                "client_id": e,
                "start_date": "2026-01-05",
                "end_date": "2026-03-31",
                "end_reason": "completed",
            }
            for e in ids
        ],
        sessions=[s for e in ids for s in weekly(e, e, "2026-01-12", "TT")],
    )
    make_marts(con, **marts)


@pytest.fixture
def tiny_service():
    """Clinic C1 with a hand-worked March 2026, one episode in C2, one in February.

    Registry defaults: PHQ-9 caseness >= 10, reliable change 6; GAD-7 >= 8, 4.
    """
    con = duckdb.connect()
    ep = [  # (episode, client, clinic, end_date, end_reason)
        ("E1", "K1", "C1", "2026-03-10", "completed"),
        ("E2", "K2", "C1", "2026-03-20", "completed"),
        ("E3", "K3", "C1", "2026-03-25", "mutual_agreement"),
        ("E4", "K4", "C1", "2026-03-15", "completed"),
        ("E5", "K5", "C1", "2026-03-28", "dropout"),
        ("E6", "K6", "C1", "2026-03-30", "completed"),
        ("E7", "K7", "C1", "2026-02-20", "completed"),
        ("E8", "K8", "C1", None, None),
        ("E9", "K9", "C2", "2026-03-05", "completed"),
        ("E10", "K10", "C1", None, None),
    ]
    episodes = [
        {
            "episode_id": e,
            "client_id": k,
            "clinic_id": c,
            "start_date": "2026-01-05",
            "end_date": end,
            "end_reason": why,
        }
        for e, k, c, end, why in ep
    ]
    sessions = (
        weekly("E1", "K1", "2026-01-05", "ATTT")
        + weekly("E2", "K2", "2026-01-12", "TTT")
        + weekly("E3", "K3", "2026-01-12", "TT")
        # E4: two attended sessions, but one is the assessment -> not finished
        + weekly("E4", "K4", "2026-01-12", "ATN")
        + weekly("E5", "K5", "2026-01-12", "TTTT")
        + weekly("E6", "K6", "2026-01-12", "TT")
        + weekly("E7", "K7", "2026-01-12", "TT")
        + weekly("E8", "K8", "2026-01-12", "TT")
        + weekly("E9", "K9", "2026-01-12", "TT")
        + weekly("E10", "K10", "2026-02-24", "TT")  # last attended 2026-03-03
    )
    scores = (
        pair_scores("E1", ("2026-01-05", 15, 12), ("2026-03-02", 6, 5))
        + pair_scores("E2", ("2026-01-12", 12, 9), ("2026-03-16", 10, 8))
        + pair_scores("E3", ("2026-01-12", 8, 6), ("2026-03-23", 4, 2))
        + pair_scores("E4", ("2026-01-12", 20, 15), ("2026-01-19", 5, 3))
        + pair_scores("E5", ("2026-01-12", 11, 10), ("2026-02-02", 18, 10))
        + [
            {"episode_id": "E6", "instrument": "PHQ-9", "administered_at": d, "total": t}
            for d, t in (("2026-01-12 10:00", 14), ("2026-01-19 10:00", 9))
        ]
        + pair_scores("E7", ("2026-01-12", 14, 10), ("2026-01-19", 4, 3))
        + pair_scores("E8", ("2026-01-12", 14, 10), ("2026-06-20", 4, 3))
        + pair_scores("E9", ("2026-01-12", 16, 9), ("2026-01-19", 7, 6))
    )
    make_warehouse(con, as_of="2026-06-30", episodes=episodes, sessions=sessions)
    make_marts(
        con,
        scores=scores,
        episode_attendance=[
            {"episode_id": "E5", "status": "dropout", "dropout": True, "early_dropout": False},
            {"episode_id": "E10", "status": "disengaged", "dropout": True, "early_dropout": True},
        ],
        episode_outcomes=[outcome("E6", "PHQ-9", 14, 9)],
    )
    build(con)
    yield con
    con.close()


def test_finished_excludes_an_episode_whose_second_attended_session_is_the_assessment(
    tiny_service,
):
    rows = dict(
        tiny_service.execute(
            "SELECT episode_id, finished FROM marts.clinic_kpis_episodes"
        ).fetchall()
    )
    # E4 attended 2 sessions, one of them the assessment: 1 treatment session < 2.
    # E8 and E10 have no end_date. The others ended with >= 2 treatment sessions.
    assert rows == {
        "E1": True,
        "E2": True,
        "E3": True,
        "E4": False,
        "E5": True,
        "E6": True,
        "E7": True,
        "E8": False,
        "E9": True,
        "E10": False,
    }


def test_nhs_recovery_month_for_a_tiny_clinic(tiny_service):
    con = tiny_service
    march = "2026-03-01"
    # Finished in March in C1: E1 E2 E3 E5 E6 (E4 excluded, E7 ended in February).
    # Paired PHQ-9 + GAD-7 among them: E1 E2 E3 E5 (E6 has PHQ-9 only).
    # Caseness at start (PHQ-9 >= 10 or GAD-7 >= 8):
    #   E1 15/12 yes, E2 12/9 yes, E3 8/6 no, E5 11/10 yes           -> denominator 3
    # Recovered (neither at caseness at the end):
    #   E1 6/5 yes; E2 10/8 no (PHQ-9 10 is still caseness); E5 18/10 no -> numerator 1
    rec = kpi(con, "recovery_rate", clinic="C1", month=march, instrument=PAIR_LABEL)
    assert (rec["numerator"], rec["denominator"], rec["n_clients"]) == (1, 3, 3)
    assert rec["value"] == pytest.approx(1 / 3)
    # Reliable recovery: E1 recovered and improved 9 >= 6 (PHQ-9), 7 >= 4 (GAD-7)  -> 1 / 3
    rr = kpi(con, "reliable_recovery_rate", clinic="C1", month=march, instrument=PAIR_LABEL)
    assert (rr["numerator"], rr["denominator"]) == (1, 3)
    # Reliable improvement over all 4 paired finished episodes:
    #   E1 yes; E2 2 and 1 no; E3 GAD-7 6 -> 2 is exactly 4 -> yes; E5 PHQ-9 +7 worse -> no
    ri = kpi(con, "reliable_improvement_rate", clinic="C1", month=march, instrument=PAIR_LABEL)
    assert (ri["numerator"], ri["denominator"], ri["value"]) == (2, 4, 0.5)
    # Reliable deterioration: E5 PHQ-9 11 -> 18 (+7 >= 6)                        -> 1 / 4
    rd = kpi(con, "reliable_deterioration_rate", clinic="C1", month=march, instrument=PAIR_LABEL)
    assert (rd["numerator"], rd["denominator"]) == (1, 4)
    # Paired share of finished: 4 of 5, against the 90% aim
    ps = kpi(con, "paired_share_finished", clinic="C1", month=march, instrument=PAIR_LABEL)
    assert (ps["numerator"], ps["denominator"], ps["target"]) == (4, 5, 0.9)


def test_service_and_all_time_cells_add_up(tiny_service):
    con = tiny_service
    # March, whole service: C1's 1/3 plus E9 in C2 (16/9 -> 7/6, recovered)     -> 2 / 4
    rec = kpi(con, "recovery_rate", month="2026-03-01", instrument=PAIR_LABEL)
    assert (rec["numerator"], rec["denominator"], rec["n_clients"]) == (2, 4, 4)
    # All time in C1: March 1/3 plus E7 in February (14/10 -> 4/3, recovered)   -> 2 / 4
    rec = kpi(con, "recovery_rate", clinic="C1", instrument=PAIR_LABEL)
    assert (rec["numerator"], rec["denominator"]) == (2, 4)
    # February in C1 only E7: 1 / 1; the open E8 never counts
    feb = kpi(con, "recovery_rate", clinic="C1", month="2026-02-01", instrument=PAIR_LABEL)
    assert (feb["numerator"], feb["denominator"]) == (1, 1)
    # All time, whole service, reliable improvement: E1 E3 E7 E9 of 6 paired      -> 4 / 6
    ri = kpi(con, "reliable_improvement_rate", instrument=PAIR_LABEL)
    assert (ri["numerator"], ri["denominator"]) == (4, 6)


def test_dropout_counts_in_the_month_the_episode_left(tiny_service):
    con = tiny_service
    # Left C1 in March: E1 E2 E3 E4 E5 E6 (end_date) and E10 (disengaged, last attended
    # 2026-03-03) = 7. Dropouts: E5 (end_reason dropout) and E10 (disengaged)   -> 2 / 7
    dr = kpi(con, "dropout_rate", clinic="C1", month="2026-03-01")
    assert (dr["numerator"], dr["denominator"], dr["n_clients"]) == (2, 7, 7)
    # Early dropout (attended <= 3): only E10                                    -> 1 / 7
    edr = kpi(con, "early_dropout_rate", clinic="C1", month="2026-03-01")
    assert (edr["numerator"], edr["denominator"]) == (1, 7)
    ended = dict(
        con.execute("SELECT episode_id, ended_on FROM marts.clinic_kpis_episodes").fetchall()
    )
    assert str(ended["E10"]) == "2026-03-03" and ended["E8"] is None


def test_per_instrument_rates_use_episode_outcomes(tiny_service):
    # E6 (finished in March): PHQ-9 14 -> 9: caseness at start, 9 < 10 at the end -> recovered;
    # improvement 5 < 6 -> no reliable change, so not reliably recovered.
    con = tiny_service
    rec = kpi(con, "recovery_rate", clinic="C1", month="2026-03-01", instrument="PHQ-9")
    assert (rec["numerator"], rec["denominator"]) == (1, 1)
    rr = kpi(con, "reliable_recovery_rate", clinic="C1", month="2026-03-01", instrument="PHQ-9")
    assert (rr["numerator"], rr["denominator"]) == (0, 1)
    # Paired on any symptom instrument: only E6 has episode_outcomes rows here -> 1 / 5
    ps = kpi(con, "paired_share_finished", clinic="C1", month="2026-03-01")
    assert (ps["numerator"], ps["denominator"]) == (1, 5)


def test_pair_occasions_need_both_measures_on_the_same_day():
    con = duckdb.connect()
    make_warehouse(
        con,
        episodes=[
            {
                "episode_id": e,
                "client_id": e,
                "start_date": "2026-01-01",
                "end_date": "2026-03-01",
                "end_reason": "completed",
            }
            for e in ("P", "Q")
        ],
    )
    make_marts(
        con,
        scores=[
            # P: day 1 PHQ-9 twice (the first of the day, 20, counts) with GAD-7; day 2 both;
            # day 3 PHQ-9 only (not an occasion): first 20/10 -> last 12/5
            {
                "episode_id": "P",
                "instrument": "PHQ-9",
                "administered_at": "2026-01-05 09:00",
                "total": 20,
            },
            {
                "episode_id": "P",
                "instrument": "PHQ-9",
                "administered_at": "2026-01-05 15:00",
                "total": 3,
            },
            {
                "episode_id": "P",
                "instrument": "GAD-7",
                "administered_at": "2026-01-05 09:05",
                "total": 10,
            },
            {
                "episode_id": "P",
                "instrument": "PHQ-9",
                "administered_at": "2026-02-01 09:00",
                "total": 12,
            },
            {
                "episode_id": "P",
                "instrument": "GAD-7",
                "administered_at": "2026-02-01 09:00",
                "total": 5,
            },
            {
                "episode_id": "P",
                "instrument": "PHQ-9",
                "administered_at": "2026-02-20 09:00",
                "total": 2,
            },
            # Q: PHQ-9 and GAD-7 never on the same day -> not paired
            {
                "episode_id": "Q",
                "instrument": "PHQ-9",
                "administered_at": "2026-01-05 09:00",
                "total": 20,
            },
            {
                "episode_id": "Q",
                "instrument": "GAD-7",
                "administered_at": "2026-01-06 09:00",
                "total": 12,
            },
            {
                "episode_id": "Q",
                "instrument": "PHQ-9",
                "administered_at": "2026-02-05 09:00",
                "total": 5,
            },
            {
                "episode_id": "Q",
                "instrument": "GAD-7",
                "administered_at": "2026-02-06 09:00",
                "total": 3,
            },
        ],
    )
    build_clinic_kpis_episodes(con)
    rows = {
        r[0]: r[1:]
        for r in con.execute(
            """SELECT episode_id, pair_occasions, pair_paired, caseness_start, recovered,
                  reliably_improved, reliably_deteriorated
           FROM marts.clinic_kpis_episodes ORDER BY episode_id"""
        ).fetchall()
    }
    # P: 2 occasions; start 20/10 (caseness), end 12/5: PHQ-9 12 >= 10 -> not recovered;
    # PHQ-9 improved 8 >= 6 and GAD-7 5 >= 4 -> reliably improved
    assert rows["P"] == (2, True, True, False, True, False)
    assert rows["Q"] == (0, False, None, None, None, None)


def test_attendance_and_dna_rates_by_session_month():
    con = duckdb.connect()
    make_warehouse(
        con,
        episodes=[{"episode_id": "E", "client_id": "K", "start_date": "2026-04-01"}],
        # April: 04-01 A, 04-08 T, 04-15 T, 04-22 N, 04-29 L; May: 05-06 C, 05-13 K,
        # 05-20 T, 05-27 booked
        sessions=weekly("E", "K", "2026-04-01", "ATTNLCKTB"),
    )
    make_marts(con)
    build(con)
    april = "2026-04-01"
    # April: attended 3, no_show 1, late_cancelled 1
    #   attendance 3 / 5, DNA 1 / 5, NHS DNA 1 / (3 + 1) = 1 / 4
    att = kpi(con, "attendance_rate", clinic="C1", month=april)
    assert (att["numerator"], att["denominator"], att["n_clients"]) == (3, 5, 1)
    dna = kpi(con, "dna_rate", clinic="C1", month=april)
    assert (dna["numerator"], dna["denominator"]) == (1, 5)
    nhs = kpi(con, "dna_rate_nhs", clinic="C1", month=april)
    assert (nhs["numerator"], nhs["denominator"], nhs["value"]) == (1, 4, 0.25)
    # All time: May adds 1 attended (cancellations in advance and booked not counted) -> 4 / 6
    att = kpi(con, "attendance_rate")
    assert (att["numerator"], att["denominator"]) == (4, 6)


def test_effect_size_d_and_ci_on_four_episodes_by_hand():
    con = duckdb.connect()
    ids = ("E1", "E2", "E3", "E4")
    pairs = ((20, 10), (16, 10), (12, 6), (8, 6))
    outcomes = [outcome(e, "PHQ-9", b, f) for e, (b, f) in zip(ids, pairs, strict=True)]
    finished_warehouse(con, ids, episode_outcomes=outcomes)
    build(con)
    es = kpi(con, "effect_size_d", month="2026-03-01", instrument="PHQ-9")
    # baselines 20 16 12 8: mean 14, squared deviations 36+4+4+36 = 80,
    #   SD = sqrt(80 / 3) = 5.163978
    # improvements 10 6 6 2: mean 6  ->  d = 6 / 5.163978 = 1.161895 (d^2 = 36 / (80/3) = 1.35)
    # finals 10 10 6 6: mean 8, deviations 2 2 -2 -2; cross products 12+4+4+12 = 32,
    #   r = 32 / sqrt(80 * 16) = 0.894427
    # Var(d) = 2(1 - r)/n + d^2/(2n) = 2 * 0.105573 / 4 + 1.35 / 8 = 0.052786 + 0.16875
    #        = 0.221536, SE = 0.470676
    # 95% CI = 1.161895 -/+ 1.959964 * 0.470676 = 1.161895 -/+ 0.922508 = (0.239387, 2.084403)
    assert es["numerator"] == pytest.approx(6)
    assert es["denominator"] == pytest.approx(5.163978, abs=1e-6)
    assert es["value"] == pytest.approx(1.161895, abs=1e-6)
    assert es["ci_low"] == pytest.approx(0.239387, abs=1e-5)
    assert es["ci_high"] == pytest.approx(2.084403, abs=1e-5)
    assert (es["n_episodes"], es["n_clients"]) == (4, 4)
    assert es["benchmark"] == pytest.approx(0.93)
    assert "Minami" in es["benchmark_source"]


def test_effect_size_is_null_not_nan_without_spread():
    con = duckdb.connect()
    outcomes = [outcome("E1", "GAD-7", 10, 4), outcome("E2", "GAD-7", 10, 6)]
    finished_warehouse(con, ("E1", "E2"), episode_outcomes=outcomes)
    build(con)
    es = kpi(con, "effect_size_d", instrument="GAD-7")
    # Both baselines 10: SD 0 -> d undefined: NULL, and no CI
    assert es["value"] is None and es["ci_low"] is None and es["numerator"] == 5
    assert es["benchmark"] is None
    nan_cells = con.execute(
        "SELECT count(*) FROM marts.clinic_kpis WHERE isnan(value) OR isnan(ci_low)"
    ).fetchone()[0]
    assert nan_cells == 0


def test_measurement_completeness_sessions_and_gaps():
    con = duckdb.connect()
    make_warehouse(
        con,
        episodes=[{"episode_id": "E", "client_id": "K", "start_date": "2026-04-01"}],
        sessions=weekly("E", "K", "2026-04-01", "ATTTN"),  # 04-01 04-08 04-15 04-22
        assessments=[  # linked by session_id, or by date when session_id is empty
            {
                "assessment_id": "a1",
                "episode_id": "E",
                "client_id": "K",
                "instrument": "PHQ-9",
                "session_id": "E-S1",
                "administered_at": "2026-04-01 09:00",
                "total": 12,
            },
            {
                "assessment_id": "a2",
                "episode_id": "E",
                "client_id": "K",
                "instrument": "PHQ-9",
                "administered_at": "2026-04-08 11:00",
                "total": 10,
            },
            {
                "assessment_id": "a3",
                "episode_id": "E",
                "client_id": "K",
                "instrument": "SRS",
                "session_id": "E-S2",
                "administered_at": "2026-04-08 11:50",
                "total": 38,
            },
            {
                "assessment_id": "a4",
                "episode_id": "E",
                "client_id": "K",
                "instrument": "PHQ-9",
                "administered_at": "2026-04-22 11:00",
                "total": 8,
            },
        ],
    )
    make_marts(
        con,
        scores=[
            {
                "assessment_id": a,
                "episode_id": "E",
                "instrument": i,
                "administered_at": t,
                "total": v,
            }
            for a, i, t, v in (
                ("a1", "PHQ-9", "2026-04-01 09:00", 12),
                ("a2", "PHQ-9", "2026-04-08 11:00", 10),
                ("a3", "SRS", "2026-04-08 11:50", 38),
                ("a4", "PHQ-9", "2026-04-22 11:00", 8),
            )
        ],
    )
    build(con)
    # 4 attended sessions; symptom measure at S1 (by id), S2 and S4 (by date)   -> 3 / 4
    sym = kpi(con, "sessions_with_symptom_measure", clinic="C1", month="2026-04-01")
    assert (sym["numerator"], sym["denominator"]) == (3, 4)
    # alliance (SRS) at S2 only                                                   -> 1 / 4
    ali = kpi(con, "sessions_with_alliance_measure", clinic="C1", month="2026-04-01")
    assert (ali["numerator"], ali["denominator"]) == (1, 4)
    # PHQ-9 gaps: 04-01 -> 04-08 = 7 days, 04-08 -> 04-22 = 14 days; median 10.5 of 2 gaps
    gap = kpi(con, "median_days_between_measures", instrument="PHQ-9")
    assert (gap["numerator"], gap["denominator"], gap["value"]) == (None, 2, 10.5)
    # pooled over instruments: SRS has a single administration, so still 10.5
    pooled = kpi(con, "median_days_between_measures")
    assert pooled["value"] == 10.5 and not math.isnan(pooled["value"])


def test_distinct_clients_and_episodes_across_clinics_months_and_instruments():
    """n_clients / n_episodes count each client and episode once per cell, whatever the
    number of sessions, months, instruments or clinics behind it."""
    con = duckdb.connect()
    make_warehouse(
        con,
        episodes=[  # K1 has two episodes, one in each clinic
            {"episode_id": "E1", "client_id": "K1", "clinic_id": "C1", "start_date": "2026-04-01"},
            {"episode_id": "E2", "client_id": "K1", "clinic_id": "C2", "start_date": "2026-04-01"},
            {"episode_id": "E3", "client_id": "K2", "clinic_id": "C1", "start_date": "2026-04-01"},
        ],
        sessions=weekly("E1", "K1", "2026-04-22", "TTTT")  # 04-22 04-29 | 05-06 05-13
        + weekly("E2", "K1", "2026-04-29", "TT")  # 04-29 | 05-06
        + weekly("E3", "K2", "2026-05-06", "TN"),  # 05-06 05-13 (no-show)
    )
    make_marts(
        con,
        scores=[
            {"episode_id": e, "instrument": i, "administered_at": f"{d} 10:00", "total": 10}
            for e, i, d in (
                ("E1", "PHQ-9", "2026-04-22"),
                ("E1", "PHQ-9", "2026-04-29"),  # gap 7 days (April)
                ("E1", "PHQ-9", "2026-05-13"),  # gap 14 (May)
                ("E1", "GAD-7", "2026-04-22"),
                ("E1", "GAD-7", "2026-05-06"),  # gap 14 (May)
                ("E2", "PHQ-9", "2026-04-29"),
                ("E2", "PHQ-9", "2026-05-06"),  # gap 7 (May)
                ("E3", "PHQ-9", "2026-05-06"),  # no gap
            )
        ],
    )
    build(con)

    def counts(name, **cell):
        row = kpi(con, name, **cell)
        return row["denominator"], row["n_episodes"], row["n_clients"]

    april, may = "2026-04-01", "2026-05-01"
    # Attendance: sessions held, (episodes, clients) behind them
    assert counts("attendance_rate", clinic="C1", month=april) == (2, 1, 1)  # E1
    assert counts("attendance_rate", month=april) == (3, 2, 1)  # E1 E2, both K1
    assert counts("attendance_rate", clinic="C1", month=may) == (4, 2, 2)  # E1 E3
    assert counts("attendance_rate", month=may) == (5, 3, 2)
    assert counts("attendance_rate", clinic="C1") == (6, 2, 2)  # E1 over two months
    assert counts("attendance_rate", clinic="C2") == (2, 1, 1)
    assert counts("attendance_rate") == (8, 3, 2)
    # NHS DNA rate: E3's no-show in May; the same episodes and clients
    assert counts("dna_rate_nhs", month=may) == (5, 3, 2)
    # Gaps: PHQ-9 7 14 (E1) and 7 (E2); GAD-7 14 (E1)
    assert counts("median_days_between_measures", instrument="PHQ-9") == (3, 2, 1)
    assert kpi(con, "median_days_between_measures", instrument="PHQ-9")["value"] == 7  # 7 7 14
    assert counts("median_days_between_measures", clinic="C1", month=may) == (2, 1, 1)
    assert counts("median_days_between_measures", month=may) == (3, 2, 1)
    assert counts("median_days_between_measures", clinic="C1") == (3, 1, 1)
    pooled = kpi(con, "median_days_between_measures")
    assert (pooled["denominator"], pooled["n_episodes"], pooled["n_clients"]) == (4, 2, 1)
    assert pooled["value"] == 10.5
