"""cancel: an execution ended -> clean up after a stop, time-out or crash (stop its job, free its slot and
dataset, emit the run's last event if it put none), then start the follow-up run uploads asked for."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from lora_pipeline.dataset_lock import RunStatus
from lora_pipeline.events import Stage, TrainingCancelled, TrainingFailed
from lora_pipeline.run_names import execution_console_url, training_job_base_name
from lora_pipeline.s3_layout import RunLayout
from lora_pipeline.use_cases.run_input import RunInput, SalvageInput
from lora_pipeline.use_cases.start_run import LOCK_ATTEMPTS, start_run

if TYPE_CHECKING:
    from lora_pipeline.ports import EventBus, Executions, RunBook, TrainingJobs
    from lora_pipeline.salvage import SalvagedLora

# The states that put a run's last event on the bus, and the states where each stage of a run begins
# (statemachine/pipeline.asl.json; a test keeps both in step with it).
TERMINAL_EVENT_STATES = frozenset({"EmitRejected", "EmitSucceeded", "EmitFailed"})
STAGE_STARTS = {
    "Validate": Stage.VALIDATE,
    "JoinSlotQueue": Stage.SLOT,
    "NameTrainingJob": Stage.TRAINING,
    "Unpack": Stage.UNPACK,
}


class ExecutionEnd(BaseModel):
    """The `detail` of a "Step Functions Execution Status Change" event for a finished execution."""

    execution_arn: str = Field(alias="executionArn")
    status: str
    input: str
    error: str | None = None
    cause: str | None = None

    @property
    def run(self) -> RunInput:
        return RunInput.model_validate_json(self.input)


def stop_newest_job(jobs: TrainingJobs, base_name: str) -> tuple[str | None, bool]:
    """Stop the run's newest job if it still runs. Returns its name and whether it ended stopped
    (Step Functions itself stops a `.sync` job when the execution is stopped, so it may be stopping already)."""
    found = jobs.jobs_named(base_name)  # every attempt's job: the run has at most ten
    if not found:
        return None, False
    newest = max(found, key=lambda job: job.created_at)
    status = jobs.stop(newest.name) if newest.status == "InProgress" else newest.status
    return newest.name, status in ("Stopping", "Stopped")


def _last_event_and_stage(executions: Executions, execution_arn: str) -> tuple[bool, Stage]:
    """Whether the execution put its own last event, and the stage it was in when it ended."""
    emitted, stage = False, Stage.SETTLE
    for change in executions.state_changes(execution_arn):
        if change.entered:
            stage = STAGE_STARTS.get(change.state, stage)
        elif change.state in TERMINAL_EVENT_STATES:
            emitted = True
    return emitted, stage


def _emit_once(table: RunBook, bus: EventBus, event: TrainingFailed | TrainingCancelled) -> None:
    if not table.claim_terminal_event(event.dataset, event.run_id, event.DETAIL_TYPE):
        return  # this end was handled before (EventBridge delivers at least once)
    try:
        bus.publish(event)
    except Exception:
        table.unclaim_terminal_event(event.dataset, event.run_id)
        raise


def run_ended(
    table: RunBook,
    jobs: TrainingJobs,
    executions: Executions,
    bus: EventBus,
    salvage: Callable[[SalvageInput], SalvagedLora | None],
    discard_published: Callable[[str, RunLayout], None],
    end: ExecutionEnd,
    now: datetime,
) -> tuple[str | None, str | None]:
    """An execution ended. Unless it succeeded, clean up what it could not (it was stopped, timed out or
    crashed): stop its training job, free its slot and dataset, `salvage` its newest epoch LoRA and keep its
    checkpoints for `lora-pipeline resume` (a FAILED execution that went through its own failure path did
    so in its Salvage state) and, when it put no last event itself, emit `Training Cancelled` or
    `Training Failed`, once. Then start the one follow-up run that uploads during the run asked for (not
    after a stop: the user asked for no more training).

    `discard_published(bucket, layout)` removes what the unpack step published for the run.
    Returns the training job it saw (or None) and the follow-up run's id (or None).
    """
    run = end.run
    job = None
    if end.status != "SUCCEEDED":
        job, stopped = stop_newest_job(jobs, training_job_base_name(run.dataset, run.run_id))
        cancelled = end.status in ("ABORTED", "TIMED_OUT")
        emitted, stage = _last_event_and_stage(executions, end.execution_arn)
        if cancelled and not emitted:
            # Anything unpacked for a run that reports no success goes (the unpack function checks too);
            # the salvage below then publishes the newest epoch's LoRA as a partial result.
            discard_published(run.bucket, RunLayout(run.dataset, run.run_id))
        salvaged = (
            salvage(
                SalvageInput(
                    dataset=run.dataset,
                    run_id=run.run_id,
                    bucket=run.bucket,
                    trainer_name=jobs.trainer(job) if job is not None else None,
                )
            )
            if cancelled or not emitted
            else None
        )
        table.release_slot(run.run_id)
        table.finish(
            run.dataset,
            run.run_id,
            RunStatus.CANCELLED if cancelled else RunStatus.FAILED,
            now,
            follow_up=not cancelled,
        )
        if not emitted:
            common = {"dataset": run.dataset, "run_id": run.run_id, "bucket": run.bucket, "time": now}
            _emit_once(
                table,
                bus,
                TrainingCancelled(
                    **common,
                    execution_status=end.status,
                    training_job_name=job,
                    training_job_stopped=stopped,
                    salvaged=salvaged,
                )
                if cancelled
                else TrainingFailed(
                    **common,
                    stage=stage,
                    error=end.error or "States.Runtime",
                    cause=end.cause or "The execution failed outside the pipeline's own failure path.",
                    failure_reason=None,
                    training_job_name=job,
                    console_url=execution_console_url(end.execution_arn),
                    logs_url=None,
                    salvaged=salvaged,
                ),
            )
    follow_up = start_follow_up(table, executions, run.bucket, run.dataset, now)
    return job, follow_up


def start_follow_up(
    table: RunBook, executions: Executions, bucket: str, dataset: str, now: datetime
) -> str | None:
    """Start the run a change during the last run asked for (`follow_up`); its id, or None."""
    for _ in range(LOCK_ATTEMPTS):
        state, last_finished = table.dataset_state(dataset)
        if state.active is not None or not state.follow_up:
            return None
        run_id = start_run(table, executions, bucket, dataset, False, now, last_finished)
        if run_id is not None:
            return run_id
    raise RuntimeError(f"dataset {dataset}: its run lock kept changing; the event will be retried")
