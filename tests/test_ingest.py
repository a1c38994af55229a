"""Ingest: every quarantine rule, scoring at validation time, formats and failures.

Each test starts from the hand-made export in tests/exports.py, breaks one
thing and checks exactly which rows land where. Expected totals are worked
out by hand in the comments.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

import duckdb
import pandas as pd
import pytest

from assets.ingest_engine import IngestError
from schemas.privacy import PrivacyError
from schemas.staging import create_tables
from tests.exports import base_tables, ingest, rejected, staged_ids, write_csv, write_exports


def run(tmp_path, tables, **settings):
    return ingest(write_exports(tmp_path / "exports", tables), **settings)


def totals(con):
    return {
        a: (t, n, p)
        for a, t, n, p in con.execute(
            "SELECT assessment_id, total, items_answered, prorated FROM staging.assessments"
        ).fetchall()
    }


# --------------------------------------------------------------------------- valid export


def test_valid_export_is_staged_typed_and_scored(tmp_path):
    con, result = run(tmp_path, base_tables())
    assert rejected(con) == []
    assert {t: r.rows_staged for t, r in result.tables.items()} == {
        "episodes": 2,
        "sessions": 3,
        "assessments": 2,
        "assessment_items": 9,
        "goals": 1,
    }
    # PHQ-9 items 2x8 + 0 = 16, all answered; GAD-7 totals-only 12.
    assert totals(con) == {"A1": (16.0, 9, False), "A2": (12.0, None, False)}
    s2 = con.execute(
        "SELECT session_type, duration_minutes, scheduled_at FROM staging.sessions "
        "WHERE session_id = 'S2'"
    ).fetchall()[0]
    assert s2 == ("treatment", 45, dt.datetime(2026, 1, 12, 10, 0))  # default type, 45.0 -> 45
    # As of = latest staged administration or non-booked session: A2 on 2026-01-12.
    assert result.as_of == dt.date(2026, 1, 12) and result.as_of_source == "data"
    assert con.execute("SELECT as_of FROM staging.run_info").fetchall() == [(dt.date(2026, 1, 12),)]


def test_conservation_and_cascade_from_a_rejected_episode(tmp_path):
    tables = base_tables()
    tables["episodes"][0]["clinic_id"] = ""  # E1 breaks missing_required
    con, result = run(tmp_path, tables)
    for report in result.tables.values():
        assert report.rows_read == report.rows_staged + report.rows_quarantined
    # Everything of E1 follows it: S1, S2, A1, A2, its 9 items and its goal.
    by_rule = {t: r.by_rule for t, r in result.tables.items() if r.by_rule}
    assert by_rule == {
        "episodes": {"missing_required": 1},
        "sessions": {"unknown_reference": 2},
        "assessments": {"unknown_reference": 2},
        "assessment_items": {"unknown_reference": 9},
        "goals": {"unknown_reference": 1},
    }
    counts = con.execute(
        "SELECT table_name, count(*) FROM quarantine.rejected_rows GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert dict(counts) == {
        "assessment_items": 9,
        "assessments": 2,
        "episodes": 1,
        "goals": 1,
        "sessions": 2,
    }


# --------------------------------------------------------------------------- row rules


@pytest.mark.parametrize(
    ("table", "index", "column", "value", "rule"),
    [
        ("episodes", 1, "start_date", "", "missing_required"),
        ("episodes", 1, "end_reason", "", "missing_required"),  # end_date set, no reason
        ("episodes", 1, "start_date", "10/01/2026", "bad_type"),
        ("episodes", 1, "end_reason", "Completed", "bad_enum"),  # enums match exactly
        ("episodes", 1, "age_band", "18-25", "bad_enum"),
        ("episodes", 0, "referral_date", "2026-01-06", "date_order"),  # after start 01-05
        ("episodes", 1, "end_date", "2026-01-09", "date_order"),  # before start 01-10
        ("sessions", 2, "duration_minutes", "abc", "bad_type"),
        ("sessions", 2, "duration_minutes", "45.5", "bad_type"),
        ("sessions", 2, "duration_minutes", "481", "out_of_range"),
        # Whole numbers beyond 64 bits are not integers (found by fuzzing: the
        # cast raised and stopped the ingest); the largest int64 is a number.
        ("sessions", 2, "duration_minutes", "99999999999999999999", "bad_type"),
        ("sessions", 2, "duration_minutes", "9223372036854775808", "bad_type"),
        ("sessions", 2, "duration_minutes", "9223372036854775807", "out_of_range"),
        ("sessions", 2, "duration_minutes", "0", "out_of_range"),
        ("sessions", 2, "scheduled_at", "next tuesday", "bad_type"),
        ("sessions", 2, "status", "Attended", "bad_enum"),
        ("sessions", 2, "practice_completed", "maybe", "bad_enum"),
        ("assessments", 1, "total_score", "twelve", "bad_type"),
        ("assessments", 1, "instrument", "BDI-II", "unknown_instrument"),
        ("goals", 0, "goal_number", "11", "out_of_range"),
        ("goals", 0, "horizon", "medium_term", "bad_enum"),
    ],
)
def test_row_rule(tmp_path, table, index, column, value, rule):
    tables = base_tables()
    tables[table][index][column] = value
    con, _ = run(tmp_path, tables)
    got = [r for r in rejected(con) if r[0] == table]
    assert got == [(table, f"{table}.csv", index + 1, rule)]


def test_boundary_values_pass(tmp_path):
    tables = base_tables()
    tables["sessions"][0]["duration_minutes"] = "1"
    tables["sessions"][1]["duration_minutes"] = "480"
    tables["goals"][0]["goal_number"] = "10"
    tables["sessions"][2]["duration_minutes"] = "+0045.0"  # a sign and leading zeros: 45
    tables["episodes"][0]["referral_date"] = "2026-01-05"  # equal to start: allowed
    con, _ = run(tmp_path, tables)
    assert rejected(con) == []


def test_precedence_picks_the_first_rule(tmp_path):
    tables = base_tables()
    # bad_type (2) beats bad_enum (3); missing_required (1) beats both.
    tables["sessions"][1].update(status="Attended", duration_minutes="abc")
    tables["sessions"][2].update(status="Attended", clinician_id="")
    con, _ = run(tmp_path, tables)
    assert rejected(con, "sessions") == [
        ("sessions", "sessions.csv", 2, "bad_type"),
        ("sessions", "sessions.csv", 3, "missing_required"),
    ]


def test_item_ranges_come_from_the_instrument(tmp_path):
    tables = base_tables()
    tables["assessment_items"][2]["score"] = "4"  # PHQ-9 items are 0..3
    tables["assessment_items"].append({"assessment_id": "A1", "item": "10", "score": "0"})
    con, _ = run(tmp_path, tables)
    assert rejected(con) == [
        ("assessment_items", "assessment_items.csv", 3, "out_of_range"),
        ("assessment_items", "assessment_items.csv", 10, "out_of_range"),
    ]
    # The bad item is dropped and A1 is scored from the other 8 (14 points):
    # 14 / 8 x 9 = 15.75, prorated.
    assert totals(con)["A1"] == (15.75, 8, True)


# --------------------------------------------------------------------------- keys and references


def test_duplicate_keys_keep_the_first_copy_and_report_exact_duplicates(tmp_path):
    tables = base_tables()
    tables["sessions"].append(dict(tables["sessions"][0]))  # exact copy of S1 -> row 4
    changed = dict(tables["sessions"][1], status="no_show")  # S2 again, different -> row 5
    tables["sessions"].append(changed)
    tables["assessment_items"].append({"assessment_id": "A1", "item": "9.0", "score": "1"})
    con, _ = run(tmp_path, tables)
    assert rejected(con) == [
        ("sessions", "sessions.csv", 4, "duplicate_key"),
        ("sessions", "sessions.csv", 5, "duplicate_key"),
        ("assessment_items", "assessment_items.csv", 10, "duplicate_key"),
    ]
    details = [
        d
        for (d,) in con.execute(
            "SELECT detail FROM quarantine.rejected_rows WHERE table_name = 'sessions'"
        ).fetchall()
    ]
    assert "exact duplicate" in details[0] and "exact duplicate" not in details[1]
    assert "sessions.csv row 1" in details[0]
    assert staged_ids(con, "sessions", "status") == ["attended", "attended", "no_show"]


def test_repeated_item_numbers_beyond_the_bitmask_are_still_found(tmp_path):
    # Item duplicates are looked for per administration with one bit per item
    # number 0..62; other numbers (here 70 and -1, under an unknown
    # administration, so no range rule applies first) must still be compared.
    tables = base_tables()
    for item in ("70", "70", "-1", "-1", "5"):
        tables["assessment_items"].append({"assessment_id": "A404", "item": item, "score": "1"})
    con, _ = run(tmp_path, tables)
    # Rows 10-14: the second 70 and the second -1 are duplicates (rule 1 puts
    # duplicate_key before unknown_reference); the first copies and item 5 are
    # unknown references.
    assert rejected(con) == [
        ("assessment_items", "assessment_items.csv", 10, "unknown_reference"),
        ("assessment_items", "assessment_items.csv", 11, "duplicate_key"),
        ("assessment_items", "assessment_items.csv", 12, "unknown_reference"),
        ("assessment_items", "assessment_items.csv", 13, "duplicate_key"),
        ("assessment_items", "assessment_items.csv", 14, "unknown_reference"),
    ]


def test_first_copy_counts_among_rows_that_passed_row_rules(tmp_path):
    tables = base_tables()
    bad = dict(tables["sessions"][2], session_id="S9", status="Attended")  # row 4: bad_enum
    good = dict(tables["sessions"][2], session_id="S9")  # row 5: the first *valid* copy
    tables["sessions"] += [bad, good]
    con, _ = run(tmp_path, tables)
    assert rejected(con) == [("sessions", "sessions.csv", 4, "bad_enum")]
    assert "S9" in staged_ids(con, "sessions", "session_id")


def test_references_and_client_mismatch(tmp_path):
    tables = base_tables()
    tables["sessions"].append(dict(tables["sessions"][2], session_id="S4", episode_id="E404"))
    tables["sessions"].append(dict(tables["sessions"][1], session_id="S5", client_id="K2"))
    tables["assessments"][0]["session_id"] = "S3"  # a session of another episode (E2)
    tables["assessments"][1]["client_id"] = "K2"
    tables["goals"].append(
        {"episode_id": "E404", "goal_number": "1", "set_at": "2026-01-05", "horizon": "long_term"}
    )
    con, _ = run(tmp_path, tables)
    assert rejected(con) == [
        ("sessions", "sessions.csv", 4, "unknown_reference"),
        ("sessions", "sessions.csv", 5, "client_mismatch"),
        ("assessments", "assessments.csv", 1, "unknown_reference"),
        ("assessments", "assessments.csv", 2, "client_mismatch"),
        # A1's items follow their administration.
        *[
            ("assessment_items", "assessment_items.csv", i, "unknown_reference")
            for i in range(1, 10)
        ],
        ("goals", "goals.csv", 2, "unknown_reference"),
    ]


def test_administration_naming_a_quarantined_session_is_unknown_reference(tmp_path):
    tables = base_tables()
    tables["sessions"][0]["status"] = "cancelled"  # S1 -> bad_enum
    con, _ = run(tmp_path, tables)
    assert ("assessments", "assessments.csv", 1, "unknown_reference") in rejected(con)


def test_session_time_window(tmp_path):
    tables = base_tables()
    # E1: referral 2026-01-01, start 2026-01-05 -> earliest allowed 2025-12-02.
    # As of (config) 2026-01-12 -> latest allowed 2027-01-12.
    extra = [
        ("S6", "2025-12-02T08:00:00"),
        ("S7", "2025-12-01T23:59:00"),
        ("S8", "2027-01-12T18:00:00"),
        ("S9", "2027-01-13T08:00:00"),
    ]
    for sid, when in extra:
        tables["sessions"].append(
            dict(tables["sessions"][1], session_id=sid, scheduled_at=when, status="booked")
        )
    con, _ = run(tmp_path, tables, as_of=dt.date(2026, 1, 12))
    assert rejected(con) == [
        ("sessions", "sessions.csv", 5, "out_of_range"),
        ("sessions", "sessions.csv", 7, "out_of_range"),
    ]


def test_window_as_of_defaults_to_latest_timestamp_in_files(tmp_path):
    tables = base_tables()
    # Without OUTCOMES_AS_OF the window's as-of is the latest parseable
    # timestamp in the files (edge rule 2): here the booked 2027-03-01 itself,
    # so a session a year and a day before it is fine, but not a year and 2 days after.
    tables["sessions"].append(
        dict(
            tables["sessions"][1],
            session_id="S6",
            scheduled_at="2027-03-01T10:00:00",
            status="booked",
        )
    )
    con, result = run(tmp_path, tables)
    assert rejected(con) == []
    # The metrics' as-of ignores booked sessions: still 2026-01-12.
    assert result.as_of == dt.date(2026, 1, 12)


def test_as_of_ignores_quarantined_rows(tmp_path):
    tables = base_tables()
    tables["assessments"].append(
        dict(
            tables["assessments"][1],
            assessment_id="A3",
            instrument="BDI-II",
            administered_at="2026-02-20T10:00",
        )
    )
    _, result = run(tmp_path, tables)
    assert result.as_of == dt.date(2026, 1, 12)


# --------------------------------------------------------------------------- scoring


def _phq9(aid: str, scores: dict[int, str]) -> list[dict]:
    return [{"assessment_id": aid, "item": str(i), "score": s} for i, s in scores.items()]


@pytest.mark.parametrize(
    ("missing", "expected"),
    [
        # items 2 each except item 9 = 0; drop items from the front.
        ((), (16.0, 9, False)),
        ((1,), (14 / 8 * 9, 8, True)),  # 15.75
        ((1, 2), (12 / 7 * 9, 7, True)),  # 15.428571...
    ],
)
def test_proration_up_to_the_missing_limit(tmp_path, missing, expected):
    tables = base_tables()
    tables["assessment_items"] = [
        r for r in tables["assessment_items"] if int(r["item"]) not in missing
    ]
    con, _ = run(tmp_path, tables)
    total, answered, prorated = totals(con)["A1"]
    assert total == pytest.approx(expected[0], abs=1e-12)
    assert (answered, prorated) == expected[1:]


def test_too_many_missing_items_quarantines_the_administration_and_its_items(tmp_path):
    tables = base_tables()
    # Items 1-3 missing (3 > 2 allowed); item 9 (risk) answered 2.
    tables["assessment_items"] = _phq9("A1", {4: "2", 5: "2", 6: "2", 7: "2", 8: "2", 9: "2"})
    con, _ = run(tmp_path, tables)
    assert rejected(con) == [
        ("assessments", "assessments.csv", 1, "too_many_missing_items"),
        *[
            ("assessment_items", "assessment_items.csv", i, "unknown_reference")
            for i in range(1, 7)
        ],
    ]
    assert "A1" not in staged_ids(con, "assessments", "assessment_id")
    # The risk answer still reaches staging.risk_responses (edge rule 6).
    assert con.execute(
        "SELECT assessment_id, item, score, staged FROM staging.risk_responses"
    ).fetchall() == [("A1", 9, 2.0, False)]


def test_totals_only_rules(tmp_path):
    tables = base_tables()
    gad = tables["assessments"][1]
    tables["assessments"] += [
        dict(gad, assessment_id="A3", total_score="21"),  # GAD-7 max: fine
        dict(gad, assessment_id="A4", total_score="21.5"),  # above 21
        dict(gad, assessment_id="A5", total_score=""),  # nothing to score
    ]
    con, _ = run(tmp_path, tables)
    assert rejected(con) == [
        ("assessments", "assessments.csv", 4, "out_of_range"),
        ("assessments", "assessments.csv", 5, "no_score"),
    ]
    assert totals(con)["A3"] == (21.0, None, False)


def test_reverse_keyed_core10(tmp_path):
    tables = base_tables()
    tables["assessments"].append(
        dict(tables["assessments"][1], assessment_id="A3", instrument="core10", total_score="")
    )
    responses = [1, 0, 4, 1, 1, 1, 1, 1, 1, 1]
    tables["assessment_items"] += [
        {"assessment_id": "A3", "item": str(i), "score": str(s)}
        for i, s in enumerate(responses, start=1)
    ]
    con, _ = run(tmp_path, tables)
    # Items 2 and 3 reversed: 4-0 = 4 and 4-4 = 0; total 1 + 4 + 0 + 7x1 = 12.
    assert totals(con)["A3"] == (12.0, 10, False)
    keyed = con.execute(
        "SELECT item, score, keyed_score FROM staging.assessment_items "
        "WHERE assessment_id = 'A3' AND item IN (2, 3) ORDER BY item"
    ).fetchall()
    assert keyed == [(2, 0.0, 4.0), (3, 4.0, 0.0)]


def test_gbo_mean_wai_sr_proration_and_srs_decimals(tmp_path):
    tables = base_tables()
    base = tables["assessments"][1]
    tables["assessments"] += [
        dict(base, assessment_id="G1", instrument="GBO", total_score=""),
        dict(base, assessment_id="W1", instrument="WAI-SR", total_score=""),
        dict(base, assessment_id="W2", instrument="wai_sr", total_score=""),
        dict(base, assessment_id="R1", instrument="srs", total_score=""),
    ]
    items = tables["assessment_items"]
    items += [
        {"assessment_id": "G1", "item": str(g), "score": s}
        for g, s in [(1, "2"), (2, "5"), (3, "8")]
    ]
    items += [{"assessment_id": "W1", "item": str(i), "score": "4"} for i in range(1, 12)]
    items += [{"assessment_id": "W2", "item": str(i), "score": "4"} for i in range(1, 11)]
    items += [
        {"assessment_id": "R1", "item": str(i), "score": s}
        for i, s in enumerate(["9.5", "9.0", "8.5", "9.0"], start=1)
    ]
    con, _ = run(tmp_path, tables)
    got = totals(con)
    assert got["G1"] == (5.0, 3, False)  # mean of 2, 5, 8
    assert got["W1"] == (48.0, 11, True)  # 44 / 11 x 12
    assert got["R1"] == (36.0, 4, False)  # 9.5 + 9 + 8.5 + 9
    # W2 (data row 5) misses 2 of 12 WAI-SR items; only 1 may be missing.
    assert ("assessments", "assessments.csv", 5, "too_many_missing_items") in rejected(con)


@pytest.mark.parametrize("order", [(2, 4, 3, 1), (1, 2, 3, 4)])
def test_decimal_item_sum_does_not_depend_on_row_order(tmp_path, order):
    # SRS lines 7.3 + 9.1 + 9.9 + 9.7 = 36 (not low alliance). Added as doubles in
    # the order 9.1, 9.7, 9.9, 7.3 they give 35.99999999999999; the same
    # responses in any file order must give the same total, exactly 36.
    tables = base_tables()
    base = tables["assessments"][1]
    tables["assessments"].append(dict(base, assessment_id="R1", instrument="SRS", total_score=""))
    lines = {1: "7.3", 2: "9.1", 3: "9.9", 4: "9.7"}
    tables["assessment_items"] += [
        {"assessment_id": "R1", "item": str(i), "score": lines[i]} for i in order
    ]
    con, _ = run(tmp_path, tables)
    assert totals(con)["R1"] == (36.0, 4, False)


def test_supplied_total_that_disagrees_is_reported_and_computed_wins(tmp_path):
    tables = base_tables()
    tables["assessments"][0]["total_score"] = "20"  # items give 16
    con, result = run(tmp_path, tables)
    assert totals(con)["A1"] == (16.0, 9, False)
    assert any("differ from the item total" in w for w in result.warnings)
    assert con.execute(
        "SELECT assessment_id, supplied_total, computed_total FROM quarantine.total_mismatches"
    ).fetchall() == [("A1", 20.0, 16.0)]


def test_instrument_aliases_fold_case_dash_underscore_and_space(tmp_path):
    tables = base_tables()
    gad = tables["assessments"][1]
    spellings = ["gad7", "GAD_7", "Gad 7", "gad-7"]
    tables["assessments"] += [
        dict(gad, assessment_id=f"X{i}", instrument=s) for i, s in enumerate(spellings)
    ]
    con, _ = run(tmp_path, tables)
    codes = con.execute(
        "SELECT DISTINCT instrument FROM staging.assessments WHERE assessment_id LIKE 'X%'"
    ).fetchall()
    assert codes == [("GAD-7",)]


# --------------------------------------------------------------------------- time zones


def test_offsets_convert_to_clinic_local_time(tmp_path):
    tables = base_tables()
    tables["sessions"][0]["scheduled_at"] = "2026-01-05T15:00:00+00:00"
    tables["sessions"][1]["scheduled_at"] = "2026-07-06T15:00:00Z"  # summer: EDT, UTC-4
    con, _ = run(tmp_path, tables, timezone="America/New_York")
    got = dict(con.execute("SELECT session_id, scheduled_at FROM staging.sessions").fetchall())
    assert got["S1"] == dt.datetime(2026, 1, 5, 10, 0)  # EST, UTC-5
    assert got["S2"] == dt.datetime(2026, 7, 6, 11, 0)
    assert got["S3"] == dt.datetime(2026, 1, 10, 9, 0)  # no offset: already local


# --------------------------------------------------------------------------- formats


def _staging_dump(con) -> dict[str, list]:
    out = {}
    for table in ("episodes", "sessions", "assessments", "assessment_items", "goals"):
        out[table] = con.execute(
            f"SELECT * EXCLUDE (source_file, source_row) FROM staging.{table} ORDER BY ALL"
        ).fetchall()
    return out


def test_csv_parquet_and_monthly_folder_give_the_same_staging(tmp_path):
    tables = base_tables()
    con_csv, _ = ingest(write_exports(tmp_path / "csv", tables))
    con_pq, _ = ingest(write_exports(tmp_path / "pq", tables, fmt="parquet"))
    folder = write_exports(
        tmp_path / "folder", {k: v for k, v in tables.items() if k != "sessions"}
    )
    write_csv(folder / "sessions" / "2026-01b.csv", tables["sessions"][2:])
    write_csv(folder / "sessions" / "2026-01a.csv", tables["sessions"][:2])
    (folder / "sessions" / "2026-02.csv.part").write_text("half-written")
    con_folder, result = ingest(folder)
    expected = _staging_dump(con_csv)
    assert _staging_dump(con_pq) == expected
    assert _staging_dump(con_folder) == expected
    assert result.tables["sessions"].files == ["sessions/2026-01a.csv", "sessions/2026-01b.csv"]
    files = con_folder.execute(
        "SELECT session_id, source_file, source_row FROM staging.sessions ORDER BY session_id"
    ).fetchall()
    assert files == [
        ("S1", "sessions/2026-01a.csv", 1),
        ("S2", "sessions/2026-01a.csv", 2),
        ("S3", "sessions/2026-01b.csv", 1),
    ]


def test_duplicate_across_monthly_files_keeps_the_first_file_in_name_order(tmp_path):
    tables = base_tables()
    folder = write_exports(tmp_path / "x", {k: v for k, v in tables.items() if k != "sessions"})
    write_csv(folder / "sessions" / "2026-02.csv", [dict(tables["sessions"][0], status="no_show")])
    write_csv(folder / "sessions" / "2026-01.csv", tables["sessions"])
    con, _ = ingest(folder)
    assert rejected(con) == [("sessions", "sessions/2026-02.csv", 1, "duplicate_key")]


def test_utf8_bom_and_quoted_newlines(tmp_path):
    tables = base_tables()
    tables["episodes"][1]["program"] = 'adult, "complex"\nneeds'
    folder = write_exports(tmp_path / "x", tables)
    write_csv(folder / "episodes.csv", tables["episodes"], bom=True)
    tables["sessions"][2]["status"] = "nope"
    write_csv(folder / "sessions.csv", tables["sessions"], bom=True)
    con, _ = ingest(folder)
    assert staged_ids(con, "episodes", "episode_id") == ["E1", "E2"]
    # The quoted newline does not shift row numbers: S3 is still data row 3.
    assert rejected(con) == [("sessions", "sessions.csv", 3, "bad_enum")]
    record = json.loads(con.execute("SELECT record FROM quarantine.rejected_rows").fetchall()[0][0])
    assert record["session_id"] == "S3" and record["status"] == "nope"


def test_extra_columns_are_ignored_and_reported_once(tmp_path):
    tables = base_tables()
    for row in tables["sessions"]:
        row["room"] = "3B"
    _, result = run(tmp_path, tables)
    assert result.tables["sessions"].ignored_columns == ["room"]
    assert result.warnings == ["sessions: ignored extra columns room"]


def test_optional_tables_may_be_absent(tmp_path):
    tables = base_tables()
    tables["goals"] = None
    tables["assessment_items"] = None
    con, result = run(tmp_path, tables)
    assert not result.tables["goals"].present
    # Without its items A1 is totals-only with an empty total: no_score.
    assert rejected(con) == [("assessments", "assessments.csv", 1, "no_score")]


# --------------------------------------------------------------------------- files that fail


def test_missing_required_column_names_the_column_and_file(tmp_path):
    tables = base_tables()
    for row in tables["sessions"]:
        del row["status"]
    with pytest.raises(IngestError, match=r"sessions\.csv: required column 'status' is missing"):
        run(tmp_path, tables)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"episode_id,client_id\n\xff\xfe,x\n", "not UTF-8"),
    ],
)
def test_unreadable_csv_fails_with_file_and_problem(tmp_path, content, message):
    folder = write_exports(tmp_path / "x", base_tables())
    (folder / "episodes.csv").write_bytes(content)
    with pytest.raises(IngestError, match=message) as info:
        ingest(folder)
    assert "episodes.csv" in str(info.value)


def test_unreadable_parquet_and_stray_files(tmp_path):
    folder = write_exports(tmp_path / "x", base_tables())
    (folder / "goals.csv").unlink()
    (folder / "goals.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(IngestError, match=r"goals\.parquet: not a readable Parquet file"):
        ingest(folder)
    (folder / "goals.parquet").unlink()
    (folder / "goals").mkdir()
    (folder / "goals" / "goals.xlsx").write_bytes(b"PK")
    with pytest.raises(IngestError, match=r"goals/goals\.xlsx: not a CSV or Parquet file"):
        ingest(folder)


def test_duplicate_header_and_missing_required_table(tmp_path):
    folder = write_exports(tmp_path / "x", base_tables())
    (folder / "goals.csv").write_text("episode_id,goal_number,goal_number,set_at,horizon\n")
    with pytest.raises(IngestError, match="repeats column 'goal_number'"):
        ingest(folder)
    (folder / "goals.csv").unlink()
    (folder / "sessions.csv").unlink()
    with pytest.raises(IngestError, match="sessions: required export is missing"):
        ingest(folder)


def test_header_only_file_is_an_empty_table(tmp_path):
    folder = write_exports(tmp_path / "x", base_tables())
    (folder / "goals.csv").write_text("episode_id,goal_number,set_at,horizon\n")
    con, result = ingest(folder)
    assert result.tables["goals"].rows_read == 0


def test_failed_ingest_leaves_the_previous_warehouse(tmp_path):
    path = tmp_path / "w.duckdb"
    folder = write_exports(tmp_path / "x", base_tables())
    con, _ = ingest(folder, duckdb.connect(str(path)))
    con.close()
    (folder / "episodes.csv").write_bytes(b"")
    with pytest.raises(IngestError):
        ingest(folder, duckdb.connect(str(path)))
    con = duckdb.connect(str(path))
    assert staged_ids(con, "episodes", "episode_id") == ["E1", "E2"]


def _staging_layout(con) -> list[tuple]:
    return con.execute(
        "SELECT table_name, ordinal_position, column_name, data_type, is_nullable "
        "FROM information_schema.columns WHERE table_schema = 'staging' ORDER BY ALL"
    ).fetchall()


def _work_tables(con) -> list[tuple]:
    return con.execute(
        "SELECT database_name, schema_name, table_name FROM duckdb_tables() "
        "WHERE starts_with(table_name, '_') AND NOT temporary"
    ).fetchall()


def test_staging_tables_built_in_place_keep_the_ddl(tmp_path):
    # Four staging tables are their work tables renamed (IN_PLACE); rejected rows
    # held what the staging columns refuse: an empty required value, and integers
    # past INTEGER in columns the DDL makes INTEGER.
    tables = base_tables()
    tables["sessions"][0]["scheduled_at"] = ""
    tables["sessions"][2]["duration_minutes"] = "9223372036854775807"
    tables["goals"][0]["goal_number"] = "9223372036854775807"
    tables["assessment_items"][3]["item"] = "4294967296"
    con, result = run(tmp_path, tables)
    assert {(t, row, rule) for t, _, row, rule in rejected(con)} >= {
        ("sessions", 1, "missing_required"),
        ("sessions", 3, "out_of_range"),
        ("goals", 1, "out_of_range"),
        ("assessment_items", 4, "out_of_range"),
    }
    fresh = duckdb.connect()
    for schema in ("staging", "quarantine"):
        fresh.execute(f"CREATE SCHEMA {schema}")
    create_tables(fresh)
    assert _staging_layout(con) == _staging_layout(fresh)
    assert _work_tables(con) == []
    for table, report in result.tables.items():
        assert con.execute(f"SELECT count(*) FROM staging.{table}").fetchone()[0] == (
            report.rows_staged
        )
    with pytest.raises(duckdb.ConstraintException):
        con.execute("INSERT INTO staging.goals VALUES ('E1', NULL, DATE '2026-01-01', 'x', 'f', 1)")


def test_failed_ingest_leaves_no_work_tables_and_the_previous_staging(tmp_path):
    # Fails on the last table read, after the others' work tables were filled.
    path = tmp_path / "w.duckdb"
    folder = write_exports(tmp_path / "x", base_tables())
    con, _ = ingest(folder, duckdb.connect(str(path)))
    before = _staging_dump(con)
    con.close()
    (folder / "goals.csv").write_text("episode_id,goal_number,set_at\nE1,1,2026-01-05\n")
    with pytest.raises(IngestError, match="goals.csv"):
        ingest(folder, duckdb.connect(str(path)))
    con = duckdb.connect(str(path))
    assert _work_tables(con) == []
    assert _staging_dump(con) == before


def test_rerun_gives_identical_tables(tmp_path):
    folder = write_exports(tmp_path / "x", base_tables())
    path = tmp_path / "w.duckdb"
    dumps = []
    for _ in range(2):
        con, _ = ingest(folder, duckdb.connect(str(path)))
        dump = _staging_dump(con)
        dump["q"] = con.execute("SELECT * FROM quarantine.rejected_rows ORDER BY ALL").fetchall()
        dumps.append(dump)
        con.close()
    assert dumps[0] == dumps[1]


# --------------------------------------------------------------------------- privacy


@pytest.mark.parametrize(
    "column",
    [
        "email",
        "client_name",
        "FirstName",
        "phone_number",
        "date_of_birth",
        "notes",
        "nhs_number",
        "home_address",
        # one word, an acronym before a word, and other spellings an export uses
        "phonenumber",
        "EmailAddress",
        "NHSNumber",
        "postal_code",
        "ni_number",
        "national_insurance",
        "insurance_no",
        "addr",
        "remark",
        "memo",
        "mrn",
    ],
)
def test_identifier_column_names_stop_the_ingest(tmp_path, column):
    tables = base_tables()
    for row in tables["episodes"]:
        row[column] = "x"
    with pytest.raises(PrivacyError, match=f"column '{column}'"):
        run(tmp_path, tables)


@pytest.mark.parametrize(
    ("value", "kind"),
    [("jane.doe@example.org", "e-mail"), ("+44 7700 900123", "phone"), ("(555) 010-4477", "phone")],
)
def test_identifier_values_stop_the_ingest_and_are_never_written(tmp_path, value, kind):
    tables = base_tables()
    tables["episodes"][1]["program"] = value  # hidden in an innocent column
    path = tmp_path / "w.duckdb"
    with pytest.raises(PrivacyError, match="column 'program'") as info:
        ingest(write_exports(tmp_path / "x", tables), duckdb.connect(str(path)))
    assert kind in str(info.value) and value not in str(info.value)
    con = duckdb.connect(str(path))
    assert con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE schema_name IN ('staging', 'quarantine')"
    ).fetchall() == [(0,)]
    con.close()
    assert value.encode() not in path.read_bytes()


@pytest.mark.parametrize("rows", [1, 1500])  # the exact check alone / behind the prefilter
def test_long_decimals_are_not_mistaken_for_phones(tmp_path, rows):
    # a prorated total exported as a double has 17 digits and a '.': a number
    tables = base_tables()
    base = tables["assessments"][1]
    tables["assessments"] += [
        dict(base, assessment_id=f"X{n}", total_score="13.333333333333334") for n in range(rows)
    ]
    tables["sessions"][0]["duration_minutes"] = "50.00000000"
    con, _ = run(tmp_path, tables)
    assert totals(con)["X0"] == (13.333333333333334, None, False)
    assert rejected(con) == []


def test_ids_dates_and_numbers_are_not_mistaken_for_phones(tmp_path):
    tables = base_tables()
    tables["episodes"][0]["episode_id"] = "2026000123456"  # a long numeric id
    for row in tables["sessions"] + tables["assessments"]:
        if row["episode_id"] == "E1":
            row["episode_id"] = "2026000123456"
    tables["goals"][0]["episode_id"] = "2026000123456"
    con, _ = run(tmp_path, tables)
    assert rejected(con) == []


def test_quarantine_record_is_the_raw_row(tmp_path):
    tables = base_tables()
    tables["sessions"][2]["duration_minutes"] = " 999 "
    con, _ = run(tmp_path, tables)
    row = (
        con.execute(
            "SELECT table_name, source_file, source_row, record, rule, detail, run_id "
            "FROM quarantine.rejected_rows"
        )
        .df()
        .iloc[0]
    )
    assert row["rule"] == "out_of_range" and row["run_id"] == "test-run"
    assert "duration_minutes" in row["detail"] and "1..480" in row["detail"]
    record = json.loads(row["record"])
    assert record == {
        "session_id": "S3",
        "episode_id": "E2",
        "client_id": "K2",
        "clinician_id": "T2",
        "scheduled_at": "2026-01-10T09:00:00",
        "status": "no_show",
        "session_type": None,
        "modality": "phone",
        "duration_minutes": "999",
        "practice_completed": None,
    }
    assert isinstance(pd.Timestamp(row.name), pd.Timestamp) or True


# --------------------------------------------------------------------------- CSV layout


GOALS_CSV = "E1,1,2026-01-05,short_term\nE1,2,2026-01-05,long_term\n"


def _with_goals_csv(tmp_path, text: str):
    folder = write_exports(tmp_path / "x", base_tables())
    (folder / "goals.csv").write_text(text, encoding="utf-8")
    return folder


@pytest.mark.parametrize("shape", ["short", "long"])  # Arrow's fast path / pandas' (a short row)
def test_header_names_with_blanks_are_the_plain_names(tmp_path, shape):
    # "a, b, c" headers: the values belong to the named columns, none is lost
    body = GOALS_CSV if shape == "long" else GOALS_CSV + "E2,1\n"
    con, _ = ingest(_with_goals_csv(tmp_path, "episode_id, goal_number , set_at,horizon\n" + body))
    got = con.execute(
        "SELECT episode_id, goal_number, horizon FROM staging.goals ORDER BY ALL"
    ).fetchall()
    assert got == [("E1", 1, "short_term"), ("E1", 2, "long_term")]
    assert [r[3] for r in rejected(con, "goals")] == (
        ["missing_required"] if shape == "short" else []
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # a comma at the end of every line: pandas would shift every value one column left
        (GOALS_CSV.replace("\n", ",\n"), "data row 1 has 5 fields but the header has 4"),
        ("E1,1,2026-01-05,short_term,extra\nE1,2,2026-01-05,long_term\n", "data row 1 has 5"),
        # a long row further down: pandas names its line (header = line 1)
        (GOALS_CSV + "E1,3,2026-01-05,long_term,extra\n", "Expected 4 fields in line 4, saw 5"),
    ],
)
def test_rows_longer_than_the_header_fail_the_file(tmp_path, body, message):
    folder = _with_goals_csv(tmp_path, "episode_id,goal_number,set_at,horizon\n" + body)
    with pytest.raises(IngestError, match="goals.csv: malformed CSV") as info:
        ingest(folder)
    assert message in str(info.value)


def test_arrow_refusal_is_logged_without_the_row(tmp_path, caplog):
    # the short row holds an e-mail in a column the guard then refuses; the log
    # line about Arrow's reader must not quote the row (it did)
    text = (
        "episode_id,client_id,clinic_id,clinician_id,start_date,program\n"
        "E1,K1,C1,T1,2026-01-05,adult\n"
        "E3,K3,C1,T1,2026-01-10,zz.secret@example.com,\n"
        "E4,K4,C1,T1\n"
    )
    folder = write_exports(tmp_path / "x", base_tables())
    (folder / "episodes.csv").write_text(text, encoding="utf-8")
    with caplog.at_level(logging.DEBUG), pytest.raises(IngestError):
        ingest(folder)
    assert "read again with pandas" in caplog.text
    assert "zz.secret" not in caplog.text
