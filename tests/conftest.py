"""Shared fixtures: a small generated dataset, the repo's params, telemetry off."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from xpz.env import quiet_telemetry

quiet_telemetry()
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def smoke_config():
    from xpz.config import load_config

    return load_config(REPO / "params.yaml", profile="smoke")


@pytest.fixture(scope="session")
def small_dataset_path(tmp_path_factory, smoke_config) -> Path:
    """A 1,500-galaxy synthetic dataset in our Parquet schema, generated once per session."""
    from xpz.data.stages import generate_dataset

    cfg = smoke_config.data.model_copy(update={"n_galaxies": 1500, "chunk_size": 500})
    path = tmp_path_factory.mktemp("data") / "galaxies.parquet"
    generate_dataset(cfg, path, progress=False)
    return path


@pytest.fixture()
def small_dataset(small_dataset_path) -> pd.DataFrame:
    from xpz.data.io import read_dataset

    return read_dataset(small_dataset_path)


@pytest.fixture(scope="module")
def dataset(small_dataset_path) -> pd.DataFrame:
    """The small generated dataset, read once per test module."""
    from xpz.data.io import read_dataset

    return read_dataset(small_dataset_path)


@pytest.fixture(scope="module")
def registered(tmp_path_factory, dataset):
    """A tiny model logged and registered through xpz.tracking (champion alias), once per module."""
    from xpz.spectra import flux_matrix
    from xpz_models import shared_registered

    return shared_registered(tmp_path_factory, flux_matrix(dataset))


@pytest.fixture()
def workdir(tmp_path, monkeypatch) -> Path:
    """Run a test inside an empty folder (relative outputs land there, never in the repo)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def copy_params(dst: Path) -> Path:
    target = dst / "params.yaml"
    shutil.copy(REPO / "params.yaml", target)
    return target


def benchmark_module(name: str):
    """The module benchmarks/NAME.py (benchmarks is a folder of scripts, not a package)."""
    import importlib
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def run_benchmark(name: str, *args: str, cwd: Path, timeout: int = 900):
    """`python benchmarks/NAME.py ARGS` in `cwd`, as a user runs it: the CompletedProcess (text)."""
    import subprocess
    import sys

    script = REPO / "benchmarks" / f"{name}.py"
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)  # fmt: skip


def random_frame(n: int = 400, seed: int = 0):
    """A frame in the dataset schema with plausible z and positive fluxes (for unit tests that do not
    need physics: io, split, validation)."""
    import numpy as np

    from xpz.spectra import FLUX_COLUMNS

    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        rng.uniform(0.1, 10.0, size=(n, len(FLUX_COLUMNS))).astype("float32"), columns=list(FLUX_COLUMNS)
    )
    df.insert(0, "z", np.clip(rng.gamma(3.34, 0.142 / 3.34, n), 1e-4, 0.6))
    df.insert(0, "source_id", (np.arange(n, dtype=np.int64) + 1) * 1_000_003)
    return df


# Real MLflow and Prefect servers on 127.0.0.1 (session fixture `server_pair`, per-test `servers`):
# defined in tests/conftest_servers.py, imported here so that one pair serves the whole session.
from conftest_servers import server_pair, servers, spawned_servers  # noqa: E402,F401

# ----------------------------------------------------------------------------- layers of tests
# Every test file belongs to one kind; its tests get that marker (`pytest -m unit`, `-m "data or
# model"`, ...). `make check` runs `-m "not slow and not integration"` (fast); `make test` runs all.
KINDS = {
    "unit": ("test_config", "test_layout", "test_docs", "test_cli_errors", "test_cards", "test_env"),
    "data": (
        "test_io",
        "test_split",
        "test_synthetic",
        "test_validation",
        "test_xp",
        "test_gaia_formats",
        "test_data_cli",
        "test_reproducible",
        "test_families",
    ),  # fmt: skip
    "model": (
        "test_model",
        "test_train_tune",
        "test_budget",
        "test_conformal",
        "test_reliability",
        "test_stars",
        "test_inference",
        "test_saving",
        "test_evaluate",
        "test_bench_families",
        "test_bench_eligibility_dev",
        "test_bench_oracle",
    ),  # fmt: skip
    "integration": (
        "test_dvc",
        "test_flows",
        "test_scaleout",
        "test_schedule",
        "test_servers",
        "test_tracking",
        "test_pipeline",
        "test_predict",
        "test_serving",
        "test_relocate",
        "test_safety",
        "test_team",
        "test_bench_heldout",
        "test_bench_flow",
    ),  # fmt: skip
}
KIND_OF = {name: kind for kind, names in KINDS.items() for name in names}


def pytest_collection_modifyitems(config, items):
    for item in items:
        kind = KIND_OF.get(item.path.stem)
        if kind is None:
            raise pytest.UsageError(f"{item.path.name}: add it to one kind in tests/conftest.py KINDS")
        item.add_marker(getattr(pytest.mark, kind))
