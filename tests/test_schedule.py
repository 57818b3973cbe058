"""Scheduling that fires: `xpz schedule serve` on a real `prefect server start` (127.0.0.1, its own
PREFECT_HOME; the session's `server_pair`) with a one-minute cron. The server's scheduler creates a flow
run, the serving process runs it to COMPLETED, and the run registers a model version in MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest_servers import make_project, stop_process_group

pytestmark = [pytest.mark.slow, pytest.mark.integration]

MODEL = "xpz-schedule-test"
DEPLOYMENT = "xpz-every-minute"


def api(url: str, path: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_one_minute_cron_creates_a_run_that_registers_a_version(server_pair, tmp_path, small_dataset_path):
    from mlflow import MlflowClient

    project = make_project(
        tmp_path / "project", small_dataset_path, MODEL, MODEL, overrides={"tune.enabled": False}
    )
    log = project / "serve.log"
    cmd = [str(Path(sys.executable).parent / "xpz"), "schedule", "serve", "--cron", "* * * * *", "--no-sync",
           "--name", DEPLOYMENT, "--params", "params.yaml"]  # fmt: skip
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, cwd=project, env=server_pair.env(), stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    url = server_pair.prefect.url
    runs: list[dict] = []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"schedule serve exited {proc.returncode}:\n{log.read_text()[-4000:]}"
            found = api(url, "/deployments/filter", {"deployments": {"name": {"any_": [DEPLOYMENT]}}})
            if found:
                runs = api(url, "/flow_runs/filter",
                           {"flow_runs": {"deployment_id": {"any_": [found[0]["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"})  # fmt: skip
                if any(r["state_type"] == "COMPLETED" for r in runs):
                    break
                failed = [r for r in runs if r["state_type"] in ("FAILED", "CRASHED")]
                assert not failed, f"{failed[0]['state']}\n{log.read_text()[-4000:]}"
            time.sleep(5)
    finally:
        stop_process_group(proc)
    done = [r for r in runs if r["state_type"] == "COMPLETED"]
    assert done, (
        f"no completed scheduled run in 600 s: {[(r['name'], r['state_type']) for r in runs]}\n{log.read_text()[-4000:]}"
    )
    assert done[0]["auto_scheduled"] is True  # created by the server's scheduler, not triggered by hand
    versions = MlflowClient(tracking_uri=server_pair.mlflow.url).search_model_versions(f"name='{MODEL}'")
    assert len(versions) >= 1 and versions[0].run_id
    assert "Cannot schedule flows on an ephemeral server" not in log.read_text()


def test_deploy_to_a_missing_work_pool_is_one_message(tmp_path):
    """`xpz schedule deploy --work-pool NAME` when the server has no such pool: one `error:` line naming
    the pool and `prefect work-pool create`, exit 2, no deployment (not Prefect's long traceback)."""
    from conftest import copy_params
    from conftest_servers import base_env, start_prefect_server

    server = start_prefect_server(tmp_path / "prefect")
    try:
        project = tmp_path / "project"
        project.mkdir()
        copy_params(project)
        env = base_env(PREFECT_API_URL=server.url, PREFECT_HOME=str(tmp_path / "client"),
                       PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "xpz", "schedule", "deploy", "--work-pool", "xpz-no-such-pool"],
            cwd=project, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        output = proc.stdout + proc.stderr
        assert proc.returncode == 2, output
        assert "Traceback" not in output, output
        errors = [line for line in output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, output
        assert "'xpz-no-such-pool'" in errors[0], output
        assert "prefect work-pool create xpz-no-such-pool --type process" in errors[0], output
        assert api(server.url, "/deployments/filter", {}) == []
    finally:
        server.stop(grace_s=5)
