"""Direct-identifier guard (CONTRACT.md section 4).

An export column whose *name* looks like an identifier, or whose *values*
look like e-mail addresses or phone numbers, stops the ingest. Only the column
name is ever reported: the values are never logged, quarantined or stored.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# Whole tokens of a column name (split on non-alphanumerics and camelCase).
_NAME_TOKENS = {
    "name",
    "names",
    "firstname",
    "lastname",
    "surname",
    "forename",
    "forenames",
    "fullname",
    "givenname",
    "familyname",
    "middlename",
    "maidenname",
    "email",
    "mail",
    "phone",
    "telephone",
    "tel",
    "mobile",
    "cellphone",
    "fax",
    "address",
    "street",
    "postcode",
    "zipcode",
    "zip",
    "city",
    "town",
    "dob",
    "birthdate",
    "birthday",
    "ssn",
    "nhs",
    "nhsno",
    "nino",
    "passport",
    "note",
    "notes",
    "comment",
    "comments",
    "freetext",
    "narrative",
    "remark",
    "remarks",
    "memo",
    "memos",
    "addr",
    "postal",
    "mrn",
    "medicare",
    "medicaid",
}
# Identifiers written as one word ('phonenumber', 'EmailAddress' lower-cased):
# looked for in the name's tokens joined together.
_NAME_COMPOUNDS = (
    "dateofbirth",
    "phonenumber",
    "mobilenumber",
    "telephonenumber",
    "contactnumber",
    "emailaddress",
    "mailaddress",
    "homeaddress",
    "streetaddress",
    "postaladdress",
    "nhsnumber",
    "insurancenumber",
    "nationalinsurance",
    "socialsecurity",
)
# Adjacent token pairs that together name an identifier.
_NAME_PAIRS = {
    ("first", "name"),
    ("last", "name"),
    ("given", "name"),
    ("family", "name"),
    ("full", "name"),
    ("client", "name"),
    ("patient", "name"),
    ("e", "mail"),
    ("date", "birth"),
    ("birth", "date"),
    ("national", "id"),
    ("national", "number"),
    ("insurance", "number"),
    ("insurance", "id"),
    ("social", "security"),
    ("free", "text"),
    ("phone", "number"),
    ("post", "code"),
    ("zip", "code"),
    ("street", "address"),
    ("home", "address"),
    ("medicare", "number"),
    ("health", "number"),
    ("nhs", "number"),
    ("ni", "number"),
    ("ni", "no"),
    ("insurance", "no"),
    ("national", "insurance"),
    ("medical", "record"),
    ("mobile", "number"),
    ("contact", "number"),
}
# Contract columns are pseudonymous by definition; their names never trip the guard.
_ALLOWED = {
    "episode_id",
    "client_id",
    "clinic_id",
    "clinician_id",
    "session_id",
    "assessment_id",
}

EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
# Phone-like: 9+ digits written with phone punctuation or a leading '+'.
# A bare run of digits is an id, a date has 8 digits: neither counts.
PHONE = re.compile(r"^\s*(?:\+|00)?\(?\d[\d\s().\-/]{7,}\d\s*$")


class PrivacyError(ValueError):
    """Raised when an export carries a direct identifier; names the column only."""


def _tokens(column: str) -> list[str]:
    # camelCase and an acronym before a word ('NHSNumber': NHS Number)
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", column)
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", spaced)
    return [t for t in re.split(r"[^a-z0-9]+", spaced.lower()) if t]


def identifier_like_name(column: str) -> bool:
    if column.lower() in _ALLOWED:
        return False
    tokens = _tokens(column)
    if any(t in _NAME_TOKENS for t in tokens):
        return True
    pairs = set(zip(tokens, tokens[1:], strict=False))
    if tokens and tokens[0] == "of":
        return False
    joined = "".join(tokens)
    return bool(pairs & _NAME_PAIRS) or any(c in joined for c in _NAME_COMPOUNDS)


def _phone_like(values: pd.Series) -> pd.Series:
    candidates = values[values.str.match(PHONE).fillna(False).astype(bool)]
    digits = candidates.str.count(r"\d")
    has_punct = candidates.str.contains(r"[\s().\-/+]", regex=True)
    is_date = candidates.str.match(r"^\s*\d{4}-\d{2}-\d{2}")
    # a plain decimal number (a prorated total 26.666666666666668) is not a phone
    is_number = candidates.str.match(r"^\s*[+-]?\d+\.\d+\s*$")
    return (digits >= 9) & has_punct & ~is_date & ~is_number


# An RE2 version of PHONE for ASCII text (Python's \s on ASCII spelled out). Every
# value the exact checks below could flag has an '@', matches it, or is not ASCII:
# those few candidates go to the exact checks, so a million-row chunk costs one
# RE2 pass instead of a Python regex per distinct value.
_S = r"\t\n\v\f\r\x1c-\x1f "
_PHONE_ASCII = rf"^[{_S}]*(?:\+|00)?\(?[0-9][0-9{_S}().\-/]{{7,}}[0-9][{_S}]*$"


_DIGITS = b"0123456789"


def _string_chunks(
    arr: pa.ChunkedArray,
) -> list[tuple[np.ndarray, pa.Buffer | None]] | None:
    """Per chunk of a string column: its values' offsets (n + 1, this slice's own)
    and its data buffer. None: not plain strings."""
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return None
    width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    out = []
    for chunk in arr.chunks:
        _, offsets, data = chunk.buffers()
        if offsets is None:  # an empty array may have no offsets buffer
            out.append((np.zeros(1, dtype=width), None))
            continue
        bounds = np.frombuffer(offsets, dtype=width)[chunk.offset : chunk.offset + len(chunk) + 1]
        out.append((bounds, data))
    return out


def _value_bytes(arr: pa.ChunkedArray) -> list[bytes] | None:
    """The bytes of every value of a string column, chunk by chunk (None: not plain strings).

    Read from each chunk's data buffer between its first and last offset, so a
    slice of a larger batch reads only its own values (and any bytes a null
    slot may hold: a superset, which is all the callers need).
    """
    chunks = _string_chunks(arr)
    if chunks is None:
        return None
    out = []
    for bounds, data in chunks:
        if len(bounds) < 2:
            continue
        start, end = int(bounds[0]), int(bounds[-1])
        out.append(b"" if data is None else data.slice(start, end - start).to_pybytes())
    return out


# The bytes a value matching _PHONE_ASCII can start with: its optional leading
# whitespace, '+', '(' or a digit ('00' starts with one).
_PHONE_STARTS = np.zeros(256, dtype=bool)
# \t \n \v \f \r, \x1c-\x1f and space (_S), '+', '(' and the digits
_PHONE_STARTS[[*range(0x09, 0x0E), *range(0x1C, 0x21), *b"+(0123456789"]] = True


def _phone_shaped(arr: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """Per value: 9 bytes or more, starting with a byte _PHONE_ASCII can start with.

    A superset of its matches, read from the offsets and first bytes alone: ids
    ('A00000001') and most text are settled without running the regex (at 200k
    episodes 25M item rows' ids went through it). None: not plain strings.
    """
    chunks = _string_chunks(arr)
    if chunks is None:
        return None
    masks = []
    for bounds, data in chunks:
        starts = bounds[:-1]
        shaped = (bounds[1:] - starts) >= 9
        if data is not None and shaped.any():
            first = np.frombuffer(data, dtype=np.uint8)[starts[shaped]]
            shaped[shaped] = _PHONE_STARTS[first]
        masks.append(pa.array(shaped, pa.bool_()))
    return pa.chunked_array(masks, pa.bool_())


def _candidates(values: pd.Series) -> pd.Series:
    """Non-null values that may be an e-mail address or a phone number (a superset)."""
    arr = getattr(values.array, "_pa_array", None)
    if arr is None:
        arr = pa.chunked_array([pa.array(values.astype(object), pa.string(), from_pandas=True)])
    # Most columns hold neither an '@' nor a non-ASCII byte anywhere: one scan of the
    # column's bytes settles that, instead of two kernels over every value.
    chunks = _value_bytes(arr)
    maybe = None
    if chunks is None or any(b"@" in b or not b.isascii() for b in chunks):
        maybe = pc.or_(pc.match_substring(arr, "@"), pc.invert(pc.string_is_ascii(arr)))
    # A phone number the exact check flags has 9 digits or more (non-ASCII ones are
    # candidates already): a column with fewer digits in all skips the regex, and
    # so do values shorter than the 9 characters _PHONE_ASCII needs.
    digits = (
        None if chunks is None else sum(len(b) - len(b.translate(None, _DIGITS)) for b in chunks)
    )
    if digits is None or digits >= 9:
        shaped = _phone_shaped(arr)
        if shaped is None:
            shaped = pc.greater_equal(pc.binary_length(arr), 9)
        if pc.any(shaped).as_py():
            phone = pc.match_substring_regex(
                pc.if_else(shaped, arr, pa.scalar("", pa.string())), _PHONE_ASCII
            )
            maybe = phone if maybe is None else pc.or_(maybe, phone)
    if maybe is None:
        return values.iloc[:0]
    return values[pc.fill_null(maybe, False).to_numpy(zero_copy_only=False)]


def identifier_like_values(values: pd.Series) -> str | None:
    """'e-mail' or 'phone' when any value looks like one, else None."""
    values = _candidates(values) if len(values) > 1000 else values.dropna()
    distinct = pd.Series(values.unique(), dtype="string")
    if distinct.empty:
        return None
    # RE2 (linear time), not Python's backtracking re: on a 1 MB field of letters
    # '[...]+@' takes hours (hostile input found by tests/test_fuzz.py).
    text = pa.array(distinct.astype(object), pa.string(), from_pandas=True)
    if pc.any(pc.match_substring_regex(text, EMAIL.pattern)).as_py():
        return "e-mail addresses"
    if _phone_like(distinct).any():
        return "phone numbers"
    return None


def check_column_names(columns: list[str], source: str) -> None:
    # A header that is itself an e-mail address or phone number (a pivoted export, a
    # data row taken for the header) is named by position only: it is the identifier.
    for position, column in enumerate(columns, start=1):
        found = identifier_like_values(pd.Series([column], dtype="string"))
        if found:
            raise PrivacyError(
                f"{source}: header column {position} looks like {found} (a direct identifier "
                f"used as a column name; not repeated here). Remove it from the export and "
                f"run again."
            )
    flagged = [c for c in columns if identifier_like_name(c)]
    if flagged:
        raise PrivacyError(
            f"{source}: column {flagged[0]!r} looks like a direct identifier "
            f"(names, contact details, dates of birth, national ids and free-text notes "
            f"must not be exported). Remove the column from the export and run again."
            + (f" Also flagged: {flagged[1:]}" if len(flagged) > 1 else "")
        )


def check_column_values(frame: pd.DataFrame, source: str) -> None:
    for column in frame.columns:
        found = identifier_like_values(frame[column])
        if found:
            raise PrivacyError(
                f"{source}: column {column!r} contains values that look like {found} "
                f"(direct identifiers). No value was written anywhere. Remove them from "
                f"the export and run again."
            )
