"""The model side: scaling, architectures and the hypermodel, training, tuning, evaluation, posterior -> z.

Modules: `scaling` (min-max layer fitted on train), `architectures` (seed Table 2, the CPU default,
the `RedshiftPosterior` head, losses, the keras-tuner hypermodel), `train` and `calibration` (fit,
ensembles, choosing alpha/temperature/shift on validation), `tune` and `tune_distributed`
(keras-tuner search), `evaluate` (metrics, per-bin table, baselines, figures), `posterior`
(network output -> z and its interval: every prediction path goes through it), `inference` (the
compiled forward pass). Fitted after training and carried by the saved model as `passthrough` layers:
`ood` (eligibility score), `recalibration` (p(z) per group), `conformal` (the 68% interval);
`pdf_metrics` and `coverage_report` measure them.
May import: xpz core and xpz.data (splits, the flux grid). Knows no MLflow, no Prefect and no CLI.
"""
