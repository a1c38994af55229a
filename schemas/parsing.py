"""Vectorised parsers from export text to typed values.

The same functions decide ``bad_type`` (a value is present but parses to NA)
and produce the typed staging columns, so the two can never disagree.
"""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# Export text is held as Arrow-backed strings: several times faster than objects.
TEXT = pd.StringDtype("pyarrow")

_INT = re.compile(r"^\s*[+-]?\d+(?:\.0*)?\s*$")
_FLOAT = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_OFFSET = re.compile(r"(?:Z|[+-]\d{2}(?::?\d{2})?)$")
_TIMESTAMP = re.compile(
    r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?$"
)


def _text(s: pd.Series) -> pd.Series:
    return s.astype(TEXT).str.strip()


def _arrow(s: pd.Series) -> pa.Array:
    """Trimmed Arrow strings of a Series (zero-copy for Arrow-backed text)."""
    values = s.astype(TEXT).array
    arr = values._pa_array if hasattr(values, "_pa_array") else pa.array(values, pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return pc.utf8_trim_whitespace(arr)


def _series(arr: pa.Array, index: pd.Index, dtype: str) -> pd.Series:
    out = arr.to_pandas()
    out.index = index  # relabel, never realign
    return out.astype(dtype)


def parse_int(s: pd.Series) -> pd.Series:
    """'45' and '45.0' -> 45 (edge rule 14); anything else -> NA."""
    text = _arrow(s)
    ok = pc.match_substring_regex(text, _INT.pattern)
    whole = pc.if_else(ok, pc.replace_substring_regex(text, r"\.0*$", ""), None)
    return _series(pc.cast(whole, pa.int64()), s.index, "Int64")


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
    if naive.any():
        out[naive] = pd.to_datetime(text[naive], format="ISO8601", errors="coerce").astype(
            "datetime64[us]"
        )
    if has_offset.any():
        aware = pd.to_datetime(text[has_offset], format="ISO8601", utc=True, errors="coerce")
        out[has_offset] = aware.dt.tz_convert(tz).dt.tz_localize(None).astype("datetime64[us]")
    return out


PARSERS = {"int": parse_int, "float": parse_float, "date": parse_date}


def parse(kind: str, s: pd.Series, tz: ZoneInfo | str = "UTC") -> pd.Series:
    """Typed values of one column kind ('string', 'enum', 'int', 'float', 'date', 'timestamp')."""
    if kind == "timestamp":
        return parse_timestamp(s, tz)
    if kind in PARSERS:
        return PARSERS[kind](s)
    return s.astype(TEXT)


def unparseable(kind: str, s: pd.Series, tz: ZoneInfo | str = "UTC") -> pd.Series:
    """True where a value is present but is not a valid ``kind``."""
    if kind in ("string", "enum"):
        return pd.Series(False, index=s.index)
    return s.notna() & parse(kind, s, tz).isna()
