"""The end-of-run use case's decisions (functions/cancel), against the in-memory ports (tests/fakes.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from lora_pipeline.events import Stage, TrainingCancelled, TrainingFailed
from lora_pipeline.ports import StateChange, TrainingJobSummary
from lora_pipeline.s3_layout import RunLayout
from lora_pipeline.salvage import SalvagedLora
from lora_pipeline.use_cases.cancel import ExecutionEnd, run_ended
from lora_pipeline.use_cases.run_input import SalvageInput
from tests.fakes import FakeExecutions, FakeTrainingJobs, InMemoryRunTable, RecordingEventBus

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
ARN = "arn:aws:states:eu-west-1:123456789012:execution:pipeline:d-r1"
SALVAGED = SalvagedLora(
    model_uri="s3://bkt/runs/d/r1/model/d-000002.safetensors",
    manifest_uri="s3://bkt/runs/d/r1/model/manifest.json",
    sha256="0" * 64,
    size_bytes=10,
    epoch=2,
    epochs=4,
    stopped="stopped",
    resumable=True,
)


@dataclass
class Pipeline:
    table: InMemoryRunTable = field(default_factory=InMemoryRunTable)
    jobs: FakeTrainingJobs = field(default_factory=FakeTrainingJobs)
    sfn: FakeExecutions = field(default_factory=FakeExecutions)
    bus: RecordingEventBus = field(default_factory=RecordingEventBus)
    salvaged: list[SalvageInput] = field(default_factory=list)
    discarded: list[tuple[str, RunLayout]] = field(default_factory=list)

    def salvage(self, run: SalvageInput) -> SalvagedLora | None:
        self.salvaged.append(run)
        return SALVAGED

    def end(
        self, status: str, history: tuple[str, ...] | list[str] = (), emitted: str | None = None
    ) -> tuple[str | None, str | None]:
        """The execution of run r1 of dataset d ended with `status` after entering the states `history`
        (and exiting the last-event state `emitted`)."""
        self.sfn.histories[ARN] = [StateChange(name, entered=True) for name in history]
        if emitted:
            self.sfn.histories[ARN].append(StateChange(emitted, entered=False))
        end = ExecutionEnd(
            executionArn=ARN,
            status=status,
            input=json.dumps({"dataset": "d", "run_id": "r1", "bucket": "bkt"}),
        )
        return run_ended(
            self.table,
            self.jobs,
            self.sfn,
            self.bus,
            self.salvage,
            lambda bucket, layout: self.discarded.append((bucket, layout)),
            end,
            T0 + timedelta(hours=1),
        )


@pytest.fixture
def pipeline() -> Pipeline:
    """Run r1 of dataset d trains in a slot, on its second attempt's job."""
    p = Pipeline()
    assert p.table.try_start("d", "r1", False, T0, None)
    p.table.record_run("d", "r1", "d-r1", T0)
    p.table.mark_settled("d", "r1", T0 + timedelta(minutes=1))
    p.table.join_queue("r1")
    p.table.acquire_slot("r1")
    p.jobs.jobs = [
        TrainingJobSummary("d-r1-1", "InProgress", T0 + timedelta(minutes=9)),
        TrainingJobSummary("d-r1-0", "Failed", T0 + timedelta(minutes=2)),
    ]
    p.jobs.trainers = {"d-r1-1": "kohya"}
    return p


def test_a_stopped_run_stops_its_job_salvages_and_reports_cancelled_once(pipeline: Pipeline) -> None:
    history = ["Init", "Validate", "JoinSlotQueue", "NameTrainingJob"]
    assert pipeline.end("ABORTED", history) == ("d-r1-1", None)
    assert pipeline.jobs.stopped == ["d-r1-1"]
    assert pipeline.discarded == [("bkt", RunLayout("d", "r1"))]
    assert [(s.run_id, s.trainer) for s in pipeline.salvaged] == [("r1", "kohya")]
    assert pipeline.table.holders == set() and pipeline.table.run_status("d", "r1") == "CANCELLED"
    assert pipeline.table.dataset_state("d")[0].active is None
    (event,) = pipeline.bus.published
    assert isinstance(event, TrainingCancelled)
    assert (event.execution_status, event.training_job_name, event.training_job_stopped) == (
        "ABORTED",
        "d-r1-1",
        True,
    )
    assert event.salvaged == SALVAGED
    pipeline.end("ABORTED", history)  # EventBridge delivers the same end again
    assert len(pipeline.bus.published) == 1


def test_a_crash_outside_the_failure_path_reports_the_stage_it_was_in(pipeline: Pipeline) -> None:
    pipeline.jobs.jobs = []
    pipeline.end("FAILED", ["Init", "Validate", "JoinSlotQueue"])
    (event,) = pipeline.bus.published
    assert isinstance(event, TrainingFailed)
    assert (event.stage, event.error, event.training_job_name) == (Stage.SLOT, "States.Runtime", None)
    assert event.console_url.endswith(f"#/v2/executions/details/{ARN}") and "eu-west-1" in event.console_url
    assert pipeline.discarded == []  # only a cancelled run loses what it published
    assert [s.trainer for s in pipeline.salvaged] == [""]  # no job: the trainer is unknown
    assert pipeline.table.run_status("d", "r1") == "FAILED"


def test_a_run_that_put_its_own_last_event_is_only_cleaned_up(pipeline: Pipeline) -> None:
    pipeline.jobs.jobs = [TrainingJobSummary("d-r1-0", "Failed", T0)]
    pipeline.end("FAILED", ["Validate", "NameTrainingJob", "EmitFailed"], emitted="EmitFailed")
    assert pipeline.bus.published == [] and pipeline.salvaged == [] and pipeline.jobs.stopped == []
    assert pipeline.table.holders == set() and pipeline.table.run_status("d", "r1") == "FAILED"


def test_a_succeeded_run_is_left_alone(pipeline: Pipeline) -> None:
    assert pipeline.end("SUCCEEDED", ["Unpack", "EmitSucceeded"], emitted="EmitSucceeded") == (None, None)
    assert pipeline.jobs.stopped == [] and pipeline.bus.published == [] and pipeline.salvaged == []
    assert pipeline.table.run_status("d", "r1") == "RUNNING"  # the state machine records its own end


@pytest.mark.parametrize(
    ("status", "follow_up"), [("FAILED", True), ("ABORTED", False), ("TIMED_OUT", False)]
)
def test_a_change_during_the_run_starts_one_follow_up_unless_the_run_was_stopped(
    pipeline: Pipeline, status: str, follow_up: bool
) -> None:
    pipeline.table.mark_changed_during_run("d", "r1")
    _, started = pipeline.end(status, ["Validate"])
    assert (started is not None) == follow_up
    assert [run["run_id"] for _, run in pipeline.sfn.started] == ([started] if follow_up else [])


def test_a_follow_up_after_success_once_the_state_machine_freed_the_dataset(pipeline: Pipeline) -> None:
    pipeline.table.mark_changed_during_run("d", "r1")
    pipeline.table.finish("d", "r1", "SUCCEEDED", T0 + timedelta(minutes=30), follow_up=True)  # FreeDataset
    _, started = pipeline.end("SUCCEEDED", ["EmitSucceeded"], emitted="EmitSucceeded")
    assert started is not None and pipeline.table.dataset_state("d")[0].active.run_id == started


def test_an_event_the_bus_refused_is_emitted_on_the_retry(pipeline: Pipeline) -> None:
    pipeline.bus.refuse = True
    with pytest.raises(RuntimeError, match="refused"):
        pipeline.end("TIMED_OUT", ["NameTrainingJob"])
    pipeline.bus.refuse = False
    pipeline.end("TIMED_OUT", ["NameTrainingJob"])
    assert [type(e) for e in pipeline.bus.published] == [TrainingCancelled]
