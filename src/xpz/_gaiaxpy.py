"""Import gaiaxpy without its side effects.

gaiaxpy switches matplotlib to ``text.usetex=True`` on import; there is no LaTeX on our
machines, so every figure would fail. Import gaiaxpy through this module, before any
`from gaiaxpy.x import y` (the import sorter puts those first: then gaiaxpy has already switched
usetex on when this module runs, and the switch is undone here all the same).
"""

from __future__ import annotations

import sys

import matplotlib

# the setting from before gaiaxpy's import (False if gaiaxpy came first: it had already changed it)
_usetex = False if "gaiaxpy" in sys.modules else matplotlib.rcParams.get("text.usetex", False)
import gaiaxpy  # noqa: E402
from gaiaxpy import pwl_to_wl, wl_to_pwl  # noqa: E402,F401

matplotlib.rcParams["text.usetex"] = _usetex

__all__ = ["gaiaxpy", "pwl_to_wl", "wl_to_pwl"]
