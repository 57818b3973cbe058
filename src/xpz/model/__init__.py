"""The model side: scaling, architectures, training, tuning, evaluation, posterior -> z.

Modules, from the leaves up (no import cycles, function-level imports included: tests/test_layout.py):
`head` (the `RedshiftPosterior` softmax head, its loss and metric, the CDF math; imports no xpz
module), `scaling` (asinh or min-max input layers fitted on train), `passthrough` (the base of the layers fitted
after training), `star_term` (the eligibility's star classifier), `cuts` (its per-term cuts), `ood_terms` (usable rows, the template fit), `ood` (eligibility score; `ood_fast`
scores it for the prediction paths), `recalibration` (p(z) per group), `conformal` (the 68%
interval), `saving` (registers every custom Keras object; `import xpz` has it imported with Keras), `inference`
(the compiled forward pass), `posterior` (network output -> z and its interval: every prediction
path goes through it), `posthoc` (fits recalibration and conformal on validation), `architectures`
(seed Table 2, the CPU default), `train` and `calibration` (fit, ensembles, choosing
alpha/temperature/shift on validation), `tune` (the keras-tuner hypermodel and search; the only
module that imports keras_tuner, with `tune_distributed` above it), `evaluate` (metrics, per-bin
table, baselines, figures), `pdf_metrics` and `coverage_report` (measure the p(z) and intervals).
Loading a saved model needs only `saving` and below: nothing that imports keras_tuner.
May import: xpz core and xpz.data (splits, the flux grid). Knows no MLflow, no Prefect and no CLI.
"""

# Keras first, before any submodule: `import xpz` registers the custom Keras objects (xpz.model.saving)
# as soon as Keras is imported; were Keras first imported by a submodule (say `import xpz.model.ood`),
# that registration would meet the submodule half-initialised and fail.
import keras  # noqa: E402, F401
