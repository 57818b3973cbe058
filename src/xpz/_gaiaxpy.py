"""Import gaiaxpy without its side effects.

gaiaxpy switches matplotlib to ``text.usetex=True`` on import; there is no LaTeX on our
machines, so every figure would fail. Import gaiaxpy through this module only.
"""

from __future__ import annotations

import matplotlib

_usetex = matplotlib.rcParams.get("text.usetex", False)
import gaiaxpy  # noqa: E402
from gaiaxpy import pwl_to_wl, wl_to_pwl  # noqa: E402,F401

matplotlib.rcParams["text.usetex"] = _usetex

__all__ = ["gaiaxpy", "pwl_to_wl", "wl_to_pwl"]
