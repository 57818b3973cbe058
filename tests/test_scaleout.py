"""Scale-out on existing engines, with real processes on 127.0.0.1 (no mocks):

- the Prefect flow `flows/batch_predict_dask.py` (prefect-dask DaskTaskRunner on a local Dask cluster
  of 2 worker processes) gives exactly the single-process predictions;
- keras-tuner's distributed mode: a chief and two workers (KERASTUNER_* variables) complete one
  shared search, the trials split between the workers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xpz.spectra import flux_matrix
from xpz_models import free_port, shared_registered

REPO = Path(__file__).resolve().parents[1]
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
         "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING", "MPLBACKEND": "Agg"}  # fmt: skip


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)


@pytest.mark.slow
@pytest.mark.integration
def test_dask_flow_equals_single_process(small_dataset_path, tmp_path, tmp_path_factory):
    from xpz.data.io import read_dataset
    from xpz.serving.batch import predict_file

    dataset = read_dataset(small_dataset_path)
    registered = shared_registered(tmp_path_factory, flux_matrix(dataset))
    catalogue = tmp_path / "catalogue"
    bounds = [0, 300, 700, 1200, len(dataset)]  # uneven partitions, one in a sub-folder
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        folder = catalogue / ("healpix=1" if i == 3 else "")
        folder.mkdir(parents=True, exist_ok=True)
        dataset.iloc[a:b].to_parquet(folder / f"part-{i}.parquet", index=False)
    single = pd.read_parquet(
        predict_file(
            catalogue,
            tmp_path / "single.parquet",
            registered.champion,
            progress=False,
            tracking_uri=registered.tracking_uri,
        ).out  # fmt: skip
    )

    out_dir = tmp_path / "dask_out"
    summary_path = tmp_path / "summary.json"
    env = {
        **os.environ,
        **QUIET,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "MLFLOW_TRACKING_URI": registered.tracking_uri,
    }
    env.pop("PREFECT_API_URL", None)  # a temporary local Prefect server
    cmd = [sys.executable, str(REPO / "flows" / "batch_predict_dask.py"), str(catalogue), "--out-dir", str(out_dir),
           "--model", registered.champion, "--tracking-uri", registered.tracking_uri, "--workers", "2",
           "--summary", str(summary_path)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=420)
    finally:
        _stop(proc)
    assert proc.returncode == 0, output[-5000:]
    summary = json.loads(summary_path.read_text())
    assert summary["model_version"] == registered.version and summary["rows"] == len(dataset)
    assert len(summary["partitions"]) == 4
    outputs = sorted(out_dir.rglob("*.parquet"))
    assert [p.relative_to(out_dir) for p in outputs] == [
        p.relative_to(catalogue) for p in sorted(catalogue.rglob("*.parquet"))
    ]
    distributed = pd.concat([pd.read_parquet(p) for p in outputs], ignore_index=True)
    pd.testing.assert_frame_equal(distributed, single, check_exact=True)
    from xpz.serving.batch import use_tracking_uri
    from xpz.tracking import load_keras_model
    from xpz_models import model_predict_redshifts

    with use_tracking_uri(registered.tracking_uri):
        plain = model_predict_redshifts(load_keras_model(registered.champion), flux_matrix(dataset))
    plain.index = dataset["source_id"].to_numpy()  # the outputs follow the partition files' order
    np.testing.assert_allclose(distributed["z"].to_numpy(), plain.loc[distributed["source_id"], "z"].to_numpy(),
                               rtol=0, atol=1e-6)  # = model.predict  # fmt: skip


DRIVER = """
import sys, time
from pathlib import Path
import xpz.model.tune, xpz.model.tune_distributed  # TensorFlow and keras-tuner imported before the barrier
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.2)
sys.exit(xpz.model.tune_distributed.main(sys.argv[3:]))
"""

TINY_SEARCH = [
    "tune.max_trials=4", "tune.epochs=1", "tune.max_train_samples=200", "tune.max_val_samples=100",
    "train.verbose=0", "train.batch_size=64",
    "model.search.conv_layers=[1, 1]", "model.search.filters=[4, 8]", "model.search.filters_step=4",
    "model.search.dense_layers=[1, 1]", "model.search.units=[8, 16]", "model.search.units_step=8",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.integration
def test_keras_tuner_chief_and_two_workers_share_one_search(small_dataset_path, tmp_path):
    from xpz.config import load_config
    from xpz.data.stages import split_dataset

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    cfg = load_config(tmp_path / "params.yaml", profile="smoke")
    data = tmp_path / cfg.data.path
    data.parent.mkdir(parents=True)
    shutil.copy(small_dataset_path, data)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        split_dataset(cfg.data.path, cfg.split)
    finally:
        os.chdir(cwd)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    go = tmp_path / "go"
    port = free_port()
    procs: dict[str, subprocess.Popen] = {}
    logs = {}
    try:
        for tuner_id in ("chief", "tuner0", "tuner1"):
            env = {**os.environ, **QUIET, "KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1",
                   "KERASTUNER_ORACLE_PORT": str(port), "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
            args = ["--profile", "smoke", "--directory", f"tuning-{tuner_id}", "--result", f"{tuner_id}.json"]
            args += [x for item in TINY_SEARCH for x in ("-S", item)]
            logs[tuner_id] = (tmp_path / f"{tuner_id}.log").open("w")
            procs[tuner_id] = subprocess.Popen(
                [sys.executable, str(driver), f"{tuner_id}.ready", str(go), *args], cwd=tmp_path, env=env,
                stdout=logs[tuner_id], stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 300
        while not all((tmp_path / f"{t}.ready").exists() for t in procs):
            dead = {t: p.returncode for t, p in procs.items() if p.poll() is not None}
            assert not dead, (
                f"exited before the barrier: {dead}\n"
                + (tmp_path / f"{next(iter(dead))}.log").read_text()[-3000:]
            )
            assert time.monotonic() < deadline, "processes not ready in 300 s"
            time.sleep(0.5)
        go.touch()  # all three start the search together
        for tuner_id, proc in procs.items():
            try:
                proc.wait(timeout=max(10.0, deadline + 300 - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"{tuner_id} did not finish:\n" + (tmp_path / f"{tuner_id}.log").read_text()[-3000:]
                )
            assert proc.returncode == 0, f"{tuner_id}:\n" + (tmp_path / f"{tuner_id}.log").read_text()[-3000:]
    finally:
        for proc in procs.values():
            _stop(proc)
        for fh in logs.values():
            fh.close()

    results = {t: json.loads((tmp_path / f"{t}.json").read_text()) for t in procs}
    chief = results["chief"]
    all_trials = {t["trial_id"] for t in chief["trials"]}
    assert len(all_trials) == 4 and all(t["status"] == "COMPLETED" for t in chief["trials"])
    assert chief["best_trial_id"] in all_trials and chief["best_hyperparameters"]["conv_layers"] == 1
    ran = {t: {x["trial_id"] for x in results[t]["trials"]} for t in ("tuner0", "tuner1")}
    assert ran["tuner0"] and ran["tuner1"], f"one worker ran every trial: {ran}"
    assert not ran["tuner0"] & ran["tuner1"], f"a trial ran twice: {ran}"
    assert ran["tuner0"] | ran["tuner1"] == all_trials
    # the chief's oracle holds the scores the workers reported
    scores = {t["trial_id"]: t["metrics"].get("score") for t in chief["trials"]}
    for worker in ("tuner0", "tuner1"):
        for trial in results[worker]["trials"]:
            assert trial["metrics"]["score"] == pytest.approx(scores[trial["trial_id"]])


def test_worker_without_a_chief_says_so_and_gives_up(tmp_path):
    """A keras-tuner worker whose chief never answers: one line saying where it waits, then (after
    --chief-timeout) one `error:` line and exit 2, instead of waiting silently forever."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    port = free_port()  # nothing listens there
    env = {**os.environ, "KERASTUNER_TUNER_ID": "tuner0", "KERASTUNER_ORACLE_IP": "127.0.0.1",
           "KERASTUNER_ORACLE_PORT": str(port), "PYTHONPATH": str(REPO / "src")}  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "xpz.model.tune_distributed", "--chief-timeout", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"tuner0: waiting for the chief at 127.0.0.1:{port}" in proc.stdout, proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert time.monotonic() - started < 60
