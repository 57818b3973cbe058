"""Pass-through layers: how a trained model carries what was fitted after training.

The eligibility score (`xpz.model.ood.OodDensity`), the p(z) recalibration
(`xpz.model.recalibration.CoverageRecalibration`) and the conformal intervals
(`xpz.model.conformal.ConformalIntervals`) are fitted on the training / validation splits after the
network. Each is a `PassThrough` layer whose weights hold the fit: `attach_layer` appends it to the
model's output unchanged, so the `.keras` file, the MLflow model and every path that loads them
carry it, and `xpz.model.posterior` reads it from the loaded model.
"""

from __future__ import annotations

import keras

from xpz.model.head import RedshiftMAE, posterior_layer


class PassThrough(keras.layers.Layer):
    """A layer that returns its input unchanged (subclasses hold non-trainable fitted weights)."""

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


def attach_layer(model: keras.Model, layer: keras.layers.Layer, name: str | None = None) -> keras.Model:
    """A model computing the same output with `layer` applied last as a pass-through (so the layer
    and its weights are saved with the model); compiled like `model` when it was compiled."""
    wrapped = keras.Model(model.inputs, layer(model.outputs[0]), name=name or model.name)
    loss = getattr(model, "loss", None)
    if loss is not None:
        head = posterior_layer(model)
        centres = None if head is None else [0.5 * (a + b) for a, b in zip(head.edges[:-1], head.edges[1:])]
        wrapped.compile(loss=loss, metrics=[RedshiftMAE(centres=centres)])
    return wrapped
