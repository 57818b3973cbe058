"""What every `xpz` command group shares: option types, params loading, and the error guard.

User-fixable errors (invalid params, bad input files, unknown versions) and server trouble (a
tracking or Prefect server that is down, refuses the credentials or forbids the action:
`xpz.servers`) print one red line and exit with status 2; SIGTERM ends a command like Ctrl-C, through
its cleanup paths (no temporary outputs left), with status 143; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from xpz.config import Config, ConfigError, load_config
from xpz.errors import InputError
from xpz.interrupts import EXIT_TERMINATED, Terminated, terminate_raises
from xpz.servers import explain_mlflow_error, fail_fast_http

F = TypeVar("F", bound=Callable[..., Any])

ParamsOpt = Annotated[Path, typer.Option("--params", help="Parameters file (one section per stage).")]
ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--profile",
        help="Profile from params.yaml `profiles` (default, smoke, full); XPZ_PROFILE also works.",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", help="Override a parameter, e.g. -S train.epochs=3 (repeatable)."),
]


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """['train.epochs=3', ...] -> {'train.epochs': 3}; values are read as YAML scalars, and a value that
    is not valid YAML (e.g. a cron `* * * * *`) is kept as the string given."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def config_from_options(params: Path, profile: str | None, overrides: list[str] | None = None) -> Config:
    """Read params.yaml once, with the profile and -S overrides of the command line."""
    return load_config(params, profile=profile, overrides=parse_overrides(overrides))


def check_output(
    path: Path, option: str, what: str, *, force: bool | None = None, folder: bool = False
) -> None:
    """Refuse, before any work, an output the command could only fail to write at its end: a file
    output that is a folder (or, with `force` False, exists), a folder output that is a file, a path
    under a file, or one in a folder without write permission. `option` names where the path came
    from (`--out`, `data.path`, ...), `what` what would be written there. Raises InputError."""
    import os

    path = Path(path)
    if folder:
        if path.exists() and not path.is_dir():
            raise InputError(f"{option} {path}: is a file; give a folder for {what}")
    else:
        if path.is_dir():
            raise InputError(f"{option} {path}: is a folder; give the path of a file (in it or elsewhere)")
        if force is False and path.exists():
            raise InputError(f"{path} exists; pass --force to overwrite it")
    ancestor = path if folder and path.is_dir() else path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{option} {path}: cannot write {what}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: cannot write {what}: no write permission in {ancestor}")


def local_store_path(uri: str) -> Path | None:
    """The file (sqlite) or folder (file: store) of a local MLflow store URI; None for a server or an
    in-memory sqlite database."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :].split("?", 1)[0])
    if uri.startswith("file:"):
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        return Path(url2pathname(urlparse(uri).path))
    return None


def require_store(uri: str, hint: str = "pass --tracking-uri") -> None:
    """For a command that only reads the registry: refuse a local store that does not exist (MLflow
    would create an empty one and report "no versions"). Raises InputError."""
    path = local_store_path(uri)
    if path is not None and not path.exists():
        raise InputError(f"no MLflow store at {path}; run `make run` first or {hint}")


def fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _tracking_uri() -> str | None:
    """The tracking URI the command used (MLflow's process-wide one once `configure` ran)."""
    import os
    import sys

    if "mlflow" in sys.modules:
        import mlflow

        return mlflow.get_tracking_uri()
    return os.environ.get("MLFLOW_TRACKING_URI")


def guarded(*extra: type[BaseException]) -> Callable[[F], F]:
    """Decorator: InputError, ConfigError (and `extra` kinds) -> one message, exit status 2; an MLflow
    401/403/connection failure -> one message naming the server and the fix, exit 2; SIGTERM ->
    cleanup as for Ctrl-C, one message, exit 143. MLflow's HTTP retries are bounded meanwhile
    (`xpz.servers.fail_fast_http`)."""
    kinds: tuple[type[BaseException], ...] = (InputError, ConfigError, *extra)

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                with terminate_raises(), fail_fast_http():
                    return func(*args, **kwargs)
            except kinds as err:
                fail(str(err))
            except Terminated:
                fail("stopped by SIGTERM; temporary outputs were removed", EXIT_TERMINATED)
            except Exception as err:
                if type(err).__module__.startswith("mlflow"):
                    explained = explain_mlflow_error(err, _tracking_uri())
                    if explained is not None:
                        fail(str(explained))
                raise

        return wrapper  # type: ignore[return-value]

    return decorate
