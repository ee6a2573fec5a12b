"""The local SageMaker: CreateTrainingJob on the embedded AWS runs `container/train` with the smoke trainer."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from embedded_aws import EmbeddedStack, TimelineEntry
from embedded_aws.container_executor import ContainerExecutor
from lora_pipeline.safetensors_lora import Architecture, inspect_lora_file
from tests.container_jobs import make_opt_ml

FIXTURE = Path(__file__).parent / "fixtures" / "embedded_aws" / "template.yaml"
METRICS = [{"Name": "train:step", "Regex": "lora-metrics step=([0-9]+)/"}]


def _request(bucket: str, name: str, hyperparameters: dict[str, str]) -> dict[str, Any]:
    return {
        "TrainingJobName": name,
        "RoleArn": "arn:aws:iam::123456789012:role/sagemaker",
        "AlgorithmSpecification": {
            "TrainingImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/lora:latest",
            "TrainingInputMode": "File",
            "MetricDefinitions": METRICS,
        },
        "HyperParameters": hyperparameters,
        "InputDataConfig": [
            {
                "ChannelName": channel,
                "DataSource": {
                    "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{bucket}/inputs/{channel}/"}
                },
            }
            for channel in ("train", "config")
        ],
        "OutputDataConfig": {"S3OutputPath": f"s3://{bucket}/runs/bluebot/output"},
        "ResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 50},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
        "CheckpointConfig": {"S3Uri": f"s3://{bucket}/runs/bluebot/checkpoints/"},
    }


def _wait_for_job(stack: EmbeddedStack, name: str, timeout: float = 180) -> dict[str, Any]:
    sagemaker = stack.client("sagemaker")
    deadline = time.monotonic() + timeout
    while (job := sagemaker.describe_training_job(TrainingJobName=name))["TrainingJobStatus"] in {
        "InProgress",
        "Stopping",
    }:
        assert time.monotonic() < deadline, f"{name} still {job['TrainingJobStatus']}"
        time.sleep(0.1)
    return job  # type: ignore[no-any-return]


def _upload_inputs(stack: EmbeddedStack, local: Path) -> None:
    for channel in ("train", "config"):
        stack.upload_folder(local / "input" / "data" / channel, f"inputs/{channel}/")


HYPERPARAMETERS = {"output_name": "bluebot", "dataset": "bluebot", "run_id": "run-1", "max_steps": "2"}


@pytest.mark.slow
def test_a_job_runs_the_entrypoint_and_publishes_model_tar_gz_metrics_and_progress(tmp_path: Path) -> None:
    local = make_opt_ml(tmp_path / "local")
    timeline: list[TimelineEntry] = []
    executor = ContainerExecutor(environment={"HF_HUB_OFFLINE": "1"})
    with EmbeddedStack.up(
        FIXTURE, {"QuietPeriodSeconds": "0"}, executor, on_timeline=timeline.append
    ) as stack:
        _upload_inputs(stack, local)
        request = _request(stack.bucket, "smoke-bluebot", {**HYPERPARAMETERS, "trainer": "kohya"})
        stack.client("sagemaker").create_training_job(**request)
        job = _wait_for_job(stack, "smoke-bluebot")

        assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
        assert {metric["MetricName"]: metric["Value"] for metric in job["FinalMetricDataList"]} == {
            "train:step": 2
        }
        archive = stack.s3.get_object(
            Bucket=stack.bucket, Key="runs/bluebot/output/smoke-bluebot/output/model.tar.gz"
        )
        with tarfile.open(fileobj=io.BytesIO(archive["Body"].read())) as tar:
            assert tar.getnames() == ["bluebot.safetensors"]
            (tmp_path / "bluebot.safetensors").write_bytes(tar.extractfile("bluebot.safetensors").read())  # type: ignore[union-attr]
        _header, summary = inspect_lora_file(tmp_path / "bluebot.safetensors", Architecture.SMOKE)
        assert summary.unet_modules > 0
        statuses = [entry.text.split(": ", 2)[1] for entry in timeline if entry.kind == "training-status"]
        assert statuses == ["Starting", "Downloading", "Training", "Uploading", "Completed"]
        assert any("lora-metrics step=2/" in entry.text for entry in timeline if entry.kind == "training-log")


def test_a_contract_error_fails_the_job_with_the_failure_file_as_reason(tmp_path: Path) -> None:
    local = make_opt_ml(tmp_path / "local")
    with EmbeddedStack.up(FIXTURE, {"QuietPeriodSeconds": "0"}, ContainerExecutor()) as stack:
        _upload_inputs(stack, local)
        stack.client("sagemaker").create_training_job(**_request(stack.bucket, "no-hyperparameters", {}))
        job = _wait_for_job(stack, "no-hyperparameters")

        assert job["TrainingJobStatus"] == "Failed"
        assert "output_name" in job["FailureReason"] and "hyperparameters.json" in job["FailureReason"]
        assert "ModelArtifacts" not in job


@pytest.mark.slow
def test_stop_training_job_terminates_the_container(tmp_path: Path) -> None:
    local = make_opt_ml(tmp_path / "local")
    timeline: list[TimelineEntry] = []
    executor = ContainerExecutor(environment={"HF_HUB_OFFLINE": "1"})
    with EmbeddedStack.up(
        FIXTURE, {"QuietPeriodSeconds": "0"}, executor, on_timeline=timeline.append
    ) as stack:
        _upload_inputs(stack, local)
        request = _request(stack.bucket, "long-bluebot", {**HYPERPARAMETERS, "max_steps": "100000"})
        sagemaker = stack.client("sagemaker")
        sagemaker.create_training_job(**request)
        deadline = time.monotonic() + 120
        while not any("lora-metrics step=" in entry.text for entry in timeline):
            assert time.monotonic() < deadline, "the smoke trainer never reported a step"
            time.sleep(0.1)
        sagemaker.stop_training_job(TrainingJobName="long-bluebot")
        job = _wait_for_job(stack, "long-bluebot", timeout=60)

        assert job["TrainingJobStatus"] == "Stopped"
        sagemaker.stop_training_job(TrainingJobName="long-bluebot")  # stopping a stopped job is a no-op


@pytest.mark.slow
def test_a_job_restarted_on_the_same_checkpoints_finishes_the_plan_without_repeating_epochs(
    tmp_path: Path,
) -> None:
    """A spot interruption as SageMaker handles it: the stopped container's checkpoints go to S3, and the next
    job on the same CheckpointConfig gets them back in /opt/ml/checkpoints and resumes (3 epochs of 2 steps)."""
    local = make_opt_ml(tmp_path / "local", subsets={"1_bluebot": 4})
    timeline: list[TimelineEntry] = []
    executor = ContainerExecutor(environment={"HF_HUB_OFFLINE": "1"})
    with EmbeddedStack.up(
        FIXTURE, {"QuietPeriodSeconds": "0"}, executor, on_timeline=timeline.append
    ) as stack:
        _upload_inputs(stack, local)
        sagemaker = stack.client("sagemaker")
        hyperparameters = {**HYPERPARAMETERS, "trainer": "smoke", "max_steps": "6"}
        sagemaker.create_training_job(**_request(stack.bucket, "spot-1", hyperparameters))
        deadline = time.monotonic() + 120
        while not any("lora-metrics step=2/6" in e.text for e in timeline if e.kind == "training-log"):
            assert time.monotonic() < deadline, "the smoke trainer never finished its first epoch"
            time.sleep(0.1)
        sagemaker.stop_training_job(TrainingJobName="spot-1")
        assert _wait_for_job(stack, "spot-1", timeout=60)["TrainingJobStatus"] == "Stopped"
        first = [e.text for e in timeline if e.kind == "training-log"]

        sagemaker.create_training_job(**_request(stack.bucket, "spot-2", hyperparameters))
        job = _wait_for_job(stack, "spot-2")

        assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
        second = [e.text for e in timeline if e.kind == "training-log"][len(first) :]
        resumed = next(line for line in second if "resuming from" in line)
        assert "bluebot-00000" in resumed and "of 6 steps done" in resumed
        steps = [int(line.split("step=")[1].split("/")[0]) for line in second if "lora-metrics step=" in line]
        done_before = int(resumed.split(", ")[1].split(" of ")[0])
        assert done_before % 2 == 0 and steps == list(range(done_before + 1, 7))
        assert {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]} == {"train:step": 6}
