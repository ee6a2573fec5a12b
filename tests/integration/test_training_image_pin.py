"""The training image on the real template: an immutable repository, one image per run by digest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from embedded_aws import ArchiveExecutor, FlakyExecutor, TrainingProgress, TrainingResult
from tests.integration.pipeline_support import (
    dataset,
    emails,
    lora_archive,
    pipeline,
    pipeline_events,
    upload,
)
from tests.integration.test_cli_stack_commands import image_manifest, publish_training_image, training_images

pytestmark = pytest.mark.slow


class _RebuiltDuringFirstJob(FlakyExecutor):
    """Fails the first job for lack of capacity; while it runs, `make image` pins a new image."""

    def __init__(self) -> None:
        super().__init__(ArchiveExecutor(lora_archive()), throttled_creates=0, capacity_failures=1)
        self.rebuild: Callable[[], str] | None = None
        self.rebuilt: str | None = None

    def run(self, request: dict[str, Any], s3_client: Any, progress: TrainingProgress) -> TrainingResult:
        if self.rebuild is not None and self.rebuilt is None:
            self.rebuilt = self.rebuild()
        return super().run(request, s3_client, progress)


def test_the_stack_repository_refuses_to_move_a_tag() -> None:
    with pipeline(None, TrainingImageUri="") as stack:
        ecr = stack.client("ecr")
        (repository,) = ecr.describe_repositories()["repositories"]
        assert repository["imageTagMutability"] == "IMMUTABLE"
        publish_training_image(stack, "v1")
        # ECR answers ImageTagAlreadyExistsException; moto 5.2.5 ImageAlreadyExistsException.
        refused = (ecr.exceptions.ImageTagAlreadyExistsException, ecr.exceptions.ImageAlreadyExistsException)
        with pytest.raises(refused, match="'v1'"):
            ecr.put_image(
                repositoryName=repository["repositoryName"], imageManifest=image_manifest("v2"), imageTag="v1"
            )


def test_a_capacity_retry_runs_the_image_its_run_started_with(tmp_path: Path) -> None:
    executor = _RebuiltDuringFirstJob()
    with pipeline(executor, TrainingImageUri="") as stack:
        first = publish_training_image(stack, "v1")
        executor.rebuild = lambda: publish_training_image(stack, "v2")
        upload(stack, dataset(tmp_path))
        stack.wait_until_idle(timeout=90)

        assert executor.capacity_failed == 1 and executor.rebuilt not in (None, first)
        (execution,) = stack.executions()
        assert execution.status == "SUCCEEDED"
        images = training_images(stack)
        assert len(images) == 2 and set(images.values()) == {first}
        assert first.split("@")[1].startswith("sha256:")


def test_a_stack_without_an_image_fails_the_run_with_how_to_build_one(tmp_path: Path) -> None:
    with pipeline(ArchiveExecutor(lora_archive()), TrainingImageUri="") as stack:
        upload(stack, dataset(tmp_path))
        stack.wait_until_idle(timeout=60)

        assert stack.training_jobs() == []
        (failed,) = pipeline_events(stack, "Training Failed")
        assert failed["stage"] == "validate" and failed["error"] == "TrainingImageNotPinned"
        assert "make image STACK=" in failed["cause"]
        assert stack.outputs["TrainingImageParameterName"] in failed["cause"]
        ((subject, body),) = emails(stack).items()
        assert subject == "Training failed: bluebot (validate)" and "make image STACK=" in body
