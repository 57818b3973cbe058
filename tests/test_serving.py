"""REST serving: a real `mlflow models serve -m models:/<name>@champion --env-manager local` process.

The server is started once for the module on a free 127.0.0.1 port (its own process group), polled
on /health, and killed at teardown. Posted batches (dataframe_split JSON, as in the README's curl
example) must come back with the numbers the pyfunc and `xpz predict` give.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xpz.spectra import FLUX_COLUMNS, flux_matrix
from xpz_models import free_port

START_TIMEOUT_S = float(os.environ.get("XPZ_TEST_SERVER_START_TIMEOUT", "240"))


@pytest.fixture(scope="module")
def server(registered, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    venv_bin = Path(sys.executable).parent  # `mlflow models serve` execs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered.tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    mlflow_bin = venv_bin / "mlflow"
    cmd = [str(mlflow_bin), "models", "serve", "-m", registered.champion, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "-w", "1"]  # fmt: skip
    with log.open("w") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=registered.root, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow models serve not healthy after {START_TIMEOUT_S:.0f} s:\n{log.read_text()[-4000:]}"
                )
            time.sleep(1.0)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/invocations", data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_served_batch_equals_pyfunc_and_batch_predict(
    server, registered, dataset, small_dataset_path, tmp_path
):
    import mlflow

    from xpz.serving.batch import predict_file, use_tracking_uri

    batch = dataset.iloc[:50]
    fluxes = flux_matrix(batch)
    payload = {"dataframe_split": {"columns": list(FLUX_COLUMNS), "data": fluxes.astype(float).tolist()}}
    status, body = post(server, payload)
    assert status == 200, body
    served = pd.DataFrame(body["predictions"])
    assert list(served.columns) == ["z", "z_lower", "z_upper", "ood_score", "eligible"] and len(served) == 50

    with use_tracking_uri(registered.tracking_uri):
        local = mlflow.pyfunc.load_model(registered.champion).predict(fluxes)
    for column in ("z", "z_lower", "z_upper"):
        np.testing.assert_array_equal(
            served[column].to_numpy(), local[column].to_numpy()
        )  # same 50-row batch
    from xpz.tracking import load_keras_model
    from xpz_models import model_predict_redshifts

    with use_tracking_uri(registered.tracking_uri):
        plain = model_predict_redshifts(load_keras_model(registered.champion), fluxes)  # plain model.predict
    for column in ("z", "z_lower", "z_upper"):
        np.testing.assert_allclose(served[column].to_numpy(), plain[column].to_numpy(), rtol=0, atol=1e-6)

    out = predict_file(small_dataset_path, tmp_path / "p.parquet", registered.champion, progress=False,
                       tracking_uri=registered.tracking_uri).out  # fmt: skip
    batch_predicted = pd.read_parquet(out).iloc[:50]
    np.testing.assert_allclose(served["z"].to_numpy(), batch_predicted["z"].to_numpy(), rtol=0, atol=1e-6)

    # the tensor form ("inputs": an (n, 186) array) gives the same numbers
    status, body = post(server, {"inputs": fluxes.astype(float).tolist()})
    assert status == 200, body
    np.testing.assert_array_equal(pd.DataFrame(body["predictions"])["z"].to_numpy(), served["z"].to_numpy())


def test_served_bad_batch_is_a_client_error(server, dataset):
    fluxes = flux_matrix(dataset.iloc[:3])[:, :185]
    status, body = post(
        server,
        {"dataframe_split": {"columns": list(FLUX_COLUMNS[:185]), "data": fluxes.astype(float).tolist()}},
    )
    assert status == 400, body
    assert "186" in json.dumps(body) or "flux_185" in json.dumps(body)


def post_csv(url: str, text: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/invocations", data=text.encode(), headers={"Content-Type": "text/csv"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def contract_frames(dataset: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """A reference frame (the 186 flux columns, float32, grid order) and the same spectra sent as users
    do: shuffled or reversed columns, float64 or integer values, source_id and redshift beside them."""
    batch = dataset.iloc[:20].reset_index(drop=True)
    reference = batch[list(FLUX_COLUMNS)].astype("float32")
    shuffled = list(np.random.default_rng(1).permutation(FLUX_COLUMNS))
    integers = reference.round().astype("int64")
    variants = {
        "reversed+source_id": batch[["source_id", *FLUX_COLUMNS[::-1]]],
        "shuffled float64": reference.astype("float64")[shuffled],
        "float32 with z": batch[[*FLUX_COLUMNS, "redshift"]] if "redshift" in batch else reference,
    }
    return reference, {**variants, "integers": integers}


def test_served_contract_by_name_any_dtype_json_and_csv(server, registered, dataset):
    """The same spectra in any column order and real dtype, with extra columns, give the same z as the
    reference on every path: pyfunc in Python, JSON and CSV bodies to the real server."""
    import mlflow

    from xpz.serving.batch import use_tracking_uri

    reference, variants = contract_frames(dataset)
    with use_tracking_uri(registered.tracking_uri):
        pyfunc = mlflow.pyfunc.load_model(registered.champion)
    expected = pyfunc.predict(reference)["z"].to_numpy()
    expected_int = pyfunc.predict(reference.round().astype("float32"))["z"].to_numpy()
    for label, frame in variants.items():
        want = expected_int if label == "integers" else expected
        np.testing.assert_allclose(
            pyfunc.predict(frame)["z"].to_numpy(), want, rtol=0, atol=1e-6, err_msg=label
        )
        split = json.loads(frame.to_json(orient="split", index=False))
        status, body = post(server, {"dataframe_split": split})
        assert status == 200, (label, body)
        np.testing.assert_allclose(
            pd.DataFrame(body["predictions"])["z"].to_numpy(), want, rtol=0, atol=1e-6, err_msg=label
        )
        status, body = post_csv(server, frame.to_csv(index=False))
        assert status == 200, (label, body)
        np.testing.assert_allclose(
            pd.DataFrame(body["predictions"])["z"].to_numpy(), want, rtol=0, atol=1e-6, err_msg=label
        )
    # reversed columns are NOT the reference spectra taken by position: the contract matters
    assert not np.allclose(
        pyfunc.predict(reference[list(FLUX_COLUMNS[::-1])].to_numpy())["z"].to_numpy(), expected, atol=1e-3
    )


def test_served_refuses_what_it_cannot_answer(server, registered, dataset):
    """NaN/inf fluxes and missing columns: HTTP 400 naming rows and columns (JSON and CSV), a
    ModelInputError (an InputError) from the pyfunc; never a number."""
    import mlflow

    from xpz.errors import InputError
    from xpz.serving.batch import use_tracking_uri

    reference, _ = contract_frames(dataset)
    nan = reference.astype("float64").copy()
    nan.loc[3, "flux_007"] = np.nan
    nan.loc[5, "flux_100"] = np.inf
    missing = reference.drop(columns=["flux_010", "flux_185"])
    text = reference.astype("float64").to_csv(index=False).replace("\n", "\nnot-a-number,", 1)
    with use_tracking_uri(registered.tracking_uri):
        pyfunc = mlflow.pyfunc.load_model(registered.champion)
    for frame, words in ((nan, ["rows 3, 5", "flux_007", "flux_100", "non-finite"]),
                         (missing, ["flux_010", "flux_185", "missing"])):  # fmt: skip
        with pytest.raises(InputError) as err:
            pyfunc.predict(frame)
        assert all(w in str(err.value) for w in words), str(err.value)
        status, body = post(
            server, {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
        )
        assert status == 400 and all(w in body.get("message", "") for w in words), body
        assert "predictions" not in body
        status, body = post_csv(server, frame.to_csv(index=False))
        assert status == 400 and all(w in body.get("message", "") for w in words), body
    status, body = post(server, {"inputs": np.full((2, 186), np.nan).tolist()})
    assert status == 400 and "non-finite" in body.get("message", ""), body
    status, body = post_csv(server, text)  # a malformed CSV body
    assert status == 400 and "predictions" not in body, body
    # a total flux <= 0 (all zeros, all -1): the network's input (spectrum / total flux) is undefined
    empty = reference.astype("float64").copy()
    empty.loc[2, list(FLUX_COLUMNS)] = 0.0
    empty.loc[6, list(FLUX_COLUMNS)] = -1.0
    with pytest.raises(InputError, match=r"total flux <= 0 .* rows 2, 6"):
        pyfunc.predict(empty)
    status, body = post(server, {"dataframe_split": json.loads(empty.to_json(orient="split", index=False))})
    assert (
        status == 400 and "total flux <= 0" in body.get("message", "") and "rows 2, 6" in body["message"]
    ), body
    assert "Infinity" not in json.dumps(body)
    # no rows: columns without data, a header-only CSV, no records
    no_rows = (
        post(server, {"dataframe_split": {"columns": list(FLUX_COLUMNS), "data": []}}),
        post_csv(server, ",".join(FLUX_COLUMNS) + "\n"),
        post(server, {"dataframe_records": []}),
    )
    for status, body in no_rows:
        assert status == 400 and "holds no rows" in body.get("message", ""), body
    with pytest.raises(InputError, match="holds no rows"):
        pyfunc.predict(reference.iloc[:0])
    # a record without the key flux_050: a missing value, named as such
    records = json.loads(reference.iloc[:4].to_json(orient="records"))
    del records[2]["flux_050"]
    status, body = post(server, {"dataframe_records": records})
    message = body.get("message", "")
    assert status == 400 and "missing value" in message and "rows 2, columns flux_050" in message, body
    # upper-case names: case-sensitive, as the file readers; the message says so
    upper = reference.rename(columns=str.upper)
    status, body = post(server, {"dataframe_split": json.loads(upper.to_json(orient="split", index=False))})
    assert status == 400 and "case-sensitive" in body.get("message", "") and "FLUX_000" in body["message"], (
        body
    )


def test_served_output_has_no_non_finite_number():
    """A NaN ood_score (a model trained with eligibility.enabled=false) or an inf one is JSON null in
    what MLflow's scoring server writes, never NaN / Infinity (not JSON); finite values are untouched."""
    import io

    from mlflow.pyfunc.scoring_server import predictions_to_json

    from xpz.tracking.pyfunc import json_safe

    frame = pd.DataFrame(
        {"z": [0.1, 0.2, 0.3], "ood_score": [np.nan, np.inf, 1.5], "eligible": [True, False, True]}
    )
    out = io.StringIO()
    predictions_to_json(json_safe(frame), out)

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in the served JSON")

    body = json.loads(out.getvalue(), parse_constant=refuse)
    assert [r["ood_score"] for r in body["predictions"]] == [None, None, 1.5]
    assert [r["z"] for r in body["predictions"]] == [0.1, 0.2, 0.3]
    assert json_safe(frame.iloc[2:])["ood_score"].dtype == np.float64  # finite columns keep their dtype
