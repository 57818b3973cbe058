"""xpz: galaxy redshifts from Gaia BP/RP (XP) spectra with a 1-D CNN.

`import xpz` makes every custom Keras object xpz saves known to Keras (`xpz.model.saving`, the one
place that registers them), so a `.keras` file written by xpz loads with plain
`keras.saving.load_model(path)`. It does so without importing Keras itself (TensorFlow takes
seconds to import, and most commands never need it): if Keras is already imported the objects are
registered now, else right after Keras's own import completes, whoever imports it.

Likewise the first `import tensorflow` (by Keras, MLflow or xpz) runs inside
`xpz.env.quiet_tensorflow_startup`: the INFO lines TensorFlow's native libraries print while they
load, which TF_CPP_MIN_LOG_LEVEL no longer filters, are dropped; any other output is kept.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"


def _register_keras_objects() -> None:
    import xpz.model.saving  # noqa: F401  (its import registers every custom Keras object)


ExecModule = Callable[[Any], None]


class _OnFirstImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: on the first import of module `name` it lets the other finders find it
    and runs the module's code through `wrap(exec_module)`."""

    def __init__(self, name: str, wrap: Callable[[ExecModule], ExecModule]) -> None:
        self.name, self.wrap = name, wrap

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != self.name:
            return None
        sys.meta_path.remove(self)  # once; and no recursion through the lookup below
        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        loader.exec_module = self.wrap(loader.exec_module)
        return spec


def _then_register(exec_module: ExecModule) -> ExecModule:
    def exec_then_register(module: Any) -> None:
        exec_module(module)
        _register_keras_objects()

    return exec_then_register


def _quietly(exec_module: ExecModule) -> ExecModule:
    def exec_quietly(module: Any) -> None:
        from xpz.env import quiet_tensorflow_startup

        with quiet_tensorflow_startup():
            exec_module(module)

    return exec_quietly


def _on_first_import(name: str, wrap: Callable[[ExecModule], ExecModule]) -> None:
    if not any(isinstance(f, _OnFirstImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _OnFirstImport(name, wrap))


if "keras" in sys.modules:
    _register_keras_objects()
else:
    _on_first_import("keras", _then_register)
if "tensorflow" not in sys.modules:
    _on_first_import("tensorflow", _quietly)
