"""No traceback from user input: every command, driven with bad values and files, prints one clear
`error: ...` line and exits with status 2 (bad cron, unknown alias or version, corrupt file, missing
file, bad -S override, unknown profile, unreadable params)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from conftest import copy_params, random_frame
from xpz.cli import app
from xpz.data.io import write_dataset

runner = CliRunner()

CORRUPT_PARQUET = b"PAR1 this is not a parquet file at all" * 10

# (label, argv, words the message must contain); paths are relative to the test's workdir
CASES = [
    # -S overrides, profiles, params files: every command that reads params
    *[
        (f"{cmd} bad -S", [*cmd.split(), "-S", "train.epochs"], ["KEY=VALUE"])
        for cmd in (
            "data generate",
            "data import good.parquet",
            "data validate",
            "data split",
            "data show",
            "tune",
            "train",
            "evaluate --model m",
            "run",
            "models",
            "promote 1",
            "schedule show",
        )
    ],
    *[
        (f"{cmd} unknown -S key", [*cmd.split(), "-S", "train.no_such_knob=3"], ["no_such_knob"])
        for cmd in (
            "data generate",
            "data import good.parquet",
            "data validate",
            "data show",
            "run",
            "models",
            "promote 1",
            "schedule show",
        )
    ],
    ("run bad -S value", ["run", "-S", "train.epochs=many"], ["epochs"]),
    *[
        (f"{cmd} unknown profile", [*cmd.split(), "--profile", "nope"], ["nope"])
        for cmd in (
            "data generate",
            "data validate",
            "data show",
            "tune",
            "models",
            "promote 1",
            "schedule show",
        )
    ],
    *[
        (f"{cmd} missing params", [*cmd.split(), "--params", "missing.yaml"], ["missing.yaml"])
        for cmd in ("data generate", "data validate", "train", "models", "schedule show")
    ],
    ("corrupt params", ["data", "split", "--params", "corrupt.yaml"], ["corrupt.yaml"]),
    # data files: missing, corrupt
    ("validate missing file", ["data", "validate", "--path", "missing.parquet"], ["missing.parquet"]),
    ("validate corrupt file", ["data", "validate", "--path", "corrupt.parquet"], ["corrupt.parquet"]),
    ("show missing file", ["data", "show", "--path", "missing.parquet"], ["missing.parquet"]),
    ("show corrupt file", ["data", "show", "--path", "corrupt.parquet"], ["corrupt.parquet"]),
    ("import missing file", ["data", "import", "missing.csv"], ["missing.csv"]),
    ("import corrupt file", ["data", "import", "corrupt.csv"], ["corrupt.csv"]),
    ("split without data", ["data", "split"], ["galaxies.parquet"]),
    ("train without data", ["train"], ["galaxies.parquet"]),
    ("tune without data", ["tune"], ["galaxies.parquet"]),
    ("train corrupt hyperparameters", ["train", "--hyperparameters", "corrupt.json"], ["corrupt.json"]),
    ("train missing hyperparameters", ["train", "--hyperparameters", "missing.json"], ["missing.json"]),
    (
        "train hyperparameters, config form",
        ["train", "--hyperparameters", "config_form.json"],
        ["config_form.json", "conv_layers", "dense_layers", "flat form"],
    ),
    (
        "train hyperparameters, a layer short",
        ["train", "--hyperparameters", "short.json"],
        ["short.json", "kernel_1", "units_0"],
    ),
    ("params is a folder", ["data", "show", "--params", "afolder"], ["afolder: is a folder"]),
    ("predict missing file", ["predict", "missing.parquet", "-m", "model.keras"], ["missing.parquet"]),
    ("predict corrupt file", ["predict", "corrupt.parquet", "-m", "{registered}"], ["corrupt.parquet"]),
    ("predict bad format", ["predict", "corrupt.parquet", "--format", "xls", "-m", "{registered}"], ["xls"]),
    # models: unknown alias, version, run
    ("predict unknown alias", ["predict", "good.parquet", "-m", "{unknown_alias}"], ["nope"]),
    ("predict unknown version", ["predict", "good.parquet", "-m", "models:/{name}/99"], ["99"]),
    ("evaluate unknown alias", ["evaluate", "--model", "{unknown_alias}"], ["nope"]),
    ("evaluate neither run nor model", ["evaluate"], ["--run-id"]),
    ("evaluate unknown run", ["evaluate", "--run-id", "0123456789abcdef"], ["0123456789abcdef"]),
    ("promote unknown version", ["promote", "99"], ["99"]),
    ("promote non-number", ["promote", "abc"], ["whole number", "'abc'"]),
    (
        "evaluate --model --register",
        ["evaluate", "--model", "{registered}", "--register"],
        ["--register needs --run-id"],
    ),
    # outputs that could only fail after the work: refused before it (no run, no tuning, no logging)
    (
        "run --reports is a file",
        ["run", "--no-tune", "--no-register", "--reports", "afile.txt"],
        ["--reports afile.txt: is a file"],
    ),
    (
        "evaluate --reports is a file",
        ["evaluate", "--run-id", "0123456789abcdef", "--reports", "afile.txt"],
        ["--reports afile.txt: is a file"],
    ),
    (
        "tune --directory is a file",
        ["tune", "--directory", "afile.txt"],
        ["--directory afile.txt: is a file"],
    ),
    (
        "tune -S tune.directory is a file",
        ["tune", "-S", "tune.directory=afile.txt"],
        ["tune.directory afile.txt: is a file"],
    ),
    ("tune --out is a folder", ["tune", "--out", "afolder"], ["--out afolder: is a folder"]),
    ("promote non-ASCII digit", ["promote", "\u00b2"], ["whole number"]),
    # schedules: bad cron, time zone
    *[
        (f"schedule {cmd} bad cron", ["schedule", *cmd.split(), "--cron", "61 * * * *"], ["61 * * * *"])
        for cmd in ("show", "serve", "deploy --work-pool p")
    ],
    ("schedule bad cron in params", ["schedule", "show", "-S", "schedule.cron=* * *"], ["cron"]),
    ("schedule -S cron, not YAML", ["schedule", "show", "-S", "schedule.cron=61 * * * *"], ["61 * * * *"]),
    ("schedule bad time zone", ["schedule", "show", "-S", "schedule.timezone=Mars/Base"], ["Mars/Base"]),
]


@pytest.fixture(scope="module")
def project(tmp_path_factory, registered):
    import keras  # noqa: F401  - import what sets up logging before CliRunner swaps sys.stderr
    import mlflow  # noqa: F401
    import prefect.schedules  # noqa: F401

    root = tmp_path_factory.mktemp("cli-errors")
    copy_params(root)
    (root / "corrupt.yaml").write_text("profile: [smoke\n  data: {")
    (root / "corrupt.parquet").write_bytes(CORRUPT_PARQUET)
    (root / "corrupt.csv").write_text("z,flux_000\n0.1,\x00\x01garbage,,,\n\"unterminated\n")
    (root / "corrupt.json").write_text("{not json")
    (root / "config_form.json").write_text('{"conv_filters": "x"}')  # params.yaml's form, not the flat one
    (root / "short.json").write_text(
        '{"conv_layers": 2, "filters_0": 8, "kernel_0": 3, "filters_1": 8, "dense_layers": 1}'
    )
    (root / "afolder").mkdir()
    (root / "afile.txt").write_text("not a folder\n")
    write_dataset(random_frame(20, seed=1), root / "good.parquet")
    return root, registered


@pytest.mark.parametrize("label,argv,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_message_and_exit_2(project, monkeypatch, label, argv, words):
    root, registered = project
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered.tracking_uri)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    subs = {"{registered}": registered.champion, "{unknown_alias}": f"models:/{registered.name}@nope"}
    argv = [subs.get(a, a).replace("{name}", registered.name) for a in argv]
    result = runner.invoke(app, argv)
    output = result.output
    assert result.exit_code == 2, f"{label}: exit {result.exit_code}\n{output}\n{result.exception!r}"
    assert "Traceback" not in output, output
    assert (
        output.startswith("error: ") and sum(line.startswith("error: ") for line in output.splitlines()) == 1
    ), output
    assert all(w in output for w in words), f"{label}: {words} not in {output!r}"


@pytest.mark.slow  # > 5 s: left out of `make check`
def test_prefect_startup_timeout_is_one_clear_message(tmp_path):
    """The flow's command line (the DVC `train` stage) without PREFECT_API_URL: when Prefect's temporary
    server does not come up in time, one message says what to change, exit 2, no traceback."""
    import os
    import shutil
    import subprocess
    import sys

    from conftest import REPO

    shutil.copytree(REPO / "flows", tmp_path / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    copy_params(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0"
    )
    proc = subprocess.run([sys.executable, "flows/train_pipeline.py", "--profile", "smoke"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert (
        len(errors) == 1
        and "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in errors[0]
        and "PREFECT_API_URL" in errors[0]
    )


@pytest.mark.parametrize(
    ("script", "args", "needle"),
    [
        ("bench_eligibility", ["--n", "0"], "argument --n: must be at least 10, got 0"),
        ("bench_coverage", ["--n", "-1"], "argument --n: must be at least 0, got -1"),
        ("bench_flow", ["--repeats", "two"], "argument --repeats: expected a whole number, got 'two'"),
        ("bench_model", ["--profile", "nope", "--throughput-only"], "error: profile: unknown profile 'nope'"),
    ],
)
def test_benchmarks_refuse_bad_counts_and_profiles_with_one_message(script, args, needle):
    """Before `benchmarks/_cli.py`: tracebacks (`--n 0`, a bad profile) or a run with a negative count."""
    from conftest import REPO, run_benchmark

    proc = run_benchmark(script, *args, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# ---------------------------------------------------------------- read-only commands, registry retries


@pytest.mark.parametrize(
    "argv",
    [["models"], ["promote", "1"], ["predict", "good.parquet"]],
    ids=["models", "promote", "predict"],
)
def test_read_only_commands_refuse_a_missing_sqlite_store(project, tmp_path, monkeypatch, argv):
    """A sqlite store that does not exist is one message, not a new empty database ("no versions")."""
    root, _ = project
    monkeypatch.chdir(root)
    missing = tmp_path / "nowhere" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}")
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: no MLflow store at {missing}"), result.output
    assert "Traceback" not in result.output and len(result.output.splitlines()) == 1, result.output
    assert not missing.exists() and not missing.parent.exists()


@pytest.fixture()
def own_registry(tmp_path, monkeypatch, dataset):
    """A tiny model registered (v1, champion, decision `promoted`) in a store of this test's own."""
    from xpz.spectra import flux_matrix
    from xpz_models import register_tiny_model

    reg = register_tiny_model(tmp_path / "store", flux_matrix(dataset), name="xpz-fix-a")
    copy_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", reg.tracking_uri)
    return reg


def _version_tags(reg, version: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return dict(MlflowClient(reg.tracking_uri, reg.tracking_uri).get_model_version(reg.name, version).tags)


def test_promote_the_champion_changes_nothing(own_registry):
    reg = own_registry
    before = _version_tags(reg, reg.version)
    assert before["xpz.decision"] == "promoted"
    for arg in (reg.version, f" {reg.version} "):  # whitespace is stripped
        result = runner.invoke(app, ["promote", arg, "-S", f"tracking.registered_model={reg.name}"])
        assert result.exit_code == 0, result.output
        assert f"v{reg.version} is already the champion" in result.output, result.output
        assert "v " not in result.output, result.output
    assert _version_tags(reg, reg.version) == before


def test_evaluate_register_twice_keeps_one_version(own_registry, monkeypatch):
    """`xpz evaluate --run-id R --register` for a run whose model is registered already reports that
    version and creates no other (retry-safe, as the flow's register step)."""
    from types import SimpleNamespace

    from mlflow import MlflowClient

    from xpz import pipeline, tracking

    reg = own_registry
    client = MlflowClient(reg.tracking_uri, reg.tracking_uri)
    run_id = client.get_model_version(reg.name, reg.version).run_id
    fake = SimpleNamespace(bin_table="(per-bin table)", metrics={"test_mae": 0.01})  # better: would win
    monkeypatch.setattr(pipeline, "load_splits", lambda cfg: None)
    monkeypatch.setattr(pipeline, "evaluate_step", lambda *a, **k: fake)
    monkeypatch.setattr(tracking, "load_keras_model", lambda uri: None)
    monkeypatch.setattr(tracking, "run_history", lambda tr, run_id: None)
    argv = ["evaluate", "--run-id", run_id, "--register", "-S", f"tracking.registered_model={reg.name}"]
    for _ in range(2):
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
        assert f"already {reg.name} v{reg.version}" in result.output, result.output
    assert [str(mv.version) for mv in client.search_model_versions(f"name = '{reg.name}'")] == [reg.version]
