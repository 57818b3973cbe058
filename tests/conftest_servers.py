"""Real servers for the integration tests: an `mlflow server` and a `prefect server` on 127.0.0.1.

Each is a real process started once per test session (sqlite backends in a temporary folder, a free
port, telemetry off), waited on through its health endpoint, and stopped at the end of the session
(SIGTERM to its process group, SIGKILL after a grace period). Tests reach them through the usual
variables: `MLFLOW_TRACKING_URI` and `PREFECT_API_URL` (see the `servers` fixture).

Imported by tests/conftest.py so that the session fixtures exist once per session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from xpz.env import environ

BIN = Path(sys.executable).parent
START_TIMEOUT_S = float(os.environ.get("XPZ_TEST_SERVER_START_TIMEOUT", "180"))

QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "MPLBACKEND": "Agg",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    name: str
    url: str
    proc: subprocess.Popen
    log: Path
    home: Path
    health_path: str = "/health"

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> ServerProcess:
        _wait_healthy(self, f"{self.url}{self.health_path}", timeout_s)
        return self

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the server's process group (it was started in its own session), then SIGKILL."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # whatever of the group is left (workers)
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def _wait_healthy(server: ServerProcess, health_url: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with status {server.proc.returncode} before it was healthy:\n"
                f"{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(health_url, timeout=5) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as err:
            last = str(err)
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(
        f"{server.name} not healthy at {health_url} after {timeout_s:.0f} s ({last}):\n{server.log_tail()}"
    )


def _spawn(name: str, cmd: list[str], home: Path, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    log = home / f"{name}.log"
    handle = log.open("wb")
    proc = subprocess.Popen(
        cmd,
        cwd=home,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stop() ends it and its workers, nothing else
    )
    handle.close()
    return proc, log


def base_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **QUIET_ENV, **extra}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def mlflow_server_command(home: Path, port: int, *extra: str) -> list[str]:
    """`mlflow server` on 127.0.0.1:port, one worker, a sqlite store and served artifacts under `home`."""
    return [
        str(BIN / "mlflow"), "server", *extra,
        "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination", str(home / "artifacts"),
        "--serve-artifacts",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip


def start_mlflow_server(home: Path, wait: bool = True) -> ServerProcess:
    """`mlflow server` with a sqlite backend store and served artifacts (`--artifacts-destination`)."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = mlflow_server_command(home, port)
    proc, log = _spawn("mlflow", cmd, home, base_env())
    server = ServerProcess("mlflow server", f"http://127.0.0.1:{port}", proc, log, home, "/health")
    if wait:
        server.wait_healthy()
    return server


ADMIN = ("admin", "admin-password-xpz-1")  # the admin of the basic-auth test servers


def start_mlflow_auth_server(
    home: Path, wait: bool = True, default_permission: str = "READ"
) -> ServerProcess:
    """`mlflow server --app-name basic-auth` (team mode): users and permissions in their own sqlite
    database, the admin `ADMIN`, `default_permission` for users without a grant, served artifacts."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = home / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = sqlite:///{home / 'basic_auth.db'}\n"
        f"admin_username = {ADMIN[0]}\n"
        f"admin_password = {ADMIN[1]}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 300\n"  # one PBKDF2 check per user, not per request (seconds each here)
    )
    cmd = mlflow_server_command(home, port, "--app-name", "basic-auth")
    env = base_env(MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_FLASK_SERVER_SECRET_KEY="xpz-test-secret")
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    proc, log = _spawn("mlflow-auth", cmd, home, env)
    server = ServerProcess(
        "mlflow server (basic-auth)", f"http://127.0.0.1:{port}", proc, log, home, "/health"
    )
    if wait:
        server.wait_healthy()
    return server


def start_prefect_server(home: Path, wait: bool = True, auth_string: str | None = None) -> ServerProcess:
    """`prefect server start` with its own PREFECT_HOME (sqlite database inside), UI off; with
    `auth_string` ('user:password') the API wants it (PREFECT_SERVER_API_AUTH_STRING)."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = base_env(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
    )
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_API_AUTH_STRING", None)
    if auth_string:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    proc, log = _spawn("prefect", cmd, home, env)
    server = ServerProcess("prefect server", f"http://127.0.0.1:{port}/api", proc, log, home, "/health")
    if wait:
        server.wait_healthy()
    return server


@dataclass
class Servers:
    mlflow: ServerProcess
    prefect: ServerProcess
    client_home: Path  # PREFECT_HOME of the clients (flow runs, runners): results, local storage

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a subprocess (xpz, dvc, a runner) that talks to both servers."""
        env = base_env(
            MLFLOW_TRACKING_URI=self.mlflow.url,
            PREFECT_API_URL=self.prefect.url,
            PREFECT_HOME=str(self.client_home),
            **extra,
        )
        env.pop("MLFLOW_REGISTRY_URI", None)
        return env


@pytest.fixture(scope="session")
def spawned_servers(tmp_path_factory) -> Iterator[tuple[ServerProcess, ServerProcess, Path]]:
    """Both server processes, spawned but not yet waited on: a fixture that needs other slow set-up
    (a dataset) can request this first, so that the servers start while that set-up runs."""
    root = tmp_path_factory.mktemp("servers")
    started: list[ServerProcess] = []
    try:
        started.append(start_mlflow_server(root / "mlflow", wait=False))
        started.append(start_prefect_server(root / "prefect", wait=False))
        client_home = root / "client-home"
        client_home.mkdir()
        yield started[0], started[1], client_home
    finally:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda server: server.stop(grace_s=5), started))


@pytest.fixture(scope="session")
def server_pair(spawned_servers) -> Servers:
    """One real MLflow server and one real Prefect server for the whole session, healthy."""
    mlflow_server, prefect_server, client_home = spawned_servers
    mlflow_server.wait_healthy()
    prefect_server.wait_healthy()
    return Servers(mlflow=mlflow_server, prefect=prefect_server, client_home=client_home)


@contextlib.contextmanager
def use_servers(pair: Servers) -> Iterator[Servers]:
    """Point this process at the servers: the usual variables plus Prefect's settings (Prefect reads
    its settings when imported, so the variable alone is not enough in-process); restored after."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_LOGGING_LEVEL, temporary_settings

    env = {
        **QUIET_ENV,
        "MLFLOW_TRACKING_URI": pair.mlflow.url,
        "PREFECT_API_URL": pair.prefect.url,
        "PREFECT_HOME": str(pair.client_home),
    }
    settings = {
        PREFECT_API_URL: pair.prefect.url,
        PREFECT_HOME: pair.client_home,
        PREFECT_LOGGING_LEVEL: "WARNING",
    }
    try:
        with environ(set_=env, unset=["MLFLOW_REGISTRY_URI"]), temporary_settings(updates=settings):
            yield pair
    finally:
        import mlflow

        mlflow.set_tracking_uri(None)


@pytest.fixture()
def servers(server_pair: Servers) -> Iterator[Servers]:
    """This test talks to the session's servers (MLFLOW_TRACKING_URI, PREFECT_API_URL set)."""
    with use_servers(server_pair):
        yield server_pair


# ------------------------------------------------------------------------------ project helpers
REPO = Path(__file__).resolve().parents[1]


def make_project(
    root: Path,
    dataset: Path,
    registered_model: str,
    experiment: str,
    overrides: dict | None = None,
    split: bool = True,
) -> Path:
    """A checkout-like folder: params.yaml (profile smoke, quiet training, its own MLflow names,
    `overrides` as dotted keys), flows/, the dataset at data/galaxies.parquet and (optionally) its split."""
    import shutil

    import yaml

    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["train"]["verbose"] = 0
    params["tracking"]["registered_model"] = registered_model
    params["tracking"]["experiment"] = experiment
    for dotted, value in (overrides or {}).items():  # into the profile, so that they win over it
        node = params["profiles"].setdefault("smoke", {})
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(
        REPO / "flows", root / "flows", ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True
    )
    (root / "data").mkdir(exist_ok=True)
    shutil.copy(dataset, root / "data" / "galaxies.parquet")
    if split:
        from xpz.config import load_config
        from xpz.data.stages import split_dataset

        cfg = load_config(root / "params.yaml")
        old = Path.cwd()
        os.chdir(root)
        try:
            split_dataset(cfg.data.path, cfg.split)
        finally:
            os.chdir(old)
    return root


def run_flow_process(project: Path, servers: Servers, *args: str, timeout: float = 600) -> subprocess.Popen:
    """Start `python flows/train_pipeline.py ARGS` in `project` (its own process group)."""
    log = (project / f"flow-{time.monotonic_ns()}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "flows/train_pipeline.py", *args],
        cwd=project,
        env=servers.env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    proc.log_path = Path(log.name)  # type: ignore[attr-defined]
    log.close()
    return proc


def process_output(proc: subprocess.Popen) -> str:
    return Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


def stop_process_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):  # whatever of the group is left (children)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def wait_for(predicate, timeout_s: float, interval_s: float = 0.5, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def flow_run_logs(flow_run_id, min_level: int = 0, timeout_s: float = 30, contains: str | None = None) -> str:
    """All log messages of a flow run (and its task runs) as stored by the Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterLevel

    def read() -> str:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(
                LogFilter(
                    flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]), level=LogFilterLevel(ge_=min_level)
                )
            )
        return "\n".join(log.message for log in logs)

    if contains is None:
        return read()
    return wait_for(
        lambda: (text := read()) and contains in text and text, timeout_s, 1.0, f"log text {contains!r}"
    )
