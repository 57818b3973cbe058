"""The servers xpz talks to (an MLflow tracking server, a Prefect server): fail fast, with one message.

A server that is down, refuses the credentials (HTTP 401) or forbids the action (HTTP 403) is a
`ServerError` (an `InputError`: the CLI prints one line naming the URI and the fix, exit status 2),
found by one cheap request before any work starts (`check_mlflow`, `check_prefect`) instead of after
MLflow's default HTTP retries (minutes). `explain_mlflow_error` turns the same failures met later
(e.g. a reader promoting a model: 403) into that message. `fail_fast_http` bounds MLflow's own HTTP
retries and timeouts for interactive commands; long-running flows use `retrying` (tenacity), which
logs every retry.

Core module: the standard library, plus tenacity inside `retrying` and MLflow's exception type inside
`explain_mlflow_error` (both imported lazily); no Prefect (callers pass Prefect's settings).
"""

from __future__ import annotations

import base64
import contextlib
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from xpz.env import environ
from xpz.errors import InputError

T = TypeVar("T")

CHECK_TIMEOUT_S = 10.0  # one request of a pre-flight check (a busy basic-auth server: seconds)
# Defaults for interactive commands (a variable already set wins): a blip is retried twice within
# ~3 s, a hung request gives up after 30 s (MLflow's defaults: 7 retries over ~4 min, 120 s).
FAIL_FAST_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}

MLFLOW_CREDENTIALS = "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
PREFECT_CREDENTIALS = (
    "set PREFECT_API_AUTH_STRING to the server's PREFECT_SERVER_API_AUTH_STRING (user:password)"
)


class ServerError(InputError):
    """A server that is down, refuses the credentials or forbids the action. `kind` is one of
    'down', 'unauthenticated', 'forbidden'; the message names the URI and the fix."""

    def __init__(self, message: str, kind: str, uri: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.uri = uri


def is_remote(uri: str | None) -> bool:
    """Whether a tracking URI names an HTTP(S) server (sqlite:, file: and paths are local stores)."""
    return bool(uri) and str(uri).lower().startswith(("http://", "https://"))


def redact(uri: str) -> str:
    """The URI without a password (`http://user:***@host`), safe to print."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


# ------------------------------------------------------------------------------------- messages


def mlflow_message(kind: str, uri: str, detail: str = "", action: str = "") -> str:
    """The one-line message for an MLflow tracking server at `uri` that is down/refuses/forbids."""
    where = f"the MLflow tracking server at {redact(uri)}"
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if kind == "down":
        return (
            f"{where} does not answer ({detail}): start it (e.g. `mlflow server --host 127.0.0.1 --port 5000`) "
            "or point MLFLOW_TRACKING_URI (or tracking.uri in params.yaml) at a running one"
        )
    if kind == "unauthenticated":
        given = f"the credentials of user {user!r} were refused" if user else "no credentials were given"
        return f"{where} needs a login and {given} (HTTP 401): {MLFLOW_CREDENTIALS}"
    doing = f" to {action}" if action else ""
    who = f"user {user!r}" if user else "this user"
    return (
        f"{where} denied {who} permission{doing} (HTTP 403{': ' + detail if detail else ''}): ask an "
        "admin of the server for that permission (e.g. EDIT on the registered model to promote)"
    )


def prefect_message(kind: str, url: str, detail: str = "") -> str:
    """The one-line message for a Prefect API at `url` that is down or refuses the auth string."""
    where = f"the Prefect server at PREFECT_API_URL={redact(url)}"
    if kind == "down":
        return (
            f"{where} does not answer ({detail}): start it (`prefect server start`) or set PREFECT_API_URL "
            "to a running one (e.g. http://127.0.0.1:4200/api)"
        )
    given = (
        "its auth string was refused"
        if os.environ.get("PREFECT_API_AUTH_STRING")
        else "no auth string was given"
    )
    return f"{where} needs a login and {given} (HTTP {401 if kind == 'unauthenticated' else 403}): {PREFECT_CREDENTIALS}"


# ---------------------------------------------------------------------------------------- checks


def _ssl_context() -> ssl.SSLContext | None:
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("1", "true"):
        return ssl._create_unverified_context()  # noqa: S323  (the user asked for it)
    return None


def _get(url: str, headers: Mapping[str, str], timeout_s: float) -> int:
    """HTTP status of a GET (any status, no exception for 4xx/5xx); `OSError` when nothing answers."""
    request = urllib.request.Request(url, headers=dict(headers), method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=_ssl_context()) as response:
            response.read(1 << 16)
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None) or err
    return str(reason) or type(err).__name__


def mlflow_headers() -> dict[str, str]:
    """The Authorization header MLflow's client would send (MLFLOW_TRACKING_USERNAME/_PASSWORD or _TOKEN)."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    if token:
        return {"Authorization": f"Bearer {token}"}
    return {}


def check_mlflow(uri: str | None, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """One authenticated read (`experiments/search`, max 1) against an HTTP(S) tracking server;
    `ServerError` naming `uri` when it is down (connection refused, timeout, 5xx), refuses the
    credentials (401) or forbids reading (403). Local stores (sqlite, file) are not checked."""
    if not is_remote(uri):
        return
    assert uri is not None
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        status = _get(url, mlflow_headers(), timeout_s)
    except (OSError, ValueError) as err:  # refused, unreachable, timed out, bad host
        raise ServerError(mlflow_message("down", uri, _reason(err)), "down", uri) from None
    if status == 401:
        raise ServerError(mlflow_message("unauthenticated", uri), "unauthenticated", uri)
    if status == 403:
        raise ServerError(mlflow_message("forbidden", uri, action="read experiments"), "forbidden", uri)
    if status >= 500 or status == 404:
        what = "not an MLflow tracking server" if status == 404 else "server error"
        raise ServerError(mlflow_message("down", uri, f"HTTP {status}, {what}"), "down", uri)


def prefect_headers(auth: str | None = None) -> dict[str, str]:
    """The Authorization header Prefect's client sends: Basic for an auth string ('user:password';
    default PREFECT_API_AUTH_STRING), else Bearer for PREFECT_API_KEY, else none."""
    auth = auth or os.environ.get("PREFECT_API_AUTH_STRING")
    if auth:
        return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    key = os.environ.get("PREFECT_API_KEY")  # Prefect Cloud
    return {"Authorization": f"Bearer {key}"} if key else {}


def check_prefect(url: str, timeout_s: float = CHECK_TIMEOUT_S, auth: str | None = None) -> None:
    """`/health` (open) then `/admin/version` (behind the server's auth string) of a Prefect API;
    `ServerError` naming `url` when it is down or refuses the auth string (`auth`, default
    PREFECT_API_AUTH_STRING) with 401/403."""
    base = url.rstrip("/")
    try:
        status = _get(f"{base}/health", {}, timeout_s)
        if status < 400:
            status = _get(f"{base}/admin/version", prefect_headers(auth), timeout_s)
    except (OSError, ValueError) as err:
        raise ServerError(prefect_message("down", url, _reason(err)), "down", url) from None
    if status in (401, 403):
        kind = "unauthenticated" if status == 401 else "forbidden"
        raise ServerError(prefect_message(kind, url), kind, url)
    if status >= 500:  # another 4xx (an API without /admin/version) is not a refusal
        raise ServerError(prefect_message("down", url, f"HTTP {status}"), "down", url)


# ------------------------------------------------------------------------------- errors met later

_STATUS_KIND = {401: "unauthenticated", 403: "forbidden"}


def explain_mlflow_error(err: BaseException, uri: str | None) -> ServerError | None:
    """A `ServerError` for an MLflow client error that means 401, 403 or 'server down' (else None).

    MLflow reports them as `MlflowException` (error code UNAUTHENTICATED / PERMISSION_DENIED, or the
    HTTP status in the message) or, for a dead connection, as a requests `ConnectionError` inside one.
    """
    from mlflow.exceptions import MlflowException

    if not isinstance(err, MlflowException) or not is_remote(uri):
        return None
    assert uri is not None
    code = getattr(err, "error_code", "")
    message = str(getattr(err, "message", err))
    status = None
    if code == "UNAUTHENTICATED" or "error code 401" in message:
        status = 401
    elif code == "PERMISSION_DENIED" or "error code 403" in message:
        status = 403
    if status is not None:
        kind = _STATUS_KIND[status]
        action = ""
        if "endpoint " in message:
            action = message.split("endpoint", 1)[1].split()[0].strip("'\"")
        detail = _first_line(message) if status == 403 else ""
        return ServerError(mlflow_message(kind, uri, _short(detail), _describe(action)), kind, uri)
    if "Max retries exceeded" in message or "Connection refused" in message or "timed out" in message:
        return ServerError(mlflow_message("down", uri, "the connection failed"), "down", uri)
    return None


def _first_line(text: str) -> str:
    body = text.split("Response body:", 1)[-1] if "Response body:" in text else text
    return body.strip().strip("'\"").splitlines()[0] if body.strip() else ""


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


_ACTIONS = {
    "registered-models/alias": "move a model alias (promote)",
    "model-versions/create": "register a model version",
    "registered-models/create": "create a registered model",
    "model-versions/set-tag": "tag a model version",
    "runs/create": "create a run",
    "experiments/create": "create an experiment",
}


def _describe(endpoint: str) -> str:
    for key, words in _ACTIONS.items():
        if key in endpoint:
            return f"{words} ({endpoint})"
    return f"call {endpoint}" if endpoint else ""


# ------------------------------------------------------------------------------------ CLI session


@contextlib.contextmanager
def fail_fast_http() -> Iterator[None]:
    """MLflow's HTTP retries/timeouts bounded (FAIL_FAST_HTTP; variables already set win) for a block,
    then restored: an interactive command fails in seconds, not after minutes of retries."""
    with environ(defaults=FAIL_FAST_HTTP):
        yield


def retrying(
    func: Callable[[], T],
    what: str,
    log: Callable[[str], Any],
    attempts: int = 5,
    max_wait_s: float = 30.0,
) -> T:
    """`func()` retried (exponential back-off 2 s .. `max_wait_s`, `attempts` tries) while it raises a
    `ServerError` of kind 'down'; each retry is logged through `log` (e.g. a flow's logger.warning).
    Refused credentials and missing permissions are not retried: they do not heal by waiting."""
    import tenacity

    def log_retry(state: tenacity.RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log(f"{what}: attempt {state.attempt_number}/{attempts} failed ({err}); retrying in {wait:.0f} s")

    retryer = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=1, min=2, max=max_wait_s),
        retry=tenacity.retry_if_exception(lambda e: isinstance(e, ServerError) and e.kind == "down"),
        before_sleep=log_retry,
        reraise=True,
    )
    return retryer(func)
