"""DVC pipeline in a real temporary repository: repro runs validate -> split, a second repro does
nothing, a changed split.seed re-runs only `split`, and a bad dataset stops before the split."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, random_frame
from xpz.data.io import write_dataset

pytestmark = pytest.mark.integration


def sh(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
    }
    proc = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture()
def dvc_repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml",):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "src" / "xpz", repo / "src" / "xpz", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "smoke"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "git", "init", "-q")
    sh(repo, "dvc", "init", "-q")
    write_dataset(random_frame(1500, seed=4), repo / "data" / "galaxies.parquet")
    sh(repo, "dvc", "add", "-q", "data")
    return repo


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


def test_repro_is_idempotent_and_reruns_only_what_changed(dvc_repo):
    # the data stages only (`dvc repro split`): the `train` stage (the Prefect flow) is covered by
    # tests/test_servers.py::test_dvc_repro_runs_the_train_stage
    sh(dvc_repo, "dvc", "repro", "split")
    split_file = dvc_repo / "splits" / "split.parquet"
    result_file = dvc_repo / "reports" / "validation" / "result.json"
    assert split_file.exists() and result_file.exists()
    assert (dvc_repo / "dvc.lock").exists()
    first_split, first_result = _mtime(split_file), _mtime(result_file)

    second = sh(dvc_repo, "dvc", "repro", "split")
    assert "up to date" in second.stdout.lower() or "didn't change" in second.stdout.lower()
    assert _mtime(split_file) == first_split and _mtime(result_file) == first_result
    assert "up to date" in sh(dvc_repo, "dvc", "status", "split").stdout.lower()

    params = yaml.safe_load((dvc_repo / "params.yaml").read_text())
    params["split"]["seed"] = 7
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = sh(dvc_repo, "dvc", "repro", "split")
    assert "Running stage 'split'" in third.stdout
    assert "Running stage 'validate'" not in third.stdout
    assert _mtime(result_file) == first_result and _mtime(split_file) != first_split


def test_bad_dataset_stops_before_split(dvc_repo):
    df = random_frame(1500, seed=4)
    df.loc[10, "z"] = 0.95
    df.loc[11, "flux_007"] = np.nan
    write_dataset(df, dvc_repo / "data" / "galaxies.parquet")
    proc = sh(dvc_repo, "dvc", "repro", "split", check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "validation FAILED" in output and str(df.loc[10, "source_id"]) in output
    assert not (dvc_repo / "splits" / "split.parquet").exists()
    assert (dvc_repo / "reports" / "validation" / "index.html").exists()  # Data Docs for the failure


def test_a_failed_dvc_pull_in_sync_is_a_warning_with_its_reason(tmp_path, monkeypatch):
    """`--sync` (scheduled runs): a `dvc pull` that fails falls back to the local dataset, reported as
    a WARNING that says why (`dvc pull -q` used to hide the reason, logged at INFO)."""
    import subprocess
    import sys

    from xpz.config import DataConfig
    from xpz.data.stages import sync_dataset

    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "galaxies.parquet").write_bytes(b"local")
    (tmp_path / "data.dvc").write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  path: data\n")
    monkeypatch.chdir(tmp_path)
    infos: list[str] = []
    warnings: list[str] = []
    how = sync_dataset(DataConfig(path="data/galaxies.parquet"), log=infos.append, warn=warnings.append)
    assert how == "local" and not infos
    assert len(warnings) == 1 and warnings[0].startswith("dvc pull data.dvc failed; using the local")
    reason = warnings[0].split(":", 1)[1].strip()
    assert reason, warnings
