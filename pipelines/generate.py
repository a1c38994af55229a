"""Deterministic synthetic clinic exports in the CONTRACT.md section 2 format.

Why: the pipeline needs data to run on out of the box (the bundled sample in
``data/sample/``), tests need exports with known defects, and benchmarks need a
million episodes with known ground truth (the planted trajectory class of every
episode, see :func:`planted_classes`), none of which may contain a real person.

Everything is vectorised with numpy/pyarrow and generated in fixed chunks of
``CHUNK_EPISODES`` episodes, each chunk drawing from its own seeded streams, so
memory stays bounded and the same arguments give byte-identical files. The
chunk size is part of the algorithm: changing it changes the output.

CLI::

    python -m pipelines.generate --episodes 300 --seed 2026 --out data/sample \
        --bad-rows 13 --monthly-sessions

Python::

    from pipelines.generate import generate, planted_classes
    counts = generate("out/", episodes=20_000, seed=1)
    truth = planted_classes(20_000, seed=1)   # episode_id, trajectory_class
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from schemas.registry import Instrument, Registry, load_registry
from schemas.staging import STAGING_TABLES

DEFAULT_CUT_DATE = dt.date(2026, 10, 31)
CHUNK_EPISODES = 20_000
ITEMS_ROW_GROUP = 1 << 20

COLUMNS: dict[str, tuple[str, ...]] = {
    "episodes": (
        "episode_id", "client_id", "clinic_id", "clinician_id", "referral_date", "start_date",
        "end_date", "end_reason", "program", "age_band", "gender",
    ),
    "sessions": (
        "session_id", "episode_id", "client_id", "clinician_id", "scheduled_at", "status",
        "session_type", "modality", "duration_minutes", "practice_completed",
    ),
    "assessments": (
        "assessment_id", "episode_id", "client_id", "session_id", "instrument",
        "administered_at", "total_score",
    ),
    "assessment_items": ("assessment_id", "item", "score"),
    "goals": ("episode_id", "goal_number", "set_at", "horizon"),
}  # fmt: skip

TRAJECTORY_CLASSES = ("responder", "slow_responder", "non_responder", "deteriorator")
END_REASONS = (
    "completed", "mutual_agreement", "dropout", "declined", "transferred", "moved_away", "other",
)  # fmt: skip
FATES = END_REASONS + ("open_active", "open_disengaged")
STATUSES = (
    "attended", "no_show", "late_cancelled", "client_cancelled", "clinic_cancelled", "booked",
)  # fmt: skip
SESSION_TYPES = ("assessment", "treatment", "review", "group", "discharge")
MODALITIES = ("in_person", "video", "phone")
PRACTICE = ("yes", "partial", "no", "not_assigned")
HORIZONS = ("short_term", "long_term")
AGE_BANDS = ("<18", "18-24", "25-34", "35-44", "45-54", "55-64", "65+")
GENDERS = ("female", "male", "non_binary", "not_stated")
PROGRAMS = ("adult_anxiety", "adult_depression", "trauma", "ocd", "youth", "older_adults")

# Fate indices (into FATES) used below.
F_COMPLETED, F_MUTUAL, F_DROPOUT, F_DECLINED = 0, 1, 2, 3
F_OPEN, F_DISENGAGED = 7, 8
ATTENDED, NO_SHOW, CLIENT_CANCELLED, BOOKED = 0, 1, 3, 5
T_ASSESSMENT, T_TREATMENT, T_REVIEW, T_GROUP, T_DISCHARGE = range(5)

# --- clinics -----------------------------------------------------------------------------
CLINIC_WEIGHTS = np.array([0.28, 0.24, 0.20, 0.16, 0.12])
CLINIC_LABELS = tuple(f"CLINIC{i + 1:02d}" for i in range(len(CLINIC_WEIGHTS)))
CORE_CLINIC = 2  # CLINIC03 also uses CORE-10 and ORS
TOTALS_CLINIC = 1  # CLINIC02's system also exports total_score next to the items
SATURDAY_CLINIC = 1  # CLINIC02 opens on Saturdays
NO_PRACTICE_CLINIC = 4  # CLINIC05 does not record between-session practice
SPACE_SEP_CLINICS = (1, 3)  # these systems write "2026-03-04 10:00:00" instead of "...T..."
EPISODES_PER_CLINICIAN = 40

# --- trajectories ------------------------------------------------------------------------
CLASS_P = np.array([0.45, 0.25, 0.20, 0.10])
# P(fate | class); rows follow TRAJECTORY_CLASSES, columns FATES. Overall dropout
# (dropout + disengaged) is about 22% (Swift & Greenberg 2012: ~20%).
FATE_P = np.array([
    [0.55, 0.12, 0.12, 0.03, 0.03, 0.02, 0.02, 0.09, 0.02],
    [0.45, 0.12, 0.18, 0.04, 0.03, 0.03, 0.02, 0.10, 0.03],
    [0.30, 0.10, 0.28, 0.08, 0.05, 0.03, 0.03, 0.07, 0.06],
    [0.25, 0.08, 0.32, 0.08, 0.06, 0.03, 0.04, 0.07, 0.07],
])  # fmt: skip
# Change of the latent severity by attended session k: 1 - amp * (1 - exp(-(k-1)/tau)).
AMP_MEAN = np.array([0.60, 0.55, 0.05, -0.65])
TAU_MEAN = np.array([2.5, 9.0, 4.0, 3.0])
GBO_GAIN = np.array([5.0, 3.5, 1.0, -0.5])
COMPLETED_EXTRA_SESSIONS = np.array([6.0, 10.0, 8.0, 7.0])
PRACTICE_P = np.array([
    [0.45, 0.25, 0.10, 0.20],
    [0.35, 0.30, 0.15, 0.20],
    [0.20, 0.25, 0.30, 0.25],
    [0.15, 0.20, 0.35, 0.30],
])  # fmt: skip
STATUS_P = np.array([0.78, 0.07, 0.05, 0.07, 0.03])
GAP_DAYS = np.array([7, 14, 6, 8, 5, 10, 21, 28])
GAP_P = np.array([0.65, 0.12, 0.05, 0.05, 0.03, 0.04, 0.03, 0.03])

# --- instruments -------------------------------------------------------------------------
INSTRUMENTS = ("PHQ-9", "GAD-7", "CORE-10", "PCL-5", "ORS", "GBO", "SRS", "BDI-II")
I_PHQ, I_GAD, I_CORE, I_PCL, I_ORS, I_GBO, I_SRS, I_BDI = range(len(INSTRUMENTS))
ALIASES = {I_PHQ: ("phq9", "PHQ_9", "PHQ9"), I_GAD: ("gad-7", "GAD7", "gad7"), I_CORE: ("CORE10",)}
ALIAS_SHARE = 0.03
SPELLINGS = INSTRUMENTS + tuple(a for aliases in ALIASES.values() for a in aliases)
OFFSET_SUFFIX = "+01:00"

# --- planted bad rows: (kind, table, rule the ingest should give it) ---------------------
# The first 13 are one of each kind the contract names; the rest are variants used
# when more bad rows are asked for. Targets are chosen so that nothing else depends
# on them (sessions that were not attended, episodes without sessions, goals), so
# only ``too_many_missing_items`` drags other rows (its items) into quarantine.
BAD_KINDS: tuple[tuple[str, str, str], ...] = (
    ("status_bad_enum", "sessions", "bad_enum"),
    ("item_out_of_range", "assessment_items", "out_of_range"),
    ("referral_after_start", "episodes", "date_order"),
    ("duplicate_session_id", "sessions", "duplicate_key"),
    ("session_unknown_episode", "sessions", "unknown_reference"),
    ("unknown_instrument", "assessments", "unknown_instrument"),
    ("session_missing_clinician", "sessions", "missing_required"),
    ("duration_not_integer", "sessions", "bad_type"),
    ("duration_out_of_range", "sessions", "out_of_range"),
    ("session_client_mismatch", "sessions", "client_mismatch"),
    ("session_outside_window", "sessions", "out_of_range"),
    ("too_many_missing_items", "assessments", "too_many_missing_items"),
    ("total_out_of_range", "assessments", "out_of_range"),
    ("episode_missing_start_date", "episodes", "missing_required"),
    ("goal_missing_horizon", "goals", "missing_required"),
    ("referral_not_a_date", "episodes", "bad_type"),
    ("goal_number_not_integer", "goals", "bad_type"),
    ("end_reason_bad_enum", "episodes", "bad_enum"),
    ("horizon_bad_enum", "goals", "bad_enum"),
)
BAD_KIND_INDEX = {kind: i for i, (kind, _, _) in enumerate(BAD_KINDS)}
MAX_BAD_SHARE = 0.02  # per table and chunk; the ingest blocks above 5%
OTHER_CLIENT = "<client of another episode>"  # resolved when the strings are built
TEN_YEARS_EARLIER = "<same timestamp, year - 10>"
# Kinds that break one cell of a row nothing depends on: kind -> (column, raw value).
CELL_DEFECTS: dict[str, tuple[str, str | None]] = {
    "status_bad_enum": ("status", "Attended"),
    "session_missing_clinician": ("clinician_id", None),
    "duration_not_integer": ("duration_minutes", "abc"),
    "duration_out_of_range": ("duration_minutes", "999"),
    "session_client_mismatch": ("client_id", OTHER_CLIENT),
    "session_outside_window": ("scheduled_at", TEN_YEARS_EARLIER),
    "episode_missing_start_date": ("start_date", None),
    "referral_not_a_date": ("referral_date", "abc"),
    "end_reason_bad_enum": ("end_reason", "Declined"),
    "goal_missing_horizon": ("horizon", None),
    "goal_number_not_integer": ("goal_number", "abc"),
    "horizon_bad_enum": ("horizon", "medium_term"),
}

MANIFEST_COLUMNS = ("kind", "table", "expected_rule", "key", "source_file", "source_row")


# =========================================================================================
# small vectorised helpers
# =========================================================================================


@functools.cache
def _registry() -> Registry:
    return load_registry()


def _rng(seed: int, chunk: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, chunk, stream]))


def _cat(rng: np.random.Generator, p: np.ndarray, n: int | None = None) -> np.ndarray:
    """Categorical draws: one probability vector for all, or one row per draw."""
    p = np.asarray(p, dtype=float)
    if p.ndim == 1:
        cum = np.cumsum(p) / p.sum()
        out = np.searchsorted(cum, rng.random(n), side="right")
    else:
        cum = np.cumsum(p, axis=1)
        cum /= cum[:, -1:]
        out = (rng.random(len(p))[:, None] >= cum).sum(axis=1)
    return np.minimum(out, p.shape[-1] - 1)


def _seg_cumsum(values: np.ndarray, group: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at each group (rows sorted by group)."""
    cs = np.cumsum(values)
    before = np.concatenate(([0], cs))[starts]
    return cs - before[group]


def _hash_uniform(x: np.ndarray, salt: int) -> np.ndarray:
    """Uniform [0, 1) from an integer key (splitmix64): same key, same value, any chunk."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(salt % (1 << 64)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers, type=pa.int64()), pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _labels(labels: Sequence[str], codes: np.ndarray) -> pa.Array:
    """Enum strings from integer codes; a negative code is an empty value."""
    codes = np.asarray(codes)
    return pa.array(list(labels), pa.string()).take(pa.array(codes, mask=codes < 0))


def _int_strings(values: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    return pc.cast(pa.array(values, type=pa.int64(), mask=null), pa.string())


def _num_strings(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values, type=pa.float64(), mask=np.isnan(values)), pa.string())


def _date_strings(days: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    arr = pa.array(days.astype(np.int32), type=pa.int32(), mask=null)
    return arr.cast(pa.date32()).cast(pa.string())


_CLOCK = pa.array([f"{m // 60:02d}:{m % 60:02d}:00" for m in range(24 * 60)], pa.string())


def _ts_strings(secs: np.ndarray, space_sep: np.ndarray, offset: np.ndarray) -> pa.Array:
    """Naive local ISO timestamps; rows with ``offset`` carry +01:00 (same instant in UTC).

    Built from a date string and a lookup of whole minutes: much faster than strftime.
    """
    shifted = secs + offset.astype(np.int64) * 3600
    days, rest = np.divmod(shifted, 86400)
    date = _date_strings(days)
    clock = _CLOCK.take(pa.array(rest // 60))
    sep = _labels(("T", " "), space_sep.astype(np.int8))
    suffix = _labels(("", OFFSET_SUFFIX), offset.astype(np.int8))
    return pc.binary_join_element_wise(date, sep, clock, suffix, "")


def _days(date: dt.date) -> int:
    return (date - dt.date(1970, 1, 1)).days


def _id_width(n: int) -> int:
    """Zero-padded digits for ids numbered up to ``n`` (longer ids stay unique anyway)."""
    return max(6, len(str(n)))


# =========================================================================================
# the population: clinics, clinicians and planted classes (cheap, reused by planted_classes)
# =========================================================================================


@dataclass(frozen=True)
class _Layout:
    n_total: int
    clinicians_per_clinic: np.ndarray
    first_clinician: np.ndarray  # global index of each clinic's first clinician
    clinician_labels: tuple[str, ...]
    clinician_quality: np.ndarray

    @property
    def n_chunks(self) -> int:
        return max(1, -(-self.n_total // CHUNK_EPISODES))


def _layout(n_total: int, seed: int) -> _Layout:
    per = np.clip(np.round(n_total * CLINIC_WEIGHTS / EPISODES_PER_CLINICIAN), 4, 99).astype(int)
    first = np.concatenate(([0], np.cumsum(per)[:-1]))
    labels = tuple(f"T{c + 1:02d}{j + 1:02d}" for c in range(len(per)) for j in range(per[c]))
    quality = _rng(seed, 0, 99).normal(0.0, 1.0, len(labels))
    return _Layout(n_total, per, first, labels, quality)


@dataclass
class _Core:
    episode_num: np.ndarray  # 1-based global episode number
    clinic: np.ndarray
    clinician: np.ndarray  # global clinician index
    cls: np.ndarray


def _core(layout: _Layout, seed: int, chunk: int) -> _Core:
    """Clinic, clinician and trajectory class of each episode of a chunk (own stream)."""
    lo = chunk * CHUNK_EPISODES
    n = min(CHUNK_EPISODES, layout.n_total - lo)
    rng = _rng(seed, chunk, 0)
    clinic = _cat(rng, CLINIC_WEIGHTS, n)
    local = np.floor(rng.random(n) * layout.clinicians_per_clinic[clinic]).astype(int)
    clinician = layout.first_clinician[clinic] + local
    # Better clinicians have somewhat more responders (a mild, realistic clinician effect).
    q = layout.clinician_quality[clinician]
    p = np.tile(CLASS_P, (n, 1))
    p[:, 0] += 0.05 * q
    p[:, 2] -= 0.025 * q
    p[:, 3] -= 0.025 * q
    p = np.clip(p, 0.02, None)
    cls = _cat(rng, p)
    return _Core(np.arange(lo + 1, lo + n + 1), clinic, clinician, cls)


# =========================================================================================
# one chunk: episodes and sessions
# =========================================================================================


@dataclass
class _Episodes:
    fate: np.ndarray
    client_num: np.ndarray
    start: np.ndarray
    referral: np.ndarray
    referral_null: np.ndarray
    end: np.ndarray
    ended: np.ndarray
    program: np.ndarray
    age_band: np.ndarray
    gender: np.ndarray
    f0: np.ndarray  # baseline latent severity (fraction of the PHQ-9 range)
    offset_tz: np.ndarray  # this episode's timestamps carry +01:00
    nsess: np.ndarray


@dataclass
class _Sessions:
    ep: np.ndarray  # chunk-local episode index
    pos: np.ndarray
    day: np.ndarray
    secs: np.ndarray
    status: np.ndarray
    stype: np.ndarray
    modality: np.ndarray
    duration: np.ndarray  # -1 = empty
    practice: np.ndarray
    clinician: np.ndarray
    k: np.ndarray  # attended index within the episode (1-based) where attended
    last_att: np.ndarray
    pinned: np.ndarray


def _episodes_sessions(
    core: _Core, layout: _Layout, seed: int, chunk: int, cut_d: int
) -> tuple[_Episodes, _Sessions]:
    rng = _rng(seed, chunk, 1)
    n = len(core.cls)
    cls, clinic = core.cls, core.clinic
    fate = _cat(rng, FATE_P[cls])

    # Clients: a few episodes are re-referrals of an earlier client.
    rereferral = rng.random(n) < 0.06
    back = rng.integers(1, 3000, n)
    client_num = np.where(rereferral, np.maximum(1, core.episode_num - back), core.episode_num)
    u_age, u_gender = (
        _hash_uniform(client_num, seed * 8 + 1),
        _hash_uniform(client_num, seed * 8 + 2),
    )
    age_cum = np.cumsum([0.06, 0.17, 0.24, 0.20, 0.15, 0.11, 0.07])
    age_band = np.minimum(np.searchsorted(age_cum / age_cum[-1], u_age, side="right"), 6)
    gender = np.minimum(np.searchsorted([0.60, 0.94, 0.96, 1.0], u_gender, side="right"), 3)
    age_band = np.where(rng.random(n) < 0.02, -1, age_band)
    gender = np.where(rng.random(n) < 0.005, -1, gender)
    program = _cat(rng, [0.36, 0.36, 0.15, 0.08, 0.0, 0.05], n)
    program = np.where((age_band == 0) & (rng.random(n) < 0.85), 4, program)
    program = np.where((age_band == 6) & (rng.random(n) < 0.4), 5, program)
    program = np.where(rng.random(n) < 0.02, -1, program)

    # Number of scheduled appointments by fate.
    completed = 5 + rng.poisson(COMPLETED_EXTRA_SESSIONS[cls])
    dropout = 2 + rng.poisson(2.5, n)
    declined = np.where(rng.random(n) < 0.4, 0, 1 + (rng.random(n) < 0.4))
    other = 2 + rng.poisson(4.0, n)
    open_active = 4 + rng.poisson(10.0, n)
    disengaged = 2 + rng.poisson(4.0, n)
    nsess = np.select(
        [fate <= F_MUTUAL, fate == F_DROPOUT, fate == F_DECLINED, fate == F_OPEN,
         fate == F_DISENGAGED],
        [completed, dropout, declined, open_active, disengaged],
        other,
    )  # fmt: skip
    s = int(nsess.sum())
    ep = np.repeat(np.arange(n), nsess)
    starts = np.concatenate(([0], np.cumsum(nsess)[:-1]))
    pos = np.arange(s) - starts[ep]
    gaps = GAP_DAYS[_cat(rng, GAP_P, s)]
    gaps[pos == 0] = 0
    offset = _seg_cumsum(gaps, ep, starts)
    has = nsess > 0
    o_last = np.zeros(n, dtype=np.int64)
    o_last[has] = offset[starts[has] + nsess[has] - 1]

    # Place each episode in time so that it ends (or is open) at the cut date.
    end_gap = np.select(
        [fate <= F_MUTUAL, fate == F_DROPOUT, fate == F_DECLINED, fate >= F_OPEN],
        [rng.integers(0, 8, n), rng.integers(14, 61, n), rng.integers(0, 15, n), 0],
        rng.integers(0, 31, n),
    )
    earliest = cut_d - 730
    latest = cut_d - o_last - end_gap - 3
    span = np.maximum(latest - earliest + 1, 1)
    first = np.where(latest >= earliest, earliest + np.floor(rng.random(n) * span), latest)
    last_dis = cut_d - rng.integers(61, 241, n)
    first = np.where(fate == F_DISENGAGED, last_dis - o_last, first)
    # Open episodes straddle the cut: session j is the last one on or before it.
    oa = fate == F_OPEN
    j = np.floor(rng.random(n) * np.maximum(nsess - 1, 1)).astype(np.int64)
    j_idx = np.where(oa, starts + j, 0)
    off_j = offset[j_idx] if s else np.zeros(n, dtype=np.int64)
    next_gap = offset[np.minimum(j_idx + 1, max(s - 1, 0))] - off_j if s else off_j
    d = np.floor(rng.random(n) * np.maximum(next_gap, 1))
    # One open episode of the first chunk is pinned to have a session on the cut date,
    # so that the as-of derived from the data is the cut date itself.
    pinned_ep = -1
    if chunk == 0 and oa.any():
        pinned_ep = int(np.flatnonzero(oa)[0])
        d[pinned_ep] = 0
    first = np.where(oa, cut_d - d - off_j, first).astype(np.int64)
    # Weekly slots fall on a weekday: move a weekend first session back to a weekday of
    # that week (earlier is always safe for the placement above).
    first_dow = (first + 3) % 7  # Monday = 0
    weekday = rng.integers(0, 5, n)
    to_weekday = np.where(first_dow >= 5, first_dow - weekday, 0)
    first = first - np.where(np.arange(n) == pinned_ep, 0, to_weekday)

    day = first[ep] + offset
    pinned = (ep == pinned_ep) & (pos == j[np.maximum(pinned_ep, 0)])
    dow = (day + 3) % 7
    saturday_ok = (clinic[ep] == SATURDAY_CLINIC) & (rng.random(s) < 0.3)
    # Odd gaps can still hit a weekend: Saturday -> Friday, Sunday -> Monday. Gaps are
    # at least 5 days, so the order of an episode's sessions is kept.
    shift = np.where((dow == 5) & ~saturday_ok, -1, np.where(dow == 6, 1, 0))
    day = day + np.where(pinned, 0, shift)

    # Open episodes keep 0-3 booked appointments after the cut; later plans are dropped.
    n_booked = _cat(rng, [0.15, 0.40, 0.30, 0.15], n)
    held = day <= cut_d
    nheld_all = np.bincount(ep, weights=held, minlength=n).astype(np.int64)
    keep = held | (pos - nheld_all[ep] < n_booked[ep])
    ep, pos, day, held, pinned = ep[keep], pos[keep], day[keep], held[keep], pinned[keep]
    s = len(ep)
    nsess = np.bincount(ep, minlength=n)
    starts = np.concatenate(([0], np.cumsum(nsess)[:-1]))
    nheld = np.bincount(ep, weights=held, minlength=n).astype(np.int64)

    # Attendance: per-episode propensity to miss, higher in episodes that end in dropout.
    miss = rng.lognormal(0.0, 0.4, n) * np.where(
        (fate == F_DROPOUT) | (fate == F_DISENGAGED), 1.8, 1
    )
    p = np.tile(STATUS_P, (n, 1))
    p[:, NO_SHOW] *= miss
    status = _cat(rng, p[ep])
    u = rng.random(s)
    fate_s = fate[ep]
    last_held = held & (pos == nheld[ep] - 1)
    status = np.where((pos == 0) & (u < 0.92), ATTENDED, status)
    status = np.where((fate_s <= F_MUTUAL) & last_held, ATTENDED, status)
    status = np.where((fate_s == F_DECLINED) & (pos == 0), ATTENDED, status)
    dropped = np.where(u < 0.6, NO_SHOW, CLIENT_CANCELLED)
    status = np.where((fate_s == F_DROPOUT) & last_held & (pos > 0), dropped, status)
    second_last = held & (pos == nheld[ep] - 2) & (pos > 0)
    status = np.where((fate_s == F_DROPOUT) & second_last & (u < 0.5), NO_SHOW, status)
    status = np.where((fate_s == F_DISENGAGED) & last_held & (pos > 0) & (u < 0.5), NO_SHOW, status)
    status = np.where(pinned, ATTENDED, status)
    status = np.where(held, status, BOOKED)
    att = status == ATTENDED
    k = _seg_cumsum(att.astype(np.int64), ep, starts)
    n_att = np.bincount(ep, weights=att, minlength=n).astype(np.int64)
    last_att = att & (k == n_att[ep])

    # Session type, modality, duration, practice, clinician, time of day.
    u1, u2, u3 = rng.random(s), rng.random(s), rng.random(s)
    group_ep = rng.random(n) < 0.04
    stype = np.full(s, T_TREATMENT)
    stype = np.where((pos == 0) & (u1 < 0.8), T_ASSESSMENT, stype)
    stype = np.where((pos > 0) & (pos % 6 == 0) & (u2 < 0.5), T_REVIEW, stype)
    stype = np.where(group_ep[ep] & (pos > 0) & (u2 < 0.8), T_GROUP, stype)
    is_discharge = (fate_s <= F_MUTUAL) & last_held & (pos > 0) & (u3 < 0.4)
    stype = np.where(is_discharge, T_DISCHARGE, stype)
    stype = np.where(rng.random(s) < 0.02, -1, stype)

    preferred = _cat(rng, [0.6, 0.3, 0.1], n)
    modality = np.where(rng.random(s) < 0.85, preferred[ep], _cat(rng, [0.5, 0.35, 0.15], s))
    modality = np.where(rng.random(s) < 0.01, -1, modality)

    pick = rng.integers(0, 6, s)
    treat_len = np.array([45, 50, 50, 50, 55, 60])[pick]
    duration = np.select(
        [stype == T_ASSESSMENT, stype == T_GROUP, stype == T_REVIEW],
        [np.array([60, 75, 90, 60, 75, 90])[pick], np.array([90, 120] * 3)[pick], 50],
        treat_len,
    )
    duration = np.where(att, duration, np.where((status == BOOKED) & (u1 < 0.5), 50, -1))

    practice = _cat(rng, PRACTICE_P[cls][ep])
    has_practice = att & (pos > 0) & (stype != T_ASSESSMENT) & (clinic[ep] != NO_PRACTICE_CLINIC)
    practice = np.where(has_practice, practice, -1)

    covered = rng.random(s) < 0.05
    other = layout.first_clinician[clinic[ep]] + np.floor(
        rng.random(s) * layout.clinicians_per_clinic[clinic[ep]]
    ).astype(int)
    clinician = np.where(covered, other, core.clinician[ep])

    slot_hour = rng.integers(8, 20, n)
    slot_min = np.where(rng.random(n) < 0.8, 0, 30)
    hour = np.where(rng.random(s) < 0.25, rng.integers(8, 20, s), slot_hour[ep])
    secs = day * 86400 + hour * 3600 + slot_min[ep] * 60

    # Episode dates.
    first_day = np.full(n, cut_d, dtype=np.int64)
    first_day[nsess > 0] = day[starts[nsess > 0]]
    first_day = np.where(nsess > 0, first_day, first)
    start = np.minimum(first_day - np.where(rng.random(n) < 0.7, 0, rng.integers(1, 15, n)), cut_d)
    referral = start - np.minimum(7 + np.round(rng.gamma(2.0, 10.0, n)), 90).astype(np.int64)
    referral_null = rng.random(n) < 0.03
    ended = fate < F_OPEN
    last_day = np.where(nsess > 0, day[np.maximum(starts + nsess - 1, 0)] if s else start, start)
    end = np.minimum(np.maximum(last_day, start) + end_gap, cut_d)

    # Latent baseline severity (PHQ-9 points / 27): mostly at caseness (>= 10).
    base = np.where(cls == 3, rng.normal(12.5, 4.0, n), rng.normal(15.5, 5.0, n))
    f0 = np.clip(base, 2, 26) / 27.0
    offset_tz = rng.random(n) < 0.03
    if pinned_ep >= 0:
        offset_tz[pinned_ep] = False

    episodes = _Episodes(
        fate, client_num, start, referral, referral_null, end, ended, program, age_band,
        gender, f0, offset_tz, nsess,
    )  # fmt: skip
    sessions = _Sessions(
        ep, pos, day, secs, status, stype, modality, duration, practice, clinician, k, last_att,
        pinned,
    )  # fmt: skip
    return episodes, sessions


# =========================================================================================
# one chunk: assessments, items and goals
# =========================================================================================


@dataclass
class _Goals:
    ep: np.ndarray
    number: np.ndarray
    set_day: np.ndarray
    horizon: np.ndarray


def _likert(
    rng: np.random.Generator, level: np.ndarray, inst: Instrument, weights: np.ndarray
) -> np.ndarray:
    """Item responses whose expected total is ``level`` x the total range (binomial items)."""
    m = int(inst.item_max)
    p = np.clip(
        level[:, None] * weights[None, :] + rng.normal(0, 0.06, (len(level), len(weights))), 0, 1
    )
    return rng.binomial(m, p).astype(np.float64)


def _missing_mask(
    rng: np.random.Generator, n_admin: int, n_items: int, n_missing: np.ndarray
) -> np.ndarray:
    rank = np.argsort(np.argsort(rng.random((n_admin, n_items)), axis=1), axis=1)
    return rank < n_missing[:, None]


@dataclass
class _Block:
    instrument: int
    session: np.ndarray
    minutes: np.ndarray
    items: np.ndarray | None = None  # (n_admin, n_items) scores as ticked
    present: np.ndarray | None = None  # (n_admin, n_items) answered
    total: np.ndarray | None = None
    online: np.ndarray | None = None
    bad: np.ndarray | None = None  # planted kind + 1 per administration
    item_bad: np.ndarray | None = None  # planted kind + 1 per item cell
    row_instrument: np.ndarray | None = None  # per-row instrument (planted extra rows)


def _assessments(
    core: _Core,
    eps: _Episodes,
    ses: _Sessions,
    seed: int,
    chunk: int,
    measure_every_session: bool = False,
) -> tuple[list[_Block], _Goals]:
    rng = _rng(seed, chunk, 2)
    reg = _registry()
    n = len(core.cls)
    cls, clinic = core.cls, core.clinic
    att_idx = np.flatnonzero(ses.status == ATTENDED)
    a_ep = ses.ep[att_idx]
    k = ses.k[att_idx]
    last = ses.last_att[att_idx]
    n_att = np.bincount(a_ep, minlength=n)

    amp = np.clip(rng.normal(AMP_MEAN[cls], 0.1), -0.8, 0.85)
    tau = np.clip(rng.normal(TAU_MEAN[cls], 0.25 * TAU_MEAN[cls]), 1.0, 15.0)
    m = 1 - amp[a_ep] * (1 - np.exp(-(k - 1) / tau[a_ep]))
    level = np.clip(eps.f0[a_ep] * m + rng.normal(0, 0.03, len(a_ep)), 0.0, 1.0)

    prog = eps.program
    phq_shift = np.select([prog == 0, prog == 1], [-0.04, 0.03], 0.0) + rng.normal(0, 0.05, n)
    gad_shift = np.select([prog == 0, prog == 1, prog == 3], [0.08, -0.06, 0.05], 0.0) + rng.normal(
        0, 0.08, n
    )
    core_shift = rng.normal(-0.05, 0.05, n)
    pcl_shift = rng.normal(0.12, 0.08, n)
    ors_shift = rng.normal(0.0, 0.06, n)
    risk_prone = rng.random(n) < 0.06

    # Symptom measures every second session for most clients (every session for 15%,
    # every third for 10%), the mix of the generated clinics. measure_every_session
    # gives every client period 1 (session-by-session routine outcome monitoring, as in
    # NHS Talking Therapies and Lambert's OQ-45 system). The draw is made either way so
    # that every later draw of the stream, and the default output, stay unchanged.
    period = np.array([2, 1, 3])[_cat(rng, [0.75, 0.15, 0.10], n)]
    if measure_every_session:
        period = np.ones(n, dtype=period.dtype)
    sched = (k == 1) | ((k - 1) % period[a_ep] == 0) | last
    sched &= ~((rng.random(len(k)) < 0.05) & (k > 1) & ~last)
    online = rng.random(len(k)) < 0.02

    blocks: list[_Block] = []

    def symptom(code: int, mask: np.ndarray, shift: np.ndarray, weights: np.ndarray) -> None:
        inst = reg[INSTRUMENTS[code]]
        sel = np.flatnonzero(mask)
        lev = np.clip(level[sel] + shift[a_ep[sel]], 0.01, 0.99)
        # Scale so that the expected total is lev x the total range with the risk item aside.
        rest = np.ones(inst.items, bool)
        if inst.risk_item is not None:
            rest[inst.risk_item - 1] = False
        w = weights * inst.items / weights[rest].sum()
        items = _likert(rng, lev, inst, w)
        if inst.risk_item is not None:
            r = inst.risk_item - 1
            p_risk = np.where(risk_prone[a_ep[sel]], np.clip(lev * 0.6, 0, 1), 0.0)
            items[:, r] = rng.binomial(int(inst.item_max), p_risk)
        for rev in inst.reverse_items:  # exported as ticked: the scale runs the other way
            items[:, rev - 1] = inst.item_min + inst.item_max - items[:, rev - 1]
        u = rng.random(len(sel))
        allowed = inst.max_missing or 0
        n_missing = np.where(u < 0.03, 1, 0) + np.where(u < 0.01, 1, 0)
        n_missing = np.minimum(n_missing, allowed)
        present = ~_missing_mask(rng, len(sel), inst.items, n_missing)
        totals_only = (rng.random(len(sel)) < 0.02) & (code in (I_PHQ, I_GAD))
        total = np.full(len(sel), np.nan)
        expected = np.round(lev * inst.total_max + rng.normal(0, 1.5, len(sel)))
        total[totals_only] = np.clip(expected, inst.total_min, inst.total_max)[totals_only]
        present[totals_only] = False
        with_total = (clinic[a_ep[sel]] == TOTALS_CLINIC) & present.all(axis=1)
        keyed = items.copy()
        for rev in inst.reverse_items:
            keyed[:, rev - 1] = inst.item_min + inst.item_max - items[:, rev - 1]
        total[with_total] = keyed[with_total].sum(axis=1)
        minutes = rng.integers(0, 6, len(sel)).astype(np.int64) * 60
        blocks.append(_Block(code, att_idx[sel], minutes, items, present, total, online[sel]))

    phq_w = np.array([1.15, 1.1, 1.2, 1.25, 1.0, 1.0, 0.95, 0.75, 1.0])
    symptom(I_PHQ, sched, phq_shift, phq_w)
    symptom(I_GAD, sched, gad_shift, np.array([1.2, 1.0, 1.15, 1.0, 0.8, 1.0, 0.85]))
    symptom(I_CORE, sched & (clinic[a_ep] == CORE_CLINIC), core_shift, np.ones(10))
    symptom(I_PCL, sched & (prog[a_ep] == 2), pcl_shift, np.ones(20))

    # ORS (higher is better, 0.0-10.0 lines) at every session in the CORE-10 clinic.
    ors_sel = np.flatnonzero((clinic[a_ep] == CORE_CLINIC) & (rng.random(len(k)) < 0.95))
    ors_mean = 10 * (1 - 1.1 * np.clip(level[ors_sel] + ors_shift[a_ep[ors_sel]], 0, 0.9))
    ors = np.round(np.clip(ors_mean[:, None] + rng.normal(0, 0.9, (len(ors_sel), 4)), 0, 10), 1)
    blocks.append(
        _Block(
            I_ORS,
            att_idx[ors_sel],
            rng.integers(0, 4, len(ors_sel)) * 60,
            ors,
            np.ones_like(ors, bool),
        )
    )

    # Goals and GBO: 1-3 goals set at the first (or second) attended session, rated every ~3.
    has_goals = (n_att >= 1) & (rng.random(n) < 0.85) & (eps.fate != F_DECLINED)
    n_goals = 1 + _cat(rng, [0.3, 0.45, 0.25], n)
    g_start = np.where((n_att >= 2) & (rng.random(n) < 0.3), 2, 1)
    gbo_mask = has_goals[a_ep] & (k >= g_start[a_ep])
    gbo_mask &= ((k - g_start[a_ep]) % 3 == 0) | last
    gbo_sel = np.flatnonzero(gbo_mask)
    g_ep = a_ep[gbo_sel]
    r0 = rng.uniform(0, 4, (n, 3))
    gain = GBO_GAIN[cls][:, None] + rng.normal(0, 1.2, (n, 3))
    frac = (k[gbo_sel] - g_start[g_ep]) / np.maximum(n_att[g_ep] - g_start[g_ep], 1)
    rating = r0[g_ep] + gain[g_ep] * frac[:, None] + rng.normal(0, 0.8, (len(gbo_sel), 3))
    rating = np.clip(np.round(rating), 0, 10)
    present = np.arange(3)[None, :] < n_goals[g_ep][:, None]
    blocks.append(
        _Block(
            I_GBO,
            att_idx[gbo_sel],
            30 * 60 + rng.integers(0, 10, len(gbo_sel)) * 60,
            rating,
            present,
        )
    )
    set_idx = np.flatnonzero(has_goals[a_ep] & (k == g_start[a_ep]))
    goal_ep = np.repeat(a_ep[set_idx], n_goals[a_ep[set_idx]])
    goal_day = np.repeat(ses.day[att_idx[set_idx]], n_goals[a_ep[set_idx]])
    goal_starts = np.concatenate(([0], np.cumsum(n_goals[a_ep[set_idx]])[:-1]))
    goal_num = np.arange(len(goal_ep)) - np.repeat(goal_starts, n_goals[a_ep[set_idx]]) + 1
    horizon = _cat(rng, [0.6, 0.4], len(goal_ep))
    goals = _Goals(goal_ep, goal_num, goal_day, horizon)

    # SRS (alliance, 0.0-10.0 lines) at the end of most sessions; occasional ruptures.
    srs_sel = np.flatnonzero(rng.random(len(k)) < 0.85)
    alliance = np.clip(rng.normal(9.55, 0.45, n) + np.array([0.15, 0.0, -0.15, -0.35])[cls], 6, 10)
    rupture = np.where(rng.random(len(srs_sel)) < 0.03, -1.6, 0.0)
    early = np.where(k[srs_sel] <= 2, -0.15, 0.0)
    srs_mean = alliance[a_ep[srs_sel]] + rupture + early
    srs = np.round(np.clip(srs_mean[:, None] + rng.normal(0, 0.3, (len(srs_sel), 4)), 0, 10), 1)
    blocks.append(
        _Block(
            I_SRS,
            att_idx[srs_sel],
            45 * 60 + rng.integers(0, 10, len(srs_sel)) * 60,
            srs,
            np.ones_like(srs, bool),
        )
    )
    return blocks, goals


# =========================================================================================
# planting bad rows
# =========================================================================================


@dataclass
class _Plan:
    """Bad rows planted in one chunk, by table (row index -> column -> raw value)."""

    kinds: list[int] = field(default_factory=list)
    overrides: dict[str, list[tuple[int, str, str | None, int]]] = field(default_factory=dict)
    duplicates: list[tuple[int, int]] = field(default_factory=list)

    def override(self, table: str, row: int, column: str, value: str | None, kind: int) -> None:
        self.overrides.setdefault(table, []).append((row, column, value, kind))


def _plant(
    kinds: list[int],
    seed: int,
    chunk: int,
    eps: _Episodes,
    ses: _Sessions,
    blocks: list[_Block],
    goals: _Goals,
    layout: _Layout,
) -> _Plan:
    """Corrupt a few rows of the chunk; each kind is skipped when no safe target is left."""
    rng = _rng(seed, chunk, 3)
    plan = _Plan()
    n_ep, n_ses, n_goal = len(eps.fate), len(ses.ep), len(goals.ep)
    n_adm = sum(len(b.session) for b in blocks)
    n_item = sum(int(b.present.sum()) for b in blocks if b.present is not None)
    rows = {"episodes": n_ep, "sessions": n_ses, "assessments": n_adm, "assessment_items": n_item,
            "goals": n_goal}  # fmt: skip
    used: dict[str, int] = dict.fromkeys(rows, 0)
    free_sessions = list(
        rng.permutation(
            np.flatnonzero((ses.status != ATTENDED) & (ses.status != BOOKED) & ~ses.pinned)
        )
    )
    free_episodes = list(rng.permutation(np.flatnonzero((eps.nsess == 0) & eps.ended)))
    free_goals = list(rng.permutation(n_goal))
    phq = next(b for b in blocks if b.instrument == I_PHQ)
    complete = phq.present.all(axis=1) & np.isnan(phq.total) & ~phq.online
    free_phq = list(rng.permutation(np.flatnonzero(complete)))
    phq.bad = np.zeros(len(phq.session), dtype=np.int64)
    phq_item_bad = np.zeros(phq.items.shape, dtype=np.int64)
    attended = np.flatnonzero(ses.status == ATTENDED)
    extra: list[tuple[int, int, float, int]] = []  # session, instrument, total, kind

    for kind in kinds:
        name, table, _ = BAD_KINDS[kind]
        if used[table] + 1 > MAX_BAD_SHARE * rows[table]:
            continue
        pool = {"sessions": free_sessions, "episodes": free_episodes, "goals": free_goals}.get(
            table
        )
        if table == "assessment_items" or name == "too_many_missing_items":
            pool = free_phq
        if name in ("unknown_instrument", "total_out_of_range"):
            if not len(attended):
                continue
            target = int(attended[rng.integers(len(attended))])
        elif not pool:
            continue
        else:
            target = int(pool.pop())
        used[table] += 1
        plan.kinds.append(kind)
        code = kind + 1
        if name in CELL_DEFECTS:
            column, value = CELL_DEFECTS[name]
            plan.override(table, target, column, value, code)
        elif name == "duplicate_session_id":
            plan.duplicates.append((target, code))
        elif name == "session_unknown_episode":
            missing = layout.n_total + 1 + chunk * 1000 + len(plan.kinds)
            width = _id_width(layout.n_total)
            plan.override(table, target, "episode_id", f"EP{missing:0{width}d}", code)
        elif name == "referral_after_start":
            later = int(eps.start[target] + rng.integers(3, 22))
            text = (dt.date(1970, 1, 1) + dt.timedelta(days=later)).isoformat()
            plan.override(table, target, "referral_date", text, code)
        elif name == "item_out_of_range":
            item = int(rng.integers(0, 8))  # never the risk item
            phq.items[target, item] = 7.0
            phq_item_bad[target, item] = code
        elif name == "too_many_missing_items":
            allowed = _registry()["PHQ-9"].max_missing or 0
            drop = rng.permutation(8)[: allowed + 1]
            phq.present[target, drop] = False
            phq.bad[target] = code
        elif name == "unknown_instrument":
            extra.append((target, I_BDI, float(rng.integers(10, 40)), code))
        elif name == "total_out_of_range":
            extra.append((target, I_PHQ, float(rng.integers(28, 41)), code))
    phq.item_bad = phq_item_bad
    if extra:  # totals-only administrations added at an attended session
        blocks.append(
            _Block(
                I_BDI,
                session=np.array([e[0] for e in extra]),
                minutes=np.full(len(extra), 2 * 60),
                total=np.array([e[2] for e in extra]),
                online=np.zeros(len(extra), bool),
                bad=np.array([e[3] for e in extra], dtype=np.int64),
                row_instrument=np.array([e[1] for e in extra]),
            )
        )
    return plan


# =========================================================================================
# string tables
# =========================================================================================


@dataclass
class _ChunkTables:
    tables: dict[str, pa.Table]
    bad: dict[str, np.ndarray]  # per table: planted kind + 1 per row, 0 = none
    session_month: np.ndarray  # "YYYY-MM" index per session row
    month_labels: list[str]
    n_sessions_ids: int
    n_assessment_ids: int


def _apply_overrides(
    columns: dict[str, pa.Array], overrides: list[tuple[int, str, Any, int]]
) -> None:
    by_column: dict[str, list[tuple[int, Any]]] = {}
    for row, column, value, _ in overrides:
        by_column.setdefault(column, []).append((row, value))
    for column, changes in by_column.items():
        changes.sort()
        mask = np.zeros(len(columns[column]), dtype=bool)
        mask[[r for r, _ in changes]] = True
        columns[column] = pc.replace_with_mask(
            columns[column], pa.array(mask), pa.array([v for _, v in changes], pa.string())
        )


def _bad_vector(n: int, overrides: list[tuple[int, str, Any, int]]) -> np.ndarray:
    bad = np.zeros(n, dtype=np.int64)
    for row, _, _, kind in overrides:
        bad[row] = kind
    return bad


def _chunk_tables(
    core: _Core,
    eps: _Episodes,
    ses: _Sessions,
    blocks: list[_Block],
    goals: _Goals,
    plan: _Plan,
    layout: _Layout,
    seed: int,
    chunk: int,
    session_base: int,
    assessment_base: int,
) -> _ChunkTables:
    rng = _rng(seed, chunk, 4)
    width = _id_width(layout.n_total)
    space_clinic = np.isin(core.clinic, SPACE_SEP_CLINICS)
    clinician_labels = layout.clinician_labels

    # --- episodes ---
    ep_ids = _ids("EP", core.episode_num, width)
    client_ids = _ids("CL", eps.client_num, width)
    e_cols: dict[str, pa.Array] = {
        "episode_id": ep_ids,
        "client_id": client_ids,
        "clinic_id": _labels(CLINIC_LABELS, core.clinic),
        "clinician_id": _labels(clinician_labels, core.clinician),
        "referral_date": _date_strings(eps.referral, eps.referral_null),
        "start_date": _date_strings(eps.start),
        "end_date": _date_strings(eps.end, ~eps.ended),
        "end_reason": _labels(END_REASONS, np.where(eps.ended, eps.fate, -1)),
        "program": _labels(PROGRAMS, eps.program),
        "age_band": _labels(AGE_BANDS, eps.age_band),
        "gender": _labels(GENDERS, eps.gender),
    }
    e_over = plan.overrides.get("episodes", [])
    _apply_overrides(e_cols, e_over)

    # --- sessions ---
    n_s = len(ses.ep)
    s_ids = _ids("S", session_base + np.arange(1, n_s + 1), _id_width(40 * layout.n_total))
    s_ts = _ts_strings(ses.secs, space_clinic[ses.ep], eps.offset_tz[ses.ep])
    s_cols: dict[str, pa.Array] = {
        "session_id": s_ids,
        "episode_id": ep_ids.take(pa.array(ses.ep)),
        "client_id": client_ids.take(pa.array(ses.ep)),
        "clinician_id": _labels(clinician_labels, ses.clinician),
        "scheduled_at": s_ts,
        "status": _labels(STATUSES, ses.status),
        "session_type": _labels(SESSION_TYPES, ses.stype),
        "modality": _labels(MODALITIES, ses.modality),
        "duration_minutes": _int_strings(ses.duration, ses.duration < 0),
        "practice_completed": _labels(PRACTICE, ses.practice),
    }
    s_over = []
    for row, column, value, kind in plan.overrides.get("sessions", []):
        if value == OTHER_CLIENT:
            others = np.flatnonzero(eps.client_num != eps.client_num[ses.ep[row]])
            value = (
                client_ids[int(others[rng.integers(len(others))])].as_py() if len(others) else "CL0"
            )
        elif value == TEN_YEARS_EARLIER:
            text = s_ts[row].as_py()
            value = f"{int(text[:4]) - 10:04d}{text[4:]}"
        s_over.append((row, column, value, kind))
    _apply_overrides(s_cols, s_over)
    s_bad = _bad_vector(n_s, s_over)
    months = ses.day.astype("datetime64[D]").astype("datetime64[M]")
    month_values, month_idx = np.unique(months, return_inverse=True)
    month_labels = [str(m) for m in month_values]
    order = np.arange(n_s)
    if plan.duplicates:
        dups = sorted(plan.duplicates)
        rows = np.array([r for r, _ in dups])
        order = np.insert(order, rows + 1, rows)
        s_bad = s_bad[order]
        s_bad[rows + 1 + np.arange(len(rows))] = [kind for _, kind in dups]
    sessions = pa.table({c: s_cols[c].take(pa.array(order)) for c in COLUMNS["sessions"]})
    session_month = month_idx[order]

    # --- assessments ---
    def stack(get: Any, default: Any) -> np.ndarray:
        return np.concatenate(
            [get(b) if get(b) is not None else np.full(len(b.session), default) for b in blocks]
        )

    inst = np.concatenate(
        [
            b.row_instrument
            if b.row_instrument is not None
            else np.full(len(b.session), b.instrument)
            for b in blocks
        ]
    ).astype(np.int64)
    a_sess = np.concatenate([b.session for b in blocks])
    a_minutes = np.concatenate([b.minutes for b in blocks]).astype(np.int64)
    a_total = stack(lambda b: b.total, np.nan).astype(np.float64)
    a_online = stack(lambda b: b.online, False).astype(bool)
    a_bad = stack(lambda b: b.bad, 0).astype(np.int64)
    a_order = np.lexsort((inst, a_sess))
    n_a = len(a_order)
    rank = np.empty(n_a, dtype=np.int64)
    rank[a_order] = np.arange(n_a)
    a_ep = ses.ep[a_sess]
    before = rng.integers(3, 31, n_a) * 3600
    a_secs = np.where(a_online, ses.secs[a_sess] - before, ses.secs[a_sess] + a_minutes)
    alias_draw = rng.random(n_a)
    spelled = inst.copy()  # index into SPELLINGS
    for code, aliases in ALIASES.items():
        hit = np.flatnonzero((inst == code) & (alias_draw < ALIAS_SHARE) & (a_bad == 0))
        first = SPELLINGS.index(aliases[0])
        spelled[hit] = first + rng.integers(0, len(aliases), len(hit))
    a_ids_sorted = _ids(
        "A", assessment_base + np.arange(1, n_a + 1), _id_width(100 * layout.n_total)
    )
    a_ts = _ts_strings(a_secs, space_clinic[a_ep], eps.offset_tz[a_ep])
    take = pa.array(a_order)
    assessments = pa.table({
        "assessment_id": a_ids_sorted,
        "episode_id": ep_ids.take(pa.array(a_ep[a_order])),
        "client_id": client_ids.take(pa.array(a_ep[a_order])),
        "session_id": pc.if_else(
            pa.array(a_online[a_order]), pa.scalar(None, pa.string()),
            s_ids.take(pa.array(a_sess[a_order])),
        ),
        "instrument": _labels(SPELLINGS, spelled[a_order]),
        "administered_at": a_ts.take(take),
        "total_score": _num_strings(a_total[a_order]),
    })  # fmt: skip

    # --- items: scattered straight into assessment order (no sort) ---
    offsets = np.concatenate(([0], np.cumsum([len(b.session) for b in blocks])))
    per_admin = np.zeros(n_a, dtype=np.int64)
    for i, b in enumerate(blocks):
        if b.present is not None:
            per_admin[rank[offsets[i] : offsets[i + 1]]] = b.present.sum(axis=1)
    first_item = np.concatenate(([0], np.cumsum(per_admin)[:-1]))
    n_it = int(per_admin.sum())
    it_admin = np.empty(n_it, dtype=np.int64)
    it_item = np.empty(n_it, dtype=np.int64)
    it_score = np.empty(n_it, dtype=np.float64)
    it_bad = np.zeros(n_it, dtype=np.int64)
    for i, b in enumerate(blocks):
        if b.items is None:
            continue
        r, c = np.nonzero(b.present)
        within = (np.cumsum(b.present, axis=1) - 1)[r, c]
        admin = rank[offsets[i] + r]
        at = first_item[admin] + within
        it_admin[at], it_item[at], it_score[at] = admin, c + 1, b.items[r, c]
        if b.item_bad is not None:
            it_bad[at] = b.item_bad[r, c]
    items = pa.table({
        "assessment_id": a_ids_sorted.take(pa.array(it_admin)),
        "item": pa.array(it_item, pa.int64()),
        "score": pa.array(it_score, pa.float64()),
    })  # fmt: skip

    # --- goals ---
    g_cols: dict[str, pa.Array] = {
        "episode_id": ep_ids.take(pa.array(goals.ep)),
        "goal_number": _int_strings(goals.number),
        "set_at": _date_strings(goals.set_day),
        "horizon": _labels(HORIZONS, goals.horizon),
    }
    g_over = plan.overrides.get("goals", [])
    _apply_overrides(g_cols, g_over)

    tables = {
        "episodes": pa.table({c: e_cols[c] for c in COLUMNS["episodes"]}),
        "sessions": sessions,
        "assessments": assessments,
        "assessment_items": items,
        "goals": pa.table({c: g_cols[c] for c in COLUMNS["goals"]}),
    }
    bad = {
        "episodes": _bad_vector(len(eps.fate), e_over),
        "sessions": s_bad,
        "assessments": a_bad[a_order],
        "assessment_items": it_bad,
        "goals": _bad_vector(len(goals.ep), g_over),
    }
    return _ChunkTables(tables, bad, session_month, month_labels, n_s, n_a)


# =========================================================================================
# writing
# =========================================================================================


class _Sink:
    """Writes one table chunk by chunk: one file, or a folder of monthly CSV files."""

    def __init__(self, out: Path, table: str, fmt: str):
        self.out, self.table, self.fmt = out, table, fmt
        self.rows: dict[str, int] = {}
        self._open: dict[str, tuple[Any, Any]] = {}

    def write(self, tbl: pa.Table, part: str | None = None) -> tuple[str, int]:
        """Append rows; returns the file (relative to the exports folder) and rows before."""
        rel = f"{self.table}/{part}.csv" if part else f"{self.table}.{self.fmt}"
        if rel not in self._open:
            path = self.out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if self.fmt == "parquet":
                self._open[rel] = (None, pq.ParquetWriter(path, tbl.schema, compression="zstd"))
            else:
                fh = open(path, "wb")  # noqa: SIM115 - closed in close()
                fh.write((",".join(tbl.column_names) + "\n").encode("utf-8"))
                options = pacsv.WriteOptions(include_header=False, quoting_style="none")
                self._open[rel] = (fh, pacsv.CSVWriter(fh, tbl.schema, write_options=options))
            self.rows[rel] = 0
        first = self.rows[rel]
        _, writer = self._open[rel]
        if tbl.num_rows:
            if self.fmt == "parquet":
                writer.write_table(tbl, row_group_size=ITEMS_ROW_GROUP)
            else:
                writer.write_table(tbl)
        self.rows[rel] += tbl.num_rows
        return rel, first

    def close(self) -> None:
        for fh, writer in self._open.values():
            writer.close()
            if fh is not None:
                fh.close()
        self._open.clear()


def _manifest_rows(
    table: str, tbl: pa.Table, bad: np.ndarray, rel: str, first: int
) -> list[dict[str, Any]]:
    rows = []
    for i in np.flatnonzero(bad):
        kind, _, rule = BAD_KINDS[int(bad[i]) - 1]
        rec = {c: tbl.column(c)[int(i)].as_py() for c in tbl.column_names}
        if table == "assessment_items":
            key = f"{rec['assessment_id']}#{rec['item']}"
        elif table == "goals":
            key = f"{rec['episode_id']}#{rec['goal_number']}"
        else:
            key = str(rec[COLUMNS[table][0]])
        rows.append({"kind": kind, "table": table, "expected_rule": rule, "key": key,
                     "source_file": rel, "source_row": first + int(i) + 1})  # fmt: skip
    return rows


def _bad_plan(n_bad: int, n_chunks: int) -> list[list[int]]:
    """Bad kinds per chunk: kinds in BAD_KINDS order, spread evenly over the chunks."""
    per: list[list[int]] = [[] for _ in range(n_chunks)]
    for j in range(n_bad):
        per[((2 * j + 1) * n_chunks) // (2 * n_bad)].append(j % len(BAD_KINDS))
    return per


def _clear(out: Path) -> None:
    """Remove earlier output of the five tables (and only that) so no stale file is unioned."""
    for table in STAGING_TABLES:
        for suffix in (".csv", ".parquet"):
            (out / f"{table}{suffix}").unlink(missing_ok=True)
        if (out / table).is_dir():
            shutil.rmtree(out / table)


def _log(enabled: bool, message: str) -> None:
    if enabled:
        print(f"[generate] {message}", file=sys.stderr, flush=True)


# =========================================================================================
# public API
# =========================================================================================


def generate(
    out_dir: str | Path,
    episodes: int,
    seed: int,
    *,
    items_format: str = "csv",
    bad_rows: int = 0,
    cut_date: dt.date = DEFAULT_CUT_DATE,
    monthly_sessions: bool = False,
    measure_every_session: bool = False,
    manifest_path: str | Path | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Write a synthetic export folder; returns rows written per table plus ``bad_rows``.

    Same arguments, same bytes. ``manifest_path`` (outside the exports folder) gets a
    CSV of the planted bad rows: kind, table, expected_rule, key, source_file, source_row.
    ``measure_every_session`` schedules the symptom questionnaires (PHQ-9, GAD-7,
    CORE-10, PCL-5) at every attended session instead of the default mix (mostly every
    second session); about 5% of measures are still missed. Clinics, episodes, sessions
    and planted classes are the same as without it; the scores differ from the first
    changed draw on. The default (False) output is byte-identical to before the option.
    """
    if episodes < 1:
        raise ValueError("episodes must be at least 1")
    if seed < 0:
        raise ValueError("seed must be a non-negative integer")
    if bad_rows < 0:
        raise ValueError("bad_rows must be >= 0")
    if items_format not in ("csv", "parquet"):
        raise ValueError("items_format must be 'csv' or 'parquet'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    layout = _layout(episodes, seed)
    plan_kinds = _bad_plan(bad_rows, layout.n_chunks)
    cut_d = _days(cut_date)
    sinks = {
        t: _Sink(out, t, items_format if t == "assessment_items" else "csv") for t in STAGING_TABLES
    }
    counts = dict.fromkeys(STAGING_TABLES, 0)
    manifest: list[dict[str, Any]] = []
    session_base = assessment_base = 0
    t0 = time.perf_counter()
    _log(progress, f"{episodes:,} episodes in {layout.n_chunks} chunk(s), seed {seed} -> {out}")
    try:
        for chunk in range(layout.n_chunks):
            core = _core(layout, seed, chunk)
            eps, ses = _episodes_sessions(core, layout, seed, chunk, cut_d)
            blocks, goals = _assessments(core, eps, ses, seed, chunk, measure_every_session)
            plan = _plant(plan_kinds[chunk], seed, chunk, eps, ses, blocks, goals, layout)
            ct = _chunk_tables(
                core, eps, ses, blocks, goals, plan, layout, seed, chunk, session_base,
                assessment_base,
            )  # fmt: skip
            session_base += ct.n_sessions_ids
            assessment_base += ct.n_assessment_ids
            for table in STAGING_TABLES:
                tbl, bad = ct.tables[table], ct.bad[table]
                if table == "sessions" and monthly_sessions:
                    for m, label in enumerate(ct.month_labels):
                        sel = np.flatnonzero(ct.session_month == m)
                        part = tbl.take(pa.array(sel))
                        rel, first = sinks[table].write(part, label)
                        manifest += _manifest_rows(table, part, bad[sel], rel, first)
                else:
                    rel, first = sinks[table].write(tbl)
                    manifest += _manifest_rows(table, tbl, bad, rel, first)
                counts[table] += tbl.num_rows
            _log(
                progress,
                f"chunk {chunk + 1}/{layout.n_chunks}: {counts['sessions']:,} sessions, "
                f"{counts['assessments']:,} assessments, {counts['assessment_items']:,} items "
                f"({time.perf_counter() - t0:.1f}s)",
            )
    finally:
        for sink in sinks.values():
            sink.close()
    if manifest_path is not None:
        frame = pd.DataFrame(manifest, columns=list(MANIFEST_COLUMNS))
        frame.to_csv(manifest_path, index=False, lineterminator="\n")
    counts["bad_rows"] = len(manifest)
    _log(progress, f"done: {counts} in {time.perf_counter() - t0:.1f}s")
    return counts


def planted_classes(episodes: int, seed: int) -> pd.DataFrame:
    """The trajectory class planted in each episode (never written to the exports).

    Columns ``episode_id`` and ``trajectory_class`` (one of TRAJECTORY_CLASSES), for
    scoring not-on-track alerts against the truth in benchmarks.
    """
    layout = _layout(episodes, seed)
    width = _id_width(episodes)
    parts = []
    for chunk in range(layout.n_chunks):
        core = _core(layout, seed, chunk)
        parts.append(
            pd.DataFrame(
                {
                    "episode_id": [f"EP{i:0{width}d}" for i in core.episode_num],
                    "trajectory_class": np.array(TRAJECTORY_CLASSES, dtype=object)[core.cls],
                }
            )  # fmt: skip
        )
    return pd.concat(parts, ignore_index=True)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.generate",
        description=(
            "Write deterministic synthetic clinic exports (CONTRACT.md section 2): episodes, "
            "sessions, assessments, assessment_items and goals. Same arguments give "
            "byte-identical files. No direct identifiers are ever generated."
        ),
    )
    parser.add_argument("--episodes", type=int, required=True, help="number of episodes")
    parser.add_argument("--seed", type=int, required=True, help="random seed (>= 0)")
    parser.add_argument("--out", type=Path, required=True, help="exports folder to write")
    parser.add_argument(
        "--items-format", choices=("csv", "parquet"), default="csv",
        help="file format of assessment_items (parquet is written in row groups; default csv)",
    )  # fmt: skip
    parser.add_argument(
        "--bad-rows", type=int, default=0,
        help="plant about N invalid rows of several kinds (each table stays under 2%%)",
    )  # fmt: skip
    parser.add_argument(
        "--cut-date", type=dt.date.fromisoformat, default=DEFAULT_CUT_DATE,
        help=f"data cut date YYYY-MM-DD (default {DEFAULT_CUT_DATE})",
    )  # fmt: skip
    parser.add_argument(
        "--monthly-sessions", action="store_true",
        help="write sessions as a folder sessions/YYYY-MM.csv (one file per month)",
    )  # fmt: skip
    parser.add_argument(
        "--measure-every-session", action="store_true",
        help="symptom questionnaires at every attended session (default: mostly every second)",
    )  # fmt: skip
    parser.add_argument(
        "--manifest", type=Path, default=None,
        help="also write a CSV listing the planted bad rows (keep it outside --out)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    generate(
        args.out,
        args.episodes,
        args.seed,
        items_format=args.items_format,
        bad_rows=args.bad_rows,
        cut_date=args.cut_date,
        monthly_sessions=args.monthly_sessions,
        measure_every_session=args.measure_every_session,
        manifest_path=args.manifest,
        progress=not args.quiet,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
