"""Run settings: paths from env vars, tunables from one clinic config file.

Env vars (CONTRACT.md section 1): OUTCOMES_EXPORTS_DIR, OUTCOMES_WAREHOUSE,
OUTCOMES_REPORTS_DIR, OUTCOMES_AS_OF, and OUTCOMES_CONFIG (path of the clinic's
YAML config; every key is optional, see docs/configuration.md).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from schemas.registry import Registry, load_registry

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_EXPORTS = PROJECT_ROOT / "data" / "sample"


@dataclass(frozen=True)
class Settings:
    # --- paths (env vars) ---
    exports_dir: Path = SAMPLE_EXPORTS
    warehouse: Path = PROJECT_ROOT / "data" / "warehouse.duckdb"
    reports_dir: Path = PROJECT_ROOT / "reports"
    as_of: dt.date | None = None  # None: derived from the staged data
    # --- clinic config (YAML) ---
    timezone: str = "UTC"
    max_rejected_share: float = 0.05
    min_cell_size: int = 10
    round_counts_to: int | None = None  # NHS-style rounding to 5: set 5
    disengaged_after_days: int = 60
    early_dropout_max_attended: int = 3
    total_mismatch_tolerance: float = 0.5
    session_window_before_days: int = 30
    session_window_after_days: int = 365
    alliance_drop_points: float = 5.0
    early_alliance_sessions: int = 3
    etr_min_reference: int = 30
    # METRICS.md's defaults (90th percentile of scores). With a score at every
    # session, 80 and basis 'change' meet issue 5's targets (decision 005).
    etr_tolerance_percentile: float = 90.0
    etr_fallback_session: int = 6
    etr_basis: str = "score"  # compare raw scores ('score', METRICS.md) or change from baseline
    # Published pre-post d benchmark for adult depression (PHQ-9 rows of clinic_kpis).
    effect_size_benchmark_d: float = 0.93
    ingest_chunk_rows: int = 250_000
    instruments: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    config_file: Path | None = None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def registry(self) -> Registry:
        return load_registry(list(self.instruments))

    def public_dict(self) -> dict[str, Any]:
        """Settings as plain values, for run metadata and the report's methods box."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "instruments":
                value = list(value)
            elif isinstance(value, Path | dt.date):
                value = str(value)
            out[f.name] = value
        return out


CONFIG_KEYS = {f.name for f in fields(Settings)} - {
    "exports_dir",
    "warehouse",
    "reports_dir",
    "as_of",
    "config_file",
}


class SettingsError(ValueError):
    pass


def _parse_as_of(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError as exc:
        raise SettingsError(f"OUTCOMES_AS_OF={text!r} is not an ISO date (YYYY-MM-DD)") from exc


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Settings from the environment and the optional clinic config file."""
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}
    config_path = env.get("OUTCOMES_CONFIG")
    if config_path:
        path = Path(config_path)
        if not path.is_file():
            raise SettingsError(f"OUTCOMES_CONFIG={config_path}: no such file")
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(doc, dict):
            raise SettingsError(f"{path}: the config file must be a mapping of keys to values")
        unknown = set(doc) - CONFIG_KEYS
        if unknown:
            raise SettingsError(
                f"{path}: unknown config keys {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}"
            )
        values.update(doc)
        values["instruments"] = tuple(doc.get("instruments") or ())
        values["config_file"] = path
    if env.get("OUTCOMES_EXPORTS_DIR"):
        values["exports_dir"] = Path(env["OUTCOMES_EXPORTS_DIR"])
    if env.get("OUTCOMES_WAREHOUSE"):
        values["warehouse"] = Path(env["OUTCOMES_WAREHOUSE"])
    if env.get("OUTCOMES_REPORTS_DIR"):
        values["reports_dir"] = Path(env["OUTCOMES_REPORTS_DIR"])
    if env.get("OUTCOMES_AS_OF"):
        values["as_of"] = _parse_as_of(env["OUTCOMES_AS_OF"])
    settings = replace(Settings(), **values)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    try:
        s.tz  # noqa: B018 - raises on an unknown zone
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise SettingsError(f"timezone {s.timezone!r} is not a known IANA time zone") from exc
    if not 0 <= s.max_rejected_share <= 1:
        raise SettingsError("max_rejected_share must be between 0 and 1")
    if s.min_cell_size < 1:
        raise SettingsError("min_cell_size must be at least 1")
    if s.disengaged_after_days < 1:
        raise SettingsError("disengaged_after_days must be at least 1")
    if s.etr_basis not in ("change", "score"):
        raise SettingsError("etr_basis must be 'change' or 'score'")
    if s.ingest_chunk_rows < 1:
        raise SettingsError("ingest_chunk_rows must be at least 1")
    s.registry()  # raises with the instrument's code on a bad override
