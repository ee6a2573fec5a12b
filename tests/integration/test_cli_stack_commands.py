"""The `lora-pipeline` commands that talk to a stack, against the real template on the embedded AWS."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from embedded_aws import ArchiveExecutor, EmbeddedStack, HeldExecutor, TrainingProgress, TrainingResult
from embedded_aws.training import split_s3_uri
from lora_pipeline.training_metrics import TrainingProgress as MetricProgress
from lora_pipeline.training_metrics import format_metric_line
from lora_pipeline_cli.main import main
from tests.integration.pipeline_support import dataset, lora_archive, pipeline, upload
from tests.lora_files import kohya_metadata, lora_tensors, safetensors_bytes


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of one command. The in-process Lambda handlers log JSON lines to
    stdout (their CloudWatch stream); those are dropped so that only the command's own output remains."""
    code = main(list(argv))
    captured = capsys.readouterr()
    out = "".join(line for line in captured.out.splitlines(keepends=True) if not line.startswith("{"))
    return code, out, captured.err


def image_manifest(build: str) -> str:
    """An image manifest whose one layer (and so the digest ECR gives it) differs for each `build`."""
    layer = "sha256:" + hashlib.sha256(build.encode()).hexdigest()
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"digest": "sha256:" + "0" * 64},
            "layers": [{"digest": layer, "size": 1}],
        }
    )


def publish_training_image(stack: EmbeddedStack, tag: str = "v1") -> str:
    """What `make image` leaves behind: an image under a new tag in the stack's repository, pinned by digest
    in the stack's SSM parameter. Returns the pinned `<repository>@sha256:<digest>`."""
    repository_uri = stack.outputs["TrainingImageRepositoryUri"]
    pushed = stack.client("ecr").put_image(
        repositoryName=repository_uri.split("/", 1)[1], imageManifest=image_manifest(tag), imageTag=tag
    )
    image = f"{repository_uri}@{pushed['image']['imageId']['imageDigest']}"
    stack.client("ssm").put_parameter(
        Name=stack.outputs["TrainingImageParameterName"], Value=image, Type="String", Overwrite=True
    )
    return image


def training_images(stack: EmbeddedStack) -> dict[str, str]:
    """Training job name -> the image it ran (CreateTrainingJob's AlgorithmSpecification.TrainingImage)."""
    return {
        job["TrainingJobName"]: job["AlgorithmSpecification"]["TrainingImage"]
        for job in stack.training_jobs()
    }


def test_upload_status_download_and_retrain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = dataset(tmp_path, "bluebot", ready=False)
    with pipeline(ArchiveExecutor(lora_archive("bluebot")), TrainingImageUri="") as stack:
        code, _, err = run_cli(capsys, "upload", str(folder), "--stack", stack.stack_name, "--start")
        assert code == 2 and f"make image STACK={stack.stack_name}" in err
        assert stack.s3.list_objects_v2(Bucket=stack.bucket).get("KeyCount", 0) == 0
        first_image = publish_training_image(stack)
        code, out, _ = run_cli(capsys, "upload", str(folder), "--stack", stack.stack_name, "--start")
        assert code == 0, out
        assert f"s3://{stack.bucket}/datasets/bluebot/" in out
        keys = {o["Key"] for o in stack.s3.list_objects_v2(Bucket=stack.bucket)["Contents"]}
        assert "datasets/bluebot/_READY" in keys
        assert "datasets/bluebot/10_bluebot/img_000.png" in keys or any(k.endswith(".png") for k in keys)
        stack.wait_until_idle(timeout=60)

        code, out, _ = run_cli(capsys, "status", "--stack", stack.stack_name)
        assert code == 0
        header, row = out.splitlines()[:2]
        assert header.split()[:3] == ["DATASET", "RUN", "STATUS"]
        assert row.split()[0] == "bluebot" and "SUCCEEDED" in row

        target = tmp_path / "downloaded"
        code, out, _ = run_cli(capsys, "download", "bluebot", "--stack", stack.stack_name, "-o", str(target))
        assert code == 0, out
        manifest = json.loads((target / "manifest.json").read_text())
        model = target / manifest["file_name"]
        assert model.stat().st_size == manifest["size_bytes"]
        assert "verified" in out

        assert set(training_images(stack).values()) == {first_image}
        # A new `make image`: runs started from now on train with it, by digest.
        second_image = publish_training_image(stack, "v2")
        code, out, _ = run_cli(capsys, "retrain", "bluebot", "--stack", stack.stack_name)
        assert code == 0, out
        stack.wait_until_idle(timeout=60)
        code, out, _ = run_cli(capsys, "status", "bluebot", "--stack", stack.stack_name)
        assert [line.split()[2] for line in out.splitlines()[1:]] == ["SUCCEEDED", "SUCCEEDED"]
        assert sorted(training_images(stack).values()) == sorted([first_image, second_image])


def test_upload_refuses_a_rejected_dataset_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = dataset(tmp_path, "bluebot", ready=False)
    (folder / "pipeline.toml").write_text("volume_size_gb = 10\n")
    with pipeline(ArchiveExecutor(lora_archive("bluebot"))) as stack:
        publish_training_image(stack)
        code, _, err = run_cli(capsys, "upload", str(folder), "--stack", stack.stack_name)
        assert code == 1
        assert "Not uploaded" in err
        assert stack.s3.list_objects_v2(Bucket=stack.bucket).get("KeyCount", 0) == 0
        code, _, _ = run_cli(capsys, "upload", str(folder), "--stack", stack.stack_name, "--force", "--start")
        assert code == 0
        stack.wait_until_idle(timeout=60)
        code, out, _ = run_cli(capsys, "status", "--stack", stack.stack_name)
        assert "REJECTED" in out
        code, _, err = run_cli(capsys, "download", "bluebot", "--stack", stack.stack_name)
        assert code == 2 and "No successful run" in err


def test_validate_reads_a_dataset_in_s3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = dataset(tmp_path, "bluebot", ready=False)
    with pipeline(ArchiveExecutor(lora_archive("bluebot")), QuietPeriodSeconds="600") as stack:
        publish_training_image(stack)
        run_cli(capsys, "upload", str(folder), "--stack", stack.stack_name)
        code, out, _ = run_cli(capsys, "validate", f"s3://{stack.bucket}/datasets/bluebot/")
        assert code == 0, out
        assert "TRAINABLE" in out and f"s3://{stack.bucket}/datasets/bluebot/" in out
        code, _, err = run_cli(capsys, "validate", f"s3://{stack.bucket}/elsewhere/bluebot/")
        assert code == 2 and "datasets/<name>" in err


def test_cancel_stops_the_job_and_reports_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    held = HeldExecutor(ArchiveExecutor(lora_archive("bluebot")))
    folder = dataset(tmp_path, "bluebot")
    with pipeline(held) as stack:
        publish_training_image(stack)
        run_cli(capsys, "upload", str(folder), "--stack", stack.stack_name, "--start")
        for _ in range(200):
            if held.running():
                break
            time.sleep(0.1)
        assert held.running(), "the training job never started"
        code, out, _ = run_cli(capsys, "cancel", "bluebot", "--stack", stack.stack_name)
        assert code == 0, out
        stack.wait_until_idle(timeout=60)
        code, out, _ = run_cli(capsys, "status", "--stack", stack.stack_name)
        assert "CANCELLED" in out.splitlines()[1]
        code, _, err = run_cli(capsys, "cancel", "bluebot", "--stack", stack.stack_name)
        assert code == 2 and "nothing to cancel" in err


def test_upload_during_a_run_says_a_follow_up_run_trains_it_and_one_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    held = HeldExecutor(ArchiveExecutor(lora_archive("bluebot")))
    folder = dataset(tmp_path, "bluebot")
    with pipeline(held) as stack:
        publish_training_image(stack)
        run_cli(capsys, "upload", str(folder), "--stack", stack.stack_name, "--start")
        for _ in range(200):
            if held.running():
                break
            time.sleep(0.1)
        assert held.running(), "the training job never started"
        time.sleep(1.1)  # S3 event times have whole seconds: these objects come after the settle's second
        (folder / "10_bluebot" / "extra.caption").write_text("bluebot, extra\n")
        code, out, _ = run_cli(capsys, "upload", str(folder), "--stack", stack.stack_name, "--start")
        assert code == 0, out
        assert "is in progress and does not train them" in out and "one follow-up run" in out
        held.release()
        stack.wait_until_idle(timeout=90)
        code, out, err = run_cli(capsys, "status", "bluebot", "--stack", stack.stack_name)
        assert [line.split()[2] for line in out.splitlines()[1:]] == ["SUCCEEDED", "SUCCEEDED"]
        # The embedded stack has no NotificationEmail: nobody gets the emails.
        assert "warning: No confirmed subscription" in err


class ChattyExecutor(ArchiveExecutor):
    """Prints a log line and progress lines the way the training container does, then delivers the archive."""

    def run(self, request: dict[str, Any], s3_client: Any, progress: TrainingProgress) -> TrainingResult:
        progress.log_line("loading the dataset")
        for step in (5, 10):
            line = format_metric_line(
                MetricProgress(step=step, total_steps=10, loss=0.25, eta_seconds=60 - 6 * step)
            )
            progress.log_line(line)
        return super().run(request, s3_client, progress)


def test_logs_and_progress_come_from_the_training_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = dataset(tmp_path, "bluebot")
    with pipeline(ChattyExecutor(lora_archive("bluebot"))) as stack:
        publish_training_image(stack)
        run_cli(capsys, "upload", str(folder), "--stack", stack.stack_name, "--start")
        stack.wait_until_idle(timeout=60)
        code, out, _ = run_cli(capsys, "logs", "bluebot", "--stack", stack.stack_name)
        assert code == 0
        assert out.splitlines()[:2] == [
            "loading the dataset",
            "lora-metrics step=5/10 loss=0.25 eta_seconds=30",
        ]
        code, out, _ = run_cli(capsys, "status", "bluebot", "--stack", stack.stack_name)
        assert "step 10/10 (100%) loss 0.25" in out


def test_the_stacks_limits_apply_when_a_stack_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = dataset(tmp_path, "bluebot", ready=False)
    (folder / "pipeline.toml").write_text('trainer = "smoke"\nmax_runtime_hours = 2\n')
    with pipeline(None, MaxRuntimeHours="1") as stack:
        assert run_cli(capsys, "validate", str(folder))[0] == 0  # the default cap is 12 h
        code, out, _ = run_cli(capsys, "validate", str(folder), "--stack", stack.stack_name)
        assert code == 1 and "JOB_RUNTIME_ABOVE_CAP" in out and "cap of 1.0 h" in out
        code, _, err = run_cli(capsys, "upload", str(folder), "--stack", stack.stack_name)
        assert code == 1 and "Not uploaded" in err


def test_upload_refuses_a_folder_name_that_cannot_be_a_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = dataset(tmp_path, "my dogs")
    code, _, err = run_cli(capsys, "upload", str(folder), "--stack", "any")
    assert code == 2 and "--dataset NAME" in err


def test_missing_credentials_are_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    code, _, err = run_cli(capsys, "validate", "s3://bucket/datasets/bluebot/")
    assert code == 2 and "no AWS credentials" in err
    code, _, err = run_cli(capsys, "status", "--stack", "any")
    assert code == 2 and "No AWS credentials" in err


def test_unknown_stack_says_how_to_deploy(capsys: pytest.CaptureFixture[str]) -> None:
    with pipeline(None) as _:
        code, _, err = run_cli(capsys, "status", "--stack", "no-such-stack")
    assert code == 2
    assert "not found" in err and "sam deploy --guided" in err


class _StopsOnceThenTrains:
    """First job: two epochs saved into its checkpoints, then MaxRuntime. Later jobs: note which checkpoint
    files SageMaker would restore into /opt/ml/checkpoints (the job's CheckpointConfig prefix), then finish."""

    def __init__(self) -> None:
        self.restored: list[list[str]] = []
        self.inner = ArchiveExecutor(lora_archive("bluebot"))

    def admit(self, request: dict[str, Any]) -> None:
        pass

    def stop(self, job_name: str) -> None:
        pass

    def run(self, request: dict[str, Any], s3_client: Any, progress: TrainingProgress) -> TrainingResult:
        bucket, prefix = split_s3_uri(request["CheckpointConfig"]["S3Uri"])
        listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        if self.restored or listed:
            self.restored.append(sorted(o["Key"][len(prefix) :] for o in listed))
            return self.inner.run(request, s3_client, progress)
        self.restored.append([])
        for name, body in _saved_after_epoch_2().items():
            s3_client.put_object(Bucket=bucket, Key=prefix + name, Body=body)
        return TrainingResult(status="Stopped", secondary_status="MaxRuntimeExceeded")


def _saved_after_epoch_2() -> dict[str, bytes]:
    lora = safetensors_bytes(lora_tensors(), kohya_metadata() | {"ss_num_epochs": "3"})
    return {
        "bluebot-000001.safetensors": lora,
        "bluebot-000002.safetensors": lora,
        "bluebot-000002-state/train_state.json": b'{"current_epoch": 2, "current_step": 20}',
        "bluebot-000002-state/random_states_0.pkl": b"rng",
    }


def test_resume_continues_a_stopped_run_from_its_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    executor = _StopsOnceThenTrains()
    with pipeline(executor) as stack:
        publish_training_image(stack)
        code, _, err = run_cli(capsys, "resume", "bluebot", "--stack", stack.stack_name)
        assert code != 0 and "retrain bluebot" in err, "nothing to resume yet"
        upload(stack, dataset(tmp_path))
        stack.wait_until_idle(timeout=60)
        (stopped,) = stack.executions()

        code, out, err = run_cli(capsys, "resume", "bluebot", "--stack", stack.stack_name)
        assert code == 0, err
        assert f"continues from the checkpoints of run {stopped.input['run_id']}" in out
        stack.wait_until_idle(timeout=60)

        assert executor.restored == [[], sorted(_saved_after_epoch_2())]
        code, out, _ = run_cli(capsys, "status", "bluebot", "--stack", stack.stack_name)
        assert [line.split()[2] for line in out.splitlines()[1:]] == ["SUCCEEDED", "FAILED"]
        keys = {o["Key"] for o in stack.s3.list_objects_v2(Bucket=stack.bucket)["Contents"]}
        assert "runs/bluebot/resume-request.json" not in keys, "a request is used once"
