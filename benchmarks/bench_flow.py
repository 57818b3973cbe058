"""Orchestration overhead: the Prefect flow `train_pipeline` vs calling the library directly.

    python benchmarks/bench_flow.py [--profile smoke] [--repeats 3] [--n-galaxies N]

In a temporary folder: generate the profile's dataset, split it, then alternate (the order flips
each repeat, so that TensorFlow's first-call warm-up does not favour one side)
  library : `xpz.pipeline.run_pipeline(cfg)` (tune -> train -> evaluate -> log -> register),
  flow    : `train_pipeline(...)` in the same process (validation, split check, the same steps as
            Prefect tasks, reports, markdown artifact),
each with a fresh tuning directory and the same sqlite MLflow store, and finally
  process : `python flows/train_pipeline.py` as the DVC stage runs it (interpreter start and imports
            included).
Prefect: PREFECT_API_URL when set, else a real `prefect server` started on 127.0.0.1 for the run
(stopped at the end). Prints medians, the overhead, and where the flow spends its time (task runs).
Stopped early (Ctrl-C, or SIGTERM: `_cli.run_main`), it stops its server, removes its temporary
folder, says so on one line and exits 130 / 143.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the server helpers of the test suite

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MPLBACKEND", "Agg")

from _cli import count, run_main  # noqa: E402
from xpz.env import quiet_telemetry  # noqa: E402

quiet_telemetry()


@contextlib.contextmanager
def prefect_api(root: Path):
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"], 0.0
        return
    from conftest_servers import start_prefect_server

    t0 = time.perf_counter()
    server = start_prefect_server(root / "prefect-server", wait=False)
    try:  # from the spawn on: stopped however the block ends (Ctrl-C and SIGTERM included)
        server.wait_healthy()
        started = time.perf_counter() - t0
        os.environ["PREFECT_API_URL"] = server.url
        yield server.url, started
    except KeyboardInterrupt as err:  # said by run_main once the `finally` below has run
        err.add_note(f"prefect server (pid {server.proc.pid}) stopped")
        raise
    finally:
        if "prefect.logging.handlers" in sys.modules:  # the flow's last logs, while the server is up
            from prefect.logging.handlers import APILogWorker

            with contextlib.suppress(Exception):
                APILogWorker.drain_all(timeout=5)
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="smoke")
    parser.add_argument(
        "--repeats", type=count(1), default=3, help="timed runs of each (default: %(default)s)"
    )
    parser.add_argument("--n-galaxies", type=count(1000), default=None, help="override data.n_galaxies")
    args = parser.parse_args()
    from xpz.hostinfo import print_host

    print_host()  # CPU model, numpy sgemm GFLOP/s, reference network samples/s: compare hosts as ratios

    root = Path(tempfile.mkdtemp(prefix="xpz-bench-flow-"))
    cwd = Path.cwd()
    try:
        measure(args, root)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (run_main): leave nothing behind
        os.chdir(cwd)
        shutil.rmtree(root, ignore_errors=True)
        err.add_note(f"{root} removed")
        raise


def measure(args: argparse.Namespace, root: Path) -> None:
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["PREFECT_HOME"] = str(root / "prefect-home")
    base = {"train.verbose": 0, "tracking.artifact_location": str(root / "mlruns")}
    if args.n_galaxies:
        base["data.n_galaxies"] = args.n_galaxies
    (root / "flows").symlink_to(REPO / "flows")
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    os.chdir(root)

    from xpz.config import load_config
    from xpz.data.stages import generate_dataset, split_dataset

    cfg = load_config("params.yaml", profile=args.profile, overrides=base)
    t0 = time.perf_counter()
    rows = generate_dataset(cfg.data, cfg.data.path, progress=False)
    split_dataset(cfg.data.path, cfg.split)
    print(
        f"profile {args.profile}: {rows:,} galaxies generated and split in {time.perf_counter() - t0:.1f} s ({root})"
    )

    with prefect_api(root) as (api_url, server_start):
        if server_start:
            print(f"prefect server started in {server_start:.1f} s at {api_url}")
        import importlib.util

        from prefect.settings import PREFECT_API_URL, temporary_settings

        spec = importlib.util.spec_from_file_location(
            "bench_train_pipeline", REPO / "flows" / "train_pipeline.py"
        )
        flow_mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(flow_mod)
        from xpz import pipeline

        times: dict[str, list[float]] = {"library": [], "flow": []}
        flow_state = None
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            for i in range(args.repeats):
                order = ("library", "flow") if i % 2 == 0 else ("flow", "library")  # warm-up bias cancels
                for kind in order:
                    overrides = {**base, "tune.directory": str(root / f"tuning-{kind}-{i}")}
                    run_cfg = load_config("params.yaml", profile=args.profile, overrides=overrides)
                    t0 = time.perf_counter()
                    if kind == "library":
                        pipeline.run_pipeline(run_cfg, reports_dir=root / "reports-lib")
                    else:
                        flow_state = flow_mod.train_pipeline(
                            profile=args.profile, overrides=overrides, return_state=True
                        )
                        assert flow_state.is_completed(), flow_state.message
                    times[kind].append(time.perf_counter() - t0)
                    print(f"  repeat {i + 1} {kind:<8} {times[kind][-1]:7.1f} s", flush=True)

            task_times: dict[str, float] = {}
            flow_run_s = float("nan")
            if flow_state is not None:
                from prefect.client.orchestration import get_client
                from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

                with get_client(sync_client=True) as client:
                    flow_run = client.read_flow_run(flow_state.state_details.flow_run_id)
                    runs = client.read_task_runs(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
                    )
                flow_run_s = flow_run.total_run_time.total_seconds()
                for tr in runs:
                    name = tr.name.rsplit("-", 1)[0]
                    task_times[name] = task_times.get(name, 0.0) + tr.total_run_time.total_seconds()

        # the DVC stage's view: a fresh interpreter running the flow once
        env = {**os.environ, "PREFECT_API_URL": api_url}
        cmd = [sys.executable, "flows/train_pipeline.py", "--profile", args.profile,
               *[f"-S{k}={v}" for k, v in {**base, "tune.directory": str(root / "tuning-process")}.items()]]  # fmt: skip
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
        process_s = time.perf_counter() - t0
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)

    lib, flw = statistics.median(times["library"]), statistics.median(times["flow"])
    print()
    print(f"| measure ({args.profile}, {rows:,} galaxies, median of {args.repeats}) | seconds |")
    print("|---|---|")
    print(f"| library: pipeline.run_pipeline(cfg) | {lib:.1f} |")
    print(
        f"| flow: train_pipeline(...) in-process (Prefect API {'given' if not server_start else 'local server'}) | {flw:.1f} |"
    )
    print(f"| orchestration overhead (flow - library) | {flw - lib:+.1f} ({100 * (flw - lib) / lib:+.0f}%) |")
    print(
        f"| `python flows/train_pipeline.py` (DVC stage; interpreter + imports included) | {process_s:.1f} |"
    )
    if task_times:
        print()
        print("| task (last in-process flow run) | seconds |")
        print("|---|---|")
        for name, secs in sorted(task_times.items(), key=lambda kv: -kv[1]):
            print(f"| {name} | {secs:.1f} |")
        print(f"| (sum of task run times) | {sum(task_times.values()):.1f} |")
        print(f"| flow run time recorded by Prefect | {flow_run_s:.1f} |")
        print(
            f"| Prefect bookkeeping: flow run - sum of tasks | {flow_run_s - sum(task_times.values()):.1f} |"
        )
    print(json.dumps({"library_s": lib, "flow_s": flw, "overhead_s": flw - lib, "process_s": process_s,
                      "rows": rows, "profile": args.profile}))  # fmt: skip


if __name__ == "__main__":
    run_main(main)
