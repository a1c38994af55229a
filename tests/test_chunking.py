"""Chunked ingest = unchunked ingest, and the fast paths = the reference paths.

The ingest reads, validates and types every file in chunks of
``ingest_chunk_rows`` rows (issue 8: memory must not follow the largest
table). Nothing it decides may depend on where the chunk boundaries fall:
with 3-row chunks and with one chunk per file the staging and quarantine
tables must be identical, row for row and in the same order.

The export below is built to put every kind of trouble across boundaries:
bad rows of many kinds (planted by the generator), duplicate keys whose
copies sit in different chunks and different files, a folder of several
files per table, Parquet with typed numbers next to CSV text, and a CSV row
Arrow's reader refuses part-way through a file (so the file is read again by
pandas).
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assets import ingest_engine
from assets.ingest_engine import Ingest, IngestResult, SourceFile, read_chunks
from pipelines.generate import generate
from schemas import privacy
from schemas.parsing import TEXT, from_typed_source, parse, parse_float, parse_int
from schemas.settings import Settings

TABLES = ("episodes", "sessions", "assessments", "assessment_items", "goals")


def _append_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("a", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(rows)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    """A small generated export, then made harder by hand (see the module docstring)."""
    out = tmp_path_factory.mktemp("chunking") / "exports"
    generate(
        out, 6, seed=8, items_format="parquet", bad_rows=19, monthly_sessions=True, progress=False
    )
    # Items become a folder: the generated Parquet (typed numbers) and a CSV of text.
    items = out / "assessment_items"
    items.mkdir()
    (out / "assessment_items.parquet").rename(items / "part-1.parquet")
    typed = pq.read_table(items / "part-1.parquet").slice(0, 40)
    # As the ingest renders typed numbers (3.0 -> '3'), so that a copy can be exact.
    first = typed.cast(pa.schema([(n, pa.string()) for n in typed.column_names])).to_pylist()
    with (items / "part-2.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["assessment_id", "item", "score"])
        writer.writerow([first[0]["assessment_id"], first[0]["item"], first[0]["score"]])  # exact
        writer.writerow([first[5]["assessment_id"], first[5]["item"], "0"])  # same key, new score
        writer.writerow([first[9]["assessment_id"], f"{first[9]['item']}.0", "1"])  # 4.0 is 4
        writer.writerow(["A-NOT-THERE", "1", "1"])  # unknown_reference
        writer.writerow([first[20]["assessment_id"], "99", "1"])  # out_of_range item
        writer.writerow([first[21]["assessment_id"], "2", "abc"])  # bad_type
        writer.writerow([first[22]["assessment_id"], "", "1"])  # missing_required
    # Sessions: copies of earlier rows in the last monthly file (exact and not).
    months = sorted((out / "sessions").iterdir())
    early = max((_read_csv(m) for m in months[:-1]), key=len)
    header = list(early[0])
    _append_csv(
        months[-1],
        [
            [early[0][c] for c in header],
            [early[1][c] if c != "status" else "no_show" for c in header],
        ],
    )
    # Goals: a short row deep in the file; Arrow refuses it, pandas pads it (the
    # padded row then breaks missing_required), so the file is read again.
    goals = _read_csv(out / "goals.csv")
    assert len(goals) > 7
    _append_csv(out / "goals.csv", [[goals[0]["episode_id"], "9"]])
    # Episodes: a duplicate of the first episode at the end of the file.
    episodes = _read_csv(out / "episodes.csv")
    _append_csv(out / "episodes.csv", [list(episodes[0].values())])
    return out


def _ingest(exports: Path, chunk_rows: int) -> tuple[duckdb.DuckDBPyConnection, IngestResult]:
    con = duckdb.connect()
    for schema in ("staging", "quarantine", "marts"):
        con.execute(f"CREATE SCHEMA {schema}")
    settings = replace(Settings(), exports_dir=exports, ingest_chunk_rows=chunk_rows)
    return con, Ingest(settings, con, run_id="chunking").run()


def _dump(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple]]:
    """Every published table, rows in stored order (the order must match too)."""
    names = [f"staging.{t}" for t in (*TABLES, "risk_responses")]
    names += ["quarantine.rejected_rows", "quarantine.total_mismatches"]
    return {name: con.execute(f"SELECT * FROM {name}").fetchall() for name in names}


def test_three_row_chunks_give_the_same_staging_and_quarantine(exports):
    con_small, small = _ingest(exports, chunk_rows=3)
    con_whole, whole = _ingest(exports, chunk_rows=1_000_000)
    got, expected = _dump(con_small), _dump(con_whole)
    for name in expected:
        assert got[name] == expected[name], name
    assert {t: r.by_rule for t, r in small.tables.items()} == {
        t: r.by_rule for t, r in whole.tables.items()
    }
    assert small.as_of == whole.as_of and small.warnings == whole.warnings

    # The export really has the trouble this test is about.
    rules = {
        (t, rule)
        for t, rule in con_whole.execute(
            "SELECT DISTINCT table_name, rule FROM quarantine.rejected_rows"
        ).fetchall()
    }
    assert {
        ("episodes", "duplicate_key"),
        ("sessions", "duplicate_key"),
        ("assessment_items", "duplicate_key"),
        ("assessment_items", "unknown_reference"),
        ("assessment_items", "out_of_range"),
        ("assessment_items", "bad_type"),
        ("assessment_items", "missing_required"),
        ("goals", "missing_required"),
        ("sessions", "bad_enum"),
    } <= rules
    assert len(whole.tables["sessions"].files) > 2
    assert whole.tables["assessment_items"].files == [
        "assessment_items/part-1.parquet",
        "assessment_items/part-2.csv",
    ]
    exact = con_whole.execute(
        "SELECT count(*) FROM quarantine.rejected_rows "
        "WHERE rule = 'duplicate_key' AND detail LIKE '%(exact duplicate row)'"
    ).fetchall()[0][0]
    assert exact >= 3  # the episode, the session and the item copied verbatim
    # '4.0' and a typed 4 are the same item number: a duplicate, not a new row.
    assert con_whole.execute(
        "SELECT count(*) FROM quarantine.rejected_rows WHERE table_name = 'assessment_items' "
        "AND source_file = 'assessment_items/part-2.csv' AND source_row = 3"
    ).fetchall() == [(1,)]


def test_rows_are_staged_in_file_order(exports):
    con, _ = _ingest(exports, chunk_rows=3)
    for table in TABLES:
        rows = con.execute(
            f"SELECT source_file, source_row FROM staging.{table} ORDER BY rowid"
        ).fetchall()
        assert rows == sorted(rows), table


def test_arrow_giving_up_part_way_restarts_the_file_with_pandas(exports, monkeypatch, caplog):
    # Small Arrow blocks: the short goals row is met after several chunks were staged.
    monkeypatch.setattr(ingest_engine, "CSV_BLOCK_BYTES", 256)
    expected = _dump(_ingest(exports, chunk_rows=1_000_000)[0])
    with caplog.at_level("INFO", logger="outcomes.ingest"):
        con, _ = _ingest(exports, chunk_rows=3)
    restarted = [r.getMessage() for r in caplog.records if "read again with pandas" in r.message]
    assert restarted and not restarted[0].startswith("goals.csv: read again with pandas after 0 ")
    assert _dump(con) == expected


# --------------------------------------------------------------------------- fast paths


CSV_CASES = {
    "plain": "a,b,c\n1,2,3\n4,5,6\n",
    "no final newline": "a,b,c\n1,2,3\n4,5,6",
    "crlf": "a,b,c\r\n1,2,3\r\n4,5,6\r\n",
    "blanks and empties": 'a,b,c\n  1 , ,\n,,\n\t x\t," y ",""\n',
    "blank lines": "a,b,c\n1,2,3\n\n4,5,6\n\n",
    "quoted newline and quotes": 'a,b,c\n"x\ny","say ""hi""",3\n',
    "quote inside a field": 'a,b,c\nab"c,2,3\n',
    "bom": "\ufeffa,b,c\n1,2,3\n",
    "unicode": "a,b,c\nÅsa,日本,😀\n",
    "header only": "a,b,c\n",
    "short row": "a,b,c\n1,2,3\n4,5\n",
    "semicolons are text": "a,b,c\n1;2,3,4\n",
    "numbers stay text": "a,b,c\n007,1e3,45.0\n",
    "na words stay text": "a,b,c\nNA,null,NaN\n",
}


@pytest.mark.parametrize("name", sorted(CSV_CASES))
def test_arrow_csv_reader_reads_like_pandas(tmp_path, name):
    path = tmp_path / "t.csv"
    path.write_bytes(CSV_CASES[name].encode("utf-8"))
    sf = SourceFile("goals", path, "t.csv", 0)

    def rows(fast: bool) -> list[dict]:
        return [r for c in read_chunks(sf, 2, fast) for r in c.text.to_pylist()]

    reference = rows(fast=False)
    try:
        fast = rows(fast=True)
    except ingest_engine._ArrowCsvFailed:
        return  # the ingest then reads the file with pandas: same result by construction
    assert fast == reference


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), min_size=1, max_size=50))
def test_typed_integers_parse_like_their_text(values):
    source = pa.array(values, pa.int64())
    text = pd.Series(pc.cast(source, pa.string()).to_pandas(), dtype=TEXT)
    assert from_typed_source("int", source).equals(parse_int(text))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=1, max_size=50))
def test_typed_floats_parse_like_their_text(values):
    source = pa.array(values, pa.float64())
    text = pd.Series(pc.cast(source, pa.string()).to_pandas(), dtype=TEXT)
    fast, slow = from_typed_source("float", source), parse_float(text)
    assert fast.isna().tolist() == slow.isna().tolist()
    for a, b in zip(fast.dropna(), slow.dropna(), strict=True):
        assert a == b and math.copysign(1, a) == math.copysign(1, b)


def test_no_shortcut_when_types_do_not_match():
    assert from_typed_source("int", pa.array([1.0, 2.5])) is None
    assert from_typed_source("float", pa.array([1, 2])) is None
    assert from_typed_source("int", pa.array([1], pa.uint64())) is None
    assert from_typed_source("date", pa.array([1])) is None


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=24))
def test_privacy_prefilter_flags_what_the_exact_check_flags(value):
    # Over 1000 values the RE2 prefilter runs first; one value alone is checked exactly.
    many = pd.Series([value] * 1001 + ["x"], dtype=TEXT)
    assert privacy.identifier_like_values(many) == privacy.identifier_like_values(
        pd.Series([value], dtype=TEXT)
    )


@pytest.mark.parametrize(
    "value",
    [
        "+44 7700 900123",
        "(555) 010-4477",
        "jane@example.org",
        "+44\xa07700\xa0900123",
        "٠٧٧٠٠ ٩٠٠ ١٢٣٤",
    ],
)
def test_privacy_prefilter_keeps_known_identifiers(value):
    column = pd.Series([f"A{i:08d}" for i in range(2000)] + [value], dtype=TEXT)
    assert privacy.identifier_like_values(column) is not None


def _sliced_column(values: list[str], start: int, stop: int) -> pd.Series:
    """A text column that is a slice of a larger Arrow batch, as the CSV reader makes."""
    whole = pa.array(values, pa.large_string())
    return pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array([whole[start:stop]])))


@pytest.mark.parametrize(
    ("value", "found"),
    [("jane@example.org", "e-mail addresses"), ("+44 7700 900123", "phone numbers")],
)
def test_privacy_byte_scan_reads_its_own_slice_only(value, found):
    # The '@' / non-ASCII / digit-count shortcuts read the column's data buffer:
    # bytes of values outside the slice must neither flag nor hide anything.
    ids = [f"A{i:08d}" for i in range(3000)]
    values = [value, *ids[:1500], value, *ids[1500:], value]
    assert privacy.identifier_like_values(_sliced_column(values, 1, 1501)) is None
    assert privacy.identifier_like_values(_sliced_column(values, 1, 1502)) == found
    assert privacy.identifier_like_values(_sliced_column(values, 1502, len(values))) == found


def test_privacy_digit_shortcut_counts_the_whole_column():
    # No value has 9 digits on its own, so the column must not be flagged, but the
    # column has 9+ digits in all: the regex still runs and finds the one phone.
    enums = ["late_cancelled", "attended", "no_show"] * 700
    assert privacy.identifier_like_values(pd.Series(enums, dtype=TEXT)) is None
    with_phone = pd.Series([*enums, "0161 496 0000"], dtype=TEXT)
    assert privacy.identifier_like_values(with_phone) == "phone numbers"
    short_numbers = pd.Series(["12", "345", "6789"] * 700, dtype=TEXT)
    assert privacy.identifier_like_values(short_numbers) is None


def test_parse_is_the_same_with_and_without_the_per_chunk_memo():
    from schemas.parsing import parse_once

    text = pd.Series(["45", "45.0", " 7 ", None, "x", "2026-02-30", "2026-02-28"], dtype=TEXT)
    text.name = "col"
    plain = {k: parse(k, text) for k in ("int", "float", "date", "timestamp")}
    with parse_once():
        for kind in plain:
            first = parse(kind, text)
            again = parse(kind, text)  # from the memo
            subset = parse(kind, text.dropna())  # what Pandera hands a check
            assert first.equals(plain[kind]) and again.equals(plain[kind])
            assert subset.equals(plain[kind][text.notna()])
        changed = text.copy()
        changed.iloc[0] = "46"  # same name, other text: not taken from the memo
        assert parse("int", changed).iloc[0] == 46


def test_quarantined_parquet_numbers_show_the_text_they_were_read_as(tmp_path):
    # Staged Parquet numbers keep no text of their own (raw_sql renders it again):
    # a quarantined row must still show exactly what the ingest read.
    out = tmp_path / "exports"
    generate(out, 4, seed=3, items_format="parquet", bad_rows=0, progress=False)
    items = pq.read_table(out / "assessment_items.parquet")
    extra = pa.table(
        {
            "assessment_id": ["A-NOPE"] * 4,
            "item": pa.array([1, -7, 2**62, 3], pa.int64()),
            "score": pa.array([2.5, -0.0, 1e300, float("nan")], pa.float64()),
        }
    )
    pq.write_table(pa.concat_tables([items, extra]), out / "assessment_items.parquet")
    con, _ = _ingest(out, chunk_rows=1_000_000)
    records = con.execute(
        "SELECT record FROM quarantine.rejected_rows WHERE table_name = 'assessment_items' "
        "ORDER BY source_row"
    ).fetchall()
    shown = [json.loads(record) for (record,) in records]
    assert [(r["item"], r["score"]) for r in shown] == [
        ("1", "2.5"),
        ("-7", "-0"),
        ("4611686018427387904", "1e+300"),
        ("3", "nan"),  # not a number here: bad_type, its text kept as read
    ]


def test_an_integer_parquet_column_read_as_floats_keeps_its_own_text(tmp_path):
    # Scores exported as int64: a float column's staged value of 12345678901234567 is
    # 1.2345678901234568e16, whose text is not what the file held, so the text is kept.
    out = tmp_path / "exports"
    generate(out, 3, seed=5, items_format="parquet", bad_rows=0, progress=False)
    folder = out / "assessment_items"
    folder.mkdir()
    (out / "assessment_items.parquet").rename(folder / "part-1.parquet")
    extra = pa.table(
        {
            "assessment_id": ["A-NOPE", "A-NOPE"],
            "item": pa.array([1, 2], pa.int64()),
            "score": pa.array([12345678901234567, 2], pa.int64()),
        }
    )
    pq.write_table(extra, folder / "part-2.parquet")  # a second file, scores as int64
    con, _ = _ingest(out, chunk_rows=1_000_000)
    records = con.execute(
        "SELECT record FROM quarantine.rejected_rows WHERE table_name = 'assessment_items' "
        "AND source_file = 'assessment_items/part-2.parquet' ORDER BY source_row"
    ).fetchall()
    assert [json.loads(r)["score"] for (r,) in records] == ["12345678901234567", "2"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(st.none(), st.text(alphabet=st.sampled_from(" \t+()-./0123456789Ax:"))),
        min_size=1,
        max_size=40,
    ),
    st.integers(0, 3),
)
def test_privacy_phone_shape_keeps_every_value_the_regex_matches(values, cut):
    # Offsets and first bytes alone decide which values the phone regex sees: every
    # value it matches must be among them, in a slice of a larger batch too.
    whole = pa.array(["+44 7700 900123", *values, "A00000001"], pa.large_string())
    part = whole[cut : len(whole) - 1]
    shaped = privacy._phone_shaped(pa.chunked_array([part])).to_pylist()
    for value, kept in zip(part.to_pylist(), shaped, strict=True):
        if value is not None and re.match(privacy._PHONE_ASCII, value):
            assert kept, value
        if kept:
            assert value is not None and len(value) >= 9


def test_privacy_phone_shape_skips_ids_and_keeps_phone_starts():
    values = ["A00000001", "2026-09-21T08:05:00", " +44 7700 900123", "(555) 010-4477", ""]
    shaped = privacy._phone_shaped(pa.chunked_array([pa.array([*values, None])]))
    assert shaped.to_pylist() == [False, True, True, True, False, False]


def _offset_times(days: int, hours: int, seconds: int, offset_hours: int):
    return st.builds(
        "{:04d}-{:02d}-{:02d}{}{:02d}:{:02d}:{:02d}{}".format,
        st.integers(1900, 2100),
        st.integers(1, 12),
        st.integers(1, days),
        st.sampled_from(["T", " "]),
        st.integers(0, hours),
        st.integers(0, 59),
        st.integers(0, seconds),
        st.one_of(
            st.just("Z"),
            st.builds(
                "{}{:02d}{}".format,
                st.sampled_from("+-"),
                st.integers(0, offset_hours),
                st.sampled_from(["", ":00", ":30", "45", ":59"]),
            ),
        ),
    )


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.lists(_offset_times(28, 23, 59, 23), min_size=1, max_size=20),  # Arrow takes all
        st.lists(_offset_times(31, 24, 60, 26), min_size=1, max_size=20),  # some refused
    ),
    st.sampled_from(["UTC", "Europe/London", "America/St_Johns"]),
)
def test_timestamps_with_offsets_parse_like_pandas(values, zone):
    # Arrow's strict cast takes values with an offset; any value it refuses sends the
    # batch to pandas' ISO8601 parser, the reference, whose result must be the same.
    from schemas.parsing import parse_timestamp

    text = pd.Series(values, dtype=TEXT)
    reference = (
        pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
        .dt.tz_convert(zone)
        .dt.tz_localize(None)
        .astype("datetime64[us]")
    )
    assert parse_timestamp(text, zone).equals(reference)
