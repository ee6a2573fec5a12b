"""The state machine's execution input, which every step of a run receives, and the salvage step's (which
the end-of-run function also gives it)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class RunInput(BaseModel):
    """The state machine's execution input (also found in Step Functions status-change events)."""

    dataset: str
    run_id: str
    bucket: str


class SalvageInput(RunInput):
    output_name: str | None = None
    training_job: dict[str, Any] | None = None  # DescribeTrainingJob output; None for a cancelled run
    trainer_name: str | None = None  # the run's trainer when `training_job` is None

    @property
    def trainer(self) -> str:
        """The trainer the job ran (training_job_spec puts it in the hyperparameters), not what the file
        claims."""
        if self.training_job is not None:
            return str(self.training_job.get("HyperParameters", {}).get("trainer", ""))
        return self.trainer_name or ""
