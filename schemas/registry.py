"""Instrument registry: the one place that knows how each questionnaire is scored.

Defaults ship in ``instruments.yaml`` (METRICS.md); a clinic's config file can
override any field of an instrument or add new ones under ``instruments:``.
Thresholds reach the metric SQL through :meth:`Registry.frame`, never as literals.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from typing import Any

import pandas as pd
import yaml

CONSTRUCTS = ("symptom", "alliance", "goal")
DIRECTIONS = ("higher_worse", "higher_better")
SCORINGS = ("sum", "mean")
JT_Z = 1.96  # Jacobson & Truax: a change is reliable when |RCI| > 1.96


def fold_code(text: str) -> str:
    """Fold an instrument spelling for matching: case, '-', '_' and spaces ignored."""
    return re.sub(r"[\s_\-]+", "", str(text)).upper()


def jacobson_truax_s_diff(sd: float, reliability: float) -> float:
    """Standard error of the difference: SD x sqrt(2) x sqrt(1 - r)."""
    return sd * math.sqrt(2.0) * math.sqrt(1.0 - reliability)


def jacobson_truax_cutoff(
    method: str,
    direction: str,
    clinical_mean: float,
    clinical_sd: float,
    functional_mean: float | None = None,
    functional_sd: float | None = None,
) -> float:
    """Clinical cutoff a, b or c of Jacobson & Truax (1991).

    a: two SDs beyond the clinical mean, towards health; b: two SDs beyond the
    functional mean, towards illness; c: the SD-weighted midpoint of the two.
    """
    toward_health = 1.0 if direction == "higher_better" else -1.0
    if method == "a":
        return clinical_mean + toward_health * 2.0 * clinical_sd
    if functional_mean is None or functional_sd is None:
        raise ValueError(f"cutoff method {method!r} needs functional_mean and functional_sd")
    if method == "b":
        return functional_mean - toward_health * 2.0 * functional_sd
    if method == "c":
        return (clinical_sd * functional_mean + functional_sd * clinical_mean) / (
            clinical_sd + functional_sd
        )
    raise ValueError(f"unknown cutoff method {method!r} (use a, b or c)")


@dataclass(frozen=True)
class Instrument:
    code: str
    construct: str
    items: int
    item_min: float
    item_max: float
    scoring: str = "sum"
    direction: str = "higher_worse"
    cutoff: float | None = None
    # Reliable change: either a points threshold (change >= points) or a
    # Jacobson & Truax S_diff (|change| / s_diff > 1.96, strictly).
    reliable_change: float | None = None
    reliability: float | None = None
    normative_sd: float | None = None
    reverse_items: tuple[int, ...] = ()
    max_missing: int | None = 0
    risk_item: int | None = None
    risk_threshold: float | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def higher_is_worse(self) -> bool:
        return self.direction == "higher_worse"

    @property
    def total_min(self) -> float:
        return self.item_min if self.scoring == "mean" else self.item_min * self.items

    @property
    def total_max(self) -> float:
        return self.item_max if self.scoring == "mean" else self.item_max * self.items

    @property
    def s_diff(self) -> float | None:
        if self.reliability is None or self.normative_sd is None:
            return None
        return jacobson_truax_s_diff(self.normative_sd, self.reliability)

    @property
    def rc_threshold(self) -> float | None:
        """Smallest reliable improvement in points (strict when derived J&T style)."""
        if self.reliable_change is not None:
            return float(self.reliable_change)
        s_diff = self.s_diff
        return None if s_diff is None else JT_Z * s_diff

    @property
    def rc_strict(self) -> bool:
        """J&T-derived thresholds need |change| strictly above 1.96 x S_diff."""
        return self.reliable_change is None and self.s_diff is not None

    def describe_thresholds(self) -> str:
        parts = []
        if self.cutoff is not None:
            op = ">=" if self.higher_is_worse else "<"
            parts.append(f"caseness {op} {self.cutoff:g}")
        if self.rc_threshold is not None:
            op = ">" if self.rc_strict else ">="
            parts.append(f"reliable change {op} {self.rc_threshold:g}")
        if self.risk_item is not None:
            parts.append(f"risk item {self.risk_item} >= {self.risk_threshold:g}")
        return "; ".join(parts) or "no thresholds"


def _instrument_from_dict(raw: dict[str, Any]) -> Instrument:
    raw = dict(raw)
    known = {f.name for f in fields(Instrument)} | {"risk_item", "cutoff_from", "reliable_change"}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"instrument {raw.get('code')!r}: unknown keys {sorted(unknown)}")
    code = raw.get("code")
    if not code:
        raise ValueError("every instrument needs a code")
    if raw.get("construct") not in CONSTRUCTS:
        raise ValueError(f"instrument {code}: construct must be one of {CONSTRUCTS}")
    if raw.get("direction", "higher_worse") not in DIRECTIONS:
        raise ValueError(f"instrument {code}: direction must be one of {DIRECTIONS}")
    if raw.get("scoring", "sum") not in SCORINGS:
        raise ValueError(f"instrument {code}: scoring must be one of {SCORINGS}")

    rc = raw.pop("reliable_change", None)
    if isinstance(rc, dict):  # {reliability: r, sd: SD}
        raw["reliability"] = float(rc["reliability"])
        raw["normative_sd"] = float(rc["sd"])
        rc = None
    raw["reliable_change"] = None if rc is None else float(rc)

    cutoff_from = raw.pop("cutoff_from", None)
    if cutoff_from is not None:
        raw["cutoff"] = jacobson_truax_cutoff(
            direction=raw.get("direction", "higher_worse"), **cutoff_from
        )

    risk = raw.pop("risk_item", None)
    if risk is not None:
        raw["risk_item"] = int(risk["item"])
        raw["risk_threshold"] = float(risk["threshold"])
    raw["reverse_items"] = tuple(int(i) for i in raw.get("reverse_items") or ())
    raw["aliases"] = tuple(str(a) for a in raw.get("aliases") or ())
    return Instrument(**raw)


class Registry:
    """Instruments by canonical code, looked up by any folded spelling."""

    def __init__(self, instruments: list[Instrument], version: int | str = 1):
        self.version = version
        self.instruments = {i.code: i for i in instruments}
        self._by_fold: dict[str, str] = {}
        for inst in instruments:
            for name in (inst.code, *inst.aliases):
                key = fold_code(name)
                other = self._by_fold.get(key)
                if other is not None and other != inst.code:
                    raise ValueError(f"spelling {name!r} names both {other} and {inst.code}")
                self._by_fold[key] = inst.code

    def canonical(self, spelling: str | None) -> str | None:
        """Canonical code for an export spelling, or None when not in the registry."""
        if spelling is None or (isinstance(spelling, float) and math.isnan(spelling)):
            return None
        return self._by_fold.get(fold_code(spelling))

    def __getitem__(self, code: str) -> Instrument:
        return self.instruments[code]

    def __iter__(self):
        return iter(self.instruments.values())

    def fold_map(self) -> dict[str, str]:
        """Folded spelling -> canonical code (for vectorised lookups)."""
        return dict(self._by_fold)

    def frame(self) -> pd.DataFrame:
        """One row per instrument with every threshold, for joining in metric SQL."""
        rows = []
        for inst in self:
            row = asdict(inst)
            row.pop("aliases")
            row["reverse_items"] = ",".join(str(i) for i in inst.reverse_items)
            row["higher_is_worse"] = inst.higher_is_worse
            row["total_min"] = float(inst.total_min)
            row["total_max"] = float(inst.total_max)
            row["rc_threshold"] = inst.rc_threshold
            row["rc_strict"] = inst.rc_strict
            row["s_diff"] = inst.s_diff
            rows.append(row)
        frame = pd.DataFrame(rows)
        for col in (
            "cutoff",
            "reliable_change",
            "reliability",
            "normative_sd",
            "risk_threshold",
            "rc_threshold",
            "s_diff",
            "item_min",
            "item_max",
        ):
            frame[col] = frame[col].astype("Float64")
        for col in ("max_missing", "risk_item", "items"):
            frame[col] = frame[col].astype("Int64")
        return frame


def _default_entries() -> tuple[list[dict[str, Any]], Any]:
    text = resources.files("schemas").joinpath("instruments.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    return doc["instruments"], doc.get("version", 1)


def load_registry(overrides: list[dict[str, Any]] | None = None) -> Registry:
    """Shipped registry merged with a clinic's overrides (matched by folded code)."""
    entries, version = _default_entries()
    merged: dict[str, dict[str, Any]] = {fold_code(e["code"]): dict(e) for e in entries}
    for override in overrides or []:
        if "code" not in override:
            raise ValueError(f"instrument override without a code: {override}")
        key = fold_code(override["code"])
        if key in merged:
            base = merged[key]
            base.update({k: v for k, v in override.items() if k != "code"})
        else:
            merged[key] = dict(override)
    label = f"{version}+clinic" if overrides else version
    return Registry([_instrument_from_dict(e) for e in merged.values()], version=label)
