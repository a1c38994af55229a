"""Exports folder -> validated staging + quarantine, without losing a row.

Stages (CONTRACT.md sections 2-4 and edge rules 1-4, 15, 18):

1. read each file of a table as text, in chunks, in sorted file order;
2. refuse direct identifiers (schemas.privacy) before anything is written;
3. row rules: the Pandera models (schemas.exports) decide each row; the first
   failed rule by precedence is the row's quarantine rule;
4. cross-table rules in DuckDB (assets/sql/ingest_*.sql): duplicate keys,
   references, client match, the sessions time window, then scoring;
5. staging and quarantine are replaced together in one transaction.

Pure Python + DuckDB, no Dagster: the asset in assets/ingest.py wraps it.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
import pyarrow.parquet as pq

from assets.sql_runner import load_sql, run_script
from schemas import privacy, rules
from schemas.exports import ColumnInfo, columns_of, export_schemas, rule_of_failure
from schemas.parsing import TEXT, parse
from schemas.registry import Registry, fold_code
from schemas.settings import Settings
from schemas.staging import STAGING_TABLES, create_tables

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
# Columns ingest adds to a table beyond its export columns (filled in SQL).
EXTRA_COLUMNS = {
    "assessments": {
        "total": "DOUBLE",
        "items_answered": "INTEGER",
        "prorated": "BOOLEAN",
        "instrument_raw": "VARCHAR",
    },
    "assessment_items": {"keyed_score": "DOUBLE"},
}


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


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns with surrounding blanks trimmed and empty strings as NA."""
    out = frame.astype(TEXT)
    for col in out.columns:
        out[col] = out[col].str.strip().replace("", pd.NA)
    return out


def read_chunks(sf: SourceFile, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Raw text chunks of one file, each with its 1-based data row in ``_source_row``."""
    start = 1
    if sf.path.suffix.lower() == ".parquet":
        try:
            reader = pq.ParquetFile(sf.path)
            batches = reader.iter_batches(batch_size=chunk_rows)
            for batch in batches:
                cols = [
                    c.cast(pa_arrow.string()) if not pa_arrow.types.is_string(c.type) else c
                    for c in batch.columns
                ]
                frame = pa_arrow.Table.from_arrays(cols, names=batch.schema.names).to_pandas(
                    types_mapper=lambda _t: TEXT
                )
                frame = _normalise(frame)
                frame.index = pd.RangeIndex(start, start + len(frame))
                frame["_source_row"] = frame.index
                start += len(frame)
                yield frame
        except IngestError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise IngestError(f"{sf.relative}: could not read the Parquet data ({exc})") from exc
        return
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
            frame = _normalise(frame)
            frame.index = pd.RangeIndex(start, start + len(frame))
            frame["_source_row"] = frame.index
            start += len(frame)
            yield frame
    except UnicodeDecodeError as exc:
        raise IngestError(
            f"{sf.relative}: not UTF-8 text ({exc.reason}) near data row {start}"
        ) from exc
    except pd.errors.ParserError as exc:
        raise IngestError(f"{sf.relative}: malformed CSV near data row {start}: {exc}") from exc


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
) -> pd.DataFrame:
    out = pd.DataFrame(index=raw.index)
    for c in columns:
        values = parse(c.kind, raw[c.name], settings.tz)
        if c.default is not None:
            values = values.fillna(c.default)
        out[c.name] = values
    if "instrument" in out:
        fold = registry.fold_map()
        out["instrument"] = (
            raw["instrument"].map(lambda v: fold.get(fold_code(v)), na_action="ignore").astype(TEXT)
        )
    return out


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

    # -- reading and row rules ------------------------------------------------

    def _create_scratch(self, table: str) -> None:
        cols = columns_of(self.schemas[table])
        defs = [
            "_rid BIGINT",
            "_file_order INTEGER",
            "source_file VARCHAR",
            "source_row BIGINT",
            "_rule VARCHAR",
            "_detail VARCHAR",
        ]
        defs += [f'"raw_{c.name}" VARCHAR' for c in cols]
        defs += [f'"{c.name}" {SQL_TYPES[c.kind]}' for c in cols]
        defs += [f"{n} {t}" for n, t in EXTRA_COLUMNS.get(table, {}).items()]
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE _in_{table} ({', '.join(defs)})")

    def _load_table(self, table: str) -> None:
        schema = self.schemas[table]
        cols = columns_of(schema)
        names = [c.name for c in cols]
        required = [c.name for c in cols if c.required]
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
        rid = 0
        ignored: set[str] = set()
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
            report.files.append(sf.relative)
            file_rows = 0
            for raw in read_chunks(sf, self.settings.ingest_chunk_rows):
                privacy.check_column_values(raw.drop(columns="_source_row"), sf.relative)
                for c in names:
                    if c not in raw:
                        raw[c] = pd.Series(pd.NA, index=raw.index, dtype=TEXT)
                body = raw[names]
                failures = _first_rules(schema, body)
                typed = _typed(body, cols, self.settings, self.registry)
                frame = pd.DataFrame(
                    {
                        "_rid": pd.RangeIndex(rid, rid + len(raw)),
                        "_file_order": sf.order,
                        "source_file": sf.relative,
                        "source_row": raw["_source_row"].to_numpy(),
                    },
                    index=raw.index,
                )
                frame["_rule"] = failures["_rule"].reindex(raw.index).astype(TEXT)
                frame["_detail"] = failures["_detail"].reindex(raw.index).astype(TEXT)
                for c in names:
                    frame[f"raw_{c}"] = body[c]
                for c in names:
                    frame[c] = typed[c]
                if table == "assessments":
                    frame["instrument_raw"] = body["instrument"]
                self.con.register("_chunk", frame)
                self.con.execute(f"INSERT INTO _in_{table} BY NAME SELECT * FROM _chunk")
                self.con.unregister("_chunk")
                rid += len(raw)
                file_rows += len(raw)
            self.log.info(
                "%s: read %s rows from %s in %.2fs",
                table,
                f"{file_rows:,}",
                sf.relative,
                time.perf_counter() - started,
            )
        report.ignored_columns = sorted(ignored)
        if ignored:
            self.log.warning("%s: ignored extra columns %s", table, ", ".join(sorted(ignored)))
            self.warnings.append(f"{table}: ignored extra columns {', '.join(sorted(ignored))}")

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
        raw_row = ", ".join(f'"raw_{c.name}"' for c in columns_of(self.schemas[table]))
        label = ", ".join(key)
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
                      FROM _in_{table} WHERE _rule IS NULL)
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
            raw_cols = [c.name for c in columns_of(self.schemas[table])]
            struct = ", ".join(f'"{c}" := "raw_{c}"' for c in raw_cols)
            quarantine_selects.append(
                f"SELECT '{table}' AS table_name, source_file, source_row, "
                f"to_json(struct_pack({struct}))::VARCHAR AS record, _rule AS rule, "
                f"_detail AS detail, $run_id AS run_id, _rid FROM _in_{table} "
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
            for table in STAGING_TABLES:
                staging_cols = [
                    r[0]
                    for r in con.execute(
                        "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                        "'staging' AND table_name = ? ORDER BY ordinal_position",
                        [table],
                    ).fetchall()
                ]
                cols = ", ".join(f'"{c}"' for c in staging_cols)
                con.execute(
                    f"INSERT INTO staging.{table} ({cols}) SELECT {cols} "
                    f"FROM _in_{table} WHERE _rule IS NULL ORDER BY _rid"
                )
            con.execute(
                "INSERT INTO staging.risk_responses SELECT * FROM _risk_responses "
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
                """
                CREATE TABLE quarantine.total_mismatches AS
                SELECT 'assessments' AS table_name, source_file, source_row, assessment_id,
                       total_score AS supplied_total, total AS computed_total, $run_id AS run_id
                FROM _in_assessments
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
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

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
            "SELECT count(*) FROM _in_assessments WHERE _rule IS NULL AND items_answered IS NOT "
            "NULL AND total_score IS NOT NULL AND abs(total - total_score) > ?",
            [self.settings.total_mismatch_tolerance],
        ).fetchall()[0][0]
        if mismatches:
            self.warnings.append(
                f"assessments: {mismatches} supplied total_score(s) differ from the item total by "
                f"more than {self.settings.total_mismatch_tolerance:g}; the computed total was "
                f"used (see quarantine.total_mismatches)"
            )

    def run(self) -> IngestResult:
        started = time.perf_counter()
        exports = Path(self.settings.exports_dir)
        if not exports.is_dir():
            raise IngestError(f"exports folder {exports} does not exist (OUTCOMES_EXPORTS_DIR)")
        self.log.info("ingest %s from %s", self.run_id, exports)
        for table in STAGING_TABLES:
            self._load_table(table)
        window_as_of = self._window_as_of()
        self._cross_table(window_as_of)
        as_of, source = self._data_as_of()
        self._count()
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
