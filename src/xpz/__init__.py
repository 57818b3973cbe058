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
from typing import Any

__version__ = "0.1.0"


def _register_keras_objects() -> None:
    import xpz.model.saving  # noqa: F401  (its import registers every custom Keras object)


class _RegisterAfterKeras(importlib.abc.MetaPathFinder):
    """Finds nothing itself: on the first `import keras` it lets the other finders find Keras and
    runs `_register_keras_objects` once Keras's module has executed."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "keras":
            return None
        sys.meta_path.remove(self)  # once; and no recursion through the lookup below
        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            _register_keras_objects()

        loader.exec_module = exec_then_register
        return spec


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: on the first `import tensorflow` it lets the other finders find it and
    runs its module inside `xpz.env.quiet_tensorflow_startup`."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; and no recursion through the lookup below
        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_quietly(module: Any) -> None:
            from xpz.env import quiet_tensorflow_startup

            with quiet_tensorflow_startup():
                exec_module(module)

        loader.exec_module = exec_quietly
        return spec


if "keras" in sys.modules:
    _register_keras_objects()
elif not any(isinstance(f, _RegisterAfterKeras) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterKeras())
if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietTensorFlowImport())
