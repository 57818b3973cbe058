"""params.yaml -> typed, validated configuration objects.

params.yaml is read once, at the edge (CLI, flow, DVC stage), and the resulting `Config` is passed
down. Unknown keys, wrong types and impossible values fail at start-up with the offending key named.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PARAMS = Path("params.yaml")
PROFILE_ENV = "XPZ_PROFILE"


class ConfigError(ValueError):
    """params.yaml (or an override) is invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    path: Path = Path("data/galaxies.parquet")
    n_galaxies: int = Field(50_000, gt=0)
    seed: int = 42
    noise: float = Field(1.0, ge=0)
    g_min: float = 17.0
    g_max: float = 19.75
    z_max: float = Field(0.6, gt=0)
    chunk_size: int = Field(5000, gt=0)

    @model_validator(mode="after")
    def _g_range(self) -> "DataConfig":
        if self.g_max <= self.g_min:
            raise ValueError(f"g_max ({self.g_max}) must exceed g_min ({self.g_min})")
        return self


class ValidateConfig(_Section):
    min_rows: int = Field(1000, ge=1)
    z_min: float = 0.0
    z_max: float = 0.6
    flux_min: float = -50.0
    flux_max: float = 2000.0
    warn_z_mean: tuple[float, float] = (0.11, 0.18)
    warn_z_median: tuple[float, float] = (0.10, 0.16)
    warn_z_q99: tuple[float, float] = (0.28, 0.48)
    report_dir: Path = Path("reports/validation")

    @model_validator(mode="after")
    def _ranges(self) -> "ValidateConfig":
        if self.z_max <= self.z_min:
            raise ValueError(f"z_max ({self.z_max}) must exceed z_min ({self.z_min})")
        if self.flux_max <= self.flux_min:
            raise ValueError(f"flux_max ({self.flux_max}) must exceed flux_min ({self.flux_min})")
        return self


class SplitConfig(_Section):
    seed: int = 42
    train: float = Field(0.63, gt=0, lt=1)
    val: float = Field(0.27, gt=0, lt=1)
    test: float = Field(0.10, gt=0, lt=1)
    z_bin_width: float = Field(0.01, gt=0)
    path: Path = Path("splits/split.parquet")
    digests: Path = Path("splits/digests.json")

    @model_validator(mode="after")
    def _fractions(self) -> "SplitConfig":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self


class TrackingConfig(_Section):
    """MLflow tracking and registry. `MLFLOW_TRACKING_URI` in the environment wins over `uri`."""

    uri: str = "sqlite:///mlflow.db"
    artifact_location: str = "./mlruns"
    experiment: str = "xpz"
    registered_model: str = "xpz-redshift"
    primary_metric: str = "test_mae"
    direction: Literal["minimize", "maximize"] = "minimize"

    @model_validator(mode="after")
    def _names(self) -> "TrackingConfig":
        for key in ("uri", "experiment", "registered_model", "primary_metric"):
            if not getattr(self, key).strip():
                raise ValueError(f"{key} must not be empty")
        return self


class ScheduleConfig(_Section):
    """Scheduled retraining (a Prefect deployment of the pipeline flow)."""

    cron: str = "0 3 * * 1"
    deployment: str = "xpz-weekly-retrain"
    timezone: str = "UTC"

    @model_validator(mode="after")
    def _cron(self) -> "ScheduleConfig":
        if len(self.cron.split()) != 5:
            raise ValueError(f"cron must have 5 fields (minute hour day month weekday), got {self.cron!r}")
        return self


class Config(_Section):
    profile: str = "default"
    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    split: SplitConfig = SplitConfig()
    tracking: TrackingConfig = TrackingConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def validation(self) -> ValidateConfig:
        return self.validate_


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    node[leaf] = value


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid parameters in {source}:"]
    for e in err.errors():
        key = ".".join(str(p).rstrip("_") for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key}: {msg} (got {e.get('input')!r})")
    return "\n".join(lines)


def config_from_dict(
    raw: dict[str, Any],
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
    source: str = "params",
) -> Config:
    """Build a Config from a params mapping, applying a profile and dotted-key overrides."""
    raw = copy.deepcopy(raw or {})
    profiles = raw.get("profiles", {}) or {}
    chosen = profile or os.environ.get(PROFILE_ENV) or raw.get("profile") or "default"
    if chosen != "default" or chosen in profiles:
        if chosen not in profiles and chosen != "default":
            known = ", ".join(sorted(profiles)) or "none"
            raise ConfigError(f"profile: unknown profile {chosen!r} in {source} (known: {known})")
        raw = _deep_merge(raw, profiles.get(chosen) or {})
    raw["profile"] = chosen
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def load_config(
    path: Path | str = DEFAULT_PARAMS,
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Read params.yaml once into a validated Config."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: parameters file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at top level")
    return config_from_dict(raw, profile=profile, overrides=overrides, source=str(path))
