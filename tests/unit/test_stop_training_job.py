"""`Training Cancelled` names the run's newest job and says truly whether it stopped, whatever order
ListTrainingJobs returns (moto neither sorts nor filters before MaxResults; a run has one job per attempt)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from lora_pipeline.aws.sagemaker_jobs import SageMakerTrainingJobs
from lora_pipeline.use_cases.cancel import stop_newest_job

T0 = datetime(2026, 11, 30, tzinfo=UTC)


class FakeSageMaker:
    def __init__(self, jobs: list[tuple[str, str]], stop_error: str | None = None) -> None:
        # (name, status), oldest first; pages of two, newest-first order deliberately not given.
        self.jobs = [
            {"TrainingJobName": name, "TrainingJobStatus": status, "CreationTime": T0 + timedelta(minutes=i)}
            for i, (name, status) in enumerate(jobs)
        ]
        self.stop_error = stop_error
        self.stopped: list[str] = []

    def get_paginator(self, name: str) -> Any:
        assert name == "list_training_jobs"
        jobs = self.jobs

        class Pages:
            def paginate(self, NameContains: str) -> list[dict[str, Any]]:
                found = [j for j in jobs if NameContains in j["TrainingJobName"]]
                return [{"TrainingJobSummaries": found[i : i + 2]} for i in range(0, len(found), 2)]

        return Pages()

    def stop_training_job(self, TrainingJobName: str) -> None:
        if self.stop_error:
            raise ClientError({"Error": {"Code": self.stop_error, "Message": "x"}}, "StopTrainingJob")
        self.stopped.append(TrainingJobName)

    def describe_training_job(self, TrainingJobName: str) -> dict[str, Any]:
        return {"TrainingJobStatus": "Stopping"}


def test_the_newest_attempt_is_stopped_even_behind_older_attempts_and_other_runs() -> None:
    others = [(f"other-{i}-0", "Completed") for i in range(12)]
    sagemaker = FakeSageMaker([*others, ("d-r1-0", "Failed"), ("d-r1-1", "Failed"), ("d-r1-2", "InProgress")])
    assert stop_newest_job(SageMakerTrainingJobs(sagemaker), "d-r1") == ("d-r1-2", True)
    assert sagemaker.stopped == ["d-r1-2"]


@pytest.mark.parametrize(("status", "stopped"), [("Stopping", True), ("Stopped", True), ("Completed", False)])
def test_a_job_that_ended_or_is_stopping_is_reported_as_it_is(status: str, stopped: bool) -> None:
    sagemaker = FakeSageMaker([("d-r1-0", "Failed"), ("d-r1-1", status)])
    assert stop_newest_job(SageMakerTrainingJobs(sagemaker), "d-r1") == ("d-r1-1", stopped)
    assert sagemaker.stopped == []


def test_a_job_stopping_already_when_stopped_again_counts_as_stopped() -> None:
    sagemaker = FakeSageMaker([("d-r1-0", "InProgress")], stop_error="ValidationException")
    assert stop_newest_job(SageMakerTrainingJobs(sagemaker), "d-r1") == ("d-r1-0", True)


def test_no_job_yet() -> None:
    assert stop_newest_job(SageMakerTrainingJobs(FakeSageMaker([])), "d-r1") == (None, False)
