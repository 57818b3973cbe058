"""The data side: the XP grid's instrument model, the synthetic generator, readers and writers, validation, splits.

Modules: `xp` (Gaia XP bases -> the 186-sample grid), `synthetic` and `sed` (the embedded synthetic
galaxy set), `io` (whole-file readers/writers in the dataset schema), `stream` (chunked readers for
prediction), `validation` (Great Expectations suite), `split` (deterministic stratified splits),
`describe` (dataset summaries and plots), `stages` (generate/import -> validate -> split as functions).
May import: xpz core (config, errors, spectra, files, env, _gaiaxpy). Knows no model, no MLflow, no
Prefect and no CLI.
"""
