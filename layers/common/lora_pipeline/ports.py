"""What the use cases (`lora_pipeline.use_cases`) need from AWS, as small interfaces.

The adapters in `lora_pipeline.aws` implement them with boto3 (`RunTable`, `EventPublisher`,
`StepFunctionsExecutions`, `SageMakerTrainingJobs`); `tests/fakes.py` implements them in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lora_pipeline.dataset_lock import ActiveRun, DatasetState, RunStatus
    from lora_pipeline.events import EventDetail


class RunBook(Protocol):
    """The dataset locks, run items and training slots (DynamoDB; see `aws/run_table.py` for the items)."""

    def dataset_state(self, dataset: str) -> tuple[DatasetState, str | None]:
        """The dataset's lock, and `last_finished_at` as stored (the token `try_start` compares)."""
        ...

    def try_start(
        self, dataset: str, run_id: str, ready: bool, now: datetime, last_finished: str | None
    ) -> bool:
        """Take the dataset's lock; False when it changed since `dataset_state`."""
        ...

    def record_run(self, dataset: str, run_id: str, execution_name: str, now: datetime) -> None: ...

    def abandon_start(self, dataset: str, run_id: str) -> None: ...

    def record_upload(self, dataset: str, ready: bool, now: datetime) -> ActiveRun | None:
        """Count an upload to a settling run; None when the dataset is not settling."""
        ...

    def claim_heartbeat(self, dataset: str, run_id: str, now: datetime, every: timedelta) -> bool: ...

    def mark_changed_during_run(self, dataset: str, run_id: str) -> None: ...

    def changed_during_run(self, dataset: str, run_id: str) -> bool: ...

    def run_status(self, dataset: str, run_id: str) -> str | None: ...

    def finish(
        self, dataset: str, run_id: str, status: RunStatus, now: datetime, follow_up: bool
    ) -> None: ...

    def claim_terminal_event(self, dataset: str, run_id: str, detail_type: str) -> bool: ...

    def unclaim_terminal_event(self, dataset: str, run_id: str) -> None: ...

    def release_slot(self, run_id: str) -> bool: ...


class EventBus(Protocol):
    """The pipeline's custom EventBridge bus."""

    def publish(self, detail: EventDetail) -> None:
        """Put one event; raises when the bus refuses it."""
        ...


@dataclass(frozen=True)
class StateChange:
    """One state entered or exited in an execution's history."""

    state: str
    entered: bool


class Executions(Protocol):
    """The pipeline's state machine in Step Functions."""

    def start(self, name: str, input_json: str) -> None: ...

    def end_settling(self, token: str, output_json: str) -> bool:
        """SendTaskSuccess; False when the wait behind `token` is over already."""
        ...

    def prolong_settling(self, token: str) -> bool:
        """SendTaskHeartbeat; False when the wait behind `token` is over already."""
        ...

    def state_changes(self, execution_arn: str) -> list[StateChange]:
        """The states the execution entered and exited, oldest first."""
        ...


@dataclass(frozen=True)
class TrainingJobSummary:
    name: str
    status: str  # SageMaker's TrainingJobStatus: InProgress, Completed, Failed, Stopping, Stopped
    created_at: datetime


class TrainingJobs(Protocol):
    """SageMaker training jobs."""

    def jobs_named(self, name_contains: str) -> list[TrainingJobSummary]:
        """Every job whose name contains `name_contains`, in no particular order."""
        ...

    def stop(self, name: str) -> str:
        """Ask the job to stop; its status afterwards (`Stopping`, or how it ended if it ended meanwhile)."""
        ...

    def trainer(self, name: str) -> str | None:
        """The `trainer` hyperparameter the job ran with."""
        ...
