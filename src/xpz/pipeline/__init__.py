"""The main job as library calls: splits -> tune -> train -> evaluate -> log -> register -> promote.

`steps` holds one function per step and `run_pipeline` (the CLI's `xpz run`); `reports` writes what a
run leaves on disk (DVC metrics, tables, figures, run.json) and its summary. The Prefect flow in
flows/ only wires these. May import: xpz core, xpz.data, xpz.model, xpz.tracking; never the CLI,
the flows or Prefect.
"""

from __future__ import annotations

from xpz.pipeline.reports import summary_markdown, write_reports  # noqa: F401
from xpz.pipeline.steps import (  # noqa: F401
    PipelineResult,
    checked_splits,
    evaluate_step,
    load_splits,
    log_context,
    log_model_step,
    register_step,
    run_pipeline,
    start_run_step,
    train_step,
    tune_step,
)
