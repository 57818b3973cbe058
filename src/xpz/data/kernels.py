"""The CPU kernels the generated dataset's bytes depend on, pinned so that hosts write the same bytes.

The generator's matrix products (SED -> XP fluxes, noise) go through numpy's OpenBLAS, which picks
its kernels by CPU: SkylakeX on an AVX-512 Intel Xeon, Zen on an AMD EPYC, Haswell, ... The same
product then differs in its last bits, and so does the md5 of the default 200,000-galaxy set: an Intel
Xeon with AVX-512 wrote other bytes than the AMD EPYC that recorded data.dvc, and the same bytes
with OPENBLAS_CORETYPE=Zen. OpenBLAS reads that variable once, when numpy loads it, so
`run_with_pinned_blas` runs the generator in a fresh process with it set whenever this process's
OpenBLAS uses other kernels (the Zen kernels need AVX2, which every supported host has).

numpy's own vectorised loops (sums, exp, ...) depend on the CPU too: with its AVX-512 loops switched
off (NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR", what a host without AVX-512 runs) the
default set's md5 differs again, and no setting switches them *on* on such a host. So the md5 in
data.dvc is reproduced on x86-64 hosts with AVX-512 (`numpy_matches_record`); elsewhere the data
are the same galaxies to the last bit or so, not the same bytes.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, wait
from multiprocessing import active_children, get_context
from typing import Any, TypeVar

CORETYPE = "Zen"  # OpenBLAS kernels of the host that recorded data.dvc (AMD EPYC)
# what threadpoolctl reports for them: on Intel, OPENBLAS_CORETYPE=Zen runs (and names) the Haswell
# kernels, which wrote the same bytes as an AMD host's Zen (measured at 20,000 galaxies)
SAME_KERNELS = frozenset({"zen", "haswell"})
NUMPY_DISPATCH = "X86_V4"  # numpy's AVX-512 loops, which that host ran
_CHILD = "XPZ_PINNED_BLAS_CHILD"  # set in the generator's process: never spawn another
T = TypeVar("T")


def blas_kernels() -> list[str]:
    """The kernel families (e.g. ["SkylakeX"]) of the OpenBLAS libraries loaded in this process
    (numpy's, and scipy's once imported), by threadpoolctl; [] when there is none."""
    import numpy  # noqa: F401  (loads numpy's OpenBLAS)
    from threadpoolctl import threadpool_info

    return [str(i.get("architecture")) for i in threadpool_info() if i.get("internal_api") == "openblas"]


def numpy_matches_record() -> bool:
    """Whether numpy runs the vectorised loops (AVX-512, `NUMPY_DISPATCH`) of the host that
    recorded data.dvc, without which the bytes differ whatever the BLAS kernels."""
    from numpy._core._multiarray_umath import __cpu_features__

    return bool(__cpu_features__.get(NUMPY_DISPATCH, False))


def needs_pinning() -> bool:
    """True when this process's OpenBLAS uses kernels other than `CORETYPE`'s on an x86-64 host with
    AVX2 and we are not already the pinned process."""
    if os.environ.get(_CHILD) or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    from numpy._core._multiarray_umath import __cpu_features__

    if not __cpu_features__.get("AVX2", False):
        return False
    kernels = blas_kernels()
    return bool(kernels) and any(k.lower() not in SAME_KERNELS for k in kernels)


def run_with_pinned_blas(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """fn(*args, **kwargs), in a fresh process with OPENBLAS_CORETYPE = `CORETYPE` when this one's
    OpenBLAS kernels differ (`needs_pinning`), else here. `fn` and its arguments must pickle; its
    exceptions are raised here."""
    if not needs_pinning():
        return fn(*args, **kwargs)
    from xpz.env import environ

    before = set(active_children())
    with environ({"OPENBLAS_CORETYPE": CORETYPE, _CHILD: "1"}):  # inherited by the spawned process
        pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"))
        future = pool.submit(_terminable, fn, args, kwargs)
    workers = set(active_children()) - before
    try:
        return future.result()
    except BaseException:  # Ctrl-C or SIGTERM (`xpz.interrupts`) while the child works: end it too
        if not future.done():
            _stop(future, workers)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _terminable(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    """fn(*args, **kwargs) in the child, where SIGTERM raises so that its cleanup runs
    (`xpz.files.atomic_path` removes the temporary output)."""
    from xpz.interrupts import terminate_raises

    with terminate_raises():
        return fn(*args, **kwargs)


def _stop(future: Future[Any], workers: set[Any], grace_seconds: float = 30.0) -> None:
    """End the child's work: after Ctrl-C (sent to the whole process group) it may already be
    unwinding, so wait 2 s for `future`, then SIGTERM (its cleanup runs, `_terminable`) and wait
    `grace_seconds`, then SIGKILL."""
    if wait([future], timeout=2.0).done:
        return
    for proc in workers:
        proc.terminate()
    if not wait([future], timeout=grace_seconds).done:
        for proc in workers:
            proc.kill()
