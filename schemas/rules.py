"""The quarantine rule catalogue (quarantine_rules.csv) and how Pandera failures map onto it.

Every rule code the pipeline writes comes from the catalogue; precedence
(CONTRACT.md edge rule 1) is its ``precedence`` column.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class Rule:
    code: str
    precedence: int
    stage: str
    applies_to: str
    description: str


@cache
def catalogue() -> dict[str, Rule]:
    text = resources.files("schemas").joinpath("quarantine_rules.csv").read_text("utf-8")
    rows = csv.DictReader(text.splitlines())
    return {
        r["rule"]: Rule(
            r["rule"], int(r["precedence"]), r["stage"], r["applies_to"], r["description"]
        )
        for r in rows
    }


def rule(code: str) -> str:
    """The code itself, after checking it is in the catalogue (typos fail loudly)."""
    if code not in catalogue():
        raise KeyError(f"rule {code!r} is not in schemas/quarantine_rules.csv")
    return code


def precedence(code: str) -> int:
    return catalogue()[code].precedence


# Pandera's own checks, by the name Pandera gives them, and the rule each means.
PANDERA_BUILTIN_RULES = {
    "not_nullable": "missing_required",
    "isin": "bad_enum",
    "in_range": "out_of_range",
}

MISSING_REQUIRED = rule("missing_required")
BAD_TYPE = rule("bad_type")
BAD_ENUM = rule("bad_enum")
OUT_OF_RANGE = rule("out_of_range")
DATE_ORDER = rule("date_order")
UNKNOWN_INSTRUMENT = rule("unknown_instrument")
DUPLICATE_KEY = rule("duplicate_key")
UNKNOWN_REFERENCE = rule("unknown_reference")
CLIENT_MISMATCH = rule("client_mismatch")
TOO_MANY_MISSING_ITEMS = rule("too_many_missing_items")
NO_SCORE = rule("no_score")
