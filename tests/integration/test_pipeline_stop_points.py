"""A stop at the points the other run-end tests leave out still ends the run with one event and one email:
while the dataset is validated (a Lambda that goes on after the stop), and during the ready grace (a Wait)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from embedded_aws.training import ArchiveExecutor
from lora_pipeline import validate
from tests.integration.pipeline_support import dataset, lora_archive, pipeline, pipeline_events, upload
from tests.integration.test_pipeline_run_ends import assert_dataset_and_slots_free, last_events, subjects
from tests.integration.test_pipeline_runs import wait_for

pytestmark = pytest.mark.slow


def test_a_stop_while_validating_ends_with_one_cancel_and_no_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    validating, stopped = threading.Event(), threading.Event()
    shipped = validate.build_validation_report

    def slow_validate(*args: Any, **kwargs: Any) -> Any:
        validating.set()
        assert stopped.wait(30)
        return shipped(*args, **kwargs)  # answers the state machine after the stop

    # The validate step imports build_validation_report when it runs, so it is replaced in its home module.
    monkeypatch.setattr(validate, "build_validation_report", slow_validate)
    with pipeline(ArchiveExecutor(lora_archive())) as stack:
        upload(stack, dataset(tmp_path))
        wait_for(validating.is_set, timeout=60)
        (execution,) = stack.executions()
        stack.client("stepfunctions").stop_execution(executionArn=execution.arn)
        stopped.set()
        wait_for(lambda: pipeline_events(stack, "Training Cancelled") != [])
        stack.wait_until_idle(timeout=60)

        assert stack.executions()[0].status == "ABORTED"
        assert stack.training_jobs() == []
        (cancelled,) = pipeline_events(stack, "Training Cancelled")
        assert cancelled["training_job_name"] is None and cancelled["training_job_stopped"] is False
        assert last_events(stack) == [("Training Cancelled", execution.input["run_id"])]
        assert subjects(stack) == ["Training cancelled: bluebot"]
        assert_dataset_and_slots_free(stack)


def test_a_stop_during_the_ready_grace_ends_with_one_cancel(tmp_path: Path) -> None:
    with pipeline(None, ReadyGraceSeconds="300") as stack:
        upload(stack, dataset(tmp_path))
        wait_for(lambda: any(e.states_entered()[-1:] == ["ReadyGrace"] for e in stack.executions()))
        (execution,) = stack.executions()
        stack.client("stepfunctions").stop_execution(executionArn=execution.arn)
        stack.wait_until_idle(timeout=60)

        assert stack.executions()[0].status == "ABORTED"
        assert last_events(stack) == [("Training Cancelled", execution.input["run_id"])]
        assert subjects(stack) == ["Training cancelled: bluebot"]
        assert_dataset_and_slots_free(stack)
