"""params.yaml -> typed, validated configuration objects.

params.yaml is read once, at the edge (CLI, flow, DVC stage), and the resulting `Config` is passed
down. Unknown keys, wrong types and impossible values fail at start-up with the offending key named.

params.yaml is the single source of defaults: every field default below equals the value of the
same key in params.yaml (the `default` profile), and every field appears there, so `ModelConfig()`
builds the project's model (tests/test_config.py::test_field_defaults_are_params_yaml enforces it).
Change a default in params.yaml and here together; no module keeps a copy as a constant.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator

from xpz.config_sections import (  # noqa: F401  (re-exported: every section lives in `xpz.config`)
    HyperparametersConfig,
    ModelConfig,
    SearchConfig,
    TuneConfig,
    _Section,
)
from xpz.spectra import FAMILIES

DEFAULT_PARAMS = Path("params.yaml")
PROFILE_ENV = "XPZ_PROFILE"


class ConfigError(ValueError):
    """params.yaml (or an override) is invalid; the message names the key."""


class DataConfig(_Section):
    path: Path = Path("data/galaxies.parquet")
    n_galaxies: int = Field(200_000, gt=0)
    seed: int = 42
    noise: float = Field(1.0, ge=0)
    g_min: float = 17.0
    g_max: float = 19.75
    z_max: float = Field(0.6, gt=0)
    chunk_size: int = Field(5000, gt=0)
    # galaxy families (xpz.spectra.FAMILIES) and the relative share of each in the dataset
    families: dict[str, float] = {"kcorrect": 1.0, "bagpipes": 1.0, "cosmos": 1.0}

    @model_validator(mode="after")
    def _g_range(self) -> DataConfig:
        if self.g_max <= self.g_min:
            raise ValueError(f"g_max ({self.g_max}) must exceed g_min ({self.g_min})")
        bad = [k for k in self.families if k not in FAMILIES]
        if bad or not self.families:
            raise ValueError(f"families: unknown or no family {bad}; known: {list(FAMILIES)}")
        if any(v < 0 for v in self.families.values()) or sum(self.families.values()) <= 0:
            raise ValueError(f"families: shares must be >= 0 with a positive sum, got {self.families}")
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
    def _ranges(self) -> ValidateConfig:
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
    def _fractions(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:  # .10g: the sum's float noise hidden, any miss above 1e-6 shown
            raise ValueError(
                f"train + val + test must sum to 1, got {self.train!r} + {self.val!r} + {self.test!r}"
                f" = {total:.10g}"
            )
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
    def _names(self) -> TrackingConfig:
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
    def _cron(self) -> ScheduleConfig:
        if len(self.cron.split()) != 5:
            raise ValueError(f"cron must have 5 fields (minute hour day month weekday), got {self.cron!r}")
        return self


class TrainConfig(_Section):
    """Training of the final model, then the post-hoc calibration of a softmax head on validation."""

    seed: int = 42
    batch_size: int = Field(256, ge=1)
    epochs: int = Field(4, ge=1)
    learning_rate: float | None = Field(None, gt=0)  # None: the hyperparameters' learning rate
    lr_schedule: Literal["constant", "cosine"] = "cosine"  # cosine over max(step, wall-time) progress
    patience: int = Field(20, ge=0)  # early stopping on `monitor`, best weights restored
    monitor: str = "val_mae"
    max_seconds: float | None = Field(None, gt=0)  # wall-time cap for fit (best weights restored)
    members: int = Field(1, ge=1, le=16)  # networks (seeds) averaged into one model; share max_seconds
    verbose: int = Field(2, ge=0, le=2)  # Keras progress: 0 silent, 1 bar, 2 one line per epoch
    balance: float = Field(0.5, ge=0, le=1)  # sample weight ~ n(z)^-balance (high-z emphasis)
    balance_max_weight: float = Field(10.0, ge=1)
    calibrate: bool = True  # choose prior_alpha and temperature on the validation split
    prior_alpha: float | None = Field(None, ge=-2, le=1)  # fixed alpha instead of a search
    alpha_grid: list[float] = [0.0, 0.25, 0.5]
    shift_z_grid: list[float] = [0.3, 0.35, 0.4]  # point estimate: quantile 0.5 + gain * P(z > shift_z)
    shift_gain_grid: list[float] = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]  # 0: the posterior median
    low_z_grid: list[float] = [0.08, 0.1]  # point estimate: ... - low_gain * P(z < low_z) (choose_shift)
    low_gain_grid: list[float] = [0.0, 0.1, 0.2, 0.3, 0.4]  # 0: no low-z shift
    low_z_bias_target: float | None = Field(0.004, gt=0)  # |val mean error at z < 0.10|; None: no target
    bias_target: float = Field(0.015, ge=0)  # |worst per-bin bias| on validation to reach ...
    bias_slack: float = Field(0.005, ge=0)  # ... or, if out of reach, the least bias + this
    interval: float = Field(0.68, gt=0, lt=1)  # target coverage of the central interval

    @model_validator(mode="after")
    def _grid(self) -> TrainConfig:
        if not self.alpha_grid or any(not -2 <= a <= 1 for a in self.alpha_grid):
            raise ValueError(f"alpha_grid must be non-empty with values in [-2, 1], got {self.alpha_grid}")
        if any(not 0 <= g <= 1 for g in self.shift_gain_grid):
            raise ValueError(f"shift_gain_grid values must lie in [0, 1], got {self.shift_gain_grid}")
        if not self.shift_z_grid and any(g > 0 for g in self.shift_gain_grid):
            raise ValueError("shift_z_grid must not be empty when shift_gain_grid has a gain > 0")
        if any(not 0 <= g <= 0.5 for g in self.low_gain_grid):
            raise ValueError(f"low_gain_grid values must lie in [0, 0.5], got {self.low_gain_grid}")
        if not self.low_z_grid and any(g > 0 for g in self.low_gain_grid):
            raise ValueError("low_z_grid must not be empty when low_gain_grid has a gain > 0")
        return self


class EvaluateConfig(_Section):
    """Test-set metrics, the per-bin table, baselines and figures."""

    bin_width: float = Field(0.05, gt=0)
    z_max: float = Field(0.6, gt=0)
    bias_z_max: float = Field(0.5, gt=0)  # worst per-bin bias over bins ending at or below this
    min_bin_count: int = Field(20, ge=1)  # ... holding at least this many objects
    outlier_threshold: float = Field(0.15, gt=0)
    low_z_max: float = Field(0.1, gt=0)  # the low-z bias: mean error of galaxies with true z below this
    knn_k: int = Field(10, ge=1)
    baselines: bool = True
    batch_size: int = Field(1024, ge=1)
    impostors_per_kind: int = Field(
        500, ge=0
    )  # non-galaxies of each kind for the eligibility report (0: none)

    @model_validator(mode="after")
    def _bins(self) -> EvaluateConfig:
        n = self.z_max / self.bin_width
        if n < 1 or abs(n - round(n)) > 1e-6:
            raise ValueError(f"bin_width ({self.bin_width}) must divide z_max ({self.z_max})")
        if self.bias_z_max > self.z_max:
            raise ValueError(f"bias_z_max ({self.bias_z_max}) must not exceed z_max ({self.z_max})")
        return self


class EligibilityConfig(_Section):
    """The out-of-distribution score and its threshold (`xpz.model.ood`), fitted after training."""

    enabled: bool = True
    keep: float = Field(0.996, gt=0, lt=1)  # share of validation galaxies kept eligible
    components: int = Field(8, ge=1, le=185)  # principal axes of the density model
    mixture: int = Field(8, ge=1)  # Gaussian mixture components in the principal subspace
    templates: int = Field(256, ge=1)  # empirical galaxy templates of the template term (k-means centres)
    template_components: int = Field(15, ge=1, le=185)  # principal axes that denoise the templates
    max_fit_samples: int | None = Field(30000, ge=100)  # training spectra the density is fitted on
    seed: int = 0
    # the star term: a classifier of galaxies vs real stars (xpz.data.stars) and impostors
    stars: bool = True  # fit the star term (False: the three-term score)
    star_components: int = Field(90, ge=1, le=186)  # principal axes of (unit-sum fluxes, log total flux)
    star_hidden: tuple[int, ...] = (256, 128)  # hidden ReLU layers of the classifier (empty: logistic)
    star_alpha: float = Field(1e-4, ge=0)  # L2 penalty of the classifier's weights
    star_max_iter: int = Field(40, ge=1)  # Adam epochs at most (early stopping on a 10% hold-out)
    star_max_samples: int = Field(60000, ge=100)  # library stars (fit part) and galaxies, each, at most
    star_draws: int = Field(2, ge=1)  # each library star drawn this many times (independent G and noise)
    star_tilt: float = Field(0.3, ge=0)  # half of the galaxies tilted by (lambda/604 nm)^N(0, this) (0: none)
    star_members: int = Field(3, ge=1)  # classifiers (seeds seed, seed+1, ...) whose logits are averaged
    star_flux_balance: bool = True  # galaxies weighted to the stars' total flux (flux_balance_weights)
    star_bright_g: float | None = Field(17.8, gt=0)  # sources brighter: the archive's XP stars (None: off)
    star_bright_share: float = Field(0.01, ge=0, lt=1)  # ... of which validation galaxies the star cut takes
    star_faint_share: float = Field(0.001, gt=0, lt=1)  # ... and of the fainter validation galaxies
    star_impostors_per_kind: int = Field(500, ge=0)  # xpz.data.impostors of each kind among the stars
    star_held_out: float = Field(0.2, gt=0, lt=1)  # share of library stars held out (by star), never fitted
    star_g_min: float | None = Field(
        15.0, gt=0
    )  # library stars at G in [this, data.g_max] (None: data.g_min)


class CoverageConfig(_Section):
    """Per-group quantile recalibration of p(z | x) on validation (`xpz.model.recalibration`)."""

    enabled: bool = True
    z_step: float = Field(0.05, gt=0)  # predicted-z groups of this width ...
    z_max: float = Field(0.45, gt=0)  # ... up to here (one open group above)
    snr_groups: int = Field(4, ge=1)  # quantiles of total flux (S/N)
    min_count: int = Field(50, ge=1)  # smaller groups fall back to their z group, then to all
    conformal: bool = (
        True  # 68% intervals: Mondrian conformal sets per true-z bin x group (xpz.model.conformal)
    )
    conformal_groups: Literal["width", "snr"] = "width"  # ... groups: quartiles of p(z)'s width, or of S/N


class Config(_Section):
    profile: str = "default"
    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    split: SplitConfig = SplitConfig()
    tracking: TrackingConfig = TrackingConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    model: ModelConfig = ModelConfig()
    tune: TuneConfig = TuneConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    eligibility: EligibilityConfig = EligibilityConfig()
    coverage: CoverageConfig = CoverageConfig()
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
    """One line per invalid key; a single error is one line with the file. A section's own check (a
    model validator: its input is the whole section) says what it needs and its values itself, so its
    input is not dumped after it."""
    problems = []
    for e in err.errors():
        key = ".".join(str(p).rstrip("_") for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown key (got {e.get('input')!r})")
        elif e["type"] == "value_error" and isinstance(e.get("input"), dict):
            problems.append(f"{key}: {str(e['msg']).removeprefix('Value error, ')}")
        else:
            # our validators' own messages, without pydantic's "Value error, " prefix
            msg = str(e["msg"]).removeprefix("Value error, ")
            problems.append(f"{key}: {msg} (got {e.get('input')!r})")
    if len(problems) == 1:
        return f"invalid parameters in {source}: {problems[0]}"
    return "\n".join([f"invalid parameters in {source}:", *(f"  {p}" for p in problems)])


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


def _yaml_where(err: yaml.YAMLError) -> str:
    """' at line 3, column 1: found character ...': PyYAML's several-line report as one line."""
    if not isinstance(err, yaml.MarkedYAMLError):
        return f": {' '.join(str(err).split())}"
    mark = err.problem_mark or err.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = ": ".join(str(part) for part in (err.context, err.problem) if part)
    return f"{where}: {' '.join(what.split())}"


def load_config(
    path: Path | str = DEFAULT_PARAMS,
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Read params.yaml once into a validated Config."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: parameters file not found")
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a parameters file (e.g. {path / 'params.yaml'})")
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text) if text.strip() else None
    except UnicodeDecodeError:
        raise ConfigError(
            f"{path}: not a text file (binary bytes); expected a YAML parameters file"
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML{_yaml_where(err)}") from None
    if raw is None:  # 0 bytes, whitespace, comments: an empty or wrong file, never "all defaults"
        raise ConfigError(
            f"{path}: the parameters file is empty (no sections: only whitespace or comments); "
            "use a parameters file such as the project's params.yaml"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at top level")
    return config_from_dict(raw, profile=profile, overrides=overrides, source=str(path))
