"""Pandera models of the export tables: the single source of every column rule.

The models validate the *raw text* of an export (every column read as a
string, so nothing is lost before validation). Each check carries the
quarantine rule it enforces as its ``name``; Pandera's own checks
(not_nullable, isin, in_range) map through ``rules.PANDERA_BUILTIN_RULES``.
Column ``metadata["kind"]`` says how the text is typed for staging
(schemas.parsing), and schema ``metadata`` holds the table's key and
references, which need every file of the table (or other tables) and so run
in DuckDB after the row checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

import pandas as pd
import pandera.pandas as pa

from schemas import rules
from schemas.parsing import TEXT, parse, unparseable
from schemas.registry import Registry, fold_code

END_REASONS = (
    "completed",
    "mutual_agreement",
    "dropout",
    "declined",
    "transferred",
    "moved_away",
    "other",
)
AGE_BANDS = ("<18", "18-24", "25-34", "35-44", "45-54", "55-64", "65+")
SESSION_STATUSES = (
    "attended",
    "no_show",
    "late_cancelled",
    "client_cancelled",
    "clinic_cancelled",
    "booked",
)
SESSION_TYPES = ("assessment", "treatment", "review", "group", "discharge")
MODALITIES = ("in_person", "video", "phone")
PRACTICE = ("yes", "partial", "no", "not_assigned")
HORIZONS = ("short_term", "long_term")


def _type_check(kind: str, tz: ZoneInfo) -> pa.Check:
    return pa.Check(
        lambda s: ~unparseable(kind, s, tz),
        name=rules.BAD_TYPE,
        error=f"not a valid {kind}",
    )


def _column(
    kind: str,
    tz: ZoneInfo,
    required: bool = False,
    checks: list[pa.Check] | None = None,
    default: str | None = None,
) -> pa.Column:
    all_checks = [] if kind in ("string", "enum") else [_type_check(kind, tz)]
    all_checks += checks or []
    return pa.Column(
        TEXT,
        nullable=not required,
        checks=all_checks,
        required=required,
        metadata={"kind": kind, "required": required, "default": default},
    )


def _enum(values: tuple[str, ...], tz: ZoneInfo, required: bool = False, default=None):
    check = pa.Check.isin(list(values), error=f"not one of {', '.join(values)}")
    return _column("enum", tz, required, [check], default)


def _int_range(lo: int, hi: int) -> pa.Check:
    def within(s: pd.Series) -> pd.Series:
        n = parse("int", s)
        return n.isna() | ((n >= lo) & (n <= hi))

    return pa.Check(within, name=rules.OUT_OF_RANGE, error=f"outside {lo}..{hi}")


def _not_before(earlier: str, later: str, tz: ZoneInfo) -> pa.Check:
    """``later`` must not precede ``earlier`` (both dates); blanks pass."""

    def ordered(df: pd.DataFrame) -> pd.Series:
        a, b = parse("date", df[earlier], tz), parse("date", df[later], tz)
        return (a.isna() | b.isna() | (a <= b)).astype(bool)

    return pa.Check(ordered, name=rules.DATE_ORDER, error=f"{earlier} after {later}")


def _required_when(column: str, when: str) -> pa.Check:
    def present(df: pd.DataFrame) -> pd.Series:
        return (df[when].isna() | df[column].notna()).astype(bool)

    return pa.Check(
        present, name=rules.MISSING_REQUIRED, error=f"{column} required when {when} set"
    )


def _known_instrument(registry: Registry) -> pa.Check:
    known = set(registry.fold_map())

    def is_known(s: pd.Series) -> pd.Series:
        # Fold each distinct spelling once (a few per export), not each row.
        good = [v for v in s.dropna().unique() if fold_code(v) in known]
        return s.isna() | s.isin(good)

    return pa.Check(is_known, name=rules.UNKNOWN_INSTRUMENT, error="not in the instrument registry")


def export_schemas(registry: Registry, tz: ZoneInfo) -> dict[str, pa.DataFrameSchema]:
    """One Pandera schema per export table, for this run's registry and time zone."""
    col = _column
    return {
        "episodes": pa.DataFrameSchema(
            name="episodes",
            columns={
                "episode_id": col("string", tz, True),
                "client_id": col("string", tz, True),
                "clinic_id": col("string", tz, True),
                "clinician_id": col("string", tz, True),
                "referral_date": col("date", tz),
                "start_date": col("date", tz, True),
                "end_date": col("date", tz),
                "end_reason": _enum(END_REASONS, tz),
                "program": col("string", tz),
                "age_band": _enum(AGE_BANDS, tz),
                "gender": col("string", tz),
            },
            checks=[
                _required_when("end_reason", "end_date"),
                _not_before("referral_date", "start_date", tz),
                _not_before("start_date", "end_date", tz),
            ],
            metadata={"required_table": True, "key": ["episode_id"]},
        ),
        "sessions": pa.DataFrameSchema(
            name="sessions",
            columns={
                "session_id": col("string", tz, True),
                "episode_id": col("string", tz, True),
                "client_id": col("string", tz, True),
                "clinician_id": col("string", tz, True),
                "scheduled_at": col("timestamp", tz, True),
                "status": _enum(SESSION_STATUSES, tz, True),
                "session_type": _enum(SESSION_TYPES, tz, default="treatment"),
                "modality": _enum(MODALITIES, tz),
                "duration_minutes": col("int", tz, checks=[_int_range(1, 480)]),
                "practice_completed": _enum(PRACTICE, tz),
            },
            metadata={"required_table": True, "key": ["session_id"]},
        ),
        "assessments": pa.DataFrameSchema(
            name="assessments",
            columns={
                "assessment_id": col("string", tz, True),
                "episode_id": col("string", tz, True),
                "client_id": col("string", tz, True),
                "session_id": col("string", tz),
                "instrument": col("string", tz, True, [_known_instrument(registry)]),
                "administered_at": col("timestamp", tz, True),
                "total_score": col("float", tz),
            },
            metadata={"required_table": True, "key": ["assessment_id"]},
        ),
        "assessment_items": pa.DataFrameSchema(
            name="assessment_items",
            columns={
                "assessment_id": col("string", tz, True),
                # Ranges depend on the administration's instrument: checked after the join.
                "item": col("int", tz, True),
                "score": col("float", tz, True),
            },
            metadata={"required_table": False, "key": ["assessment_id", "item"]},
        ),
        "goals": pa.DataFrameSchema(
            name="goals",
            columns={
                "episode_id": col("string", tz, True),
                "goal_number": col("int", tz, True, [_int_range(1, 10)]),
                "set_at": col("date", tz, True),
                "horizon": _enum(HORIZONS, tz, True),
            },
            metadata={"required_table": False, "key": ["episode_id", "goal_number"]},
        ),
    }


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    kind: str
    required: bool
    default: str | None


def columns_of(schema: pa.DataFrameSchema) -> list[ColumnInfo]:
    return [
        ColumnInfo(name, c.metadata["kind"], c.metadata["required"], c.metadata["default"])
        for name, c in schema.columns.items()
    ]


def rule_of_failure(
    schema: pa.DataFrameSchema, context: str, column: str | None, check: str, check_number
) -> str:
    """The quarantine rule behind one row of Pandera's ``failure_cases``."""
    if check == "not_nullable":
        return rules.MISSING_REQUIRED
    if check_number is None or pd.isna(check_number):
        raise ValueError(f"unexpected schema-level failure {check!r} on {column!r}")
    if context == "DataFrameSchema":
        found = schema.checks[int(check_number)]
    else:
        found = schema.columns[column].checks[int(check_number)]
    return rules.PANDERA_BUILTIN_RULES.get(found.name, found.name)
