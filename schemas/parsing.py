"""Vectorised parsers from export text to typed values.

The same functions decide ``bad_type`` (a value is present but parses to NA)
and produce the typed staging columns, so the two can never disagree.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# Export text is held as Arrow-backed strings: several times faster than objects.
TEXT = pd.StringDtype("pyarrow")

_INT = re.compile(r"^\s*[+-]?\d+(?:\.0*)?\s*$")
_INT64_MAX, _INT64_MIN_DIGITS = str(2**63 - 1), str(2**63)  # same length: 19 digits
_FLOAT = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_OFFSET = re.compile(r"(?:Z|[+-]\d{2}(?::?\d{2})?)$")
_TIMESTAMP = re.compile(
    r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?$"
)


def _text(s: pd.Series) -> pd.Series:
    return s.astype(TEXT).str.strip()


def _untrimmed(s: pd.Series) -> pa.Array:
    """Arrow strings of a Series (zero-copy for Arrow-backed text)."""
    values = s.astype(TEXT).array
    arr = values._pa_array if hasattr(values, "_pa_array") else pa.array(values, pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr


def _arrow(s: pd.Series) -> pa.Array:
    """Trimmed Arrow strings of a Series (zero-copy for Arrow-backed text)."""
    return pc.utf8_trim_whitespace(_untrimmed(s))


def _series(arr: pa.Array, index: pd.Index, dtype: str) -> pd.Series:
    # Integers straight to Int64: through float64 (how NumPy holds nulls) they
    # would lose digits beyond 2**53.
    out = arr.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    out.index = index  # relabel, never realign
    return out.astype(dtype)


def parse_int(s: pd.Series) -> pd.Series:
    """'45' and '45.0' -> 45 (edge rule 14); anything else -> NA.

    A whole number beyond 64 bits is not an integer here either (NA, so
    ``bad_type``): casting it would raise and stop the whole ingest.
    """
    text = _arrow(s)
    ok = pc.match_substring_regex(text, _INT.pattern)
    whole = pc.if_else(ok, pc.replace_substring_regex(text, r"\.0*$", ""), None)
    digits = pc.replace_substring_regex(whole, r"^[+-]?0*", "")
    length = pc.utf8_length(digits)
    limit = pc.if_else(pc.starts_with(whole, "-"), _INT64_MIN_DIGITS, _INT64_MAX)
    fits = pc.or_(
        pc.less(length, len(_INT64_MAX)),
        pc.and_(pc.equal(length, len(_INT64_MAX)), pc.less_equal(digits, limit)),
    )
    # Arrow's cast refuses a leading '+'.
    signed = pc.replace_substring_regex(pc.if_else(fits, whole, None), r"^\+", "")
    return _series(pc.cast(signed, pa.int64()), s.index, "Int64")


def parse_float(s: pd.Series) -> pd.Series:
    """Decimal numbers ('1.5', '-2', '.5', '1e3'); 'nan'/'inf' are not numbers here."""
    text = _arrow(s)
    ok = pc.match_substring_regex(text, _FLOAT.pattern)
    return _series(pc.cast(pc.if_else(ok, text, None), pa.float64()), s.index, "Float64")


def parse_date(s: pd.Series) -> pd.Series:
    """Strict ISO dates (YYYY-MM-DD) -> datetime64 at midnight; NA otherwise."""
    text = _arrow(s)
    ok = pc.match_substring_regex(text, _DATE.pattern)
    parsed = pc.strptime(
        pc.if_else(ok, text, None), format="%Y-%m-%d", unit="us", error_is_null=True
    )
    # strptime rolls impossible days over (2026-02-30 -> 03-02): keep only round trips.
    exact = pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), text)
    parsed = pc.if_else(pc.fill_null(exact, False), parsed, None)
    return _series(parsed, s.index, "datetime64[us]")


# pandas' nanosecond range: outside it pandas (the reference parser) gives NaT.
_PANDAS_RANGE = (
    pa.scalar(pd.Timestamp.min.ceil("s").to_pydatetime(), pa.timestamp("s")),
    pa.scalar(pd.Timestamp.max.floor("s").to_pydatetime(), pa.timestamp("s")),
)


def _plain_timestamps(text: pd.Series, utc: bool = False) -> np.ndarray | None:
    """'YYYY-MM-DD[T ]HH:MM:SS' values as datetime64[us], as pandas would parse them;
    with ``utc``, values with an offset ('Z', '+01:00', '-0530', '+01') as UTC instants.

    None (use pandas) when Arrow refuses any value (a 30 February, hour 24, an
    offset of 25 hours, fractions of a second ...) or one lies outside pandas' range.
    """
    zone = "UTC" if utc else None
    try:
        parsed = pc.cast(_untrimmed(text), pa.timestamp("s", tz=zone))
    except pa.ArrowInvalid:
        return None
    low, high = (pa.scalar(v.value, pa.timestamp("s", tz=zone)) for v in _PANDAS_RANGE)
    if parsed.null_count or pc.any(pc.or_(pc.less(parsed, low), pc.greater(parsed, high))).as_py():
        return None
    return parsed.cast(pa.timestamp("us")).to_numpy(zero_copy_only=False)


def parse_timestamp(s: pd.Series, tz: ZoneInfo | str = "UTC") -> pd.Series:
    """ISO timestamps -> naive clinic local time (edge rule 12).

    Without an offset a value already is clinic local time; with one it is
    converted to the clinic's zone, then the zone is dropped.
    """
    text = _text(s)
    shape_ok = text.str.match(_TIMESTAMP).fillna(False).astype(bool)
    has_offset = shape_ok & text.str.contains(_OFFSET).fillna(False).astype(bool)
    # A bare date ('2026-03-04') matches the offset pattern on '-04': not an offset.
    has_offset &= ~text.str.match(_DATE).fillna(False).astype(bool)
    out = pd.Series(pd.NaT, index=s.index, dtype="datetime64[us]")
    naive = shape_ok & ~has_offset
    # Nineteen characters of that shape without an offset is 'YYYY-MM-DD[T ]HH:MM:SS',
    # the layout nearly every export uses: Arrow's strict ISO cast, ~20x faster.
    plain = naive & (text.str.len() == 19)
    fast = _plain_timestamps(text[plain]) if plain.any() else None
    if fast is not None:
        out[plain] = fast
        naive &= ~plain
    if naive.any():
        out[naive] = pd.to_datetime(text[naive], format="ISO8601", errors="coerce").astype(
            "datetime64[us]"
        )
    if has_offset.any():
        # Arrow's strict cast first here too (~15x faster than pandas' ISO8601 parser
        # for offsets, which one clinic's exports carry on every timestamp).
        with_offset = text[has_offset]
        fast = _plain_timestamps(with_offset, utc=True)
        aware = (
            pd.Series(fast, index=with_offset.index).dt.tz_localize("UTC")
            if fast is not None
            else pd.to_datetime(with_offset, format="ISO8601", utc=True, errors="coerce")
        )
        out[has_offset] = aware.dt.tz_convert(tz).dt.tz_localize(None).astype("datetime64[us]")
    return out


PARSERS = {"int": parse_int, "float": parse_float, "date": parse_date}


def _parse(kind: str, s: pd.Series, tz: ZoneInfo | str) -> pd.Series:
    if kind == "timestamp":
        return parse_timestamp(s, tz)
    if kind in PARSERS:
        return PARSERS[kind](s)
    return s.astype(TEXT)


# Parsed columns of the chunk being validated, by (kind, zone, column name): the
# Pandera checks and the typed staging columns then parse each column once.
_MEMO: contextvars.ContextVar[dict | None] = contextvars.ContextVar("parse_memo", default=None)


@contextlib.contextmanager
def parse_once() -> Iterator[None]:
    """Within the block, parsing the same text of a column again reuses the result.

    Pandera hands a check the column's non-null values only; a hit is taken only
    when the values handed in are, label by label, the text parsed before.
    """
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


def _memo_hit(entry: tuple[pd.Series, pd.Series], s: pd.Series) -> pd.Series | None:
    text, parsed = entry
    if len(s) == len(text) and s.index.equals(text.index):
        positions = None
    else:
        positions = text.index.get_indexer(s.index)
        if len(positions) and positions.min() < 0:
            return None
    given = _untrimmed(s)
    known = _untrimmed(text)
    if positions is not None:
        known = known.take(pa.array(positions))
    if given.null_count != known.null_count or not given.equals(known):
        return None
    if positions is None:
        return parsed
    out = parsed.iloc[positions]
    out.index = s.index
    return out


def parse(kind: str, s: pd.Series, tz: ZoneInfo | str = "UTC") -> pd.Series:
    """Typed values of one column kind ('string', 'enum', 'int', 'float', 'date', 'timestamp')."""
    memo = _MEMO.get()
    if memo is None or kind in ("string", "enum") or s.name is None:
        return _parse(kind, s, tz)
    key = (kind, str(tz) if kind == "timestamp" else "", s.name)
    entry = memo.get(key)
    if entry is not None:
        hit = _memo_hit(entry, s)
        if hit is not None:
            return hit
    parsed = _parse(kind, s, tz)
    if entry is None or len(s) >= len(entry[0]):
        memo[key] = (s, parsed)
    return parsed


def fits_int64(t: pa.DataType) -> bool:
    """An integer type whose every value is an int64 (uint64 may not be)."""
    return pa.types.is_signed_integer(t) or (pa.types.is_unsigned_integer(t) and t.bit_width < 64)


def from_typed_source(kind: str, source: pa.Array | pa.ChunkedArray) -> pd.Series | None:
    """What ``parse(kind, text)`` gives when the text is Arrow's rendering of typed values.

    A Parquet export may hold numbers as numbers; the ingest renders them as
    text (so every row goes through the same text rules). Parsing that text
    back gives the numbers again, so it can be skipped: an integer stays
    itself, a float stays itself unless NaN or infinite (rendered 'nan',
    'inf', which are not numbers here). None when there is no such shortcut.
    tests/test_chunking.py checks the equivalence on generated values.
    """
    t = source.type
    # Straight from Arrow's buffers to the masked dtypes: going through ArrowDtype and
    # .astype() converted every value as a Python object (2 s a run at 200k episodes).
    if kind == "int" and fits_int64(t):
        return pc.cast(source, pa.int64()).to_pandas(types_mapper=_MASKED.get)
    if kind == "float" and pa.types.is_floating(t):
        values = pc.cast(source, pa.float64())
        finite = pc.is_finite(values)
        values = pc.if_else(finite, values, pa.scalar(None, pa.float64()))
        return values.to_pandas(types_mapper=_MASKED.get)
    return None


_MASKED = {pa.int64(): pd.Int64Dtype(), pa.float64(): pd.Float64Dtype()}


def remember(kind: str, s: pd.Series, parsed: pd.Series, tz: ZoneInfo | str = "UTC") -> None:
    """Inside ``parse_once``: ``parse(kind, s)`` is ``parsed`` (see from_typed_source)."""
    memo = _MEMO.get()
    if memo is not None and s.name is not None:
        parsed.index = s.index
        memo[(kind, str(tz) if kind == "timestamp" else "", s.name)] = (s, parsed)


def unparseable(kind: str, s: pd.Series, tz: ZoneInfo | str = "UTC") -> pd.Series:
    """True where a value is present but is not a valid ``kind``."""
    if kind in ("string", "enum"):
        return pd.Series(False, index=s.index)
    return s.notna() & parse(kind, s, tz).isna()
