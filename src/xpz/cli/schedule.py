"""`xpz schedule`: scheduled retraining as a Prefect deployment of the `train_pipeline` flow.

- `xpz schedule serve`  : create the deployment (cron from params `schedule`) and serve it from this
                          process (`flow.serve`); every scheduled or triggered run executes here.
- `xpz schedule deploy` : register the deployment on a work pool (a `process` pool and
                          `prefect worker start --pool NAME` run it) instead of serving it here.
- `xpz schedule show`   : print the deployment that would be created (name, cron, parameters).

Scheduled runs pass `sync=True`: the flow first brings the data to its DVC version (`dvc pull`) and
re-splits if needed, then validates, retrains, and promotes only a model that beats the champion.
A schedule needs a real Prefect server: `serve` and `deploy` REQUIRE one (`prefect server start`, then
`PREFECT_API_URL=http://127.0.0.1:4200/api`) and stop with exit 2 when none is configured or reachable,
because the temporary server Prefect starts without `PREFECT_API_URL` runs no scheduler. The cron and
time zone are checked when read (Prefect's own `Cron` parser), so a bad cron is refused by `show` too.

This module is orchestration wiring (the only Prefect import under src/xpz is inside functions here);
the flow itself lives in `flows/train_pipeline.py`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from xpz.cli.common import ParamsOpt, ProfileOpt, guarded, parse_overrides
from xpz.errors import InputError

FLOW_FILE = Path("flows/train_pipeline.py")
FLOW_FUNC = "train_pipeline"

schedule_app = typer.Typer(
    help="Scheduled retraining: a Prefect deployment of the train_pipeline flow (cron from params `schedule`).",
    no_args_is_help=True,
)

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", help="Override a parameter of the scheduled runs (repeatable)."),
]
ProjectOpt = Annotated[
    Path,
    typer.Option(
        "--project-dir", help="Checkout holding flows/, params.yaml and the data (runs execute here)."
    ),
]
CronOpt = Annotated[str | None, typer.Option("--cron", help="Override params schedule.cron.")]
NameOpt = Annotated[str | None, typer.Option("--name", help="Override params schedule.deployment.")]
SyncOpt = Annotated[bool, typer.Option("--sync/--no-sync", help="dvc pull + re-split before each run.")]


def _flow_entrypoint(project_dir: Path) -> Path:
    path = (project_dir / FLOW_FILE).resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: flow file not found; run from the xpz checkout or pass --project-dir"
        )
    return path


def deployment_spec(
    params: Path,
    profile: str | None,
    overrides: dict[str, Any],
    cron: str | None = None,
    name: str | None = None,
    sync: bool = True,
) -> dict[str, Any]:
    """Name, cron, timezone and flow parameters of the deployment, from params.yaml `schedule`."""
    from xpz.config import load_config

    cfg = load_config(params, profile=profile, overrides=overrides)
    sched = cfg.schedule
    if cron is not None:
        from xpz.config import ScheduleConfig

        try:
            sched = ScheduleConfig(cron=cron, deployment=sched.deployment, timezone=sched.timezone)
        except ValueError as err:
            raise InputError(f"--cron {cron!r}: {_first_error(err)}") from None
    cron_schedule(sched.cron, sched.timezone)  # refuse a bad cron or time zone now, not when serving
    parameters: dict[str, Any] = {"params": str(params), "sync": sync}
    if profile:
        parameters["profile"] = profile
    if overrides:
        parameters["overrides"] = overrides
    return {
        "name": name or sched.deployment,
        "cron": sched.cron,
        "timezone": sched.timezone,
        "parameters": parameters,
        "profile": cfg.profile,
    }


def _first_error(err: Exception) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):
        with contextlib.suppress(Exception):
            return str(errors()[0]["msg"]).removeprefix("Value error, ")
    return str(err)


def cron_schedule(cron: str, timezone: str):
    """Prefect's `Cron` schedule for (cron, time zone); `InputError` for an invalid cron or time zone."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from prefect.schedules import Cron

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(
            f"schedule timezone {timezone!r}: not an IANA time zone (e.g. UTC, Europe/Paris)"
        ) from None
    try:
        return Cron(cron, timezone=timezone)
    except ValueError as err:
        raise InputError(
            f"schedule cron {cron!r}: {_first_error(err)} (5 fields: minute 0-59, hour 0-23, day 1-31, "
            "month 1-12, weekday 0-6)"
        ) from None


def require_server(timeout_s: float = 10.0) -> str:
    """The configured Prefect API URL, after checking that a server answers there and accepts
    PREFECT_API_AUTH_STRING (`xpz.servers.check_prefect`); `InputError` otherwise.

    Without `PREFECT_API_URL` Prefect would start a temporary in-process server, which has no scheduler:
    the deployment would be created and no scheduled run would ever start.
    """
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    from xpz.servers import check_prefect

    url = PREFECT_API_URL.value()
    if not url:
        raise InputError(
            "schedules need a running Prefect server and PREFECT_API_URL is not set; start one with "
            "`prefect server start` (or use Prefect Cloud) and set PREFECT_API_URL, e.g. "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    auth = PREFECT_API_AUTH_STRING.value()  # the variable or the Prefect profile
    check_prefect(url, timeout_s, getattr(auth, "get_secret_value", lambda: auth)())
    return url


def require_work_pool(name: str) -> None:
    """Refuse a work pool the Prefect server does not have (InputError naming the command to create it)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            raise InputError(
                f"--work-pool {name}: the Prefect server has no work pool {name!r}; create it with "
                f"`prefect work-pool create {name} --type process` (then start a worker: "
                f"`prefect worker start --pool {name}`)"
            ) from None


def load_flow(project_dir: Path):
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(
        f"{_flow_entrypoint(project_dir)}:{FLOW_FUNC}", use_placeholder_flow=False
    )


@schedule_app.command("show")
@guarded(FileNotFoundError)
def show(
    params: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    cron: CronOpt = None,
    name: NameOpt = None,
    sync: SyncOpt = True,
) -> None:
    """Print the deployment `serve`/`deploy` would create, and its next run times."""
    spec = deployment_spec(params, profile, parse_overrides(set_), cron, name, sync)
    try:
        from datetime import datetime
        from zoneinfo import ZoneInfo

        from prefect._vendor.croniter import croniter  # Prefect's own (private) copy

        it = croniter(spec["cron"], datetime.now(ZoneInfo(spec["timezone"])))
        spec["next_runs"] = [it.get_next(datetime).isoformat() for _ in range(3)]
    except Exception:  # noqa: BLE001 - the listing is informative only
        pass
    typer.echo(json.dumps({"flow": f"{FLOW_FILE}:{FLOW_FUNC}", **spec}, indent=2))


@schedule_app.command("serve")
@guarded(FileNotFoundError)
def serve(
    params: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    cron: CronOpt = None,
    name: NameOpt = None,
    sync: SyncOpt = True,
    project_dir: ProjectOpt = Path("."),
    limit: Annotated[int | None, typer.Option(help="Most flow runs at once in this process.")] = 1,
    pause_on_shutdown: Annotated[
        bool,
        typer.Option(
            "--pause-on-shutdown/--keep-schedule", help="Pause the schedule when this process stops."
        ),
    ] = False,
) -> None:
    """Create the deployment with the cron from params `schedule` and serve it until interrupted."""
    import os

    spec = deployment_spec(params, profile, parse_overrides(set_), cron, name, sync)
    api_url = require_server()
    os.chdir(project_dir)  # runs execute in the checkout: relative params, data and reports paths
    flow = load_flow(Path("."))
    typer.echo(f"serving deployment {FLOW_FUNC}/{spec['name']} (cron {spec['cron']!r} {spec['timezone']}) "
               f"on the Prefect server {api_url}; Ctrl-C stops")  # fmt: skip
    flow.serve(
        name=spec["name"],
        schedules=[cron_schedule(spec["cron"], spec["timezone"])],
        parameters=spec["parameters"],
        tags=["xpz", f"profile:{spec['profile']}"],
        description="xpz scheduled retraining: sync data -> validate -> tune -> train -> evaluate -> register/promote",
        limit=limit,
        pause_on_shutdown=pause_on_shutdown,
        print_starting_message=True,
    )


@schedule_app.command("deploy")
@guarded(FileNotFoundError)
def deploy(
    work_pool: Annotated[str, typer.Option("--work-pool", help="A Prefect work pool (e.g. type `process`).")],
    params: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    cron: CronOpt = None,
    name: NameOpt = None,
    sync: SyncOpt = True,
    project_dir: ProjectOpt = Path("."),
) -> None:
    """Register the deployment on a work pool (no serving here): `prefect worker start --pool NAME` runs it."""
    spec = deployment_spec(params, profile, parse_overrides(set_), cron, name, sync)
    require_server()
    require_work_pool(work_pool)  # before the deployment: Prefect's own error is a long traceback
    from prefect import Flow

    source = project_dir.resolve()
    _flow_entrypoint(source)
    flow = Flow.from_source(source=str(source), entrypoint=f"{FLOW_FILE.as_posix()}:{FLOW_FUNC}")
    deployment_id = flow.deploy(  # type: ignore[union-attr]  # sync context: a Flow, not a coroutine
        name=spec["name"],
        work_pool_name=work_pool,
        schedules=[cron_schedule(spec["cron"], spec["timezone"])],
        parameters=spec["parameters"],
        tags=["xpz", f"profile:{spec['profile']}"],
        build=False,
        push=False,
        print_next_steps=False,
    )
    typer.echo(f"deployment {FLOW_FUNC}/{spec['name']} ({deployment_id}) on work pool {work_pool!r}; "
               f"start a worker: prefect worker start --pool {work_pool}")  # fmt: skip
