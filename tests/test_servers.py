"""The whole stack against real servers: the scheduled deployment (`xpz schedule serve`) triggered
through the Prefect API, and `dvc repro` running the `train` stage (the flow) in a temporary repo.

Real processes only: `mlflow server` + `prefect server` (session fixtures in conftest_servers.py), the
`xpz` CLI serving the deployment, `dvc` driving the stages; tiny data (smoke profile).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest_servers import (
    REPO,
    make_project,
    stop_process_group,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent


def _registry(servers, name: str) -> tuple[list, dict]:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(servers.mlflow.url)
    try:
        aliases = dict(client.get_registered_model(name).aliases or {})
    except MlflowException:
        return [], {}
    found = client.search_model_versions(f"name = '{name}'")
    return sorted(found, key=lambda v: int(v.version)), {k: str(v) for k, v in aliases.items()}


def test_scheduled_deployment_runs_when_triggered_through_the_api(servers, tmp_path, small_dataset_path):
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from xpz.config import load_config

    model = "xpz-deploy-test"
    # no split on disk: a scheduled run syncs the data and writes the split itself
    project = make_project(tmp_path / "project", small_dataset_path, model, "xpz-deploy-test", split=False)
    cfg = load_config(project / "params.yaml")
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [str(BIN / "xpz"), "schedule", "serve", "--limit", "1"],
        cwd=project,
        env=servers.env(PREFECT_RUNNER_POLL_FREQUENCY="2"),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    name = f"train_pipeline/{cfg.schedule.deployment}"
    try:

        def deployment():
            if serve.poll() is not None:
                raise AssertionError(
                    f"xpz schedule serve exited:\n{(tmp_path / 'serve.log').read_text()[-3000:]}"
                )
            with get_client(sync_client=True) as client:
                try:
                    return client.read_deployment_by_name(name)
                except Exception:  # noqa: BLE001 - not created yet
                    return None

        dep = wait_for(deployment, 180, 1.0, f"deployment {name}")
        schedule = dep.schedules[0].schedule
        assert schedule.cron == cfg.schedule.cron and schedule.timezone == cfg.schedule.timezone
        assert dep.schedules[0].active and dep.parameters == {"params": "params.yaml", "sync": True}

        before, _ = _registry(servers, model)
        flow_run = run_deployment(name, timeout=600, poll_interval=2, as_subflow=False)
        assert flow_run.state.is_completed(), (flow_run.state, (tmp_path / "serve.log").read_text()[-4000:])
        assert flow_run.deployment_id == dep.id

        after, aliases = _registry(servers, model)
        assert len(after) == len(before) + 1
        new = after[-1]
        assert aliases["champion"] == new.version  # the first model of this registry
        run = MlflowClient(servers.mlflow.url).get_run(new.run_id)
        assert run.data.tags["prefect.deployment_id"] == str(dep.id)
        assert run.data.tags["prefect.flow_run_id"] == str(flow_run.id)
        assert (project / "splits" / "split.parquet").exists()  # the sync step re-split the data
    finally:
        stop_process_group(serve)


def test_dvc_repro_runs_the_train_stage(servers, tmp_path, small_dataset_path):
    """validate -> split -> train (the flow) in a temporary DVC repo; metrics and plots readable by DVC;
    a second repro does nothing."""
    repo = tmp_path / "repo"
    make_project(repo, small_dataset_path, "xpz-dvc-test", "xpz-dvc-test", split=False)
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(REPO / "src" / "xpz", repo / "src" / "xpz", ignore=shutil.ignore_patterns("__pycache__"))
    env = servers.env()

    def sh(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    sh("dvc", "add", "-q", "data")

    first = sh("dvc", "repro")
    for stage in ("validate", "split", "train"):
        assert f"Running stage '{stage}'" in first.stdout
    run = json.loads((repo / "reports" / "run.json").read_text())
    assert run["model_version"] == "1" and run["champion_version"] == "1"

    metrics = json.loads(sh("dvc", "metrics", "show", "--json").stdout)
    (entry,) = metrics.values()
    values = entry["data"]["reports/metrics.json"]["data"]
    assert values["test_mae"] > 0 and "bin_0.10-0.15/mean_error" in values
    plots = json.loads(sh("dvc", "plots", "show", "--json").stdout)
    assert "per_bin_errors" in plots["data"] or any("bin_table" in k for k in plots["data"])
    assert any(k.endswith(".png") for k in plots["data"])

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"validate", "split", "train"}
    assert {"model", "tune", "train", "evaluate"} <= set(lock["stages"]["train"]["params"]["params.yaml"])
    # dvc.lock hashes only what is the same on every run (it is committed): the train stage's output is
    # the constant marker; run.json, metrics and figures are top-level metrics/plots, never hashed
    assert [o["path"] for o in lock["stages"]["train"]["outs"]] == ["reports/train.done"]
    assert "run.json" not in (repo / "dvc.lock").read_text()

    second = sh("dvc", "repro")
    assert "Running stage" not in second.stdout
    assert "up to date" in sh("dvc", "status").stdout.lower()
