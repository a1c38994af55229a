"""Planted identifiers stop the run and are found nowhere; published outputs stay safe.

Each plant is a distinctive fake identifier put into a copy of a realistic
export: a column named like an identifier, an e-mail or phone number hidden in
an innocently named column, in a Parquet file, or as a header. The job runs
from the previous run's state, as a user's run would, and must exit non-zero
naming the column, leave the previous warehouse as it was, and leave the
planted value in none of: the warehouse file (raw bytes and every text column,
since DuckDB compresses strings), the published snapshot, the reports, the
run's stdout/stderr, and the Dagster instance (DAGSTER_HOME: sqlite event log
and run storage, compute logs).

Then, on the suite's clean runs: small-cell suppression holds in every
published aggregate, the QI report carries no row-level id, telemetry is off,
and the runs made no network access (they run without a network).
"""

from __future__ import annotations

import csv
import logging
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import yaml

from assets.ingest_engine import Ingest
from schemas.privacy import PrivacyError
from tests.reliability import (
    FULL,
    NETWORK_LOG,
    ROOT,
    Site,
    clean_a,
    clean_b,
    copy_site_state,
    fingerprints,
    open_warehouse,
    record,
    run_to_end,
    snapshot_of,
)

EMAIL = "zelda.quasimodo@example.org"
PHONE = "+44 7700 900461"
NAME = "Quasimodo-Zelda"
BIRTH = "1987-03-14"
IDENTIFIERS = {EMAIL, PHONE, NAME, BIRTH}


@dataclass(frozen=True)
class Plant:
    """One planted identifier: which file, which column, which value, how it hides."""

    name: str
    table: str
    column: str
    value: str
    rows: str  # "all" or "one": the value in every row or hidden in a single row
    reported_as: str  # what the error must name
    fmt: str = "csv"

    @property
    def secrets(self) -> list[str]:
        """The planted identifier itself: the value, or the header when it is the header."""
        return [s for s in (self.value, self.column) if s in IDENTIFIERS]


PLANTS = [
    Plant("name_column", "sessions", "client_surname", NAME, "all", "'client_surname'"),
    Plant("email_column", "episodes", "contact_email", EMAIL, "all", "'contact_email'"),
    Plant("email_in_program", "episodes", "program", EMAIL, "one", "'program'"),
    Plant("phone_in_gender", "episodes", "gender", PHONE, "one", "'gender'"),
    Plant("phone_as_episode_id", "goals", "episode_id", PHONE, "one", "'episode_id'"),
    Plant("email_header", "sessions", EMAIL, "1", "all", "header column"),
    Plant("phone_header", "episodes", PHONE, "x", "all", "header column"),
    Plant("date_of_birth", "episodes", "DateOfBirth", BIRTH, "all", "'DateOfBirth'"),
    Plant("email_in_parquet", "assessment_items", "note_2", EMAIL, "all", "'note_2'", "parquet"),
    Plant("email_late_in_file", "assessments", "session_id", EMAIL, "last", "'session_id'"),
]
# CI runs these through the whole job; the rest through the ingest in-process.
JOB_PLANTS = {p.name for p in PLANTS} if FULL else {"email_in_program", "email_header"}


def plant(exports: Path, p: Plant) -> None:
    """Put ``p`` into the export folder (the rest of the export stays valid)."""
    path = exports / f"{p.table}.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if p.rows == "all":
        frame[p.column] = p.value
    else:
        at = len(frame) - 1 if p.rows == "last" else len(frame) // 2
        if p.column not in frame:
            frame[p.column] = ""
        frame.loc[at, p.column] = p.value
    if p.fmt == "parquet":
        path.unlink()
        frame.to_parquet(path.with_suffix(".parquet"), index=False)
    else:
        frame.to_csv(path, index=False)


def text_hits(folder_or_file: Path, secrets: list[str]) -> list[str]:
    """Files under ``folder_or_file`` whose raw bytes contain a secret (UTF-8 or UTF-16)."""
    files = [folder_or_file] if folder_or_file.is_file() else list(folder_or_file.rglob("*"))
    needles = [s.encode(enc) for s in secrets for enc in ("utf-8", "utf-16-le")]
    return [str(f) for f in files if f.is_file() and any(n in f.read_bytes() for n in needles)]


def sql_hits(database: Path, secrets: list[str]) -> list[str]:
    """Columns of a DuckDB file holding a secret in any text value (strings are compressed,
    so a raw grep alone proves nothing)."""
    if not database.is_file():
        return []
    hits = []
    with open_warehouse(database) as con:
        columns = con.execute(
            "SELECT schema_name, table_name, column_name FROM duckdb_columns() "
            "WHERE NOT internal AND data_type = 'VARCHAR'"
        ).fetchall()
        for schema, table, column in columns:
            for secret in secrets:
                n = con.execute(
                    f'SELECT count(*) FROM {schema}."{table}" WHERE contains("{column}", ?)',
                    [secret],
                ).fetchall()[0][0]
                if n:
                    hits.append(f"{schema}.{table}.{column}")
    return hits


# --------------------------------------------------------------------------- planted identifiers

FOUND: dict[str, int] = {}


@pytest.mark.parametrize("p", [p for p in PLANTS if p.name in JOB_PLANTS], ids=lambda p: p.name)
def test_planted_identifier_stops_the_job_and_is_found_nowhere(tmp_path, p):
    previous = clean_a()
    exports = tmp_path / "exports"
    shutil.copytree(previous.site.exports, exports)
    plant(exports, p)
    site = Site(tmp_path / "site", exports)
    copy_site_state(previous.site, site)
    run = run_to_end(site, f"plant_{p.name}")
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Privacy guard stopped the ingest" in run.stderr
    assert p.reported_as in run.stderr, run.stderr[-3000:]
    assert fingerprints(site.warehouse) == previous.tables  # the previous warehouse, intact

    secrets = p.secrets
    places = {
        "warehouse file": text_hits(site.warehouse, secrets)
        + text_hits(Path(f"{site.warehouse}.wal"), secrets)
        if Path(f"{site.warehouse}.wal").exists()
        else text_hits(site.warehouse, secrets),
        "warehouse tables": sql_hits(site.warehouse, secrets),
        "snapshot": sql_hits(snapshot_of(site), secrets),
        "reports": text_hits(site.reports, secrets),
        "logs": text_hits(site.root / "logs", secrets),
        "dagster home": text_hits(site.home, secrets),
    }
    found = {k: v for k, v in places.items() if v}
    FOUND[p.name] = sum(len(v) for v in found.values())
    assert found == {}, f"planted {p.value!r} leaked to {found}"


@pytest.mark.parametrize("p", PLANTS, ids=lambda p: p.name)
def test_planted_identifier_stops_the_ingest_in_process(tmp_path, p):
    """Every plant through the ingest itself: the error, the file and the log."""
    from dataclasses import replace

    from schemas.settings import Settings
    from tests.reliability import generated_exports

    exports = tmp_path / "exports"
    generated_exports(exports, 40, 9)
    plant(exports, p)
    database = tmp_path / "warehouse.duckdb"
    logs = []
    handler = logging.Handler()
    handler.emit = lambda record: logs.append(handler.format(record))  # type: ignore[method-assign]
    logger = logging.getLogger("outcomes.ingest.privacy-test")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    con = duckdb.connect(str(database))
    try:
        for schema in ("staging", "quarantine", "marts"):
            con.execute(f"CREATE SCHEMA {schema}")
        with pytest.raises(PrivacyError) as info:
            Ingest(replace(Settings(), exports_dir=exports), con, logger=logger).run()
    finally:
        con.close()
        logger.removeHandler(handler)
    message = str(info.value)
    assert p.reported_as in message and f"{p.table}." in message
    for secret in p.secrets:
        assert secret not in message
        assert not any(secret in line for line in logs)
    assert text_hits(database, p.secrets) == [] and sql_hits(database, p.secrets) == []
    FOUND.setdefault(p.name, 0)


def test_record_privacy_figures():
    record(
        "privacy",
        {
            "plants": len(PLANTS),
            "plants_through_job": sorted(JOB_PLANTS),
            "plant_kinds": [p.name for p in PLANTS],
            "planted_values_found": sum(FOUND.values()),
        },
    )


# --------------------------------------------------------------------------- published outputs


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def published_csvs(reports: Path) -> list[Path]:
    return sorted(reports.rglob("*.csv"))


def check_suppression(path: Path, k: int) -> dict[str, int]:
    """Independent check of a published aggregate CSV (CONTRACT.md section 4).

    1. every published (not suppressed) cell rests on at least k distinct clients;
    2. a published total never has exactly one suppressed part (subtraction would
       give it back), across clinics (parts of the service total) and across the
       bands of a breakdown (parts of the clinic's '__all__' row);
    3. when the total and several parts are published, what subtraction gives back
       for the suppressed parts rests on 0 or at least k clients.
    """
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "suppressed" not in rows[0]:
        return {"rows": len(rows), "suppressed": 0}
    published = [r for r in rows if r["suppressed"] != "True"]
    if "n_clients" in rows[0]:
        small = [r for r in published if (_float(r["n_clients"]) or 0) < k]
        assert small == [], f"{path.name}: published cells on fewer than {k} clients: {small[:3]}"
    if {"clinic_id", "band", "breakdown", "kpi"} <= set(rows[0]):
        key = ("kpi", "instrument", "breakdown", "period")
        axes = [
            ("clinic_id", lambda r: r["clinic_id"] == "__service__", ("band",)),
            ("band", lambda r: r["band"] == "__all__", ("clinic_id",)),
        ]
        for _, is_total, same in axes:
            groups: dict[tuple, list[dict]] = {}
            for r in rows:
                if r["breakdown"] == "month" and same == ("clinic_id",):
                    continue  # months are not a partition of clients: no subtraction
                groups.setdefault(tuple(r.get(c, "") for c in key + same), []).append(r)
            for members in groups.values():
                totals = [r for r in members if is_total(r)]
                parts = [r for r in members if not is_total(r)]
                if len(totals) != 1 or totals[0]["suppressed"] == "True":
                    continue
                hidden = [r for r in parts if r["suppressed"] == "True"]
                assert len(hidden) != 1, f"{path.name}: lone suppressed cell {hidden[0]}"
                if hidden:
                    total = _float(totals[0]["n_clients"]) or 0
                    shown = sum(_float(r["n_clients"]) or 0 for r in parts if r not in hidden)
                    assert total - shown == 0 or total - shown >= k, (
                        f"{path.name}: subtraction gives back {total - shown} clients: {totals[0]}"
                    )
    return {"rows": len(rows), "suppressed": len(rows) - len(published)}


def test_small_cells_are_suppressed_in_every_published_aggregate():
    from schemas.settings import Settings

    k = Settings().min_cell_size
    checked = {}
    for run in (clean_a(), clean_b()):
        csvs = published_csvs(run.site.reports)
        assert csvs, "no published aggregate to check"
        for path in csvs:
            checked[f"{run.site.root.parent.name}/{path.name}"] = check_suppression(path, k)
    assert sum(v["suppressed"] for v in checked.values()) > 0, "nothing small: a weak test"
    record("suppression", {"k": k, "files": checked})


def test_the_qi_report_carries_no_row_level_identifier():
    run = clean_a()
    with open_warehouse(run.site.warehouse) as con:
        ids = set()
        for table, column in [
            ("episodes", "episode_id"),
            ("episodes", "client_id"),
            ("sessions", "session_id"),
            ("assessments", "assessment_id"),
        ]:
            ids |= {r[0] for r in con.execute(f"SELECT {column} FROM staging.{table}").fetchall()}
    token = re.compile(r"[A-Za-z]{1,3}\d{3,}")
    found = {}
    for path in (run.site.reports / "qi_report").rglob("*"):
        if path.is_file():
            hits = set(token.findall(path.read_text(encoding="utf-8", errors="replace"))) & ids
            if hits:
                found[path.name] = sorted(hits)[:5]
    assert found == {}, f"row-level ids in the aggregate QI report: {found}"


def test_telemetry_is_off_and_runs_need_no_network():
    config = yaml.safe_load((ROOT / "dagster_home" / "dagster.yaml").read_text())
    assert config["telemetry"]["enabled"] is False
    for run in (clean_a(), clean_b()):
        logs = run.site.root / "logs"
        assert not (logs / NETWORK_LOG).exists(), (logs / NETWORK_LOG).read_text()
        assert (logs / "network_mode").read_text() in ("namespace", "sockets")
        assert not (run.site.home / ".telemetry").exists()
        assert not (run.site.home / "logs" / "event.log").exists()
