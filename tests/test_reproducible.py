"""The dataset is a function of params.yaml and the locked environment: two separate processes (other
hash seeds, other thread counts) write the same bytes, and the default set regenerated from scratch has
exactly the md5 recorded in data.dvc (the fresh-clone check; `make check-data` runs it)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

XPZ = str(Path(sys.executable).parent / "xpz")


def generate(out: Path, *args: str, **env: str) -> None:
    proc = subprocess.run(
        [XPZ, "data", "generate", "--params", str(REPO / "params.yaml"), "--out", str(out), "--force", *args],
        cwd=out.parent, env={**os.environ, "DVC_NO_ANALYTICS": "1", **env}, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow  # > 5 s: left out of `make check`
def test_two_processes_write_the_same_bytes(tmp_path):
    small = ["--profile", "smoke", "-S", "data.n_galaxies=600", "-S", "data.chunk_size=250"]
    generate(tmp_path / "a.parquet", *small, PYTHONHASHSEED="1", OMP_NUM_THREADS="1")
    generate(tmp_path / "b.parquet", *small, PYTHONHASHSEED="2", OMP_NUM_THREADS="2")
    a, b = (tmp_path / "a.parquet").read_bytes(), (tmp_path / "b.parquet").read_bytes()
    assert len(a) > 100_000 and a == b


@pytest.mark.slow
def test_generate_pins_the_blas_kernels(tmp_path):
    """OpenBLAS's own choice of kernels changes the bytes (Sandybridge's and Zen's differ at 5,000
    galaxies a chunk); `xpz data generate` writes the bytes of the pinned kernels (`xpz.data.kernels`)
    whichever OPENBLAS_CORETYPE it is started with."""
    args = ["-S", "data.n_galaxies=10000", "-S", "data.chunk_size=5000"]
    generate(tmp_path / "zen.parquet", *args, OPENBLAS_CORETYPE="Zen")
    generate(tmp_path / "sandybridge.parquet", *args, OPENBLAS_CORETYPE="Sandybridge")
    zen, other = (tmp_path / "zen.parquet").read_bytes(), (tmp_path / "sandybridge.parquet").read_bytes()
    assert len(zen) > 1_000_000 and zen == other


def test_pinned_work_runs_with_the_recorded_kernels():
    """`run_with_pinned_blas` runs its function where OpenBLAS uses `CORETYPE`'s kernels: here when
    this process already does, else in a fresh process (an Intel Xeon's SkylakeX -> Zen)."""
    from xpz.data.kernels import SAME_KERNELS, blas_kernels, run_with_pinned_blas

    assert blas_kernels(), "numpy from the lock links OpenBLAS"
    pinned = {k.lower() for k in run_with_pinned_blas(blas_kernels)}
    assert pinned and pinned <= SAME_KERNELS


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("XPZ_CHECK_DATA") != "1", reason="200,000 galaxies: `make check-data` (XPZ_CHECK_DATA=1)"
)
def test_default_dataset_regenerates_to_the_md5_in_data_dvc(tmp_path):
    """What a fresh clone without the DVC remote does (`make data`): generate, then `dvc add` data/.
    Only where numpy runs the AVX-512 loops of the host that recorded the md5 (`xpz.data.kernels`)."""
    from xpz.data.kernels import NUMPY_DISPATCH, numpy_matches_record

    if not numpy_matches_record():
        pytest.skip(
            f"this CPU lacks numpy's {NUMPY_DISPATCH} (AVX-512) loops: other bytes (docs/operations.md)"
        )
    repo = tmp_path / "clone"
    (repo / "data").mkdir(parents=True)
    generate(repo / "data" / "galaxies.parquet", "--profile", "default")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for cmd in (["dvc", "init", "--no-scm", "-q"], ["dvc", "add", "--no-commit", "-q", "data"]):
        subprocess.run(
            [str(Path(sys.executable).parent / cmd[0]), *cmd[1:]], cwd=repo, env=env, check=True, timeout=600
        )
    recorded = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]
    regenerated = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]
    file_md5 = hashlib.md5((repo / "data" / "galaxies.parquet").read_bytes()).hexdigest()
    assert (regenerated["md5"], regenerated["size"]) == (recorded["md5"], recorded["size"]), (
        f"galaxies.parquet md5 {file_md5}"
    )
