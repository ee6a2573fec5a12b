"""`status` and `logs` read the run asked about, on the real template on the embedded AWS: the stage is the
execution's newest state, the log is that run's training job's stream only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from embedded_aws import ArchiveExecutor, HeldExecutor, TrainingProgress, TrainingResult
from tests.integration.pipeline_support import dataset, lora_archive, pipeline
from tests.integration.test_cli_stack_commands import publish_training_image, run_cli


class AnnouncedHeldExecutor(HeldExecutor):
    """Logs which job it runs, then holds it until released."""

    def run(self, request: dict[str, Any], s3_client: Any, progress: TrainingProgress) -> TrainingResult:
        progress.log_line(f"training {request['TrainingJobName']}")
        return super().run(request, s3_client, progress)


def wait_for_held_job(held: HeldExecutor, dataset_name: str) -> str:
    for _ in range(300):
        jobs = [job for job in held.running() if job.startswith(dataset_name)]
        if jobs:
            return jobs[0]
        time.sleep(0.1)
    raise AssertionError(f"no training job of {dataset_name} started")


def test_status_shows_the_running_stage_and_logs_show_only_that_jobs_stream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    held = AnnouncedHeldExecutor(ArchiveExecutor(lora_archive("alpha")))
    with pipeline(held) as stack:
        publish_training_image(stack)
        target = ("--stack", stack.stack_name)
        assert run_cli(capsys, "upload", str(dataset(tmp_path, "alpha")), *target, "--start")[0] == 0
        alpha_job = wait_for_held_job(held, "alpha")
        code, out, _ = run_cli(capsys, "status", "alpha", *target)
        assert code == 0
        row = dict(zip(out.splitlines()[0].split(), out.splitlines()[1].split(), strict=False))
        assert (row["STATUS"], row["STAGE"]) == ("RUNNING", "Train")

        held.release()
        stack.wait_until_idle(timeout=60)
        assert run_cli(capsys, "upload", str(dataset(tmp_path, "bravo")), *target, "--start")[0] == 0
        stack.wait_until_idle(timeout=60)
        code, out, _ = run_cli(capsys, "logs", "alpha", *target)
        assert code == 0 and out.splitlines() == [f"training {alpha_job}"]
        code, out, _ = run_cli(capsys, "logs", "bravo", *target)
        assert code == 0 and len(out.splitlines()) == 1 and out.startswith("training bravo-")
