"""The MLflow descriptions: the run's note and the registered version's model card."""

from __future__ import annotations

from xpz.tracking.cards import family_metrics, family_table, model_card, run_description
from xpz.tracking.runs import split_baselines

METRICS = {
    "test_mae": 0.0137, "test_coverage_68": 0.682, "test_mae_kcorrect": 0.012, "test_mae_bagpipes": 0.016,
    "test_coverage68_bagpipes": 0.67, "test_coverage68_kcorrect": 0.69, "bin_0.10-0.15/mae": 0.01,
    "baseline_knn/test_mae": 0.0186, "baseline_mean/test_mae": 0.0615,
}  # fmt: skip
TAGS = {
    "xpz.data_md5": "abc123",
    "xpz.split_digest.test": "f" * 64,
    "xpz.profile": "default",
    "xpz.git_commit": "1" * 40,
}


def test_baselines_are_split_from_the_models_own_metrics():
    own, baselines = split_baselines(METRICS)
    assert "test_mae" in own and not any(k.startswith("baseline_") for k in own)
    assert baselines == {"baseline_knn": {"test_mae": 0.0186}, "baseline_mean": {"test_mae": 0.0615}}


def test_per_family_metrics_are_found_and_tabled():
    assert family_metrics(METRICS) == {
        "kcorrect": {"mae": 0.012, "coverage68": 0.69},
        "bagpipes": {"mae": 0.016, "coverage68": 0.67},
    }
    table = family_table(METRICS).splitlines()
    assert table[0] == "| family | coverage68 | mae |" and table[2] == "| bagpipes | 0.6700 | 0.0160 |"
    assert family_table({"test_mae": 0.1}) == ""


def test_run_description_leads_with_the_model_and_holds_the_bin_table():
    text = run_description(split_baselines(METRICS)[0], "| bin | mae |\n|---|---|", {"baseline_knn": 0.0186})
    assert text.index("test MAE | 0.0137") < text.index("baseline_knn 0.0186") < text.index("| bin | mae |")
    assert "Per galaxy family" in text


def test_model_card_names_data_version_metrics_use_and_limits():
    card = model_card("xpz-redshift", "3", "run1", METRICS, TAGS, "promoted (better)")
    for needle in ("version 3", "abc123", "test ffffffffffff", "test MAE | 0.0137", "| kcorrect |",
                   "## Intended use", "## Limits", "synthetic", "promoted (better)"):  # fmt: skip
        assert needle in card, needle
