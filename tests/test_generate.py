"""The synthetic-export generator: deterministic, contract-shaped, honest about what it plants.

The oracle here is a small row validator written from CONTRACT.md alone (not from the
generator): a clean run must pass it entirely, and on a run with planted bad rows it
must flag exactly the rows the generator's manifest lists.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
import shlex
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from pipelines import generate as gen
from schemas.registry import load_registry

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"
SAMPLE_DOC = ROOT / "docs" / "sample_data.md"
CUT = dt.date(2026, 10, 31)

CONTRACT_COLUMNS = {
    "episodes": ["episode_id", "client_id", "clinic_id", "clinician_id", "referral_date",
                 "start_date", "end_date", "end_reason", "program", "age_band", "gender"],
    "sessions": ["session_id", "episode_id", "client_id", "clinician_id", "scheduled_at",
                 "status", "session_type", "modality", "duration_minutes",
                 "practice_completed"],
    "assessments": ["assessment_id", "episode_id", "client_id", "session_id", "instrument",
                    "administered_at", "total_score"],
    "assessment_items": ["assessment_id", "item", "score"],
    "goals": ["episode_id", "goal_number", "set_at", "horizon"],
}  # fmt: skip
ENUMS = {
    ("episodes", "end_reason"): {"completed", "mutual_agreement", "dropout", "declined",
                                 "transferred", "moved_away", "other"},
    ("episodes", "age_band"): {"<18", "18-24", "25-34", "35-44", "45-54", "55-64", "65+"},
    ("sessions", "status"): {"attended", "no_show", "late_cancelled", "client_cancelled",
                             "clinic_cancelled", "booked"},
    ("sessions", "session_type"): {"assessment", "treatment", "review", "group", "discharge"},
    ("sessions", "modality"): {"in_person", "video", "phone"},
    ("sessions", "practice_completed"): {"yes", "partial", "no", "not_assigned"},
    ("goals", "horizon"): {"short_term", "long_term"},
}  # fmt: skip
REQUIRED = {
    "episodes": ["episode_id", "client_id", "clinic_id", "clinician_id", "start_date"],
    "sessions": ["session_id", "episode_id", "client_id", "clinician_id", "scheduled_at",
                 "status"],
    "assessments": ["assessment_id", "episode_id", "client_id", "instrument", "administered_at"],
    "assessment_items": ["assessment_id", "item", "score"],
    "goals": ["episode_id", "goal_number", "set_at", "horizon"],
}  # fmt: skip
PII_NAME = re.compile(r"name|mail|phone|address|street|birth|dob|nhs|ssn|insurance|note|comment")


# ---------------------------------------------------------------------------- helpers


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.*"))}


def table_files(folder: Path, table: str) -> list[Path]:
    if (folder / table).is_dir():
        return sorted((folder / table).glob("*.csv"))
    return [p for p in (folder / f"{table}.csv", folder / f"{table}.parquet") if p.exists()]


def read_rows(folder: Path, table: str) -> list[dict]:
    """Raw rows as text, each with its source_file and 1-based source_row."""
    rows = []
    for path in table_files(folder, table):
        rel = str(path.relative_to(folder))
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path).astype(object).where(lambda f: f.notna(), None)
            records = [
                {k: ("" if v is None else str(v)) for k, v in r.items()}
                for r in frame.to_dict("records")
            ]
        else:
            with path.open(newline="", encoding="utf-8") as fh:
                records = list(csv.DictReader(fh))
        for i, rec in enumerate(records, start=1):
            rows.append({**rec, "_file": rel, "_row": i})
    return rows


def parse_date(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) else None
    except ValueError:
        return None


def parse_ts(text: str) -> dt.datetime | None:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if value.tzinfo is not None:  # clinic time zone defaults to UTC
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def as_int(text: str) -> int | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def as_num(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def violations(folder: Path) -> dict[tuple[str, int], str]:
    """(source_file, source_row) -> first broken rule, per CONTRACT.md sections 2, 3 and 7."""
    reg = load_registry()
    tables = {t: read_rows(folder, t) for t in CONTRACT_COLUMNS}
    bad: dict[tuple[str, int], str] = {}

    def flag(row: dict, rule: str) -> None:
        bad.setdefault((row["_file"], row["_row"]), rule)

    def row_rules(table: str, row: dict) -> str | None:
        if any(not row[c] for c in REQUIRED[table]):
            return "missing_required"
        for col in ("referral_date", "start_date", "end_date", "set_at"):
            if row.get(col) and parse_date(row[col]) is None:
                return "bad_type"
        for col in ("scheduled_at", "administered_at"):
            if row.get(col) and parse_ts(row[col]) is None:
                return "bad_type"
        for col in ("duration_minutes", "item", "goal_number"):
            if row.get(col) and as_int(row[col]) is None:
                return "bad_type"
        for col in ("score", "total_score"):
            if row.get(col) and as_num(row[col]) is None:
                return "bad_type"
        for (t, col), allowed in ENUMS.items():
            if t == table and row[col] and row[col] not in allowed:
                return "bad_enum"
        if table == "episodes" and row["end_date"] and not row["end_reason"]:
            return "missing_required"
        if row.get("duration_minutes") and not 1 <= as_int(row["duration_minutes"]) <= 480:
            return "out_of_range"
        if table == "goals" and not 1 <= as_int(row["goal_number"]) <= 10:
            return "out_of_range"
        if table == "episodes":
            start, ref = parse_date(row["start_date"]), parse_date(row["referral_date"] or "x")
            end = parse_date(row["end_date"] or "x")
            if (ref and ref > start) or (end and end < start):
                return "date_order"
        return None

    ok: dict[str, list[dict]] = {}
    for table, rows in tables.items():
        ok[table] = []
        for row in rows:
            rule = row_rules(table, row)
            if rule:
                flag(row, rule)
            else:
                ok[table].append(row)

    def dedupe(table: str, key: tuple[str, ...]) -> list[dict]:
        seen, kept = set(), []
        for row in ok[table]:
            k = tuple(row[c] for c in key)
            if k in seen:
                flag(row, "duplicate_key")
            else:
                seen.add(k)
                kept.append(row)
        return kept

    episodes = {r["episode_id"]: r for r in dedupe("episodes", ("episode_id",))}
    sessions_ok = dedupe("sessions", ("session_id",))
    all_ts = [parse_ts(r[c]) for t in ("sessions", "assessments") for r in tables[t]
              for c in ("scheduled_at", "administered_at") if r.get(c)]  # fmt: skip
    as_of = max(t for t in all_ts if t is not None).date()
    sessions: dict[str, dict] = {}
    for row in sessions_ok:
        ep = episodes.get(row["episode_id"])
        if ep is None:
            flag(row, "unknown_reference")
            continue
        if ep["client_id"] != row["client_id"]:
            flag(row, "client_mismatch")
            continue
        day = parse_ts(row["scheduled_at"]).date()
        anchor = min(
            d for d in (parse_date(ep["referral_date"]), parse_date(ep["start_date"])) if d
        )
        if day < anchor - dt.timedelta(days=30) or day > as_of + dt.timedelta(days=365):
            flag(row, "out_of_range")
            continue
        sessions[row["session_id"]] = row

    items_by_admin: dict[str, list[dict]] = {}
    for row in dedupe("assessment_items", ("assessment_id", "item")):
        items_by_admin.setdefault(row["assessment_id"], []).append(row)
    admins = {}
    for row in dedupe("assessments", ("assessment_id",)):
        ep = episodes.get(row["episode_id"])
        code = reg.canonical(row["instrument"])
        session = sessions.get(row["session_id"]) if row["session_id"] else None
        wrong_session = bool(row["session_id"]) and (
            session is None or session["episode_id"] != row["episode_id"]
        )
        if ep is None or wrong_session:
            flag(row, "unknown_reference")
        elif ep["client_id"] != row["client_id"]:
            flag(row, "client_mismatch")
        elif code is None:
            flag(row, "unknown_instrument")
        else:
            admins[row["assessment_id"]] = (row, reg[code])
    for admin_id, item_rows in items_by_admin.items():
        if admin_id not in admins and not any(
            r["assessment_id"] == admin_id for r in tables["assessments"]
        ):
            for r in item_rows:
                flag(r, "unknown_reference")
            continue
        if admin_id not in admins:
            continue  # items of a rejected administration cascade; not planted themselves
        inst = admins[admin_id][1]
        for r in item_rows:
            item, score = as_int(r["item"]), as_num(r["score"])
            if not 1 <= item <= inst.items or not inst.item_min <= score <= inst.item_max:
                flag(r, "out_of_range")
    for admin_id, (row, inst) in admins.items():
        answered = [
            r for r in items_by_admin.get(admin_id, []) if (r["_file"], r["_row"]) not in bad
        ]
        if answered:
            if inst.max_missing is not None and inst.items - len(answered) > inst.max_missing:
                flag(row, "too_many_missing_items")
        elif not row["total_score"]:
            flag(row, "no_score")
        elif not inst.total_min <= float(row["total_score"]) <= inst.total_max:
            flag(row, "out_of_range")

    dedupe("goals", ("episode_id", "goal_number"))
    for row in ok["goals"]:
        if row["episode_id"] not in episodes:
            flag(row, "unknown_reference")
    return bad


def run(folder: Path, **kwargs) -> dict[str, int]:
    kwargs.setdefault("progress", False)
    return gen.generate(folder, **kwargs)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean")
    run(out, episodes=600, seed=11, monthly_sessions=True)
    return out


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, pd.DataFrame]:
    base = tmp_path_factory.mktemp("planted")
    manifest = base / "manifest.csv"
    counts = run(base / "exports", episodes=800, seed=5, bad_rows=40, manifest_path=manifest)
    return base / "exports", counts, pd.read_csv(manifest)


# ---------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("items_format", ["csv", "parquet"])
def test_same_arguments_give_identical_bytes(tmp_path: Path, items_format: str) -> None:
    args = dict(episodes=300, seed=3, bad_rows=13, monthly_sessions=True, items_format=items_format)
    run(tmp_path / "a", **args)
    run(tmp_path / "b", **args)
    a, b = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) > 5
    assert a == b


def test_another_seed_gives_other_data(tmp_path: Path) -> None:
    run(tmp_path / "a", episodes=300, seed=3)
    run(tmp_path / "b", episodes=300, seed=4)
    a, b = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    assert all(a[name] != b[name] for name in a)


def test_rerun_into_same_folder_removes_stale_layout(tmp_path: Path) -> None:
    run(tmp_path, episodes=50, seed=1, monthly_sessions=True)
    run(tmp_path, episodes=50, seed=1)
    assert (tmp_path / "sessions.csv").exists() and not (tmp_path / "sessions").exists()


# ---------------------------------------------------------------------------- contract shape


def test_headers_are_exactly_the_contract_columns(clean: Path) -> None:
    for table, columns in CONTRACT_COLUMNS.items():
        files = table_files(clean, table)
        assert files, table
        for path in files:
            with path.open(encoding="utf-8") as fh:
                assert next(csv.reader(fh)) == columns, path


def test_clean_run_breaks_no_rule(clean: Path) -> None:
    assert violations(clean) == {}


def test_enum_values_cover_the_contract(clean: Path) -> None:
    for (table, column), allowed in ENUMS.items():
        seen = {r[column] for r in read_rows(clean, table)} - {""}
        assert seen <= allowed, (table, column)
        if column not in ("age_band",):  # every band is likely but not required
            assert seen == allowed, (table, column, allowed - seen)
    genders = {r["gender"] for r in read_rows(clean, "episodes")}
    assert "not_stated" in genders


def test_instrument_spellings_are_mostly_canonical(clean: Path) -> None:
    reg = load_registry()
    spelled = Counter(r["instrument"] for r in read_rows(clean, "assessments"))
    canonical = {reg.canonical(s) for s in spelled}
    assert canonical == {"PHQ-9", "GAD-7", "CORE-10", "PCL-5", "ORS", "SRS", "GBO"}
    aliases = sum(n for s, n in spelled.items() if s not in reg.instruments)
    assert 0 < aliases < 0.06 * sum(spelled.values())


def test_timestamps_mix_separators_and_a_few_offsets(clean: Path) -> None:
    stamps = [r["scheduled_at"] for r in read_rows(clean, "sessions")]
    with_offset = sum(s.endswith("+01:00") for s in stamps)
    assert 0 < with_offset < 0.1 * len(stamps)
    assert any("T" in s for s in stamps) and any(" " in s for s in stamps)


def test_no_identifier_like_columns_or_values(clean: Path) -> None:
    id_pattern = re.compile(r"^(EP|CL|S|A)\d{6,8}$|^CLINIC\d\d$|^T\d{4}$")
    for table, columns in CONTRACT_COLUMNS.items():
        assert not [c for c in columns if PII_NAME.search(c)]
        for row in read_rows(clean, table):
            for col in columns:
                value = row[col]
                assert "@" not in value and not re.search(r"\d{9,}", value), (table, col, value)
                if col.endswith("_id") and value:
                    assert id_pattern.match(value), (table, col, value)


def test_sessions_folder_holds_one_file_per_month(clean: Path) -> None:
    files = table_files(clean, "sessions")
    assert len(files) > 20
    for path in files:
        assert re.fullmatch(r"\d{4}-\d{2}\.csv", path.name)
        with path.open(encoding="utf-8") as fh:
            months = {r["scheduled_at"][:7] for r in csv.DictReader(fh)}
        assert months == {path.stem}


def test_csv_and_parquet_items_agree(tmp_path: Path) -> None:
    run(tmp_path / "c", episodes=400, seed=8, bad_rows=13)
    run(tmp_path / "p", episodes=400, seed=8, bad_rows=13, items_format="parquet")
    from_csv = pd.read_csv(tmp_path / "c" / "assessment_items.csv", dtype={"assessment_id": str})
    from_parquet = pd.read_parquet(tmp_path / "p" / "assessment_items.parquet")
    pd.testing.assert_frame_equal(from_csv, from_parquet, check_dtype=False)
    c, p = snapshot(tmp_path / "c"), snapshot(tmp_path / "p")
    c.pop("assessment_items.csv"), p.pop("assessment_items.parquet")
    assert c == p


# ---------------------------------------------------------------------------- realism


def test_data_cut_is_the_latest_held_session_and_bookings_come_after(clean: Path) -> None:
    sessions = read_rows(clean, "sessions")
    held = [parse_ts(r["scheduled_at"]).date() for r in sessions if r["status"] != "booked"]
    booked = [parse_ts(r["scheduled_at"]).date() for r in sessions if r["status"] == "booked"]
    administered = [parse_ts(r["administered_at"]).date() for r in read_rows(clean, "assessments")]
    assert max(held) == CUT and max(administered) <= CUT
    assert booked and min(booked) > CUT
    ended = [parse_date(r["end_date"]) for r in read_rows(clean, "episodes") if r["end_date"]]
    assert max(ended) <= CUT


def test_attendance_mix_and_episode_endings_are_plausible(clean: Path) -> None:
    sessions = read_rows(clean, "sessions")
    status = Counter(r["status"] for r in sessions)
    share = {k: v / len(sessions) for k, v in status.items()}
    assert 0.70 < share["attended"] < 0.82
    assert 0.05 < share["no_show"] < 0.12
    episodes = read_rows(clean, "episodes")
    reasons = Counter(r["end_reason"] for r in episodes)
    assert 0.12 < reasons["dropout"] / len(episodes) < 0.28
    assert 0.05 < reasons[""] / len(episodes) < 0.2  # open episodes
    # Open episodes that went quiet: no attendance in the last 60 days, nothing booked.
    last_attended: dict[str, dt.date] = {}
    future = set()
    for r in sessions:
        day = parse_ts(r["scheduled_at"]).date()
        if r["status"] == "attended":
            last_attended[r["episode_id"]] = max(day, last_attended.get(r["episode_id"], day))
        if day > CUT:
            future.add(r["episode_id"])
    quiet = [
        e for e in episodes
        if not e["end_date"] and e["episode_id"] not in future
        and (CUT - last_attended.get(e["episode_id"], CUT)).days >= 60
    ]  # fmt: skip
    assert len(quiet) >= 5
    gap = [
        (parse_date(e["start_date"]) - parse_date(e["referral_date"])).days
        for e in episodes
        if e["referral_date"]
    ]
    assert 7 <= sorted(gap)[len(gap) // 2] <= 42  # referral a few weeks before start


def test_planted_classes_drive_the_phq9_trajectories(clean: Path) -> None:
    truth = gen.planted_classes(600, seed=11)
    episodes = pd.DataFrame(read_rows(clean, "episodes"))
    assert list(truth.columns) == ["episode_id", "trajectory_class"]
    assert list(truth.episode_id) == list(episodes.episode_id)
    assert set(truth.trajectory_class) == set(gen.TRAJECTORY_CLASSES)
    for table in CONTRACT_COLUMNS:  # the truth is written nowhere
        for row in read_rows(clean, table):
            assert not set(row.values()) & set(gen.TRAJECTORY_CLASSES)

    admins = pd.DataFrame(read_rows(clean, "assessments"))
    items = pd.DataFrame(read_rows(clean, "assessment_items"))
    items["score"] = items.score.astype(float)
    totals = items.groupby("assessment_id").agg(total=("score", "sum"), n=("score", "size"))
    phq = admins[admins.instrument.str.upper().str.replace(r"[-_]", "", regex=True) == "PHQ9"]
    phq = phq.join(totals, on="assessment_id").query("n == 9")
    phq = phq.assign(t=phq.administered_at.map(parse_ts)).sort_values(["t", "assessment_id"])
    by_episode = phq.groupby("episode_id").total
    baseline, final, count = by_episode.first(), by_episode.last(), by_episode.size()
    change = (final - baseline)[count >= 3].rename("change").to_frame()
    change = change.join(truth.set_index("episode_id"))
    mean = change.groupby("trajectory_class").change.mean()
    assert mean["responder"] < mean["slow_responder"] < mean["non_responder"]
    assert mean["non_responder"] < mean["deteriorator"]
    assert mean["responder"] <= -5 and mean["deteriorator"] >= 2
    assert (baseline >= 10).mean() > 0.7  # baseline severity mostly at caseness


def test_measure_every_session_changes_only_the_symptom_schedule(tmp_path: Path) -> None:
    """The ETR benchmark's schedule: same clinics, episodes and sessions, a symptom
    measure at (nearly) every attended session instead of mostly every second one."""
    run(tmp_path / "mixed", episodes=300, seed=3)
    run(tmp_path / "every", episodes=300, seed=3, measure_every_session=True)
    mixed, every = snapshot(tmp_path / "mixed"), snapshot(tmp_path / "every")
    assert mixed["episodes.csv"] == every["episodes.csv"]
    assert mixed["sessions.csv"] == every["sessions.csv"]
    reg = load_registry()

    def phq9_share(folder: Path) -> float:
        attended = {
            r["session_id"] for r in read_rows(folder, "sessions") if r["status"] == "attended"
        }
        measured = {
            r["session_id"]
            for r in read_rows(folder, "assessments")
            if reg.canonical(r["instrument"]) == "PHQ-9"
        }
        return len(attended & measured) / len(attended)

    assert phq9_share(tmp_path / "mixed") < 0.75  # most clients every second session
    assert phq9_share(tmp_path / "every") > 0.9  # about 5% of measures are still missed


def test_some_items_missing_and_some_risk_answers(clean: Path) -> None:
    reg = load_registry()
    admins = {
        r["assessment_id"]: reg.canonical(r["instrument"]) for r in read_rows(clean, "assessments")
    }
    items = read_rows(clean, "assessment_items")
    per_admin = Counter(r["assessment_id"] for r in items)
    phq = [a for a, code in admins.items() if code == "PHQ-9"]
    missing = Counter(9 - per_admin[a] for a in phq)
    assert missing[1] > 0 and missing[2] > 0 and missing[9] > 0  # prorated and totals-only
    assert not any(missing[m] for m in range(3, 9))  # too many missing only when planted
    risk = [r for r in items if admins[r["assessment_id"]] == "PHQ-9" and r["item"] == "9"]
    positive = sum(float(r["score"]) >= 1 for r in risk)
    assert 0 < positive < 0.1 * len(risk)


# ---------------------------------------------------------------------------- planted bad rows


def test_planted_bad_rows_are_counted_and_flagged_exactly(planted) -> None:
    folder, counts, manifest = planted
    assert counts["bad_rows"] == len(manifest) == 40
    assert set(manifest.kind) == {kind for kind, _, _ in gen.BAD_KINDS}
    found = violations(folder)
    located = manifest[["source_file", "source_row", "expected_rule"]]
    expected = {(f, int(r)): rule for f, r, rule in located.itertuples(index=False)}
    assert found == expected


def test_planted_bad_rows_stay_well_under_five_percent(planted) -> None:
    folder, counts, manifest = planted
    per_table = manifest.table.value_counts()
    for table, n in per_table.items():
        assert n / counts[table] < 0.025, table


def test_first_thirteen_bad_rows_are_one_of_each_contract_kind(tmp_path: Path) -> None:
    counts = run(
        tmp_path / "x", episodes=300, seed=2, bad_rows=13, manifest_path=tmp_path / "m.csv"
    )
    manifest = pd.read_csv(tmp_path / "m.csv")
    assert counts["bad_rows"] == 13
    assert sorted(manifest.kind) == sorted(kind for kind, _, _ in gen.BAD_KINDS[:13])
    assert set(manifest.expected_rule) == {
        "missing_required", "bad_type", "bad_enum", "out_of_range", "date_order",
        "duplicate_key", "unknown_reference", "client_mismatch", "unknown_instrument",
        "too_many_missing_items",
    }  # fmt: skip


def test_no_bad_rows_in_a_tiny_table_rather_than_over_the_share(tmp_path: Path) -> None:
    counts = run(tmp_path, episodes=20, seed=1, bad_rows=30)
    assert counts["bad_rows"] < 30  # caps per table keep every table under 2%


# ---------------------------------------------------------------------------- bundled sample


def sample_command() -> list[str]:
    text = SAMPLE_DOC.read_text(encoding="utf-8")
    match = re.search(r"^(?:\./dev )?python -m pipelines\.generate (.+)$", text, re.MULTILINE)
    assert match, "docs/sample_data.md must show the command that regenerates the sample"
    return shlex.split(match.group(1))


def test_bundled_sample_equals_a_fresh_regeneration(tmp_path: Path) -> None:
    args = sample_command()
    out = args.index("--out")
    assert Path(args[out + 1]) == Path("data/sample")
    args[out + 1] = str(tmp_path)
    assert gen.main([*args, "--quiet"]) == 0
    assert snapshot(tmp_path) == snapshot(SAMPLE)


def test_bundled_sample_is_small_and_as_documented() -> None:
    size = sum(len(b) for b in snapshot(SAMPLE).values())
    assert size < 3_000_000
    assert (SAMPLE / "sessions").is_dir() and len(list((SAMPLE / "sessions").glob("*.csv"))) > 12
    for table in ("episodes", "assessments", "assessment_items", "goals"):
        assert (SAMPLE / f"{table}.csv").is_file()
    assert len(read_rows(SAMPLE, "episodes")) == 300
    assert len(violations(SAMPLE)) == 13


# ---------------------------------------------------------------------------- CLI and speed


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gen.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--episodes", "--seed", "--out", "--items-format", "--bad-rows",
                   "--cut-date", "--monthly-sessions"):  # fmt: skip
        assert option in out


def test_cut_date_moves_the_data(tmp_path: Path) -> None:
    run(tmp_path, episodes=200, seed=1, cut_date=dt.date(2025, 6, 30))
    sessions = read_rows(tmp_path, "sessions")
    held = [parse_ts(r["scheduled_at"]).date() for r in sessions if r["status"] != "booked"]
    assert max(held) == dt.date(2025, 6, 30)


def test_speed_sanity_20k_episodes(tmp_path: Path) -> None:
    start = time.perf_counter()
    counts = run(tmp_path, episodes=20_000, seed=1, items_format="parquet")
    seconds = time.perf_counter() - start
    print(f"\n20,000 episodes -> {counts} in {seconds:.1f}s")
    assert counts["assessment_items"] > 1_000_000
    assert seconds < 60  # a few seconds expected; loose so a busy machine does not fail it
