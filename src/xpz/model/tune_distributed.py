"""keras-tuner's distributed mode for `xpz.model.tune`: one chief (the oracle) and any number of workers.

keras-tuner reads three variables (https://keras.io/keras_tuner/guides/distributed_tuning/):

    KERASTUNER_TUNER_ID     "chief" for the oracle process, a unique name per worker ("tuner0", ...)
    KERASTUNER_ORACLE_IP    the chief's address (the chief binds it; workers connect to it)
    KERASTUNER_ORACLE_PORT  the chief's gRPC port

Every process runs the same code, `xpz.model.tune.tune` on the same splits and params: the chief serves
the Bayesian oracle over gRPC and blocks until the search is done (then returns the full
`TuneResult`); each worker asks the chief for trials, trains them, reports the metrics, and returns
the trials it ran. The search (`tune.max_trials`, the search space) is shared: the trials are split
between the workers, none runs twice.

    KERASTUNER_TUNER_ID=chief  KERASTUNER_ORACLE_IP=0.0.0.0 KERASTUNER_ORACLE_PORT=8000 python -m xpz.model.tune_distributed
    KERASTUNER_TUNER_ID=tuner0 KERASTUNER_ORACLE_IP=chief-host KERASTUNER_ORACLE_PORT=8000 python -m xpz.model.tune_distributed
    KERASTUNER_TUNER_ID=tuner1 ...

The chief's oracle state lives in `<directory>/<project_name>-<search key>` on the chief (resumable as in
`xpz.model.tune`); workers write their trial checkpoints under their own `<directory>`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xpz.env import quiet_telemetry

if TYPE_CHECKING:
    from xpz.config import Config
    from xpz.model.tune import TrialRecord, TuneResult

TUNER_ID = "KERASTUNER_TUNER_ID"
ORACLE_IP = "KERASTUNER_ORACLE_IP"
ORACLE_PORT = "KERASTUNER_ORACLE_PORT"
CHIEF_TIMEOUT_S = 600.0  # how long a worker waits for the chief's oracle to answer (--chief-timeout)


def role() -> str | None:
    """'chief', 'worker', or None (not distributed) from the KERASTUNER_* variables."""
    if ORACLE_IP not in os.environ:
        return None
    missing = [v for v in (TUNER_ID, ORACLE_PORT) if not os.environ.get(v)]
    if missing:
        raise ValueError(
            f"{ORACLE_IP} is set but {', '.join(missing)} is not: distributed tuning needs all three"
        )
    return "chief" if "chief" in os.environ[TUNER_ID] else "worker"


def distributed_env(tuner_id: str, ip: str, port: int | str) -> dict[str, str]:
    """The three variables for one process (e.g. `{**os.environ, **distributed_env("tuner0", ...)}`)."""
    return {TUNER_ID: tuner_id, ORACLE_IP: ip, ORACLE_PORT: str(port)}


def run_distributed_tune(
    splits,
    cfg: Config,
    directory: Path | str | None = None,
    on_trial_end: Callable[[TrialRecord], None] | None = None,
) -> TuneResult:
    """`xpz.model.tune.tune` in this process's role. Chief: the full result once all workers are done.
    Worker: the trials it ran (`best_hyperparameters` is the chief's business: empty here)."""
    from xpz.model.tune import tune

    return tune(splits, cfg, directory, on_trial_end=on_trial_end)


def _say(line: str) -> None:
    print(line, flush=True)  # flushed: a worker's log file shows it while it waits


def wait_for_chief(timeout_s: float = CHIEF_TIMEOUT_S, echo: Callable[[str], None] = _say) -> bool:
    """A worker: say where it waits, then wait (at most `timeout_s`) until the chief's gRPC oracle
    accepts a connection. False when it did not within `timeout_s` (keras-tuner itself would wait
    forever, silently)."""
    import grpc

    address = f"{os.environ[ORACLE_IP]}:{os.environ[ORACLE_PORT]}"
    echo(f"{os.environ.get(TUNER_ID)}: waiting for the chief at {address} (at most {timeout_s:.0f} s)")
    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()
    return True


def _result_json(result: TuneResult) -> dict[str, Any]:
    return {
        "role": role(),
        "tuner_id": os.environ.get(TUNER_ID),
        "best_hyperparameters": result.best_hyperparameters,
        "best_trial_id": result.best_trial_id,
        "trials": [
            {
                "trial_id": t.trial_id,
                "status": t.status,
                "metrics": t.metrics,
                "hyperparameters": t.hyperparameters,
            }
            for t in result.trials
        ],
    }


def main(argv: list[str] | None = None) -> int:
    quiet_telemetry()
    parser = argparse.ArgumentParser(
        description="Run xpz's keras-tuner search as chief or worker (KERASTUNER_* variables)."
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None)
    parser.add_argument(
        "-S", "--set", dest="overrides", action="append", default=[], help="KEY=VALUE override"
    )
    parser.add_argument("--directory", default=None, help="tuning directory (default: tune.directory)")
    parser.add_argument("--result", default=None, help="write this process's result here (JSON)")
    parser.add_argument(
        "--chief-timeout",
        type=float,
        default=CHIEF_TIMEOUT_S,
        help=f"a worker gives up when the chief does not answer within this many seconds ({CHIEF_TIMEOUT_S:.0f})",
    )
    args = parser.parse_args(argv)

    import yaml

    from xpz.config import load_config
    from xpz.data.split import load_splits

    overrides = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        overrides[key.strip()] = yaml.safe_load(value)
    cfg = load_config(Path(args.params), profile=args.profile, overrides=overrides)
    if role() == "worker" and not wait_for_chief(args.chief_timeout):
        address = f"{os.environ[ORACLE_IP]}:{os.environ[ORACLE_PORT]}"
        print(
            f"error: no chief answered at {address} within {args.chief_timeout:.0f} s; start the chief "
            f"({TUNER_ID}=chief) first, or check {ORACLE_IP}/{ORACLE_PORT}",
            file=sys.stderr,
        )
        return 2
    splits = load_splits(cfg.data.path, cfg.split.path)
    result = run_distributed_tune(splits, cfg, args.directory)
    summary = _result_json(result)
    if args.result:
        Path(args.result).write_text(json.dumps(summary, indent=2, default=str))
    print(
        f"{summary['tuner_id'] or 'local'}: {len(summary['trials'])} trial(s): {[t['trial_id'] for t in summary['trials']]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
