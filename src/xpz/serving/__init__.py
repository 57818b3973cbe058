"""Applying a registered model to files users bring: model resolution, streaming batch prediction, Dask.

Modules: `models` (`models:/name@alias`, run ids and paths -> a loaded predictor), `batch` (chunked
file -> Parquet prediction with bounded memory). May import: xpz core, xpz.data (readers),
xpz.model (posterior) and MLflow; never the CLI or the flows.
"""
