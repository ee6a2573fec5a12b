"""Start a dataset's run: take its lock, record the run, start its execution (ingest and cancel use this)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lora_pipeline.run_names import execution_name, new_run_id
from lora_pipeline.use_cases.run_input import RunInput

if TYPE_CHECKING:
    from datetime import datetime

    from lora_pipeline.ports import Executions, RunBook

# How often a caller reads the dataset's lock again after another caller changed it under its write.
LOCK_ATTEMPTS = 5


def start_run(
    table: RunBook,
    executions: Executions,
    bucket: str,
    dataset: str,
    ready: bool,
    now: datetime,
    last_finished: str | None,
) -> str | None:
    """Take the dataset's lock and start its execution; the run id, or None when the lock was taken."""
    run_id = new_run_id(now)
    name = execution_name(dataset, run_id)
    if not table.try_start(dataset, run_id, ready, now, last_finished):
        return None
    run_input = RunInput(dataset=dataset, run_id=run_id, bucket=bucket)
    try:
        table.record_run(dataset, run_id, name, now)
        executions.start(name, run_input.model_dump_json())
    except Exception:
        table.abandon_start(dataset, run_id)
        raise
    return run_id
