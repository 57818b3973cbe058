"""benchmarks/bench_flow.py stopped early: SIGTERM (`timeout`, a scheduler) or Ctrl-C stops the
`prefect server` it started and removes its temporary folder, says so on one line, and exits 143 / 130.

A real run: the script as a user starts it, its own real `prefect server`, the signal sent once that
server answers; every process the run started is found by the environment it inherited.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest_servers import QUIET_ENV, REPO, stop_process_group, wait_for

pytestmark = pytest.mark.slow


def _processes_with(marker: str) -> set[int]:
    """Pids of this user's processes whose environment holds `marker` (children inherit it)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone meanwhile, or another user's
            continue
        if marker.encode() in environ and state != "Z":
            found.add(int(entry.name))
    return found


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize(
    ("sig", "status", "how"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")]
)
def test_a_stopped_run_stops_its_prefect_server_and_removes_its_folder(tmp_path, sig, status, how):
    scratch = tmp_path / "tmp"  # TMPDIR of the run: its folder is created here, and marks its processes
    scratch.mkdir()
    env = {**os.environ, **QUIET_ENV, "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1"}
    for key in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):  # so that it starts its own server
        env.pop(key, None)
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("wb") as fo, err.open("wb") as fe:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "benchmarks" / "bench_flow.py"), "--repeats", "1"],
            cwd=tmp_path, env=env, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    marker = f"TMPDIR={scratch}"
    try:

        def server_up() -> re.Match | None:
            assert proc.poll() is None, f"exited {proc.returncode}:\n{err.read_text()[-3000:]}"
            return re.search(
                r"prefect server started in .* at http://127\.0\.0\.1:(\d+)/api", out.read_text()
            )

        port = int(wait_for(server_up, 600, 0.5, "the benchmark's prefect server").group(1))
        folders = list(scratch.glob("xpz-bench-flow-*"))
        started = _processes_with(marker) - {proc.pid}
        assert len(folders) == 1 and started and _port_open(port), (folders, started)

        proc.send_signal(sig)  # to the script only, as `timeout` does; its server has its own session
        proc.wait(120)
        stderr = err.read_text()
        assert proc.returncode == status, stderr[-3000:]
        last = stderr.strip().splitlines()[-1]
        said = re.fullmatch(
            rf"error: bench_flow\.py stopped by {how}; prefect server \(pid (\d+)\) stopped; "
            rf"{re.escape(str(folders[0]))} removed",
            last,
        )
        assert said and int(said.group(1)) in started, last
        assert "Traceback" not in stderr
        assert not folders[0].exists()
        assert not _processes_with(marker), "processes of the run are left"
        assert not _port_open(port)
    finally:
        stop_process_group(proc, signal.SIGKILL)
        for pid in _processes_with(marker):  # whatever the run left (its server has its own group)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
