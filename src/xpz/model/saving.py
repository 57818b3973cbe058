"""The one place that registers every custom Keras object of a saved xpz model.

Importing this module (which `import xpz` arranges: at once if Keras is loaded, else right after
Keras is imported) registers, under the Keras package name "xpz", the
layers, loss and metric that `.keras` files written by xpz contain: the scaling layers
(`xpz.model.scaling`), the softmax head, its loss and metric (`xpz.model.head`) and the post-hoc
pass-through layers (`xpz.model.ood`, `xpz.model.recalibration`, `xpz.model.conformal`). After it,
plain `keras.saving.load_model("model.keras")` works. It imports no training-only package
(keras_tuner, prefect, dvc, great_expectations): the logged MLflow model loads through it.
"""

from __future__ import annotations

from xpz.model.conformal import ConformalIntervals
from xpz.model.head import RedshiftMAE, RedshiftPosterior, SmoothedBinCrossentropy
from xpz.model.ood import OodDensity
from xpz.model.recalibration import CoverageRecalibration
from xpz.model.scaling import AsinhScaling, LogLambdaResampling, LogTotalFlux, MinMaxScaling

CUSTOM_OBJECTS: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        MinMaxScaling,
        AsinhScaling,
        LogLambdaResampling,
        LogTotalFlux,
        RedshiftPosterior,
        SmoothedBinCrossentropy,
        RedshiftMAE,
        OodDensity,
        CoverageRecalibration,
        ConformalIntervals,
    )
}
