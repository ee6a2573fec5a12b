"""The `TrainingJobs` port on SageMaker."""

from __future__ import annotations

from typing import Any

from lora_pipeline.aws.errors import ClientError, error_code
from lora_pipeline.ports import TrainingJobSummary


class SageMakerTrainingJobs:
    def __init__(self, client: Any) -> None:
        self._client = client

    def jobs_named(self, name_contains: str) -> list[TrainingJobSummary]:
        # Every page: the embedded AWS (moto) neither sorts nor applies MaxResults after NameContains.
        return [
            TrainingJobSummary(job["TrainingJobName"], job["TrainingJobStatus"], job["CreationTime"])
            for page in self._client.get_paginator("list_training_jobs").paginate(NameContains=name_contains)
            for job in page.get("TrainingJobSummaries", [])
        ]

    def stop(self, name: str) -> str:
        try:
            self._client.stop_training_job(TrainingJobName=name)
        except ClientError as exc:
            if error_code(exc) != "ValidationException":  # it ended meanwhile
                raise
            status: str = self._client.describe_training_job(TrainingJobName=name)["TrainingJobStatus"]
            return status
        return "Stopping"

    def trainer(self, name: str) -> str | None:
        hyperparameters: dict[str, str] = self._client.describe_training_job(TrainingJobName=name).get(
            "HyperParameters", {}
        )
        return hyperparameters.get("trainer")
