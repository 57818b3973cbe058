"""params.yaml -> Config: the repo's file loads, profiles apply, bad values name their key."""

from __future__ import annotations

import pytest
import yaml

from xpz.config import ConfigError, config_from_dict, load_config


def _raw(repo_root):
    return yaml.safe_load((repo_root / "params.yaml").read_text())


def test_repo_params_load_with_every_profile(repo_root):
    raw = _raw(repo_root)
    for profile in raw["profiles"]:
        cfg = load_config(repo_root / "params.yaml", profile=profile)
        assert cfg.profile == profile
    assert load_config(repo_root / "params.yaml", profile="full").data.n_galaxies == 520_393
    assert load_config(repo_root / "params.yaml", profile="smoke").data.n_galaxies < 10_000


def test_default_split_is_the_seeds(repo_root):
    cfg = load_config(repo_root / "params.yaml", profile="default")
    assert (cfg.split.train, cfg.split.val, cfg.split.test) == (0.63, 0.27, 0.10)
    assert (cfg.data.noise, cfg.data.g_min, cfg.data.g_max) == (1.0, 17.0, 19.75)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"data.n_galaxies": -5}, "data.n_galaxies"),
        ({"split.train": 0.7}, "split"),
        ({"data.colour": 3}, "data.colour"),
        ({"data.g_max": 10.0}, "data"),
        ({"validate.flux_max": -100.0}, "validate"),
    ],
)
def test_invalid_values_name_the_key(repo_root, override, key):
    with pytest.raises(ConfigError) as err:
        config_from_dict(_raw(repo_root), profile="default", overrides=override)
    assert key in str(err.value)


def test_unknown_key_is_reported_as_unknown(repo_root):
    with pytest.raises(ConfigError, match=r"split\.sede: unknown key"):
        config_from_dict(_raw(repo_root), overrides={"split.sede": 1})


def test_fractions_must_sum_to_one_message(repo_root):
    with pytest.raises(ConfigError, match="sum to 1") as err:
        config_from_dict(_raw(repo_root), overrides={"split.test": 0.2})
    assert "Value error" not in str(err.value)  # our validator's own message, without pydantic's prefix
    # the README's and usage.md's example, word for word
    overrides = {"split.train": 0.7, "split.val": 0.3, "split.test": 0.1}
    with pytest.raises(ConfigError) as err:
        config_from_dict(_raw(repo_root), overrides=overrides, source="params.yaml")
    shown = "invalid parameters in params.yaml: split: train + val + test must sum to 1, got 0.7 + 0.3 + 0.1 = 1.1"
    assert str(err.value) == shown
    for doc in ("README.md", "docs/usage.md"):
        assert f"`{shown}`" in (repo_root / doc).read_text(), doc


def test_fractions_message_is_one_line_with_the_keys_values_sum_and_file(repo_root, tmp_path):
    """Not a dump of the whole `split` section (seed, paths, ...) after the sentence: one line naming
    the file, the three keys, their values and their sum."""
    from typer.testing import CliRunner

    from xpz.cli import app

    raw = _raw(repo_root)
    raw["split"]["train"] = 0.7
    params = tmp_path / "my-params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError) as err:
        load_config(params, profile="default")
    message = str(err.value)
    assert message == (
        f"invalid parameters in {params}: split: train + val + test must sum to 1, got 0.7 + 0.27 + 0.1 = 1.07"
    )
    result = CliRunner().invoke(app, ["data", "split", "--params", str(params), "--profile", "default"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [f"error: {message}"]


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\n   \n\t\n",
        b"# only comments\n#   data:\n#     n_galaxies: 10\n",
        b"---\n",
        b"\x89PNG\r\n\x1a\n\x00\xff",
    ],
    ids=["0 bytes", "whitespace", "comments", "document marker", "binary"],
)
def test_an_empty_or_binary_params_file_is_one_message_exit_2_not_all_defaults(tmp_path, content):
    """An empty params file is not read as "every default": the user pointed --params at the wrong
    file. One message naming it, exit 2, no traceback; `xpz predict` (which runs without a params file
    at all) refuses it too."""
    from typer.testing import CliRunner

    from xpz.cli import app

    params = tmp_path / "empty params.yaml"
    params.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(params)
    assert str(params) in str(err.value)
    assert ("empty" if content[:1] != b"\x89" else "not a text file") in str(err.value)
    for argv in (
        ["data", "split", "--params", str(params)],
        ["predict", str(tmp_path / "in.parquet"), "--model", "x.keras", "--params", str(params)],
    ):
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 2, (argv, result.output, result.exception)
        assert result.output.strip().splitlines() == [f"error: {err.value}"], argv


def test_unknown_profile(repo_root):
    with pytest.raises(ConfigError, match="unknown profile 'gpu'"):
        config_from_dict(_raw(repo_root), profile="gpu")


def test_invalid_yaml_is_one_line_naming_the_file_and_place(tmp_path):
    params = tmp_path / "corrupt.yaml"
    params.write_text("profile: [smoke\n  data: {")
    with pytest.raises(ConfigError) as err:
        load_config(params)
    assert str(err.value).startswith(f"{params}: not valid YAML at line 2, column 7: ")
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_command_line_overrides_are_yaml_values():
    from xpz.cli.common import parse_overrides

    assert parse_overrides(["train.epochs=3", "model.default.conv_filters=[8, 8]", "tune.enabled=false"]) == {
        "train.epochs": 3,
        "model.default.conv_filters": [8, 8],
        "tune.enabled": False,
    }
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["train.epochs"])


def _fields(model_cls, prefix=""):
    """Dotted names of every leaf field of a Config section class (nested sections recursed)."""
    from pydantic import BaseModel

    out = []
    for name, field in model_cls.model_fields.items():
        key = field.alias or name
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _fields(ann, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def test_field_defaults_are_params_yaml(repo_root):
    """params.yaml is the one source of defaults: a section built from its class defaults (`ModelConfig()`,
    `TrainConfig()`, ...) equals the one params.yaml gives, and every field is written in params.yaml."""
    from xpz.config import Config

    raw = _raw(repo_root)
    base = {k: v for k, v in raw.items() if k not in ("profile", "profiles")}
    from_params = config_from_dict({**base, "profile": "default"}, profile="default")
    built = Config()
    for section in base:
        attr = "validate_" if section == "validate" else section
        assert getattr(built, attr).model_dump() == getattr(from_params, attr).model_dump(), section
    missing = []
    for dotted in _fields(Config):
        if dotted in ("profile", "profiles"):
            continue
        node = raw
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(dotted)
                break
            node = node[part]
    assert not missing, f"fields with no value in params.yaml: {missing}"


def test_no_module_constant_repeats_a_config_value():
    """Module-level constants that once copied params (evaluate.BIN_WIDTH, coverage_report.COVERAGE_Z_MAX,
    posterior.INTERVAL) are gone: the values come from the Config passed in."""
    import xpz.model.coverage_report as coverage_report
    import xpz.model.evaluate as evaluate
    import xpz.model.posterior as posterior

    for module, names in (
        (evaluate, ("BIN_WIDTH", "BIN_Z_MAX", "BIAS_Z_MAX", "MIN_BIN_COUNT", "OUTLIER_THRESHOLD")),
        (coverage_report, ("COVERAGE_Z_MAX", "COVERAGE_MIN_COUNT")),
        (posterior, ("INTERVAL",)),
    ):
        present = [n for n in names if hasattr(module, n)]
        assert not present, f"{module.__name__} still defines {present}"


def test_environ_changes_variables_for_a_block_and_restores_them(monkeypatch):
    import os

    from xpz.env import environ

    monkeypatch.setenv("XPZ_T_SET", "old")
    monkeypatch.setenv("XPZ_T_DEFAULT", "kept")
    monkeypatch.delenv("XPZ_T_NEW", raising=False)
    with environ(
        set_={"XPZ_T_SET": "new", "XPZ_T_NEW": "1"}, unset=["XPZ_T_DEFAULT"], defaults={"XPZ_T_D2": "d"}
    ):
        assert os.environ["XPZ_T_SET"] == "new" and os.environ["XPZ_T_NEW"] == "1"
        assert "XPZ_T_DEFAULT" not in os.environ and os.environ["XPZ_T_D2"] == "d"
    with environ(defaults={"XPZ_T_DEFAULT": "other"}):
        assert os.environ["XPZ_T_DEFAULT"] == "kept"  # a default never overrides
    assert os.environ["XPZ_T_SET"] == "old" and os.environ["XPZ_T_DEFAULT"] == "kept"
    assert "XPZ_T_NEW" not in os.environ and "XPZ_T_D2" not in os.environ
