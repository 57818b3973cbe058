"""The pipeline end to end on the smoke profile: a real sqlite MLflow store in a temp folder, the real
model code (tiny search space, 1,500 galaxies), and the model CLI commands against that store."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import REPO
from xpz.config import load_config
from xpz.spectra import flux_matrix


@pytest.fixture(scope="module")
def env(tmp_path_factory, small_dataset_path):
    """cwd = a temp folder holding the split, MLFLOW_TRACKING_URI = a sqlite store there; one pipeline run."""
    root = tmp_path_factory.mktemp("pipeline")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("DO_NOT_TRACK", "1")
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        from xpz import pipeline, tracking
        from xpz.data.stages import split_dataset

        overrides = {
            "data.path": str(small_dataset_path),
            "train.verbose": 0,
            "tune.directory": str(root / "tuning"),
            "tracking.artifact_location": str(root / "mlruns"),
        }
        cfg = load_config(REPO / "params.yaml", profile="smoke", overrides=overrides)
        split_dataset(cfg.data.path, cfg.split)
        tr = tracking.configure(cfg.tracking)
        result = pipeline.run_pipeline(cfg, tr=tr, tune=True, reports_dir=root / "reports", repo=REPO)
        yield {"root": root, "cfg": cfg, "tr": tr, "result": result, "overrides": overrides}
        mlflow.set_tracking_uri(None)


def test_pipeline_logs_one_run_with_nested_trials(env):
    cfg, tr, result = env["cfg"], env["tr"], env["result"]
    client = tr.client
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["xpz.kind"] == "pipeline"

    nested = f"tags.mlflow.parentRunId = '{result.run_id}'"
    trials = client.search_runs([tr.experiment_id], f"{nested} and tags.xpz.kind = 'trial'")
    baselines = {
        r.info.run_name: r
        for r in client.search_runs([tr.experiment_id], f"{nested} and tags.xpz.kind = 'baseline'")
    }
    assert set(baselines) == {"baseline_mean", "baseline_knn"}
    note = client.get_run(result.run_id).data.tags["mlflow.note.content"]
    assert "test MAE" in note and "Per bin of true z" in note
    card = client.get_model_version(tr.registered_model, result.model_version).description
    assert "## Intended use" in card and "synthetic" in card
    assert baselines["baseline_knn"].data.metrics["test_mae"] == pytest.approx(
        result.evaluation.metrics["baseline_knn/test_mae"]
    )
    assert len(trials) == cfg.tune.max_trials
    assert all(t.data.tags["xpz.kind"] == "trial" and t.data.params for t in trials)
    assert all(cfg.tune.objective in t.data.metrics for t in trials)

    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["model.default.conv_filters"] == "[8, 8]" and params["tune.max_trials"] == "2"
    assert "hp.conv_layers" in params and "best.conv_layers" in params
    assert tags["xpz.split_digest.test"] and len(tags["xpz.git_commit"]) == 40
    assert tags["xpz.profile"] == "smoke" and tags["xpz.tuned"] == "true"
    for key in ("test_mae", "test_sigma_nmad", "test_outlier_fraction", "test_coverage_68",
                "bin_0.10-0.15/mean_error", "train_samples_per_s"):  # fmt: skip
        assert key in metrics, key
    loss = client.get_metric_history(result.run_id, "loss")
    assert sorted(m.step for m in loss) == list(range(len(loss))) and len(loss) >= 1

    contexts = {t.value for d in run.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
    assert contexts == {"training", "validation", "testing"}
    artifacts = {f.path for d in ("figures", "evaluation") for f in client.list_artifacts(result.run_id, d)}
    assert {
        "evaluation/per_bin.csv",
        "evaluation/per_bin.md",
        "figures/pred_vs_true.png",
        "figures/loss_curves.png",
    } <= artifacts


def test_first_model_is_champion_and_serves_raw_fluxes(env, small_dataset_path):
    tr, result = env["tr"], env["result"]
    assert (result.model_version, result.champion_version, result.promoted) == ("1", "1", True)
    version = tr.client.get_model_version(tr.registered_model, "1")
    assert version.tags["xpz.decision"] == "promoted"

    from xpz import pipeline

    splits = pipeline.load_splits(env["cfg"])
    champion = mlflow.pyfunc.load_model(f"models:/{tr.registered_model}@champion")
    got = champion.predict(flux_matrix(splits.test))
    expected = result.evaluation.predictions
    np.testing.assert_allclose(got["z"].to_numpy(), expected["z"].to_numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        got["z_lower"].to_numpy(), expected["z_lower"].to_numpy(), rtol=1e-5, atol=1e-6
    )

    reports = env["root"] / "reports"
    run_doc = json.loads((reports / "run.json").read_text())
    assert run_doc["run_id"] == result.run_id and run_doc["champion_version"] == "1"
    assert json.loads((reports / "metrics.json").read_text())["test_mae"] == pytest.approx(
        result.evaluation.metrics["test_mae"]
    )
    assert (reports / "bin_table.csv").exists() and (reports / "bin_table.md").exists()


def test_second_run_follows_the_champion_rule_and_cli(env):
    """A second, untuned run: champion only if its test MAE is lower; then the CLI lists and promotes."""
    from xpz import pipeline
    from xpz.cli.model import app

    tr, first = env["tr"], env["result"]
    cfg2 = load_config(
        REPO / "params.yaml",
        profile="smoke",
        overrides={**env["overrides"], "train.epochs": 1, "evaluate.baselines": False},
    )
    second = pipeline.run_pipeline(cfg2, tr=tr, tune=False, repo=REPO)
    assert second.model_version == "2"
    better = second.evaluation.metrics["test_mae"] < first.evaluation.metrics["test_mae"]
    assert second.promoted is better
    assert second.champion_version == ("2" if better else "1")
    tags = tr.client.get_model_version(tr.registered_model, "2").tags
    assert tags["xpz.decision"] == ("promoted" if better else "challenger")
    assert float(tags["xpz.champion_value"]) == pytest.approx(first.evaluation.metrics["test_mae"])
    assert tags["xpz.split_comparison"] == "same_split"
    nested = tr.client.search_runs([tr.experiment_id], f"tags.mlflow.parentRunId = '{second.run_id}'")
    assert nested == []

    runner = CliRunner()
    params = ["--params", str(REPO / "params.yaml"), "--profile", "smoke"]
    out = runner.invoke(app, ["models", *params])
    assert out.exit_code == 0, out.output
    assert "challenger" in out.output and "champion" in out.output and "test_mae" in out.output

    loser = "1" if better else "2"
    out = runner.invoke(app, ["promote", loser, *params, "--reason", "test rollback"])
    assert out.exit_code == 0, out.output
    assert str(tr.client.get_model_version_by_alias(tr.registered_model, "champion").version) == loser
    listed = json.loads(runner.invoke(app, ["models", *params, "--json"]).output)
    assert "champion" in next(v["aliases"] for v in listed if v["version"] == loser)

    out = runner.invoke(app, ["promote", "99", *params])
    assert out.exit_code == 2 and "no version 99" in out.output


def test_cli_help_texts():
    from xpz.cli.model import COMMANDS, app

    runner = CliRunner()
    for name in COMMANDS:
        out = runner.invoke(app, [name, "--help"])
        assert out.exit_code == 0 and "--params" in out.output, name
