"""Vectorised parsers from export text to typed values.

The same functions decide ``bad_type`` (a value is present but parses to NA)
and produce the typed staging columns, so the two can never disagree.
"""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

_INT = re.compile(r"^\s*[+-]?\d+(?:\.0*)?\s*$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_OFFSET = re.compile(r"(?:Z|[+-]\d{2}(?::?\d{2})?)$")
_TIMESTAMP = re.compile(
    r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?$"
)


def _text(s: pd.Series) -> pd.Series:
    return s.astype("string").str.strip()


def parse_int(s: pd.Series) -> pd.Series:
    """'45' and '45.0' -> 45 (edge rule 14); anything else -> NA."""
    text = _text(s)
    ok = text.str.match(_INT).fillna(False).astype(bool)
    out = pd.Series(pd.NA, index=s.index, dtype="Int64")
    if ok.any():
        out[ok] = pd.to_numeric(text[ok].str.split(".").str[0]).astype("Int64")
    return out


def parse_float(s: pd.Series) -> pd.Series:
    """Decimal numbers; 'nan'/'inf' are not numbers here."""
    text = _text(s)
    num = pd.to_numeric(text, errors="coerce").astype("Float64")
    finite = num.notna() & np.isfinite(num.fillna(0).to_numpy(dtype="float64"))
    return num.where(finite, pd.NA)


def parse_date(s: pd.Series) -> pd.Series:
    """Strict ISO dates (YYYY-MM-DD) -> datetime64 at midnight; NA otherwise."""
    text = _text(s)
    ok = text.str.match(_DATE).fillna(False).astype(bool)
    out = pd.to_datetime(text.where(ok), format="%Y-%m-%d", errors="coerce")
    return out.astype("datetime64[us]")


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
    return s.astype("string")


def unparseable(kind: str, s: pd.Series, tz: ZoneInfo | str = "UTC") -> pd.Series:
    """True where a value is present but is not a valid ``kind``."""
    if kind in ("string", "enum"):
        return pd.Series(False, index=s.index)
    return s.notna() & parse(kind, s, tz).isna()
