"""Behaviour of the whole pipeline on the embedded AWS: the real template, state machine and handlers."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from embedded_aws.training import (
    ArchiveExecutor,
    FailingExecutor,
    FlakyExecutor,
    TrainingResult,
    split_s3_uri,
)
from lora_pipeline.s3_layout import RunLayout
from lora_pipeline.salvage import KEPT_FOR_RESUME_TAG
from tests.integration.pipeline_support import (
    dataset,
    emails,
    lora_archive,
    pipeline,
    pipeline_events,
    table_item,
    upload,
)
from tests.lora_files import Member, kohya_metadata, lora_tensors, safetensors_bytes, tar_bytes

pytestmark = pytest.mark.slow


def test_happy_path_from_upload_to_email(tmp_path: Path) -> None:
    with pipeline(ArchiveExecutor(lora_archive()), QuietPeriodSeconds="300") as stack:
        folder = dataset(tmp_path)
        (folder / "pipeline.toml").write_text(
            'trainer = "smoke"\nsample_prompts = ["bluebot on a beach --d 7"]\n'
        )
        started = time.monotonic()
        upload(stack, folder)
        stack.wait_until_idle(timeout=120)
        # _READY ends the settling at once: nobody waited for the 300 s quiet period.
        assert time.monotonic() - started < 120

        (execution,) = stack.executions()
        assert execution.status == "SUCCEEDED"
        run_id = execution.input["run_id"]
        layout = RunLayout("bluebot", run_id)
        keys = {
            o["Key"] for o in stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=layout.prefix)["Contents"]
        }
        written = {
            layout.validation_key,
            layout.kohya_toml_key,
            layout.prompts_key,
            layout.model_key("bluebot"),
        }
        assert written | {layout.manifest_key} <= keys
        prompts = stack.s3.get_object(Bucket=stack.bucket, Key=layout.prompts_key)["Body"].read().decode()
        assert prompts.startswith("bluebot on a beach --d 7")
        manifest = json.loads(
            stack.s3.get_object(Bucket=stack.bucket, Key=layout.manifest_key)["Body"].read()
        )
        assert manifest["run"]["run_id"] == run_id

        (job,) = stack.training_jobs()
        assert job["TrainingJobName"] == f"bluebot-{run_id}-0"
        assert job["EnableManagedSpotTraining"] is True
        assert (
            job["StoppingCondition"]["MaxWaitTimeInSeconds"]
            >= job["StoppingCondition"]["MaxRuntimeInSeconds"]
        )
        assert job["CheckpointConfig"] == {
            "S3Uri": f"s3://{stack.bucket}/{layout.checkpoints_prefix}",
            "LocalPath": "/opt/ml/checkpoints",
        }
        channels = {
            c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]
        }
        assert channels == {
            "train": f"s3://{stack.bucket}/datasets/bluebot/",
            "config": f"s3://{stack.bucket}/{layout.config_prefix}",
        }
        tags = stack.client("sagemaker").list_tags(ResourceArn=job["TrainingJobArn"])["Tags"]
        assert {"Key": "dataset", "Value": "bluebot"} in tags and {"Key": "run", "Value": run_id} in tags

        assert [e["training_job_name"] for e in pipeline_events(stack, "Training Started")] == [
            job["TrainingJobName"]
        ]
        (succeeded,) = pipeline_events(stack, "Training Succeeded")
        assert succeeded["model_uri"] == f"s3://{stack.bucket}/{layout.model_key('bluebot')}"
        assert succeeded["sha256"] == manifest["sha256"] and succeeded["changed_during_run"] is False

        body = emails(stack)["LoRA ready: bluebot"]
        assert f"Model: s3://{stack.bucket}/{layout.model_key('bluebot')}" in body
        assert "Download (expires " in body and "X-Amz-Signature=" in body and "X-Amz-Expires=43200" in body
        assert "temporary credentials" in body
        assert "Billable: 42 s (managed spot, ml.m5.xlarge)" in body
        assert "Estimated cost: less than $0.01" in body
        assert "Training started: bluebot" in emails(stack)

        # Every terminal path frees the slot and the dataset, and records how the run ended.
        assert "holders" not in table_item(stack, "SLOTS", "SLOTS")
        assert "active_run" not in table_item(stack, "DATASET#bluebot", "DATASET")
        assert table_item(stack, "DATASET#bluebot", f"RUN#{run_id}")["status"]["S"] == "SUCCEEDED"


def test_rejected_dataset_gets_every_problem_and_no_training_job(tmp_path: Path) -> None:
    folder = dataset(tmp_path)
    (folder / "pipeline.toml").write_text(
        'trainer = "smoke"\ninstance_type = "ml.p5.48xlarge"\nvolume_size_gb = 20\n'
    )
    (folder / "10_bluebot" / "img00.caption").write_text("")
    with pipeline(ArchiveExecutor(lora_archive())) as stack:
        upload(stack, folder)
        stack.wait_until_idle(timeout=60)

        assert stack.training_jobs() == []
        (rejected,) = pipeline_events(stack, "Dataset Rejected")
        codes = {p["code"] for p in rejected["problems"]}
        assert {"JOB_INSTANCE_NOT_ALLOWED", "JOB_VOLUME_TOO_SMALL"} <= codes
        assert (
            rejected["error_count"] == len([p for p in rejected["problems"] if p["severity"] == "error"]) >= 3
        )
        subject = f"Dataset rejected: bluebot ({rejected['error_count']} problems)"
        body = emails(stack)[subject]
        for problem in rejected["problems"]:
            assert problem["message"] in body and f"Fix: {problem['fix']}" in body
        (execution,) = stack.executions()
        assert execution.status == "SUCCEEDED" and "EmitRejected" in execution.states_entered()
        assert "JoinSlotQueue" not in execution.states_entered()
        assert "active_run" not in table_item(stack, "DATASET#bluebot", "DATASET")


def test_training_failure_reports_sagemakers_reason_and_frees_everything(tmp_path: Path) -> None:
    reason = "AlgorithmError: CUDA out of memory (exit code 1)"
    with pipeline(FailingExecutor(reason)) as stack:
        upload(stack, dataset(tmp_path))
        stack.wait_until_idle(timeout=60)

        (execution,) = stack.executions()
        assert execution.status == "FAILED"
        (failed,) = pipeline_events(stack, "Training Failed")
        assert failed["stage"] == "training" and failed["failure_reason"] == reason
        assert failed["training_job_name"].endswith("-0")
        assert failed["logs_url"] and "/aws/sagemaker/TrainingJobs" in failed["logs_url"]
        body = emails(stack)["Training failed: bluebot (training)"]
        assert f"SageMaker says: {reason}" in body
        assert pipeline_events(stack, "Training Cancelled") == []
        assert "holders" not in table_item(stack, "SLOTS", "SLOTS")
        assert "active_run" not in table_item(stack, "DATASET#bluebot", "DATASET")


def test_unpack_failure_is_a_failed_run_at_the_unpack_stage(tmp_path: Path) -> None:
    evil = tar_bytes([Member("../../etc/bluebot.safetensors", b"x" * 100)])
    with pipeline(ArchiveExecutor(evil)) as stack:
        upload(stack, dataset(tmp_path))
        stack.wait_until_idle(timeout=60)

        (failed,) = pipeline_events(stack, "Training Failed")
        assert failed["stage"] == "unpack" and failed["failure_reason"] is None
        assert "Training failed: bluebot (unpack)" in emails(stack)
        assert pipeline_events(stack, "Training Succeeded") == []
        run_id = stack.executions()[0].input["run_id"]
        listed = stack.s3.list_objects_v2(
            Bucket=stack.bucket, Prefix=RunLayout("bluebot", run_id).model_prefix
        )
        assert listed.get("KeyCount", 0) == 0


def test_throttled_create_and_capacity_failure_are_retried_under_new_names(tmp_path: Path) -> None:
    flaky = FlakyExecutor(ArchiveExecutor(lora_archive()), throttled_creates=1, capacity_failures=1)
    with pipeline(flaky) as stack:
        upload(stack, dataset(tmp_path))
        stack.wait_until_idle(timeout=90)

        assert flaky.throttled == 1 and flaky.capacity_failed == 1
        (execution,) = stack.executions()
        assert execution.status == "SUCCEEDED"
        names = sorted(j["TrainingJobName"] for j in stack.training_jobs())
        run_id = execution.input["run_id"]
        assert names == [f"bluebot-{run_id}-0", f"bluebot-{run_id}-1"]
        # One job for the person: a single Training Started, then success under the second name.
        assert len(pipeline_events(stack, "Training Started")) == 1
        (succeeded,) = pipeline_events(stack, "Training Succeeded")
        assert succeeded["training_job_name"] == f"bluebot-{run_id}-1"


class _MaxRuntimeExecutor:
    """Nine of ten epochs saved into the job's checkpoints (as sd-scripts and SageMaker's sync leave them),
    then the job reaches its MaxRuntime."""

    def admit(self, request: dict[str, Any]) -> None:
        pass

    def stop(self, job_name: str) -> None:
        pass

    def run(self, request: dict[str, Any], s3_client: Any, progress: Any) -> TrainingResult:
        bucket, prefix = split_s3_uri(request["CheckpointConfig"]["S3Uri"])
        name = request["HyperParameters"]["output_name"]
        metadata = kohya_metadata(output_name=name) | {"ss_num_epochs": "10"}
        for epoch in range(1, 10):
            lora = safetensors_bytes(lora_tensors(), metadata)
            s3_client.put_object(Bucket=bucket, Key=f"{prefix}{name}-{epoch:06d}.safetensors", Body=lora)
        for epoch in (8, 9):
            state = f"{prefix}{name}-{epoch:06d}-state/"
            train_state = json.dumps({"current_epoch": epoch, "current_step": epoch * 30})
            for file, body in (("train_state.json", train_state.encode()), ("random_states_0.pkl", b"rng")):
                s3_client.put_object(Bucket=bucket, Key=state + file, Body=body)
        progress.secondary_status("Training", "Training in progress.")
        return TrainingResult(status="Stopped", billable_seconds=3600, secondary_status="MaxRuntimeExceeded")


def test_a_job_stopped_at_max_runtime_publishes_its_newest_epoch_and_keeps_its_checkpoints(
    tmp_path: Path,
) -> None:
    with pipeline(_MaxRuntimeExecutor()) as stack:
        upload(stack, dataset(tmp_path))
        stack.wait_until_idle(timeout=60)

        (failed,) = pipeline_events(stack, "Training Failed")
        salvaged = failed["salvaged"]
        assert (salvaged["epoch"], salvaged["epochs"], salvaged["stopped"]) == (
            9,
            10,
            "stopped at MaxRuntime",
        )
        assert salvaged["resumable"] is True
        run_id = stack.executions()[0].input["run_id"]
        layout = RunLayout("bluebot", run_id)
        assert salvaged["model_uri"] == f"s3://{stack.bucket}/{layout.model_prefix}bluebot-000009.safetensors"
        published = stack.s3.get_object(
            Bucket=stack.bucket, Key=f"{layout.model_prefix}bluebot-000009.safetensors"
        )
        assert hashlib.sha256(published["Body"].read()).hexdigest() == salvaged["sha256"]
        manifest = json.loads(
            stack.s3.get_object(Bucket=stack.bucket, Key=layout.manifest_key)["Body"].read()
        )
        assert manifest["partial"] == "stopped at MaxRuntime after epoch 9 of 10"
        body = emails(stack)["Training failed: bluebot (training)"]
        assert "Stopped at MaxRuntime after epoch 9 of 10" in body and "lora-pipeline resume bluebot" in body
        kept = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=layout.checkpoints_prefix)["Contents"]
        assert len(kept) == 9 + 4
        tags = stack.s3.get_object_tagging(Bucket=stack.bucket, Key=kept[0]["Key"])["TagSet"]
        assert tags == [KEPT_FOR_RESUME_TAG]
