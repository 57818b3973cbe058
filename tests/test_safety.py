"""A registry a team can trust, without servers: safe promotion under concurrent registrations, clean
kills, orphaned tuning runs closed, and `--model FOLDER` naming the registered model it came from.

Real components only: a real sqlite MLflow store, real processes registering at the same moment, a
real `xpz predict --pdf` process killed with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import random_frame
from xpz.data.io import write_dataset

BIN = Path(sys.executable).parent
NAME = "xpz-race-test"
# candidate test_mae of the racing registrations: better and worse ones interleaved
VALUES = [0.090, 0.050, 0.080, 0.030, 0.070, 0.040]


def _tracking(root: Path):
    from xpz import tracking
    from xpz.config import TrackingConfig

    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = TrackingConfig(experiment="xpz-race", registered_model=NAME, artifact_location=str(root / "mlruns"))
    return tracking.configure(cfg, tracking_uri=uri)


def test_concurrent_registrations_never_replace_a_better_champion(tmp_path):
    """Six registrations at once (threads, each with its own client, released by a barrier); a watcher
    polls `champion` all along: its test_mae never gets worse, no two versions are promoted against the
    same old champion, the best one wins."""
    from xpz import tracking

    tr = _tracking(tmp_path)
    client = tr.client
    value_of: dict[str, float] = {}
    history: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        from mlflow.exceptions import MlflowException

        while not stop.is_set():
            try:
                version = str(client.get_model_version_by_alias(NAME, tracking.CHAMPION).version)
            except MlflowException:
                version = None
            if version and (not history or history[-1] != version):
                history.append(version)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    barrier = threading.Barrier(len(VALUES))
    results: list[object] = []
    errors: list[BaseException] = []

    def register(run_id: str, model_id: str, value: float) -> None:
        try:
            mine = _tracking(tmp_path)  # its own handle and client, as another process would have
            barrier.wait(60)  # all at the same moment
            results.append(tracking.register(mine, run_id, model_id, {"test_mae": value}))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    try:
        threads = []
        for value in VALUES:
            run_id = tracking.start_run(tr, f"race-{value}")
            tracking.log_metrics(tr, run_id, {"test_mae": value})
            model = client.create_logged_model(tr.experiment_id, name="model", source_run_id=run_id)
            threads.append(threading.Thread(target=register, args=(run_id, model.model_id, value)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        time.sleep(0.2)  # the watcher's last look
    finally:
        stop.set()
        watcher.join(5)
    assert not errors, errors

    for mv in client.search_model_versions(f"name = '{NAME}'"):
        value_of[str(mv.version)] = float(mv.tags["xpz.candidate_value"])
    assert len(results) == len(value_of) == len(VALUES)
    seen = [value_of[v] for v in history]
    assert all(b <= a for a, b in zip(seen, seen[1:], strict=False)), (
        f"champion got worse: {list(zip(history, seen, strict=True))}"
    )
    tags = {str(mv.version): mv.tags for mv in client.search_model_versions(f"name = '{NAME}'")}
    promoted = [v for v, t in tags.items() if t["xpz.decision"] == "promoted"]
    befores = [tags[v]["xpz.champion_version_before"] for v in promoted]
    assert len(befores) == len(set(befores)), f"two versions promoted against the same champion: {befores}"
    assert all(tags[v]["xpz.champion_guard"] == "lock" for v in tags)
    final = str(client.get_model_version_by_alias(NAME, tracking.CHAMPION).version)
    assert value_of[final] == min(value_of.values()) == pytest.approx(0.030)


def test_manual_promotion_is_recorded_under_the_lock(tmp_path):
    from xpz import tracking

    tr = _tracking(tmp_path)
    for value in (0.05, 0.07):
        with tracking.run(tr, "m") as run_id:
            model = tr.client.create_logged_model(tr.experiment_id, name="model", source_run_id=run_id)
            tracking.log_metrics(tr, run_id, {"test_mae": value})
            tracking.register(tr, run_id, model.model_id, {"test_mae": value})
    assert tracking.promote(tr, "2", reason="rollback drill") == "1"
    tags = tr.client.get_model_version(NAME, "2").tags
    assert tags["xpz.decision"] == "manual_promotion" and tags["xpz.champion_guard"] == "lock"
    assert tags["xpz.champion_version_before"] == "1" and tracking.aliases(tr)["champion"] == "2"
    assert tracking.registry.champion_lock_path(tr.tracking_uri) == tmp_path / "mlflow.db.champion.lock"


def test_verify_repairs_a_worse_concurrent_promotion(tmp_path):
    """The tracking-server path (no lock): v2 (0.03) and v3 (0.04) were both promoted against v1 and v3
    moved `champion` last; `verify_champion` puts v2 back and re-tags v3 a superseded challenger."""
    from xpz import tracking
    from xpz.tracking.registry import verify_champion

    tr = _tracking(tmp_path)
    client = tr.client
    for value in (0.05, 0.03, 0.04):
        with tracking.run(tr, f"v-{value}") as run_id:
            model = client.create_logged_model(tr.experiment_id, name="model", source_run_id=run_id)
            tracking.log_metrics(tr, run_id, {"test_mae": value})
            if value == 0.05:
                tracking.register(tr, run_id, model.model_id, {"test_mae": value})
                continue
            mv = client.create_model_version(NAME, source=f"models:/{model.model_id}", run_id=run_id,
                                             tags={"xpz.candidate_value": repr(value)})  # fmt: skip
            for key, tag in {"xpz.decision": "promoted", "xpz.champion_version_before": "1"}.items():
                client.set_model_version_tag(NAME, mv.version, key, tag)
    client.set_registered_model_alias(NAME, "champion", "3")  # the worse one moved last
    assert verify_champion(tr, "3", "1") == "2"
    assert tracking.aliases(tr)["champion"] == "2"
    tags = client.get_model_version(NAME, "3").tags
    assert tags["xpz.decision"] == "challenger" and tags["xpz.champion_guard"] == "verify-superseded"
    assert client.get_model_version(NAME, "2").tags["xpz.decision"] == "promoted"
    assert verify_champion(tr, "2", "1") == "2" and tracking.aliases(tr)["champion"] == "2"  # idempotent


# ----------------------------------------------------------------------------------- clean kills


def _leftovers(*folders: Path) -> list[str]:
    return sorted(
        str(p)
        for folder in folders
        for p in folder.rglob("*")
        if p.name.endswith((".tmp", ".tmp.hdf5")) or p.name.startswith("xpz-bundle-")
    )


def test_sigterm_during_predict_pdf_leaves_no_temporary_files(tmp_path, registered):
    """A real `xpz predict --pdf` killed with SIGTERM while it writes: no `.p.parquet.*.tmp`, no
    `.pz.hdf5.*.tmp.hdf5`, no `xpz-bundle-*` folder (TMPDIR is the test's own), no outputs, exit 143."""
    tmpdir, outdir = tmp_path / "tmp", tmp_path / "out"
    tmpdir.mkdir()
    outdir.mkdir()
    source = tmp_path / "spectra.parquet"
    write_dataset(random_frame(60_000, seed=3), source)
    env = {**os.environ, "TMPDIR": str(tmpdir), "MLFLOW_TRACKING_URI": registered.tracking_uri}
    cmd = [str(BIN / "xpz"), "predict", str(source), "-m", registered.champion, "--out", str(outdir / "p.parquet"),
           "--pdf", str(outdir / "pz.hdf5"), "--chunk-size", "1024", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            names = [p.name for p in outdir.iterdir()]
            if any(n.startswith(".p.parquet.") for n in names) and any(
                n.startswith(".pz.hdf5.") for n in names
            ):
                break  # both outputs are being written
            time.sleep(0.02)
        assert proc.poll() is None, f"predict ended before it could be killed:\n{proc.stderr.read()[-2000:]}"
        assert [p for p in tmpdir.iterdir() if p.name.startswith("xpz-bundle-")], "no bundle folder in TMPDIR"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr and stderr.count("error: ") == 1 and "SIGTERM" in stderr, stderr[-3000:]
    assert _leftovers(tmpdir, outdir) == []
    assert list(outdir.iterdir()) == []  # and no partial output


def test_sigterm_marks_the_run_killed_and_a_resumed_search_closes_orphans(tmp_path):
    """In a command (`terminate_raises`), SIGTERM ends `tracking.run` KILLED; a RUNNING tuning run whose
    process is gone is marked KILLED when the same search resumes (`close_orphaned_runs`)."""
    from xpz import tracking
    from xpz.interrupts import Terminated, terminate_raises

    tr = _tracking(tmp_path)
    with pytest.raises(Terminated), terminate_raises():
        with tracking.run(tr, "killed") as killed:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises long before this ends
    assert tr.client.get_run(killed).info.status == "KILLED"

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs: the killed `xpz tune`
    search = str(tmp_path / "tuner" / "search-1")
    tags = {**tracking.process_tags(), "xpz.tune_search": search}
    orphan = tracking.start_run(tr, "tune-orphan", tags={**tags, "xpz.pid": str(dead.pid)})
    alive = tracking.start_run(tr, "tune-alive", tags=tags)  # this process: still running
    other = tracking.start_run(
        tr, "tune-other", tags={**tags, "xpz.pid": str(dead.pid), "xpz.tune_search": "x"}
    )
    current = tracking.start_run(tr, "tune-now", tags=tags)
    assert tracking.close_orphaned_runs(tr, "xpz.tune_search", search, exclude=current) == [orphan]
    status = {r: tr.client.get_run(r).info.status for r in (orphan, alive, other, current)}
    assert status == {orphan: "KILLED", alive: "RUNNING", other: "RUNNING", current: "RUNNING"}
    assert "gone" in tr.client.get_run(orphan).data.tags["xpz.end_reason"]


def test_model_folder_records_its_registered_name_and_version(tmp_path, registered, dataset):
    """`xpz predict --model FOLDER`: a folder downloaded from `models:/<name>/<version>` (MLflow writes
    registered_model_meta) and a copy of the logged model (found in the registry by its run) both
    record the registered name and version, not the folder's name."""
    import shutil

    import mlflow
    from typer.testing import CliRunner

    from xpz.cli import app
    from xpz.serving.batch import use_tracking_uri

    source = tmp_path / "spectra.parquet"
    write_dataset(random_frame(50, seed=4), source)
    with use_tracking_uri(registered.tracking_uri):
        downloaded = Path(
            mlflow.artifacts.download_artifacts(
                f"models:/{registered.name}/{registered.version}", dst_path=str(tmp_path / "downloaded")
            )
        )
    assert (downloaded / "registered_model_meta").exists()
    plain = tmp_path / "my-folder"
    shutil.copytree(downloaded, plain, ignore=shutil.ignore_patterns("registered_model_meta"))
    for folder in (downloaded, plain):
        out = tmp_path / f"{folder.name}.parquet"
        result = CliRunner().invoke(
            app, ["predict", str(source), "-m", str(folder), "--out", str(out), "--no-progress",
                  "--tracking-uri", registered.tracking_uri, "--params", str(tmp_path / "none.yaml")],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        frame = pd.read_parquet(out)
        assert set(frame["model_name"]) == {registered.name}, folder
        assert set(frame["model_version"]) == {registered.version}, folder


# ------------------------------------------------------------------------------------ retries


def test_retrying_waits_for_a_server_that_comes_up_and_logs_each_retry():
    """The flows' `retrying`: a tracking endpoint that starts 3 s late is waited for, each failed try
    logged; a 401 is not retried (it does not heal by waiting)."""
    import http.server
    import socket

    from xpz.servers import ServerError, check_mlflow, retrying

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    status = {"code": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(status["code"])
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"experiments": []}')

        def log_message(self, *args: object) -> None:
            pass

    servers: list[http.server.HTTPServer] = []

    def start_late() -> None:
        time.sleep(3)
        servers.append(http.server.HTTPServer(("127.0.0.1", port), Handler))
        servers[0].serve_forever()

    threading.Thread(target=start_late, daemon=True).start()
    logs: list[str] = []
    try:
        start = time.monotonic()
        retrying(lambda: check_mlflow(uri), "MLflow set-up", logs.append, attempts=5)
        assert 3 <= time.monotonic() - start < 30
        assert logs and all("MLflow set-up: attempt" in line and "does not answer" in line for line in logs)
        status["code"] = 401
        logs.clear()
        with pytest.raises(ServerError, match="HTTP 401"):
            retrying(lambda: check_mlflow(uri), "MLflow set-up", logs.append, attempts=5)
        assert logs == []
    finally:
        if servers:
            servers[0].shutdown()


def test_sigterm_during_data_generate_leaves_no_partial_dataset(tmp_path):
    """A real `xpz data generate` killed with SIGTERM while it writes (in the process with pinned BLAS
    kernels, `xpz.data.kernels`, where the host's differ): exit 143, one message, no
    `.galaxies.parquet.*.tmp` and no dataset (before, the generator's process wrote it to the end)."""
    out = tmp_path / "galaxies.parquet"
    cmd = [str(BIN / "xpz"), "data", "generate", "--params", str(Path(__file__).parents[1] / "params.yaml"),
           "-S", "data.n_galaxies=400000", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p.name.startswith(".galaxies.parquet.") for p in tmp_path.iterdir()):
                break  # the dataset is being written
            time.sleep(0.05)
        assert proc.poll() is None, f"generate ended before it could be killed:\n{proc.stderr.read()[-2000:]}"
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


def test_note_sigterm_sees_a_stop_a_library_turned_into_another_error():
    """In a flow run Prefect's SIGTERM handler raises wherever the main thread is; inside tf.data Keras
    reports that as a TypeError. `note_sigterm` still says a SIGTERM arrived, and the handler in place
    still runs (the flow ends its run KILLED, not FAILED)."""
    from xpz.interrupts import note_sigterm

    class Stop(BaseException):
        pass

    def prefects(signum, frame):
        raise Stop

    previous = signal.signal(signal.SIGTERM, prefects)
    try:
        stopped = note_sigterm()
        assert not stopped()
        with pytest.raises(TypeError):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except Stop:
                raise TypeError("Failed to convert elements of (None,) to Tensor") from None
        assert stopped()
    finally:
        signal.signal(signal.SIGTERM, previous)
