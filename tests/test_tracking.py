"""MLflow tracking, lineage, pyfunc and registry against a real sqlite store in a temp folder.

No MLflow mocks: every test writes to `sqlite:///<tmp>/mlflow.db` with artifacts in `<tmp>/mlruns` and
reads back with MlflowClient. The repo's ./mlflow.db is never touched (cwd is the temp folder and
MLFLOW_TRACKING_URI points there).
"""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest

from xpz.config import Config, TrackingConfig, config_from_dict
from xpz.data.split import Splits, split_digest
from xpz.spectra import FLUX_COLUMNS

NAME = "xpz-test-model"


@pytest.fixture(scope="module")
def base_store(tmp_path_factory):
    """One sqlite store per module (creating a store runs MLflow's migrations: seconds on 2 cores)."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("DO_NOT_TRACK", "1")
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        from xpz import tracking

        cfg = TrackingConfig(
            experiment="xpz-test", registered_model=NAME, artifact_location=str(root / "mlruns")
        )
        yield root, tracking.configure(cfg)
        mlflow.set_tracking_uri(None)


@pytest.fixture()
def store(base_store, tmp_path, monkeypatch, request):
    """The module's store with a registered model name of this test's own; cwd is a temp folder."""
    root, tr = base_store
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(tr.tracking_uri)
    return dataclasses.replace(tr, registered_model=f"{NAME}-{request.node.name[:40]}")


def make_splits(n: int = 120, seed: int = 0, offset: int = 0) -> Splits:
    rng = np.random.default_rng(seed)
    fluxes = rng.uniform(0.1, 10.0, size=(n, len(FLUX_COLUMNS))).astype("float32")
    df = pd.DataFrame(fluxes, columns=list(FLUX_COLUMNS))
    df.insert(0, "z", rng.uniform(0.01, 0.5, n))
    df.insert(0, "source_id", np.arange(n, dtype=np.int64) + 1000 + offset)
    parts = {"train": df.iloc[: n // 2], "val": df.iloc[n // 2 : 3 * n // 4], "test": df.iloc[3 * n // 4 :]}
    parts = {k: v.reset_index(drop=True) for k, v in parts.items()}
    return Splits(**parts, digests={k: split_digest(v["source_id"]) for k, v in parts.items()})


@pytest.fixture(scope="module")
def tiny_model():
    """A tiny Keras regression model with the fitted min-max layer inside (raw fluxes in)."""
    import keras

    from xpz.model.scaling import fit_scaler

    keras.utils.set_random_seed(0)
    train = make_splits().train
    scaler = fit_scaler(train[list(FLUX_COLUMNS)].to_numpy("float32"))
    inputs = keras.Input((len(FLUX_COLUMNS),))
    x = scaler.pixel_layer()(inputs)
    outputs = keras.layers.Dense(1, kernel_initializer=keras.initializers.RandomNormal(0.0, 0.05, seed=1))(x)
    return keras.Model(inputs, outputs)


# ------------------------------------------------------------------------------------ set-up


def test_configure_creates_experiment_at_artifact_location(base_store):
    root, tr = base_store
    exp = mlflow.MlflowClient(tr.tracking_uri).get_experiment(tr.experiment_id)
    assert exp.name == "xpz-test"
    assert exp.artifact_location == (root / "mlruns").resolve().as_uri()
    assert tr.tracking_uri == f"sqlite:///{root / 'mlflow.db'}"
    assert mlflow.get_tracking_uri() == tr.tracking_uri
    # configuring again (as another process would) finds the same experiment
    from xpz import tracking

    again = tracking.configure(TrackingConfig(experiment="xpz-test", registered_model=NAME), tr.tracking_uri)
    assert again.experiment_id == tr.experiment_id


def test_environment_uri_wins_over_params(monkeypatch):
    from xpz import tracking

    cfg = TrackingConfig(uri="sqlite:///params.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert tracking.resolve_uri(cfg) == "sqlite:///env.db"
    assert tracking.resolve_uri(cfg, "http://server:5000") == "http://server:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.resolve_uri(cfg) == "sqlite:///params.db"
    assert tracking.resolve_uri(TrackingConfig()) == "sqlite:///mlflow.db"


def test_tracking_config_defaults_and_extra_keys():
    cfg = Config()
    assert cfg.tracking.uri == "sqlite:///mlflow.db"
    assert cfg.tracking.artifact_location == "./mlruns"
    assert cfg.tracking.primary_metric == "test_mae" and cfg.tracking.direction == "minimize"
    assert cfg.schedule.cron == "0 3 * * 1"
    with pytest.raises(ValueError, match="tracking.registry"):
        config_from_dict({"tracking": {"registry": "x"}})
    with pytest.raises(ValueError, match="cron"):
        config_from_dict({"schedule": {"cron": "every monday"}})


def test_flatten_params():
    from xpz import tracking

    flat = tracking.flatten({"model": {"conv_filters": [64, 32], "z_max": 0.6}, "profile": "smoke"})
    assert flat == {"model.conv_filters": "[64, 32]", "model.z_max": "0.6", "profile": "smoke"}
    params = tracking.config_params(Config())
    assert params["split.seed"] == "42" and params["tracking.registered_model"] == "xpz-redshift"
    assert "validate.min_rows" in params and not any(k.startswith("profiles") for k in params)


def test_lineage_tags(tmp_path, repo_root):
    from xpz import tracking

    dvc = tmp_path / "data.dvc"
    dvc.write_text("outs:\n- md5: 0123456789abcdef.dir\n  size: 10\n  path: data\n")
    tags = tracking.lineage_tags({"test": "abc"}, repo=repo_root, dvc_file=dvc)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root, capture_output=True, text=True)
    assert tags["xpz.git_commit"] == head.stdout.strip()
    assert tags["xpz.data_dvc_md5"] == "0123456789abcdef.dir" and "xpz.data_md5" not in tags  # no data/
    assert tags["xpz.split_digest.test"] == "abc"
    bare = tracking.lineage_tags(None, repo=tmp_path, dvc_file=tmp_path / "missing.dvc")
    assert bare == {}


def test_lineage_tags_name_the_data_actually_used_not_just_data_dvc(tmp_path):
    """A dataset regenerated locally (`xpz data generate --force`) is not data.dvc's version: the tags
    and the model card say so, with the md5 of the actual file; the recorded version reads as such."""
    import hashlib
    import json

    from xpz import tracking
    from xpz.tracking.cards import model_card

    data = tmp_path / "data"
    data.mkdir()
    parquet = data / "galaxies.parquet"
    parquet.write_bytes(b"the recorded version")
    file_md5 = hashlib.md5(b"the recorded version").hexdigest()
    listing = json.dumps([{"md5": file_md5, "relpath": "galaxies.parquet"}], sort_keys=True)
    recorded = hashlib.md5(listing.encode()).hexdigest() + ".dir"  # what `dvc add data` records
    dvc = tmp_path / "data.dvc"
    dvc.write_text(f"outs:\n- md5: {recorded}\n  size: 20\n  nfiles: 1\n  hash: md5\n  path: data\n")

    same = tracking.lineage_tags(None, repo=tmp_path, dvc_file=dvc, data_path=parquet)
    assert same["xpz.data_md5"] == recorded and same["xpz.data_dvc_match"] == "true"
    assert "data.dvc's version" in model_card("m", "1", "r", {}, same) and "NOT" not in model_card(
        "m", "1", "r", {}, same
    )

    parquet.write_bytes(b"3,000 smoke galaxies")  # regenerated locally
    other = tracking.lineage_tags(None, repo=tmp_path, dvc_file=dvc, data_path=parquet)
    actual = hashlib.md5(b"3,000 smoke galaxies").hexdigest()
    assert other["xpz.data_dvc_md5"] == recorded and other["xpz.data_md5"] != recorded
    assert other["xpz.data_file_md5"] == actual and other["xpz.data_dvc_match"] == "false"
    card = model_card("m", "1", "r", {}, other)
    line = next(x for x in card.splitlines() if "data version" in x)
    assert actual in line and "NOT data.dvc's version" in line and recorded in line, line


# -------------------------------------------------------------------------------- run logging


def test_run_logs_params_tags_lineage_metrics_figures_tables(store):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xpz import tracking

    splits = make_splits()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    table = pd.DataFrame(
        {
            "bin": ["0.10-0.15", "0.15-0.20"],
            "mean_error": [0.01, -0.02],
            "count": [10, 5],
            "share": [66.7, 33.3],
        }
    )
    evaluation = SimpleNamespace(
        metrics={
            "test_mae": 0.0123,
            "bin_0.10-0.15/mean_error": 0.01,
            "test_coverage_68": float("nan"),
            "baseline_knn/test_mae": 0.02,
        },  # fmt: skip
        bin_table=table,
        predictions=pd.DataFrame({"source_id": [1, 2], "z_true": [0.1, 0.2], "z": [0.11, 0.19]}),
        figures={"pred_vs_true": fig},
    )
    with tracking.run(store, "unit") as run_id:
        tracking.log_config(store, run_id, Config())
        tracking.log_params(store, run_id, {"filters_0": 64}, prefix="hp.")
        tracking.set_tags(store, run_id, tracking.lineage_tags(splits.digests))
        tracking.log_lineage(store, run_id, splits, source="data/galaxies.parquet")
        tracking.log_history(store, run_id, {"loss": [3.0, 2.0, 1.5], "val_loss": [3.1, 2.2, 1.9]})
        tracking.log_evaluation(store, run_id, evaluation)

    client = store.client
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["data.n_galaxies"] == "200000"  # Config() is params.yaml's default
    assert run.data.params["hp.filters_0"] == "64"
    assert run.data.tags["xpz.split_digest.test"] == splits.digests["test"]
    assert run.data.tags["xpz.profile"] == "default"
    assert run.data.metrics["test_mae"] == pytest.approx(0.0123)
    assert not any(k.startswith("baseline_") for k in run.data.metrics)  # a nested run of its own:
    (knn,) = client.search_runs([store.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert knn.info.run_name == "baseline_knn" and knn.data.tags["xpz.kind"] == "baseline"
    assert knn.data.metrics["test_mae"] == pytest.approx(0.02)
    assert run.data.metrics["bin_0.10-0.15/mean_error"] == pytest.approx(0.01)
    assert math.isnan(run.data.metrics["test_coverage_68"])
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 3.0),
        (1, 2.0),
        (2, 1.5),
    ]

    contexts = {
        next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
        for d in run.inputs.dataset_inputs
    }
    assert set(contexts) == {"training", "validation", "testing"}
    assert contexts["testing"].digest == splits.digests["test"][:36]
    assert contexts["training"].name == "xpz-train"
    assert "source_id" in contexts["testing"].schema and "flux_000" not in contexts["testing"].schema

    files = {f.path for f in client.list_artifacts(run_id, "figures")}
    files |= {f.path for f in client.list_artifacts(run_id, "evaluation")}
    assert {
        "figures/pred_vs_true.png",
        "evaluation/per_bin.csv",
        "evaluation/per_bin.md",
        "evaluation/predictions.parquet",
    } <= files
    csv = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="evaluation/per_bin.csv")
    )
    assert list(csv["bin"]) == ["0.10-0.15", "0.15-0.20"]


def test_failed_run_is_marked_failed(store):
    from xpz import tracking

    with pytest.raises(RuntimeError):
        with tracking.run(store, "boom") as run_id:
            raise RuntimeError("boom")
    assert store.client.get_run(run_id).info.status == "FAILED"


def test_trial_logger_makes_nested_runs(store):
    from xpz import tracking

    trials = [
        SimpleNamespace(
            trial_id=str(i),
            hyperparameters={"filters_0": 16 * (i + 1)},
            metrics={"val_mae": 0.1 / (i + 1)},
            status="COMPLETED",
        )
        for i in range(3)
    ]
    trials.append(
        SimpleNamespace(trial_id="3", hyperparameters={"filters_0": 8}, metrics={}, status="FAILED")
    )
    with tracking.run(store, "parent") as parent:
        hook = tracking.trial_logger(store, parent)
        for trial in trials:
            hook(trial)
    children = store.client.search_runs(
        [store.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert len(children) == 4
    by_id = {r.data.tags["xpz.trial_id"]: r for r in children}
    assert by_id["2"].data.params["filters_0"] == "48"
    assert by_id["2"].data.metrics["val_mae"] == pytest.approx(0.1 / 3)
    assert by_id["3"].info.status == "FAILED"


def test_concurrent_runs_do_not_mix(store):
    """Runs logged from several threads at once (explicit run ids, no active-run state) stay apart."""
    import threading

    from xpz import tracking

    ids, errors = {}, []

    def work(k):
        try:
            with tracking.run(store, f"worker-{k}") as run_id:
                ids[k] = run_id
                tracking.log_params(store, run_id, {"worker": k})
                hook = tracking.trial_logger(store, run_id)
                for i in range(3):
                    tracking.log_metrics(store, run_id, {"m": k * 100 + i}, step=i)
                    hook(
                        SimpleNamespace(
                            trial_id=str(i),
                            hyperparameters={"w": k},
                            metrics={"val_mae": 0.1},
                            status="COMPLETED",
                        )
                    )
        except Exception as err:  # pragma: no cover - reported below
            errors.append(repr(err))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    client = store.client
    for k, run_id in ids.items():
        assert client.get_run(run_id).data.params["worker"] == str(k)
        kids = client.search_runs([store.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
        assert len(kids) == 3 and {r.data.params["w"] for r in kids} == {str(k)}
        history = sorted(client.get_metric_history(run_id, "m"), key=lambda m: m.step)
        assert [m.value for m in history] == [k * 100 + i for i in range(3)]


# ------------------------------------------------------------------------- pyfunc + registry


def _logged_run(store, model, mae, splits):
    """A run with lineage, a test MAE and the model logged; returns (run_id, LoggedModel)."""
    from xpz import tracking

    raw = splits.test[list(FLUX_COLUMNS)].to_numpy("float32")
    with tracking.run(store, f"mae={mae}") as run_id:
        tracking.log_lineage(store, run_id, splits)
        tracking.log_metrics(store, run_id, {"test_mae": mae})
        logged = tracking.log_model(store, run_id, model, raw[:3], params={"hp.filters_0": 8})
    return run_id, logged


def test_champion_challenger_promotion_and_pyfunc(store, tiny_model):
    from xpz import tracking
    from xpz.model.posterior import predict_redshift

    splits = make_splits()
    client = store.client
    NAME = store.registered_model

    # 1. the first model becomes champion (and challenger)
    run1, model1 = _logged_run(store, tiny_model, 0.050, splits)
    reg1 = tracking.register(store, run1, model1)
    assert (reg1.version, reg1.promoted, reg1.champion_version) == ("1", True, "1")
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    tags1 = client.get_model_version(NAME, "1").tags
    assert tags1["xpz.decision"] == "promoted" and tags1["xpz.split_comparison"] == "first_model"

    # the champion alias serves raw fluxes like the Keras model (array and flux-column frame)
    raw = splits.test[list(FLUX_COLUMNS)].to_numpy("float32")
    expected = predict_redshift(tiny_model, raw)
    champion = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    assert tracking.load_champion(store).metadata.model_id == model1.model_id
    got = champion.predict(raw)
    assert list(got.columns) == ["z", "z_lower", "z_upper", "ood_score", "eligible"]
    np.testing.assert_allclose(got["z"].to_numpy(), expected["z"].to_numpy(), rtol=1e-5, atol=1e-6)
    keras_z = tiny_model.predict(raw, verbose=0).reshape(-1)  # the scaling layer is inside the model
    np.testing.assert_allclose(got["z"].to_numpy(), keras_z, rtol=1e-5, atol=1e-6)
    got_df = champion.predict(splits.test[list(FLUX_COLUMNS)])
    np.testing.assert_allclose(got_df["z"].to_numpy(), expected["z"].to_numpy(), rtol=1e-5, atol=1e-6)
    # no input schema (MLflow would enforce it by position/dtype before as_flux_array); outputs named
    assert champion.metadata.get_input_schema() is None
    assert {"z", "z_lower", "z_upper"} <= set(champion.metadata.get_output_schema().input_names())
    reversed_f64 = splits.test[list(FLUX_COLUMNS)[::-1]].astype("float64")
    np.testing.assert_allclose(
        champion.predict(reversed_f64)["z"].to_numpy(), expected["z"].to_numpy(), rtol=1e-5, atol=1e-6
    )
    info = champion.metadata
    assert info.run_id is None or info.run_id == run1  # MLmodel may omit the run for model_id logging
    assert client.get_logged_model(model1.model_id).source_run_id == run1

    # 2. a worse model stays challenger
    run2, model2 = _logged_run(store, tiny_model, 0.070, splits)
    reg2 = tracking.register(store, run2, model2)
    assert (reg2.version, reg2.promoted, reg2.champion_version) == ("2", False, "1")
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "2"
    tags2 = client.get_model_version(NAME, "2").tags
    assert tags2["xpz.decision"] == "challenger"
    assert float(tags2["xpz.candidate_value"]) == pytest.approx(0.070)
    assert float(tags2["xpz.champion_value"]) == pytest.approx(0.050)
    assert tags2["xpz.champion_version_before"] == "1"
    assert tags2["xpz.split_comparison"] == "same_split"

    # 3. a better model is promoted
    run3, model3 = _logged_run(store, tiny_model, 0.030, splits)
    reg3 = tracking.register(store, run3, model3)
    assert (reg3.version, reg3.promoted, reg3.champion_version, reg3.previous_champion) == (
        "3",
        True,
        "3",
        "1",
    )
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "3"
    tags3 = client.get_model_version(NAME, "3").tags
    assert tags3["xpz.decision"] == "promoted" and float(tags3["xpz.champion_value"]) == pytest.approx(0.050)
    assert client.get_run(run3).data.tags["xpz.model_version"] == "3"

    # listing: versions newest first with aliases and metrics
    listed = tracking.list_models(store)
    assert [v.version for v in listed] == ["3", "2", "1"]
    assert listed[0].aliases == ["champion", "challenger"] or set(listed[0].aliases) == {
        "champion",
        "challenger",
    }
    assert listed[1].aliases == [] and listed[1].decision == "challenger"
    assert listed[2].metrics["test_mae"] == pytest.approx(0.050)
    table = tracking.models_table(listed)
    assert list(table["version"]) == ["3", "2", "1"] and "test_mae" in table

    # 4. manual promotion moves the alias
    before = tracking.promote(store, 2, reason="rollback drill")
    assert before == "3"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    assert client.get_model_version(NAME, "2").tags["xpz.decision"] == "manual_promotion"
    with pytest.raises(ValueError, match="no version 9"):
        tracking.promote(store, 9)
    for bad in ("abc", "-1", "2.0"):  # MLflow's own answer to these is an exception, not a message
        with pytest.raises(ValueError, match=f"whole number such as 3.*got '{re.escape(bad)}'"):
            tracking.promote(store, bad)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"


def test_comparison_across_splits_is_recorded(store, tiny_model):
    from xpz import tracking

    run1, model1 = _logged_run(store, tiny_model, 0.05, make_splits())
    tracking.register(store, run1, model1)
    other = make_splits(offset=10_000)  # a different test split
    run2, model2 = _logged_run(store, tiny_model, 0.04, other)
    reg = tracking.register(store, run2, model2)
    assert reg.promoted and reg.split_comparison == "across_splits"
    tags = store.client.get_model_version(store.registered_model, reg.version).tags
    assert tags["xpz.split_comparison"] == "across_splits"
    assert tags["xpz.split_digest.test"] == other.digests["test"]


def test_flux_input_forms():
    from xpz import tracking
    from xpz.errors import InputError

    df = make_splits(n=8).train
    arr = df[list(FLUX_COLUMNS)].to_numpy("float32")
    np.testing.assert_array_equal(tracking.as_flux_array(df), arr)  # by name, extra columns ignored
    np.testing.assert_array_equal(tracking.as_flux_array(df[list(FLUX_COLUMNS)[::-1]]), arr)
    np.testing.assert_array_equal(tracking.as_flux_array(arr[0]), arr[:1])
    with pytest.raises(InputError, match="shape"):
        tracking.as_flux_array(arr[:, :10])


def test_flux_contract_casts_and_refuses():
    """as_flux_array: by name, any real dtype, extra columns ignored; missing, duplicated, non-numeric
    and non-finite inputs refused naming rows and columns (the served model's contract)."""
    import pandas as pd

    from xpz.errors import InputError
    from xpz.tracking import as_flux_array

    rng = np.random.default_rng(2)
    frame = pd.DataFrame(rng.integers(0, 100, size=(4, 186)), columns=list(FLUX_COLUMNS))
    expected = frame.to_numpy(np.float32)
    shuffled = frame[list(rng.permutation(FLUX_COLUMNS))].assign(source_id=[7, 8, 9, 10])
    for variant in (frame, frame.astype("float64"), frame.astype("float32"), shuffled, frame.to_dict("list"),
                    frame.to_dict("records"), frame.to_numpy(), frame.to_numpy().astype("int32")):  # fmt: skip
        out = as_flux_array(variant)
        assert out.dtype == np.float32 and out.shape == (4, 186)
        np.testing.assert_array_equal(out, expected)
    nan = frame.astype("float64")
    nan.loc[2, "flux_050"] = np.nan
    nan.loc[3, "flux_051"] = 1e39  # beyond float32
    cases = {
        "rows 2, 3, columns flux_050, flux_051": nan,
        "flux_000, flux_185": frame.drop(columns=["flux_000", "flux_185"]),
        "flux_003 appear more than once": pd.concat([frame, frame[["flux_003"]]], axis=1),
        "flux_004 are not numeric": frame.assign(flux_004=list("abcd")),
        "rows 1, columns flux_005;": np.array([np.ones(186), np.where(np.arange(186) == 5, np.inf, 1.0)]),
    }
    for words, bad in cases.items():
        with pytest.raises(InputError, match=words):
            as_flux_array(bad)
