"""Exports folder -> validated staging + quarantine, without losing a row.

Stages (CONTRACT.md sections 2-4 and edge rules 1-4, 15, 18):

1. read each file of a table as text, in chunks, in sorted file order;
2. refuse direct identifiers (schemas.privacy) before anything is written;
3. row rules: the Pandera models (schemas.exports) decide each row; the first
   failed rule by precedence is the row's quarantine rule;
4. cross-table rules in DuckDB (assets/sql/ingest_*.sql): duplicate keys,
   references, client match, the sessions time window, then scoring;
5. staging and quarantine are replaced together in one transaction; four
   staging tables are their work tables, renamed (IN_PLACE), the fifth a copy.

Pure Python + DuckDB, no Dagster: the asset in assets/ingest.py wraps it.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import logging
import mmap
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from assets.background import in_background
from assets.sql_runner import load_sql, run_script
from assets.warmup import warm_imports
from schemas import privacy, rules
from schemas.exports import ColumnInfo, columns_of, export_schemas, rule_of_failure
from schemas.parsing import TEXT, fits_int64, from_typed_source, parse, parse_once, remember
from schemas.registry import Registry, fold_code
from schemas.settings import Settings
from schemas.staging import (
    STAGING_TABLES,
    WORK_TABLE_PREFIX,
    create_tables,
    drop_work_tables,
    staging_columns,
)

log = logging.getLogger("outcomes.ingest")

SUFFIXES = (".csv", ".parquet")
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")
SQL_TYPES = {
    "string": "VARCHAR",
    "enum": "VARCHAR",
    "int": "BIGINT",
    "float": "DOUBLE",
    "date": "DATE",
    "timestamp": "TIMESTAMP",
}
# What each staging table is published from: the scratch table, or a view of
# it with the columns scoring adds (assets/sql/ingest_scoring.sql).
PUBLISHED_FROM = {"assessments": "_assessments_scored"}
# Staging tables whose work table is built in the warehouse, in the staging
# table's own column order, and *becomes* the staging table when publishing
# (rejected rows deleted, work columns dropped, renamed) instead of being
# copied: copying 25M item rows cost ~3 s at 200k episodes (008-scale.md).
IN_PLACE = tuple(t for t in STAGING_TABLES if t not in PUBLISHED_FROM)
# Columns the scratch table has beyond its export columns, filled at load time
# as a copy of another column (and changed in SQL where they differ).
LOADED_AS = {"assessment_items": {"keyed_score": ("DOUBLE", "score")}}


# Work tables live in this attached scratch database during a run.
SCRATCH = "ingest_scratch"
# DuckDB's buffer pool during an ingest, beyond which work tables, joins and sorts
# spill to disk: twice the size of the export files, within these bounds (the
# 200k-episode tier gets the minimum, the 1M tier ~4.6 GB; see 008-scale.md).
INGEST_MEMORY_MIN = 2 << 30
INGEST_MEMORY_MAX = 6 << 30


def ingest_memory_limit(exports_bytes: int) -> int:
    """Bytes of DuckDB buffer pool for an ingest of ``exports_bytes`` of files."""
    return min(INGEST_MEMORY_MAX, max(INGEST_MEMORY_MIN, 2 * exports_bytes))


def _remove_database_files(path: Path) -> None:
    for p in (path, Path(f"{path}.wal")):
        p.unlink(missing_ok=True)


class IngestError(ValueError):
    """A file or table that cannot be ingested at all; names the file and the problem."""


@dataclass(frozen=True)
class SourceFile:
    table: str
    path: Path
    relative: str  # relative to the exports folder (edge rule 15)
    order: int


@dataclass
class TableReport:
    table: str
    files: list[str] = field(default_factory=list)
    rows_read: int = 0
    rows_staged: int = 0
    rows_quarantined: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)
    present: bool = True

    @property
    def rejected_share(self) -> float:
        return self.rows_quarantined / self.rows_read if self.rows_read else 0.0

    @property
    def dominant_rule(self) -> str | None:
        return max(self.by_rule, key=lambda k: (self.by_rule[k], k)) if self.by_rule else None


@dataclass
class IngestResult:
    run_id: str
    as_of: dt.date
    as_of_source: str
    tables: dict[str, TableReport]
    warnings: list[str]
    seconds: float


# --------------------------------------------------------------------------- files


def discover(exports_dir: Path, table: str) -> list[SourceFile]:
    """``<table>.csv`` / ``<table>.parquet`` or the files of a ``<table>/`` folder."""
    exports_dir = Path(exports_dir)
    singles = [
        exports_dir / f"{table}{s}" for s in SUFFIXES if (exports_dir / f"{table}{s}").is_file()
    ]
    folder = exports_dir / table
    files: list[Path] = list(singles)
    if folder.is_dir():
        for path in sorted(folder.iterdir(), key=lambda p: p.name):
            if path.name.startswith(".") or path.name.endswith(IGNORED_SUFFIXES):
                continue
            if path.is_file():
                if path.suffix.lower() not in SUFFIXES:
                    raise IngestError(
                        f"{path.relative_to(exports_dir)}: not a CSV or Parquet file "
                        f"(a {table}/ folder may hold only .csv and .parquet files)"
                    )
                files.append(path)
    if len(singles) > 1 or (singles and folder.is_dir()):
        raise IngestError(
            f"{table}: found both {', '.join(str(p.relative_to(exports_dir)) for p in singles)}"
            f"{' and the folder ' + table + '/' if folder.is_dir() else ''}; keep one of them"
        )
    return [
        SourceFile(table, p, p.relative_to(exports_dir).as_posix(), i) for i, p in enumerate(files)
    ]


def _csv_header(sf: SourceFile) -> list[str]:
    if sf.path.stat().st_size == 0:
        raise IngestError(f"{sf.relative}: the file is empty (not even a header row)")
    try:
        with sf.path.open("r", encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), None)
    except UnicodeDecodeError as exc:
        raise IngestError(
            f"{sf.relative}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    except csv.Error as exc:
        raise IngestError(f"{sf.relative}: not a readable CSV header ({exc})") from exc
    if not header or all(not h.strip() for h in header):
        raise IngestError(f"{sf.relative}: the first line is not a header row")
    return [h.strip() for h in header]


def _header(sf: SourceFile) -> list[str]:
    if sf.path.suffix.lower() == ".parquet":
        try:
            return list(pq.ParquetFile(sf.path).schema_arrow.names)
        except Exception as exc:  # noqa: BLE001 - any reader failure means "not Parquet"
            raise IngestError(f"{sf.relative}: not a readable Parquet file ({exc})") from exc
    return _csv_header(sf)


@dataclass
class Chunk:
    """Rows of one file as normalised text, plus the typed columns they were rendered from."""

    text: pa_arrow.Table
    typed: dict[str, pa_arrow.ChunkedArray] = field(default_factory=dict)


def _normalise_arrow(table: pa_arrow.Table) -> Chunk:
    """Every column as text, surrounding blanks trimmed and empty strings as null.

    Numeric (Parquet) columns are rendered as text; a rendered number has no
    blanks to trim and is never empty, and the numbers are kept beside it.
    """
    cols, typed = [], {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        t = col.type
        if pa_arrow.types.is_integer(t) or pa_arrow.types.is_floating(t):
            typed[name] = col
            cols.append(_numbers_as_text(col))
            continue
        if not pa_arrow.types.is_string(t):
            col = col.cast(pa_arrow.string())
        col = pc.utf8_trim_whitespace(col)
        cols.append(pc.if_else(pc.equal(col, ""), pa_arrow.scalar(None, pa_arrow.string()), col))
    return Chunk(pa_arrow.Table.from_arrays(cols, names=table.column_names), typed)


def _numbers_as_text(col: pa_arrow.ChunkedArray) -> pa_arrow.ChunkedArray:
    """Numbers rendered as text, each distinct value once.

    Scores and item numbers take a handful of values; rendering a float is the
    costly part of the cast (~3x an integer), so a column with few distinct
    values is rendered through its dictionary. Same text as a plain cast.
    """
    out = []
    for chunk in col.chunks:
        encoded = pc.dictionary_encode(chunk)
        if len(encoded.dictionary) * 8 > len(chunk):
            out.append(chunk.cast(pa_arrow.string()))
        else:
            out.append(encoded.dictionary.cast(pa_arrow.string()).take(encoded.indices))
    return pa_arrow.chunked_array(out, pa_arrow.string())


def _rebatch(batches: Iterator[pa_arrow.RecordBatch], rows: int) -> Iterator[pa_arrow.Table]:
    """Tables of exactly ``rows`` rows (the last may be shorter) from a stream of batches."""
    pending: list[pa_arrow.RecordBatch] = []
    have = 0
    for batch in batches:
        while batch.num_rows:
            take = min(rows - have, batch.num_rows)
            pending.append(batch.slice(0, take))
            have += take
            batch = batch.slice(take)
            if have == rows:
                yield pa_arrow.Table.from_batches(pending)
                pending, have = [], 0
    if have:
        yield pa_arrow.Table.from_batches(pending)


# Bytes Arrow's CSV reader parses at a time (its rows are then cut into chunks).
CSV_BLOCK_BYTES = 1 << 24


class _ArrowCsvFailed(Exception):
    """Arrow's CSV reader refused the file: read it again with pandas (exact messages)."""


def _arrow_csv_chunks(sf: SourceFile, chunk_rows: int) -> Iterator[Chunk]:
    """Fast path: Arrow's multithreaded CSV reader, every column read as text.

    Any row Arrow will not take (a short or long row, bad UTF-8 ...) raises
    ``_ArrowCsvFailed`` and the file is read again by ``_pandas_csv_chunks``,
    whose behaviour and messages are the reference.
    """
    header = _csv_header(sf)
    with sf.path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        quoted = data.find(b'"') >= 0  # no quote: no newline can sit inside a value
    try:
        reader = pacsv.open_csv(
            sf.path,
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, encoding="utf8"),
            parse_options=pacsv.ParseOptions(newlines_in_values=quoted),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa_arrow.string() for name in header},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        names = reader.schema.names
        if [n.strip() for n in names] != header or not all(
            pa_arrow.types.is_string(t) for t in reader.schema.types
        ):
            raise _ArrowCsvFailed("header read differently")
        for table in _rebatch(iter(reader), chunk_rows):
            # header names as _csv_header gives them (' goal_number' is goal_number)
            yield _normalise_arrow(table.rename_columns(header))
    except (pa_arrow.ArrowException, UnicodeDecodeError) as exc:
        raise _ArrowCsvFailed(str(exc)) from exc


def _arrow_reason(exc: Exception) -> str:
    """Arrow's CSV message without the row it quotes: a row may hold an identifier
    that the privacy guard has not seen yet, and logs are published (CONTRACT.md 4)."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    shape = re.search(r"Expected \d+ columns, got \d+", first)
    if shape:
        return shape.group(0)
    return "invalid UTF-8" if "UTF8" in first or "UTF-8" in first else "a row it refuses"


def _pandas_csv_chunks(sf: SourceFile, chunk_rows: int) -> Iterator[Chunk]:
    """Reference path: pandas' C parser (pads short rows, names malformed lines)."""
    header = _csv_header(sf)
    _refuse_long_first_row(sf, len(header))
    start = 1
    try:
        reader = pd.read_csv(
            sf.path,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8-sig",
            chunksize=chunk_rows,
            skipinitialspace=False,
            engine="c",
        )
        for frame in reader:
            frame.columns = header
            table = pa_arrow.Table.from_pandas(frame.astype(TEXT), preserve_index=False)
            start += len(frame)
            yield _normalise_arrow(table)
    except UnicodeDecodeError as exc:
        raise IngestError(
            f"{sf.relative}: not UTF-8 text ({exc.reason}) near data row {start}"
        ) from exc
    except pd.errors.ParserError as exc:
        # pandas reads a chunk before it fails: its own message names the line
        raise IngestError(
            f"{sf.relative}: malformed CSV in the rows after data row {start - 1} ({exc}; "
            "line numbers count the header as line 1)"
        ) from exc


def _refuse_long_first_row(sf: SourceFile, fields: int) -> None:
    """A first data row longer than the header makes pandas take the first column
    as the row index, which shifts every value one column left without a word; a
    longer row further down is a ParserError. Either way the file is refused."""
    with sf.path.open("r", encoding="utf-8-sig", newline="") as fh:
        rows = csv.reader(fh)
        next(rows, None)
        try:
            first = next((r for r in rows if r), None)
        except csv.Error:
            return  # pandas names the problem
    if first is not None and len(first) > fields:
        raise IngestError(
            f"{sf.relative}: malformed CSV: data row 1 has {len(first)} fields but the header "
            f"has {fields} (a comma at the end of each line?)"
        )


def _parquet_chunks(sf: SourceFile, chunk_rows: int) -> Iterator[Chunk]:
    try:
        reader = pq.ParquetFile(sf.path)
        for table in _rebatch(reader.iter_batches(batch_size=chunk_rows), chunk_rows):
            yield _normalise_arrow(table)
    except IngestError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise IngestError(f"{sf.relative}: could not read the Parquet data ({exc})") from exc


def read_chunks(sf: SourceFile, chunk_rows: int, fast: bool = True) -> Iterator[Chunk]:
    """Normalised text chunks of one file, in file order (data row = position + 1).

    With ``fast`` a CSV file goes through Arrow's reader, which may raise
    ``_ArrowCsvFailed`` part-way; the caller then starts the file again with
    ``fast=False``.
    """
    if sf.path.suffix.lower() == ".parquet":
        return _parquet_chunks(sf, chunk_rows)
    if fast:
        return _arrow_csv_chunks(sf, chunk_rows)
    return _pandas_csv_chunks(sf, chunk_rows)


# --------------------------------------------------------------------------- row rules


def _first_rules(schema: pa.DataFrameSchema, raw: pd.DataFrame) -> pd.DataFrame:
    """Per failing row: the first rule by precedence, with a human detail."""
    try:
        schema.validate(raw, lazy=True)
        return pd.DataFrame(columns=["_rule", "_detail"])
    except pa.errors.SchemaErrors as exc:
        fc = exc.failure_cases
    fc = fc[fc["index"].notna()]
    if fc.empty:
        return pd.DataFrame(columns=["_rule", "_detail"])
    records = []
    for context, column, check, check_number, case, index in fc[
        ["schema_context", "column", "check", "check_number", "failure_case", "index"]
    ].itertuples(index=False):
        column = None if pd.isna(column) else column
        code = rule_of_failure(schema, context, column, check, check_number)
        if context == "DataFrameSchema":
            detail = str(check)
        elif check == "not_nullable":
            detail = f"{column}: required value is empty"
        else:
            detail = f"{column}: {check} (value {str(case)[:80]!r})"
        records.append((int(index), code, rules.precedence(code), detail))
    found = pd.DataFrame(records, columns=["_index", "_rule", "_prec", "_detail"])
    found = found.sort_values(["_index", "_prec", "_detail"]).drop_duplicates("_index")
    return found.set_index("_index")[["_rule", "_detail"]]


def _typed(
    raw: pd.DataFrame, columns: list[ColumnInfo], settings: Settings, registry: Registry
) -> dict[str, pd.Series]:
    """Typed values of every column (each parsed once per chunk inside ``parse_once``)."""
    out: dict[str, pd.Series] = {}
    for c in columns:
        values = parse(c.kind, raw[c.name], settings.tz)
        if c.default is not None:
            values = values.fillna(c.default)
        out[c.name] = values
    if "instrument" in out:
        # Canonical codes: fold each distinct spelling once, not each row.
        fold = registry.fold_map()
        spellings = raw["instrument"].dropna().unique()
        canonical = {v: fold.get(fold_code(v)) for v in spellings}
        out["instrument"] = raw["instrument"].map(canonical).astype(TEXT)
    return out


def keeps_raw(c: ColumnInfo) -> bool:
    """Whether a column's export text differs from its typed value and must be kept.

    Text and enum columns are staged as the (trimmed) text itself, so their
    typed column is their raw record; numbers, dates, defaults and folded
    instrument codes are not.
    """
    return c.kind not in ("string", "enum") or c.default is not None or c.name == "instrument"


def rendered_from_typed(c: ColumnInfo) -> bool:
    """Whether a Parquet number of this column may be staged without its text.

    An integer or float64 column read from Parquet is rendered as text by Arrow
    (``_numbers_as_text``), and that text parses back to the very number it was
    rendered from (``parsing.from_typed_source``). Where the staged number is
    present, its text is therefore Arrow's rendering of it, and ``raw_<column>``
    is left NULL: 25M item rows at 200k episodes need not carry two text
    columns of digits that nobody reads (only quarantined rows are shown raw).
    A default would hide an empty value behind a number, so such columns always
    keep their text.
    """
    return c.kind in ("int", "float") and c.default is None


def typed_source_renders(kind: str, source: pa_arrow.DataType) -> bool:
    """Whether Arrow's text of this Parquet type parses back to the value staged.

    Only for the column's own kind: a large integer in a float column parses to a
    rounded float, whose text is not the integer's.
    """
    if kind == "int":
        return fits_int64(source)
    return kind == "float" and pa_arrow.types.is_float64(source)


# SQL function, registered on the ingest's connection while it runs: Arrow's text of a
# float (DuckDB writes 3.0 as '3.0', Arrow as '3'). Integers read the same in both.
ARROW_TEXT = "_arrow_float_text"


def raw_sql(c: ColumnInfo) -> str:
    """SQL for a column's export text in a scratch table."""
    if not keeps_raw(c):
        return f'"{c.name}"'
    if rendered_from_typed(c):
        text = f'CAST("{c.name}" AS VARCHAR)' if c.kind == "int" else f'{ARROW_TEXT}("{c.name}")'
        return f'coalesce("raw_{c.name}", {text})'
    return f'"raw_{c.name}"'


def _arrow_float_text(values: pa_arrow.Array) -> pa_arrow.Array:
    """Floats as Arrow renders them, as ``_numbers_as_text`` did when reading them."""
    return pc.cast(values, pa_arrow.string())


def _as_text(_t: pa_arrow.DataType) -> pd.api.extensions.ExtensionDtype:
    return TEXT


def _arrow_of(values: pd.Series) -> pa_arrow.Array | pa_arrow.ChunkedArray:
    array = values.array
    if hasattr(array, "_pa_array"):
        return array._pa_array
    return pa_arrow.Array.from_pandas(values)


# --------------------------------------------------------------------------- engine


class Ingest:
    """One ingest run over an exports folder into a DuckDB connection."""

    def __init__(
        self,
        settings: Settings,
        con: duckdb.DuckDBPyConnection,
        run_id: str | None = None,
        logger: logging.Logger | None = None,
    ):
        self.settings = settings
        self.con = con
        self.run_id = run_id or uuid.uuid4().hex
        self.registry = settings.registry()
        self.schemas = export_schemas(self.registry, settings.tz)
        self.log = logger or log
        self.reports: dict[str, TableReport] = {}
        self.warnings: list[str] = []
        self._home_db = ""

    # -- reading and row rules ------------------------------------------------

    def _work(self, table: str) -> str:
        """Qualified name of a table's work table (see IN_PLACE)."""
        if table in IN_PLACE:
            return f'"{self._home_db}".staging.{WORK_TABLE_PREFIX}{table}'
        return f"{SCRATCH}.{WORK_TABLE_PREFIX}{table}"

    def _create_scratch(self, table: str) -> None:
        cols = columns_of(self.schemas[table])
        work = ["_rid BIGINT", "_file_order INTEGER", "_rule VARCHAR", "_detail VARCHAR"]
        work += [f'"raw_{c.name}" VARCHAR' for c in cols if keeps_raw(c)]
        # Typed columns as read; a rejected row may hold what the staging type cannot
        # (an item number past INTEGER), so the type is narrowed only when publishing.
        typed = {
            "source_file": "VARCHAR",
            "source_row": "BIGINT",
            **{c.name: SQL_TYPES[c.kind] for c in cols},
            **{n: t for n, (t, _) in LOADED_AS.get(table, {}).items()},
        }
        if table in IN_PLACE:
            staged = [c.name for c in staging_columns()[table]]
            if sorted(staged) != sorted(typed):
                raise AssertionError(f"staging.{table} is not its export columns: {staged}")
            typed = {name: typed[name] for name in staged}
        defs = [f'"{name}" {sql_type}' for name, sql_type in typed.items()] + work
        self.con.execute(f"CREATE OR REPLACE TABLE {self._work(table)} ({', '.join(defs)})")

    def _load_table(self, table: str) -> None:
        schema = self.schemas[table]
        report = TableReport(table)
        self.reports[table] = report
        self._create_scratch(table)
        files = discover(self.settings.exports_dir, table)
        if not files:
            if schema.metadata["required_table"]:
                raise IngestError(
                    f"{table}: required export is missing from {self.settings.exports_dir} "
                    f"(expected {table}.csv, {table}.parquet or a {table}/ folder)"
                )
            report.present = False
            self.log.info("%s: optional export not present", table)
            return
        ignored: set[str] = set()
        chunks = self._prepared_chunks(table, files, ignored)
        for kind, sf, chunk in in_background(chunks, name="ingest-reader"):
            if kind == "restart":
                self.con.execute(f"DELETE FROM _in_{table} WHERE _file_order = ?", [sf.order])
                continue
            self.con.register("_chunk", chunk)
            copies = "".join(
                f', "{source}" AS "{name}"'
                for name, (_, source) in LOADED_AS.get(table, {}).items()
            )
            self.con.execute(
                f"INSERT INTO _in_{table} BY NAME "
                f"SELECT *, $file AS source_file, $order AS _file_order{copies} FROM _chunk",
                {"file": sf.relative, "order": sf.order},
            )
            self.con.unregister("_chunk")
        report.files = [sf.relative for sf in files]
        report.ignored_columns = sorted(ignored)
        if ignored:  # logged once, by whoever reports self.warnings
            self.warnings.append(f"{table}: ignored extra columns {', '.join(sorted(ignored))}")

    def _prepared_chunks(
        self, table: str, files: list[SourceFile], ignored: set[str]
    ) -> Iterator[tuple[str, SourceFile, pa_arrow.Table | None]]:
        """(kind, file, rows) for the scratch table, file by file (runs in a second thread).

        ``("restart", file, None)``: Arrow gave up part-way through a CSV file;
        its rows so far must be dropped, it is read again by pandas.
        """
        schema = self.schemas[table]
        cols = columns_of(schema)
        names = [c.name for c in cols]
        required = [c.name for c in cols if c.required]
        rid = 0
        for sf in files:
            started = time.perf_counter()
            header = _header(sf)
            dupes = [h for h, n in Counter(header).items() if n > 1]
            if dupes:
                raise IngestError(f"{sf.relative}: the header repeats column {dupes[0]!r}")
            privacy.check_column_names(header, sf.relative)
            missing = [c for c in required if c not in header]
            if missing:
                raise IngestError(
                    f"{sf.relative}: required column {missing[0]!r} is missing "
                    f"(the {table} export needs {', '.join(required)})"
                )
            ignored |= set(header) - set(names)
            file_rid, fast = rid, True
            while True:
                try:
                    for chunk in read_chunks(sf, self.settings.ingest_chunk_rows, fast):
                        first_row = rid - file_rid + 1
                        yield (
                            "chunk",
                            sf,
                            self._prepare_chunk(schema, cols, sf, chunk, rid, first_row),
                        )
                        rid += chunk.text.num_rows
                    break
                except _ArrowCsvFailed as exc:
                    self.log.info(
                        "%s: read again with pandas after %s rows (Arrow's CSV reader: %s)",
                        sf.relative,
                        f"{rid - file_rid:,}",
                        _arrow_reason(exc),
                    )
                    if rid != file_rid:
                        yield "restart", sf, None
                    rid, fast = file_rid, False
            self.log.info(
                "%s: read %s rows from %s in %.2fs",
                table,
                f"{rid - file_rid:,}",
                sf.relative,
                time.perf_counter() - started,
            )

    def _prepare_chunk(
        self,
        schema: pa.DataFrameSchema,
        cols: list[ColumnInfo],
        sf: SourceFile,
        chunk: Chunk,
        rid: int,
        first_row: int,
    ) -> pa_arrow.Table:
        """Row rules and typed values of one chunk, as rows of the scratch table."""
        text = chunk.text
        n = text.num_rows
        frame = text.to_pandas(types_mapper=_as_text)
        frame.index = pd.RangeIndex(first_row, first_row + n)
        privacy.check_column_values(frame, sf.relative)
        present = set(text.column_names)
        for c in cols:
            if c.name not in present:
                frame[c.name] = pd.Series(pd.NA, index=frame.index, dtype=TEXT)
        body = frame[[c.name for c in cols]]
        with parse_once():
            for c in cols:
                if c.name in chunk.typed:
                    parsed = from_typed_source(c.kind, chunk.typed[c.name])
                    if parsed is not None:
                        remember(c.kind, body[c.name], parsed, self.settings.tz)
            typed = _typed(body, cols, self.settings, self.registry)
            failures = _first_rules(schema, body)
        out: dict[str, Any] = {
            "_rid": np.arange(rid, rid + n, dtype=np.int64),
            "source_row": np.arange(first_row, first_row + n, dtype=np.int64),
        }
        if len(failures):
            positions = failures.index.to_numpy(dtype=np.int64) - first_row
            for name in ("_rule", "_detail"):
                values = np.full(n, None, dtype=object)
                values[positions] = failures[name].to_numpy(dtype=object)
                out[name] = pa_arrow.array(values, pa_arrow.string())
        else:
            out["_rule"] = out["_detail"] = pa_arrow.nulls(n, pa_arrow.string())
        for c in cols:
            raw = text.column(c.name) if c.name in present else pa_arrow.nulls(n, pa_arrow.string())
            if keeps_raw(c):
                source = chunk.typed.get(c.name)
                if (
                    source is not None
                    and rendered_from_typed(c)
                    and typed_source_renders(c.kind, source.type)
                ):
                    # The text is Arrow's rendering of the staged number (raw_sql).
                    staged = _arrow_of(typed[c.name])
                    raw = pc.if_else(pc.is_valid(staged), pa_arrow.scalar(None, raw.type), raw)
                out[f"raw_{c.name}"] = raw
            if c.kind in ("string", "enum") and c.default is None and c.name != "instrument":
                out[c.name] = raw
            else:
                out[c.name] = _arrow_of(typed[c.name])
        return pa_arrow.table(out)

    # -- cross-table rules ----------------------------------------------------

    def _window_as_of(self) -> dt.date:
        if self.settings.as_of is not None:
            return self.settings.as_of
        latest = self.con.execute(
            "SELECT max(t) FROM (SELECT max(scheduled_at) t FROM _in_sessions "
            "UNION ALL SELECT max(administered_at) FROM _in_assessments)"
        ).fetchall()[0][0]
        return latest.date() if latest is not None else dt.date.max - dt.timedelta(days=400)

    def _mark_duplicates(self, table: str) -> None:
        key = self.schemas[table].metadata["key"]
        cols = ", ".join(f'"{k}"' for k in key)
        raw_row = ", ".join(raw_sql(c) for c in columns_of(self.schemas[table]))
        label = ", ".join(key)
        # Keys seen more than once are rare: find them with one aggregate on a hash
        # of the key, then order the copies of those keys only (by the key itself,
        # so a hash collision marks nothing).
        candidates = (
            f"hash({cols}) IN (SELECT hash({cols}) FROM _in_{table} WHERE _rule IS NULL "
            "GROUP BY ALL HAVING count(*) > 1)"
        )
        if table == "assessment_items":
            # The largest table: candidates come from the per-administration
            # aggregate of ingest_item_ranges.sql (6x fewer groups than keys).
            candidates = (
                "assessment_id IN (SELECT assessment_id FROM _item_stats "
                "WHERE n_rows > n_item_bits)"
            )
        self.con.execute(f"""
            UPDATE _in_{table} AS t
            SET _rule = '{rules.DUPLICATE_KEY}',
                _detail = 'second copy of key ({label}); the first copy is '
                          || d.first_file || ' row ' || d.first_row
                          || CASE WHEN d.exact THEN ' (exact duplicate row)' ELSE '' END
            FROM (
                SELECT _rid,
                       row_number() OVER w AS copy,
                       first_value(source_file) OVER w AS first_file,
                       first_value(source_row) OVER w AS first_row,
                       count(DISTINCT raw_row) OVER (PARTITION BY {cols}) = 1 AS exact
                FROM (SELECT *, hash({raw_row}) AS raw_row
                      FROM _in_{table}
                      WHERE _rule IS NULL AND {candidates})
                WINDOW w AS (PARTITION BY {cols} ORDER BY _rid)
            ) AS d
            WHERE t._rid = d._rid AND d.copy > 1
        """)

    def _cross_table(self, window_as_of: dt.date) -> None:
        self.con.register("_registry_frame", self.registry.frame())
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE _instruments AS SELECT * FROM _registry_frame"
        )
        self.con.unregister("_registry_frame")
        run_script(self.con, load_sql("ingest_item_ranges"))
        for table in STAGING_TABLES:
            self._mark_duplicates(table)
        params = {
            "window_as_of": window_as_of,
            "before_days": self.settings.session_window_before_days,
            "after_days": self.settings.session_window_after_days,
        }
        run_script(self.con, load_sql("ingest_references"), params)
        run_script(self.con, load_sql("ingest_scoring"))

    # -- as-of and publishing -------------------------------------------------

    def _data_as_of(self) -> tuple[dt.date, str]:
        if self.settings.as_of is not None:
            return self.settings.as_of, "config"
        latest = self.con.execute("""
            SELECT max(t) FROM (
                SELECT max(administered_at) AS t FROM _in_assessments WHERE _rule IS NULL
                UNION ALL
                SELECT max(scheduled_at) FROM _in_sessions
                WHERE _rule IS NULL AND status <> 'booked')
        """).fetchall()[0][0]
        if latest is None:
            raise IngestError(
                "no staged session or assessment to take the data cut date from; "
                "set OUTCOMES_AS_OF=YYYY-MM-DD"
            )
        return latest.date(), "data"

    def _publish(self, as_of: dt.date, as_of_source: str) -> None:
        con = self.con
        registry_frame = self.registry.frame()
        quarantine_selects = []
        for table in STAGING_TABLES:
            struct = ", ".join(
                f'"{c.name}" := {raw_sql(c)}' for c in columns_of(self.schemas[table])
            )
            quarantine_selects.append(
                f"SELECT '{table}' AS table_name, source_file, source_row, "
                f"to_json(struct_pack({struct}))::VARCHAR AS record, _rule AS rule, "
                f"_detail AS detail, $run_id AS run_id, _rid FROM {self._work(table)} "
                f"WHERE _rule IS NOT NULL"
            )
        con.execute("BEGIN TRANSACTION")
        try:
            for name in [
                *(f"staging.{t}" for t in STAGING_TABLES),
                "staging.risk_responses",
                "staging.instruments",
                "staging.run_info",
                "quarantine.rejected_rows",
                "quarantine.total_mismatches",
            ]:
                con.execute(f"DROP TABLE IF EXISTS {name}")
            create_tables(con)
            for table, source in PUBLISHED_FROM.items():
                cols = ", ".join(f'"{c.name}"' for c in staging_columns()[table])
                # Rows go in file order: scratch rows were written in _rid order and
                # DuckDB keeps insertion order through a plain scan (and through
                # the positional join of the scored view).
                con.execute(
                    f"INSERT INTO staging.{table} ({cols}) SELECT {cols} "
                    f"FROM {SCRATCH}.{source} WHERE _rule IS NULL"
                )
            con.execute(
                f"INSERT INTO staging.risk_responses SELECT * FROM {SCRATCH}._risk_responses "
                "ORDER BY assessment_id, item"
            )
            con.register("_registry", registry_frame)
            con.execute("INSERT INTO staging.instruments BY NAME SELECT * FROM _registry")
            con.unregister("_registry")
            con.execute(
                "INSERT INTO staging.run_info VALUES (?, ?, ?, ?, ?)",
                [
                    self.run_id,
                    as_of,
                    as_of_source,
                    str(self.settings.exports_dir),
                    json.dumps(self.settings.public_dict(), sort_keys=True, default=str),
                ],
            )
            con.execute(
                "INSERT INTO quarantine.rejected_rows "
                "SELECT table_name, source_file, source_row, record, rule, detail, run_id FROM ("
                + " UNION ALL ".join(quarantine_selects)
                + ") ORDER BY list_position($tables, table_name), _rid",
                {"run_id": self.run_id, "tables": list(STAGING_TABLES)},
            )
            con.execute(
                f"""
                CREATE TABLE quarantine.total_mismatches AS
                SELECT 'assessments' AS table_name, source_file, source_row, assessment_id,
                       total_score AS supplied_total, total AS computed_total, $run_id AS run_id
                FROM {SCRATCH}._assessments_scored
                WHERE _rule IS NULL AND items_answered IS NOT NULL AND total_score IS NOT NULL
                  AND abs(total - total_score) > $tol
                ORDER BY _rid
            """,
                {"run_id": self.run_id, "tol": self.settings.total_mismatch_tolerance},
            )
            con.execute("""
                CREATE TABLE IF NOT EXISTS quarantine.ingest_history (
                    run_id VARCHAR, table_name VARCHAR, rows_read BIGINT, rows_staged BIGINT,
                    rows_quarantined BIGINT, as_of DATE)
            """)
            for r in self.reports.values():
                con.execute(
                    "INSERT INTO quarantine.ingest_history VALUES (?, ?, ?, ?, ?, ?)",
                    [self.run_id, r.table, r.rows_read, r.rows_staged, r.rows_quarantined, as_of],
                )
            for table in IN_PLACE:
                self._make_staging(table)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def _make_staging(self, table: str) -> None:
        """Turn a work table into its staging table, inside the publishing transaction.

        Its rows are already in file order and its columns in the staging order; what
        is left is cheap: delete the rejected rows (after the quarantine has read them),
        drop the work columns, narrow types and set NOT NULL as the DDL says (each
        checked by DuckDB over the staged rows), and take the staging table's name.
        """
        con, work = self.con, self._work(table)
        con.execute(f"DROP TABLE staging.{table}")  # the empty one create_tables made
        con.execute(f"DELETE FROM {work} WHERE _rule IS NOT NULL")
        wanted = {c.name: c for c in staging_columns()[table]}
        present = con.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = $db "
            "AND schema_name = 'staging' AND table_name = $t ORDER BY column_index",
            {"db": self._home_db, "t": f"{WORK_TABLE_PREFIX}{table}"},
        ).fetchall()
        for name, sql_type in present:
            column = wanted.get(name)
            if column is not None and sql_type != column.sql_type:
                # DuckDB converts the deleted rows too: only staged ones are cast
                # (strictly: a staged value that does not fit fails the run, as an
                # INSERT into the staging table would).
                con.execute(
                    f'ALTER TABLE {work} ALTER COLUMN "{name}" TYPE {column.sql_type} '
                    f'USING CASE WHEN _rule IS NULL THEN CAST("{name}" AS {column.sql_type}) END'
                )
        for name, _ in present:
            if name not in wanted:
                con.execute(f'ALTER TABLE {work} DROP COLUMN "{name}"')
        for column in wanted.values():
            if column.not_null:
                con.execute(f'ALTER TABLE {work} ALTER COLUMN "{column.name}" SET NOT NULL')
        con.execute(f"ALTER TABLE {work} RENAME TO {table}")

    def _count(self) -> None:
        for table, report in self.reports.items():
            read, staged = self.con.execute(
                f"SELECT count(*), count(*) FILTER (WHERE _rule IS NULL) FROM _in_{table}"
            ).fetchall()[0]
            report.rows_read, report.rows_staged = read, staged
            report.rows_quarantined = read - staged
            report.by_rule = dict(
                self.con.execute(
                    f"SELECT _rule, count(*) FROM _in_{table} WHERE _rule IS NOT NULL "
                    f"GROUP BY 1 ORDER BY 1"
                ).fetchall()
            )
            assert sum(report.by_rule.values()) == report.rows_quarantined
        mismatches = self.con.execute(
            "SELECT count(*) FROM _assessments_scored WHERE _rule IS NULL "
            "AND items_answered IS NOT NULL AND total_score IS NOT NULL "
            "AND abs(total - total_score) > ?",
            [self.settings.total_mismatch_tolerance],
        ).fetchall()[0][0]
        if mismatches:
            self.warnings.append(
                f"assessments: {mismatches} supplied total_score(s) differ from the item total by "
                f"more than {self.settings.total_mismatch_tolerance:g}; the computed total was "
                f"used (see quarantine.total_mismatches)"
            )

    def _exports_bytes(self) -> int:
        try:
            files = [sf for t in STAGING_TABLES for sf in discover(self.settings.exports_dir, t)]
        except IngestError:
            return 0  # reported with its file when the table is read
        return sum(sf.path.stat().st_size for sf in files)

    @contextlib.contextmanager
    def _scratch(self) -> Iterator[None]:
        """Work tables in a scratch database beside the warehouse, deleted afterwards.

        A file (not TEMP tables in memory) so that memory stays bounded by
        DuckDB's buffer pool whatever the size of the exports. The work tables of
        IN_PLACE staging tables live in the warehouse's staging schema instead (they
        become the staging tables); a failed run drops them here, a killed one
        leaves them to the next writer (``pipelines.resources``).
        """
        con = self.con
        home, path = con.execute(
            "SELECT database_name, path FROM duckdb_databases() "
            "WHERE database_name = current_database()"
        ).fetchall()[0]
        self._home_db = home
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{home}".staging')
        drop_work_tables(con, home)
        scratch = Path(f"{path}.ingest-scratch") if path else None
        if scratch is not None:
            _remove_database_files(scratch)
        limit, threshold = con.execute(
            "SELECT current_setting('memory_limit'), current_setting('checkpoint_threshold')"
        ).fetchall()[0]
        pool = ingest_memory_limit(self._exports_bytes())
        con.execute(f"SET memory_limit = '{pool >> 20}MiB'")
        # No automatic checkpoint of the work tables between statements: they are
        # dropped at the end, and rewriting them mid-run cost minutes at 1M episodes.
        con.execute("SET checkpoint_threshold = '1TB'")
        con.execute(f"ATTACH '{scratch or ':memory:'}' AS {SCRATCH}")
        with contextlib.suppress(duckdb.Error):  # left by an ingest whose cleanup failed
            con.remove_function(ARROW_TEXT)
        con.create_function(
            ARROW_TEXT, _arrow_float_text, ["DOUBLE"], "VARCHAR", type="arrow", side_effects=False
        )
        con.execute(f"USE {SCRATCH}")
        # Work tables by their plain names, wherever they live (IN_PLACE).
        con.execute(f"SET search_path = '{SCRATCH}.main,\"{home}\".staging'")

        def release() -> None:
            con.execute(f'USE "{home}"')
            drop_work_tables(con, home)
            # Dropped first so that detaching does not write the work tables out.
            for kind, name in con.execute(
                "SELECT 'VIEW', view_name FROM duckdb_views() WHERE database_name = $db "
                "UNION ALL SELECT 'TABLE', table_name FROM duckdb_tables() "
                "WHERE database_name = $db",
                {"db": SCRATCH},
            ).fetchall():
                con.execute(f'DROP {kind} IF EXISTS {SCRATCH}."{name}"')
            con.execute(f"DETACH {SCRATCH}")
            con.remove_function(ARROW_TEXT)
            con.execute(f"SET memory_limit = '{limit}'")
            con.execute(f"SET checkpoint_threshold = '{threshold}'")

        try:
            yield
        except BaseException:
            # A failing cleanup (e.g. DETACH's checkpoint on a full disk) must not hide
            # the error that stopped the ingest.
            with contextlib.suppress(Exception):
                release()
            raise
        else:
            release()
        finally:
            if scratch is not None:
                _remove_database_files(scratch)

    def run(self) -> IngestResult:
        started = time.perf_counter()
        exports = Path(self.settings.exports_dir)
        if not exports.is_dir():
            raise IngestError(f"exports folder {exports} does not exist (OUTCOMES_EXPORTS_DIR)")
        self.log.info("ingest %s from %s", self.run_id, exports)
        with self._scratch():
            for table in STAGING_TABLES:
                self._load_table(table)
            # From here on the ingest is SQL inside DuckDB, which releases the GIL:
            # the later steps' slow imports run beside it (assets/warmup.py).
            warm_imports()
            window_as_of = self._window_as_of()
            self._cross_table(window_as_of)
            as_of, source = self._data_as_of()
            self._count()
            self.con.execute(f'USE "{self._home_db}"')
            self._publish(as_of, source)
        seconds = time.perf_counter() - started
        for r in self.reports.values():
            self.log.info(
                "%s: read %s, staged %s, quarantined %s %s",
                r.table,
                r.rows_read,
                r.rows_staged,
                r.rows_quarantined,
                r.by_rule or "",
            )
        self.log.info("ingest finished in %.1fs; data cut date %s (%s)", seconds, as_of, source)
        return IngestResult(self.run_id, as_of, source, self.reports, self.warnings, seconds)
