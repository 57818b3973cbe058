"""xpz: galaxy redshifts from Gaia BP/RP (XP) spectra with a 1-D CNN.

`import xpz` registers every custom Keras object xpz saves (`xpz.model.saving`), so a `.keras` file
written by xpz loads with plain `keras.saving.load_model(path)`.
"""

__version__ = "0.1.0"

from xpz.model import saving as _saving  # noqa: E402,F401  (registers the custom Keras objects)
