"""benchmarks/bench_families.py as the dev protocol runs it (docs/families.md): parameters changed with
--set, no held-out family with --no-held, a bad override stopped with one message."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import run_benchmark

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_benchmark("bench_families", *args, cwd=cwd, timeout=900)


def test_a_bad_override_is_one_message_and_exit_2(tmp_path):
    done = _run("--params", str(REPO / "params.yaml"), "--set", "model.pixel_scaling=log", cwd=tmp_path)
    assert done.returncode == 2
    assert "pixel_scaling" in done.stderr and "Traceback" not in done.stderr
    done = _run("--params", str(REPO / "params.yaml"), "--set", "model.pixel_scaling", cwd=tmp_path)
    assert done.returncode == 2 and "KEY=VALUE" in done.stderr


@pytest.mark.slow
def test_dev_protocol_run_applies_overrides_and_never_tests_the_held_out_family(tmp_path):
    out = tmp_path / "dev.json"
    done = _run(
        "--params", str(REPO / "params.yaml"), "--profile", "smoke", "--n", "3000", "--seed", "11", "--no-held",
        "--set", "eligibility.enabled=false", "--set", "model.pixel_scaling=minmax", "--set", "train.members=1",
        "--json", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    run = result["run"]
    assert run["seed"] == 11 and run["n_held"] == 0 and run["members"] == 1
    assert run["overrides"] == ["eligibility.enabled=false", "model.pixel_scaling=minmax", "train.members=1"]
    scores = result["scores"]
    assert set(scores) == {"all but bagpipes", "all but cosmos", "all but kcorrect", "all"}
    assert all("cww" not in by_family for by_family in scores.values())
    left_out = scores["all but cosmos"]["cosmos"]
    assert left_out["seen"] is False and 0 < left_out["mae"] < 0.6
    # a family left out is scored on every galaxy generated of it (all splits), the others on the
    # test split: the three left-out rows hold the whole dataset, ~10x the test rows
    assert sum(scores[f"all but {f}"][f]["n"] for f in ("bagpipes", "cosmos", "kcorrect")) == 3000
    families = ("bagpipes", "cosmos", "kcorrect")
    assert all(scores["all"][f]["n"] < 0.2 * scores[f"all but {f}"][f]["n"] for f in families)
    assert scores["all but cosmos"]["kcorrect"]["n"] == scores["all"]["kcorrect"]["n"]
    first = scores["all but bagpipes"]
    assert [row[-1] for row in result["rows"][:3]] == [f"{first[f]['n']:,.0f}" for f in families]
    assert all(row[-2] == "-" for row in result["rows"])  # no eligibility layer: flagged not assessed
    assert "cww" not in done.stdout.split("Physics gap")[1]
