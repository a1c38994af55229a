"""Small-cell suppression: the one gate every published aggregate goes through.

CONTRACT.md section 4 and METRICS.md "Small cells": a count, rate or mean built
from fewer than ``min_cell_size`` (k) distinct clients is published as
*suppressed* (never as a number, never as zero), and complementary cells are
suppressed so that it cannot be recovered from a total by subtraction.

A frame of cells goes in with its key columns, the distinct clients behind each
cell and the counts it publishes; :func:`suppress` returns the same cells with
every non-key column blanked (``None``) where suppressed, a boolean
``suppressed`` column and a ``suppression`` reason. The figure library only
accepts frames that carry that column (:func:`require_suppressed`).

Rules, applied together until nothing changes (suppression only ever grows):

1. ``fewer_than_k``: the cell rests on fewer than k distinct clients (or the
   number is unknown).
2. ``small_count``: a published count (a rate's numerator, an alert count) is
   between 1 and k - 1 (NHS England blanks a rate whose numerator is small; a
   rate times its denominator gives the numerator back).
3. ``complementary``: in every declared equation "parts add up to a total" whose
   total is in the frame, a lone suppressed member could be recovered by
   subtraction. So whenever a member is suppressed, at least two are, and when
   the total is published the suppressed parts together (what subtraction gives
   back) must rest on at least k clients (one of them on k or more on its own)
   and their counts must add up to 0 or at least k. The published part with
   the fewest clients is suppressed next; when none is left, the total.
4. ``step``: in a declared running series (cumulative counts such as a
   Kaplan-Meier curve or cumulative improvement by session), two consecutive
   published points must differ by 0 or at least k in every listed count, or
   the difference would publish a count of fewer than k clients.
5. Replicas (``same_as``): rows that publish the same number (a total shown in
   two breakdowns) are suppressed together; so are rows ``linked`` by a shared
   quantity (two rates over one denominator: publishing one gives the other's
   denominator away).

Optional NHS-style rounding of the published counts to a multiple of
``round_counts_to`` (e.g. 5) happens after suppression; rates keep their
unrounded value.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

SUPPRESSED = "suppressed"
REASON = "suppression"
# Reasons, in the order the rules are applied.
FEWER_THAN_K = "fewer_than_k"
SMALL_COUNT = "small_count"
COMPLEMENTARY = "complementary"
STEP = "step"


@dataclass(frozen=True)
class Additive:
    """Rows equal on ``by`` add up: the row whose ``over`` equals ``total`` is
    the total of the others (e.g. clinics -> '__service__', months -> window)."""

    by: tuple[str, ...]
    over: str
    total: Hashable


@dataclass(frozen=True)
class Cumulative:
    """A running series: rows equal on ``by``, ordered by ``order``; the listed
    counts of consecutive published points must differ by 0 or >= k."""

    by: tuple[str, ...]
    order: str
    counts: tuple[str, ...]


@dataclass(frozen=True)
class CellSpec:
    """How to read a frame of published cells.

    keys: the columns that name a cell (kept as they are); every other column
        is blanked when the cell is suppressed.
    clients: the column with the distinct clients the cell rests on.
    small_counts: counts published with the cell (rule 2); NULL is ignored.
    additive, cumulative: the equations between cells (rules 3 and 4).
    same_as: a column naming the published quantity, for replicas (rule 5).
    linked: more such columns (rows equal in one are suppressed together).
    rounded: counts rounded to ``round_counts_to`` when that is set.
    private: helper columns used for the decision and dropped from the output.
    """

    keys: tuple[str, ...]
    clients: str = "n_clients"
    small_counts: tuple[str, ...] = ()
    additive: tuple[Additive, ...] = ()
    cumulative: tuple[Cumulative, ...] = ()
    same_as: str | None = None
    linked: tuple[str, ...] = ()
    rounded: tuple[str, ...] = ()
    private: tuple[str, ...] = field(default=())


def _number(value: object) -> float | None:
    if value is None or value is pd.NA:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _key(row: Sequence[object]) -> tuple:
    """A hashable group key where None, NaN and NA all mean 'missing'."""
    out = []
    for v in row:
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
        elif isinstance(v, pd.Timestamp):
            out.append(v.isoformat())
        else:
            out.append(v)
    return tuple(out)


class _State:
    """Suppression flags and reasons of one frame, plus its equations."""

    def __init__(self, frame: pd.DataFrame, spec: CellSpec, k: int):
        self.k = k
        self.spec = spec
        self.n = len(frame)
        self.clients = [_number(v) for v in frame[spec.clients]]
        self.counts = {c: [_number(v) for v in frame[c]] for c in spec.small_counts}
        self.flag = [False] * self.n
        self.reason: list[str | None] = [None] * self.n
        self.equations = [eq for a in spec.additive for eq in self._equations(frame, a)]
        self.series = [s for c in spec.cumulative for s in self._series(frame, c)]
        self.series_values = {
            col: [_number(v) for v in frame[col]] for c in spec.cumulative for col in c.counts
        }
        self.replicas: list[list[int]] = []
        for column in ([spec.same_as] if spec.same_as else []) + list(spec.linked):
            groups: dict[tuple, list[int]] = defaultdict(list)
            for i, v in enumerate(frame[column]):
                if _key([v]) != (None,):
                    groups[_key([v])].append(i)
            self.replicas += [g for g in groups.values() if len(g) > 1]

    @staticmethod
    def _equations(frame: pd.DataFrame, a: Additive) -> list[tuple[int, list[int]]]:
        groups: dict[tuple, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        by = frame[list(a.by)].itertuples(index=False, name=None) if a.by else ((),) * len(frame)
        for i, (key, over) in enumerate(zip(by, frame[a.over], strict=True)):
            totals, parts = groups[_key(key)]
            (totals if _key([over]) == _key([a.total]) else parts).append(i)
        out = []
        for totals, parts in groups.values():
            if len(totals) > 1:
                raise ValueError(f"more than one total row {a.total!r} in a group of {a.by}")
            if totals and parts:
                out.append((totals[0], parts))
        return out

    @staticmethod
    def _series(frame: pd.DataFrame, c: Cumulative) -> list[tuple[list[int], tuple[str, ...]]]:
        groups: dict[tuple, list[tuple[object, int]]] = defaultdict(list)
        by = frame[list(c.by)].itertuples(index=False, name=None) if c.by else ((),) * len(frame)
        for i, (key, order) in enumerate(zip(by, frame[c.order], strict=True)):
            groups[_key(key)].append((order, i))
        ordered = (sorted(rows, key=lambda r: r[0]) for rows in groups.values())
        return [([i for _, i in rows], c.counts) for rows in ordered]

    def mark(self, i: int, reason: str) -> bool:
        if self.flag[i]:
            return False
        self.flag[i], self.reason[i] = True, reason
        return True

    def primary(self) -> None:
        for i in range(self.n):
            n = self.clients[i]
            if n is None or n < self.k:
                self.mark(i, FEWER_THAN_K)
        for values in self.counts.values():
            for i, v in enumerate(values):
                if v is not None and 0 < v < self.k:
                    self.mark(i, SMALL_COUNT)

    def _protected(self, total: int, suppressed_parts: list[int]) -> bool:
        """Is what subtraction recovers from this equation safe to know?"""
        members = len(suppressed_parts) + (1 if self.flag[total] else 0)
        if members == 0:
            return True
        if members == 1:
            return False  # a lone suppressed member is the total minus the rest
        if self.flag[total]:
            return True  # total and a part unknown: only their difference is known
        largest = max((self.clients[i] or 0) for i in suppressed_parts)
        if largest < self.k:
            return False
        for values in self.counts.values():
            known = [values[i] for i in suppressed_parts if values[i] is not None]
            s = sum(known)
            if 0 < s < self.k:
                return False
        return True

    def complementary(self) -> bool:
        changed = False
        for total, parts in self.equations:
            while True:
                suppressed_parts = [i for i in parts if self.flag[i]]
                if self._protected(total, suppressed_parts):
                    break
                published = [i for i in parts if not self.flag[i]]
                if published:
                    pick = min(published, key=lambda i: (self.clients[i] or 0, i))
                    changed |= self.mark(pick, COMPLEMENTARY)
                else:
                    changed |= self.mark(total, COMPLEMENTARY)
        return changed

    def steps(self) -> bool:
        changed = False
        for rows, counts in self.series:
            last: int | None = None
            for i in rows:
                if self.flag[i]:
                    continue
                if last is not None:
                    for c in counts:
                        a, b = self.series_values[c][i], self.series_values[c][last]
                        if a is None or b is None:
                            continue
                        if 0 < abs(a - b) < self.k:
                            changed |= self.mark(i, STEP)
                            break
                if not self.flag[i]:
                    last = i
        return changed

    def link_replicas(self) -> bool:
        changed = False
        for group in self.replicas:
            if any(self.flag[i] for i in group) and not all(self.flag[i] for i in group):
                for i in group:
                    changed |= self.mark(i, COMPLEMENTARY)
        return changed


def suppress(
    frame: pd.DataFrame,
    spec: CellSpec,
    k: int,
    round_counts_to: int | None = None,
) -> pd.DataFrame:
    """The published version of ``frame``: small cells and their complements blanked.

    Returns a new frame with the key columns as given, every other column as
    ``object`` holding ``None`` where suppressed, and the boolean ``suppressed``
    and text ``suppression`` columns. ``k`` is ``Settings.min_cell_size``.
    """
    if k < 1:
        raise ValueError("k (min_cell_size) must be at least 1")
    needed = set(spec.keys) | {spec.clients} | set(spec.small_counts) | set(spec.private)
    needed |= set(spec.linked)
    for c in spec.cumulative:
        needed |= set(c.by) | {c.order} | set(c.counts)
    for a in spec.additive:
        needed |= set(a.by) | {a.over}
    missing = sorted(needed - set(frame.columns))
    if missing:
        raise KeyError(f"suppress: the frame has no columns {missing}")
    df = frame.reset_index(drop=True)
    state = _State(df, spec, k)
    state.primary()
    while state.complementary() | state.steps() | state.link_replicas():
        pass

    out = df.drop(columns=[c for c in spec.private if c in df.columns])
    blank = [c for c in out.columns if c not in spec.keys]
    flags = pd.Series(state.flag, index=out.index)
    for column in blank:
        values = out[column].astype(object).where(out[column].notna(), None)
        out[column] = values.where(~flags, None)
    if round_counts_to:
        for column in spec.rounded:
            if column in out.columns:
                out[column] = [round_count(v, round_counts_to) for v in out[column]]
    out[SUPPRESSED] = flags.astype(bool)
    out[REASON] = pd.Series(state.reason, index=out.index, dtype=object)
    out.attrs["min_cell_size"] = k
    out.attrs["round_counts_to"] = round_counts_to
    return out


def round_count(value: object, base: int) -> object:
    """Round a published count half up to a multiple of ``base`` (None stays None)."""
    number = _number(value)
    if number is None:
        return None
    return int(math.floor(number / base + 0.5) * base)


def require_suppressed(frame: pd.DataFrame) -> pd.DataFrame:
    """Refuse a frame that did not come out of :func:`suppress`."""
    if not isinstance(frame, pd.DataFrame) or SUPPRESSED not in frame.columns:
        raise ValueError(
            "figures take published frames only: pass the aggregate through "
            "assets.suppression.suppress first"
        )
    return frame


def published(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of a suppressed frame that are shown as numbers."""
    return require_suppressed(frame)[~frame[SUPPRESSED].astype(bool)]


# --------------------------------------------------------------------------
# CSV publishing: spreadsheet formula injection guard

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def escape_formula(value: object) -> object:
    """Text that a spreadsheet would run as a formula gets a leading apostrophe."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells (and column names) cannot start a formula."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(escape_formula)
    out.columns = [escape_formula(str(c)) for c in out.columns]
    return out


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write a published (suppressed) frame as CSV, formula-escaped."""
    require_suppressed(frame)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    csv_safe(frame).to_csv(path, index=False)
    return path


def suppressed_cells(frames: Iterable[pd.DataFrame]) -> int:
    """How many published cells are suppressed across frames (for metadata)."""
    return int(sum(int(f[SUPPRESSED].sum()) for f in frames if f is not None))
