"""The Prefect flow `train_pipeline` against a real `mlflow server` and a real `prefect server`.

No mocks: the flow runs (in this process and as `python flows/train_pipeline.py` processes) on the
smoke profile against the session's servers (tests/conftest_servers.py), and every assertion reads
back over HTTP: flow/task run states, logs and artifacts from the Prefect API, runs, metrics,
artifacts and registry versions from the MLflow server.

Scenario of the module (one project folder, one registered model):
1. a run is killed (SIGKILL) in the middle of its tuning search;
2. the next run resumes that search (only the missing trials run), completes, logs everything and
   registers version 1, which becomes champion;
3. a corrupted dataset fails the flow at validation: the summary is in the Prefect logs, no MLflow
   run and no version are created, the champion is untouched;
4. two runs at once: separate MLflow runs, models and versions, one consistent champion.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest_servers import (
    REPO,
    flow_run_logs,
    make_project,
    process_output,
    run_flow_process,
    stop_process_group,
    use_servers,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "xpz-flows-test"
EXPERIMENT = "xpz-flows-test"
MAX_TRIALS = 3


def _flow_module():
    """flows/train_pipeline.py imported by path (flows/ is not a package of the library)."""
    import importlib.util

    if "xpz_flow_train_pipeline" in sys.modules:
        return sys.modules["xpz_flow_train_pipeline"]
    spec = importlib.util.spec_from_file_location(
        "xpz_flow_train_pipeline", REPO / "flows" / "train_pipeline.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def mlflow_get(servers, endpoint: str, **query) -> dict:
    """GET <mlflow>/api/2.0/mlflow/<path> (the REST API, over HTTP)."""
    url = f"{servers.mlflow.url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def versions(servers) -> list[dict]:
    try:
        found = mlflow_get(servers, "model-versions/search", filter=f"name='{MODEL}'")
    except urllib.error.HTTPError:
        return []
    return sorted(found.get("model_versions", []), key=lambda v: int(v["version"]))


def aliases(servers) -> dict[str, str]:
    try:
        model = mlflow_get(servers, "registered-models/get", name=MODEL)["registered_model"]
    except urllib.error.HTTPError:
        return {}
    return {a["alias"]: a["version"] for a in model.get("aliases", [])}


def pipeline_runs(servers) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(servers.mlflow.url)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.`xpz.kind` = 'pipeline'")


def prefect_flow_run(flow_run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


@pytest.fixture(scope="module")
def project(spawned_servers, tmp_path_factory, small_dataset_path, server_pair) -> Path:
    # spawned_servers first: the servers start while the dataset is generated
    root = tmp_path_factory.mktemp("flows") / "project"
    return make_project(
        root,
        small_dataset_path,
        MODEL,
        EXPERIMENT,
        overrides={"tune.max_trials": MAX_TRIALS, "train.epochs": 2},
    )


@pytest.fixture(scope="module")
def crashed_then_resumed(project, server_pair):
    """A flow process killed after its first tuning trial, then an in-process run that resumes it."""
    proc = run_flow_process(project, server_pair)
    tuning = project / "tuning"

    def first_trial_done() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the flow ended before it could be killed:\n{process_output(proc)[-3000:]}")
        # the oracle records a finished trial in oracle.json (end_order) after its trial.json: wait
        # for that, or a kill in between leaves a trial the resumed search must run again
        for oracle in tuning.glob("xpz-*/oracle.json"):
            try:
                if json.loads(oracle.read_text()).get("end_order"):
                    return True
            except json.JSONDecodeError:  # being written
                pass
        return False

    try:
        wait_for(first_trial_done, 300, 0.2, "the first tuning trial")
    finally:
        stop_process_group(proc, signal.SIGKILL)
    completed_before = sorted(
        p.parent.name for p in tuning.glob("xpz-*/trial_*/trial.json")
        if json.loads(p.read_text()).get("status") == "COMPLETED"
    )  # fmt: skip
    return {"completed_before": completed_before}


@pytest.fixture(scope="module")
def first_run(project, crashed_then_resumed, server_pair):
    """The resumed run, in this process, against the servers."""
    import os

    flow_mod = _flow_module()
    old = Path.cwd()
    t0 = time.perf_counter()
    with use_servers(server_pair):
        os.chdir(project)
        try:
            state = flow_mod.train_pipeline(return_state=True)
        finally:
            os.chdir(old)
    return {"state": state, "seconds": time.perf_counter() - t0, **crashed_then_resumed}


def test_flow_run_is_completed_in_prefect_with_summary_artifact(servers, first_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )

    state = first_run["state"]
    assert state.is_completed(), state.message
    info = state.result()
    flow_run_id = state.state_details.flow_run_id
    run = prefect_flow_run(flow_run_id)
    assert run.state.type.value == "COMPLETED"

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    names = {t.name.rsplit("-", 1)[0] for t in tasks}
    assert {"validate", "split-check", "start-mlflow-run", "tune", "train", "evaluate", "log-evaluation",
            "log-model", "register", "promote", "write-reports", "summary-artifact"} <= names  # fmt: skip
    assert all(t.state.type.value == "COMPLETED" for t in tasks)
    markdown = [a for a in artifacts if a.type == "markdown" and a.key == "xpz-train-summary"]
    assert markdown, artifacts
    text = markdown[0].data
    assert info["mlflow_run_id"] in text and "| bin |" in text and "0.10-0.15" in text


def test_mlflow_run_has_per_bin_metrics_figures_and_a_champion_version(servers, first_run, project):
    info = first_run["state"].result()
    run_id = info["mlflow_run_id"]
    run = mlflow_get(servers, "runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert "test_mae" in metrics and not any(k.startswith("baseline_") for k in metrics)  # nested runs
    per_bin = [k for k in metrics if k.startswith("bin_") and k.endswith("/mean_error")]
    assert "bin_0.10-0.15/mean_error" in per_bin and len(per_bin) >= 5
    assert tags["prefect.flow_run_id"] == str(first_run["state"].state_details.flow_run_id)
    assert tags["xpz.profile"] == "smoke" and tags["xpz.split_digest.test"]

    figures = mlflow_get(servers, "artifacts/list", run_id=run_id, path="figures").get("files", [])
    assert {"figures/bin_bias.png", "figures/pred_vs_true.png", "figures/z_histogram.png"} <= {
        f["path"] for f in figures
    }
    # the artifact bytes come back over HTTP through the server's artifact proxy
    url = f"{servers.mlflow.url}/get-artifact?" + urllib.parse.urlencode(
        {"run_id": run_id, "path": "evaluation/per_bin.csv"}
    )
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.read().decode().startswith("bin,")

    found = versions(servers)
    assert [v["version"] for v in found] == ["1"] and found[0]["run_id"] == run_id
    assert aliases(servers) == {"champion": "1", "challenger": "1"}
    assert info["model_version"] == "1" and info["decision"] == "promoted"

    # the DVC outputs of the run
    reports = project / "reports"
    assert json.loads((reports / "run.json").read_text())["run_id"] == run_id
    assert json.loads((reports / "metrics.json").read_text())["test_mae"] == pytest.approx(
        metrics["test_mae"]
    )
    assert (reports / "bin_table.csv").read_text().startswith("bin,z_lo,z_hi,mean_error")
    assert {p.name for p in (reports / "figures").glob("*.png")} >= {"bin_bias.png", "pred_vs_true.png"}


def test_rerun_after_a_crash_in_tuning_resumes_the_search(servers, first_run):
    """The killed run had finished some trials; the re-run ran only the missing ones."""
    completed_before = first_run["completed_before"]
    assert 1 <= len(completed_before) < MAX_TRIALS
    run_id = first_run["state"].result()["mlflow_run_id"]
    from mlflow import MlflowClient

    client = MlflowClient(servers.mlflow.url)
    run = client.get_run(run_id)
    nested = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}' and tags.xpz.kind = 'trial'"
    )
    assert run.data.tags["xpz.tune_trials"] == str(MAX_TRIALS)
    assert len(nested) == MAX_TRIALS - len(completed_before)
    rerun_ids = {r.data.tags["xpz.trial_id"] for r in nested}
    assert not rerun_ids & {name.removeprefix("trial_") for name in completed_before}


def test_invalid_data_fails_the_flow_with_the_summary_and_registers_nothing(
    servers, first_run, project, tmp_path
):
    from xpz.data.io import read_dataset, write_dataset

    flow_mod = _flow_module()
    bad = tmp_path / "bad"
    shutil.copytree(project, bad, ignore=shutil.ignore_patterns("tuning", "reports", "*.log"))
    df = read_dataset(bad / "data" / "galaxies.parquet")
    bad_id = int(df.loc[7, "source_id"])
    df.loc[7, "z"] = 0.95
    df.loc[8, "flux_010"] = np.nan
    write_dataset(df, bad / "data" / "galaxies.parquet")
    before_versions, before_aliases, before_runs = (
        versions(servers),
        aliases(servers),
        len(pipeline_runs(servers)),
    )

    state = flow_mod.train_pipeline(params=str(bad / "params.yaml"), reports_dir=str(bad / "reports"),
                                    overrides={"data.path": str(bad / "data" / "galaxies.parquet"),
                                               "split.path": str(bad / "splits" / "split.parquet"),
                                               "split.digests": str(bad / "splits" / "digests.json"),
                                               "validate.report_dir": str(bad / "reports" / "validation")},
                                    return_state=True)  # fmt: skip
    assert state.is_failed()
    flow_run_id = state.state_details.flow_run_id
    assert prefect_flow_run(flow_run_id).state.type.value == "FAILED"
    logs = flow_run_logs(flow_run_id, contains="validation FAILED")
    assert str(bad_id) in logs and "z" in logs
    assert versions(servers) == before_versions and aliases(servers) == before_aliases
    assert len(pipeline_runs(servers)) == before_runs  # failed before any MLflow run was created
    assert not (bad / "reports" / "run.json").exists()


def test_two_runs_at_once_do_not_corrupt_each_other(servers, first_run, project):
    before = {v["version"] for v in versions(servers)}
    procs = [run_flow_process(project, servers), run_flow_process(project, servers)]
    try:
        for proc in procs:
            proc.wait(600)
    finally:
        for proc in procs:
            stop_process_group(proc)
    outputs = [process_output(p) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    results = [json.loads(o.strip().splitlines()[-1]) for o in outputs]
    run_ids = {r["mlflow_run_id"] for r in results}
    new_versions = {r["model_version"] for r in results}
    assert len(run_ids) == 2 and len(new_versions) == 2 and not new_versions & before

    by_version = {v["version"]: v for v in versions(servers)}
    from mlflow import MlflowClient

    client = MlflowClient(servers.mlflow.url)
    for result in results:
        version = by_version[result["model_version"]]
        assert version["run_id"] == result["mlflow_run_id"]  # each version points at its own run ...
        run = client.get_run(result["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        outputs_ = run.outputs.model_outputs if run.outputs else []
        assert len(outputs_) == 1  # ... which logged exactly one model
        arts = {f.path for f in client.list_artifacts(result["mlflow_run_id"], "evaluation")}
        assert {"evaluation/per_bin.csv", "evaluation/predictions.parquet"} <= arts
        tags = {t["key"]: t["value"] for t in version.get("tags", [])}
        assert tags["xpz.decision"] in ("promoted", "challenger")
    champion = aliases(servers)["champion"]
    assert champion in by_version
    champ_tags = {t["key"]: t["value"] for t in by_version[champion].get("tags", [])}
    assert champ_tags["xpz.decision"] in ("promoted", "manual_promotion")
    run_json = json.loads((project / "reports" / "run.json").read_text())
    assert run_json["run_id"] in run_ids  # one of the two wrote last, atomically


def test_validation_cache_key_follows_the_data_digest(tmp_path):
    from xpz.config import ValidateConfig

    flow_mod = _flow_module()
    data = tmp_path / "a.parquet"
    data.write_bytes(b"one")
    policy = flow_mod.DataDigest()
    key = policy.compute_key(None, {"data_path": str(data), "cfg": ValidateConfig()}, {})
    assert key == policy.compute_key(None, {"data_path": str(data), "cfg": ValidateConfig()}, {})
    assert key != policy.compute_key(None, {"data_path": str(data), "cfg": ValidateConfig(min_rows=5)}, {})
    data.write_bytes(b"two")
    assert key != policy.compute_key(None, {"data_path": str(data), "cfg": ValidateConfig()}, {})
    assert (
        policy.compute_key(None, {"data_path": str(tmp_path / "missing"), "cfg": ValidateConfig()}, {})
        is None
    )


@pytest.mark.parametrize(
    ("sig", "status", "how"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")]
)
def test_a_stopped_flow_says_one_line_and_ends_its_mlflow_run_killed(
    spawned_servers, small_dataset_path, server_pair, tmp_path, sig, status, how
):
    """`python flows/train_pipeline.py` stopped during training (SIGTERM, Ctrl-C): one line on stderr
    and no traceback, exit 143 / 130, its MLflow run KILLED (as `xpz run`), not FAILED."""
    import subprocess

    experiment = f"xpz-flows-stop-{how.lower()}"
    project = make_project(tmp_path / "project", small_dataset_path, f"{MODEL}-stop", experiment,
                           overrides={"tune.enabled": False, "train.epochs": 500,
                                      "eligibility.enabled": False})  # fmt: skip
    err = tmp_path / "stderr.txt"
    with err.open("wb") as fe:
        proc = subprocess.Popen(
            [sys.executable, "flows/train_pipeline.py"], cwd=project, env=server_pair.env(),
            stdout=subprocess.DEVNULL, stderr=fe, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        from mlflow import MlflowClient

        client = MlflowClient(server_pair.mlflow.url)

        def training() -> str | None:
            assert proc.poll() is None, f"exited {proc.returncode}:\n{err.read_text()[-3000:]}"
            exp = client.get_experiment_by_name(experiment)
            for run in client.search_runs([exp.experiment_id]) if exp else []:
                if "xpz.tuned" in run.data.tags:  # tagged by the tune task, just before train
                    return run.info.run_id
            return None

        run_id = wait_for(training, 300, 0.5, "the flow's MLflow run to reach training")
        time.sleep(3)  # inside model.fit
        proc.send_signal(sig)  # to the flow's process, as a shell's Ctrl-C or `kill` does
        proc.wait(120)
        stderr = err.read_text()
        assert proc.returncode == status, stderr[-3000:]
        assert "Traceback" not in stderr, stderr[-3000:]
        assert stderr.count("error: ") == 1, stderr[-3000:]
        assert stderr.strip().splitlines()[-1] == f"error: train_pipeline stopped by {how}"
        assert client.get_run(run_id).info.status == "KILLED", stderr[-3000:]
    finally:
        stop_process_group(proc, signal.SIGKILL)
