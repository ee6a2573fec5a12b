"""Every run ends with exactly one last event and one email, whatever ends it, and trains only files it
validated: on the embedded AWS with the real template, state machine and handlers (faults injected)."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

from embedded_aws.stack import EmbeddedStack
from embedded_aws.training import ArchiveExecutor, FlakyExecutor, HeldExecutor
from lora_pipeline.aws import s3_model_io
from lora_pipeline.s3_layout import RunLayout
from lora_pipeline.use_cases import validate as validate_step
from tests.integration.pipeline_support import (
    dataset,
    lora_archive,
    pipeline,
    pipeline_events,
    table_item,
    upload,
)
from tests.integration.test_pipeline_runs import wait_for

pytestmark = pytest.mark.slow

LAST_EVENTS = ("Dataset Rejected", "Training Succeeded", "Training Failed", "Training Cancelled")


def last_events(stack: EmbeddedStack) -> list[tuple[str, str]]:
    return [(t, e["run_id"]) for t in LAST_EVENTS for e in pipeline_events(stack, t)]


def subjects(stack: EmbeddedStack) -> list[str]:
    return [m.subject or "" for m in stack.sns_messages(stack.outputs["TopicArn"])]


def assert_dataset_and_slots_free(stack: EmbeddedStack, name: str = "bluebot") -> None:
    assert "active_run" not in table_item(stack, f"DATASET#{name}", "DATASET")
    slots = table_item(stack, "SLOTS", "SLOTS")
    assert "holders" not in slots and not slots.get("queue", {}).get("L")


def test_aws_s3_sync_order_sends_ready_first_and_every_file_is_still_validated(tmp_path: Path) -> None:
    folder = dataset(tmp_path)
    (folder / "config.toml").write_text("max_train_epochs = 2\n")
    files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    with pipeline(ArchiveExecutor(lora_archive())) as stack:
        # `aws s3 sync` uploads in key order: `_READY` sorts before config.toml, pipeline.toml and the images.
        for path in sorted(files, key=lambda p: p.as_posix().replace("_READY", "0_READY")):
            stack.s3.put_object(
                Bucket=stack.bucket,
                Key=f"datasets/bluebot/{path.as_posix()}",
                Body=(folder / path).read_bytes(),
            )
            time.sleep(0.4)  # slower than a validation: files keep arriving after the run settled
        stack.wait_until_idle(timeout=90)

        (execution,) = stack.executions()
        assert execution.status == "SUCCEEDED"
        assert "Resettle" in execution.states_entered()
        layout = RunLayout("bluebot", execution.input["run_id"])
        report = json.loads(
            stack.s3.get_object(Bucket=stack.bucket, Key=layout.validation_key)["Body"].read()
        )
        assert report["summary"]["total_images"] == 3
        kohya = stack.s3.get_object(Bucket=stack.bucket, Key=layout.kohya_toml_key)["Body"].read().decode()
        assert "max_train_epochs = 2" in kohya  # the user's config, not the defaults
        assert subjects(stack).count("LoRA ready: bluebot") == 1


def test_a_stop_while_the_upload_settles_ends_at_once_with_one_cancel_email(tmp_path: Path) -> None:
    with pipeline(None, QuietPeriodSeconds="300") as stack:
        upload(stack, dataset(tmp_path, ready=False))
        wait_for(lambda: "settle_token" in table_item(stack, "DATASET#bluebot", "DATASET"))
        (execution,) = stack.executions()
        started = time.monotonic()
        stack.client("stepfunctions").stop_execution(executionArn=execution.arn)
        stack.wait_until_idle(timeout=60)
        assert time.monotonic() - started < 30  # AWS aborts a waitForTaskToken task at once

        assert stack.executions()[0].status == "ABORTED"
        (cancelled,) = pipeline_events(stack, "Training Cancelled")
        assert cancelled["training_job_name"] is None and cancelled["training_job_stopped"] is False
        assert last_events(stack) == [("Training Cancelled", execution.input["run_id"])]
        assert subjects(stack) == ["Training cancelled: bluebot"]
        assert_dataset_and_slots_free(stack)


class _BrokenOutcome:
    def model_dump(self, mode: str) -> dict[str, Any]:
        # No `problems` nor counts: EmitRejected's paths fail with States.Runtime (Emit states have no Catch).
        return {"valid": False, "error_count": 1}


def test_a_failure_outside_the_failure_path_sends_one_training_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validate_step, "validate_step_output", lambda *args, **kwargs: _BrokenOutcome())
    with pipeline(ArchiveExecutor(lora_archive())) as stack:
        upload(stack, dataset(tmp_path))
        stack.wait_until_idle(timeout=60)

        (execution,) = stack.executions()
        assert execution.status == "FAILED" and "EmitFailed" not in execution.states_entered()
        (failed,) = pipeline_events(stack, "Training Failed")
        assert failed["stage"] == "validate" and failed["error"] == "States.Runtime"
        assert failed["console_url"].endswith(execution.arn)
        assert subjects(stack) == ["Training failed: bluebot (validate)"]
        assert_dataset_and_slots_free(stack)

        # EventBridge may deliver the status change again: still one event, one email.
        redeliver_execution_end(stack, execution.arn)
        stack.wait_until_idle(timeout=30)
        assert len(pipeline_events(stack, "Training Failed")) == 1
        assert subjects(stack) == ["Training failed: bluebot (validate)"]


def test_a_failure_through_the_failure_path_is_not_reported_twice(tmp_path: Path) -> None:
    from embedded_aws.training import FailingExecutor

    with pipeline(FailingExecutor("AlgorithmError: boom")) as stack:
        upload(stack, dataset(tmp_path))
        stack.wait_until_idle(timeout=60)
        (execution,) = stack.executions()
        redeliver_execution_end(stack, execution.arn)
        stack.wait_until_idle(timeout=30)
        assert last_events(stack) == [("Training Failed", execution.input["run_id"])]
        assert subjects(stack).count("Training failed: bluebot (training)") == 1


def test_a_cancel_while_unpacking_leaves_no_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unpacking, stopped = threading.Event(), threading.Event()
    shipped = s3_model_io.unpack_model

    def slow_unpack(*args: Any, **kwargs: Any) -> Any:
        unpacking.set()
        assert stopped.wait(30)
        return shipped(*args, **kwargs)  # writes the model and manifest after the cancel

    # The unpack step imports unpack_model when it runs (cold starts), so it is replaced in its home module.
    monkeypatch.setattr(s3_model_io, "unpack_model", slow_unpack)
    with pipeline(ArchiveExecutor(lora_archive())) as stack:
        upload(stack, dataset(tmp_path))
        wait_for(unpacking.is_set, timeout=60)
        (execution,) = stack.executions()
        stack.client("stepfunctions").stop_execution(executionArn=execution.arn)
        # The embedded Lambda cannot be interrupted (nor can AWS's): it goes on after the stop, as on AWS.
        stopped.set()
        wait_for(lambda: pipeline_events(stack, "Training Cancelled") != [])
        stack.wait_until_idle(timeout=60)

        layout = RunLayout("bluebot", execution.input["run_id"])
        listed = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=layout.model_prefix)
        assert listed.get("KeyCount", 0) == 0
        reports = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=layout.report_key)
        assert reports.get("KeyCount", 0) == 0, "no run report for a cancelled run"
        assert last_events(stack) == [("Training Cancelled", execution.input["run_id"])]
        assert "LoRA ready: bluebot" not in subjects(stack)


def test_uploads_during_training_get_one_follow_up_run_but_not_after_a_cancel(tmp_path: Path) -> None:
    held = HeldExecutor(ArchiveExecutor(lora_archive()))
    with pipeline(held) as stack:
        upload(stack, dataset(tmp_path))
        wait_for(lambda: len(held.running()) == 1)
        time.sleep(1.1)  # a second after the settle (S3 event times are whole seconds)
        for i in range(3):
            stack.s3.put_object(
                Bucket=stack.bucket, Key=f"datasets/bluebot/10_bluebot/new{i}.caption", Body=b"x"
            )
        wait_for(lambda: "changed_during_run" in table_item(stack, "DATASET#bluebot", "DATASET"))
        (first,) = stack.executions()
        stack.client("stepfunctions").stop_execution(executionArn=first.arn)
        stack.wait_until_idle(timeout=60)
        assert len(stack.executions()) == 1  # the user stopped it: nothing more trains

        upload(stack, dataset(tmp_path / "again"))
        wait_for(lambda: len(held.running()) == 1)
        time.sleep(1.1)
        for i in range(3):  # three uploads, one follow-up
            stack.s3.put_object(
                Bucket=stack.bucket, Key=f"datasets/bluebot/10_bluebot/more{i}.caption", Body=b"x"
            )
        wait_for(lambda: "changed_during_run" in table_item(stack, "DATASET#bluebot", "DATASET"))
        held.release()
        stack.wait_until_idle(timeout=90)

        executions = stack.executions()
        assert [e.status for e in executions] == ["ABORTED", "SUCCEEDED", "SUCCEEDED"]
        follow_up = RunLayout("bluebot", executions[2].input["run_id"])
        report = (
            stack.s3.get_object(Bucket=stack.bucket, Key=follow_up.validation_key)["Body"].read().decode()
        )
        assert "more2.caption" in report
        assert_dataset_and_slots_free(stack)


def redeliver_execution_end(stack: EmbeddedStack, execution_arn: str) -> None:
    """Deliver the execution's "Step Functions Execution Status Change" to the end-of-run function again."""
    described = stack.client("stepfunctions").describe_execution(executionArn=execution_arn)
    event = {
        "version": "0",
        "id": "redelivered",
        "detail-type": "Step Functions Execution Status Change",
        "source": "aws.states",
        "account": stack.account_id,
        "time": "2026-11-30T00:00:00Z",
        "region": stack.region,
        "resources": [execution_arn],
        "detail": {
            "executionArn": execution_arn,
            "stateMachineArn": described["stateMachineArn"],
            "name": described["name"],
            "status": described["status"],
            "input": described["input"],
            "error": described.get("error"),
            "cause": described.get("cause"),
        },
    }
    response = stack.client("lambda").invoke(
        FunctionName=stack.resources("AWS::Lambda::Function")["CancelFunction"],
        Payload=json.dumps(event).encode(),
    )
    assert "FunctionError" not in response, response["Payload"].read()


def test_training_started_is_sent_only_for_a_training_job_that_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ASL's retry intervals at 1/100 of their length (Train retries CreateTrainingJob for minutes).
    monkeypatch.setattr(
        retrier_decl, "time", SimpleNamespace(sleep=lambda seconds: time.sleep(seconds / 100))
    )
    throttled = FlakyExecutor(ArchiveExecutor(lora_archive()), throttled_creates=1000)
    with pipeline(throttled) as stack:
        upload(stack, dataset(tmp_path))
        stack.wait_until_idle(timeout=120)

        (execution,) = stack.executions()
        assert throttled.throttled == 7  # the first call and Train's 6 retries
        assert stack.training_jobs() == []
        # The announcing branch looked for the job (not found, retried) until Train's failure ended it.
        not_found = [
            e["taskFailedEventDetails"]["error"]
            for e in execution.history
            if e["type"] == "TaskFailed" and e["taskFailedEventDetails"]["resource"] == "describeTrainingJob"
        ]
        assert not_found and set(not_found) == {"SageMaker.SageMakerException"}
        assert "EmitStarted" not in execution.states_entered()
        assert pipeline_events(stack, "Training Started") == []
        assert not [s for s in subjects(stack) if s.startswith("Training started")]
        (failed,) = pipeline_events(stack, "Training Failed")
        assert failed["stage"] == "training" and "ThrottlingException" in failed["cause"]
        assert last_events(stack) == [("Training Failed", execution.input["run_id"])]
        assert_dataset_and_slots_free(stack)


def test_training_started_is_sent_once_after_the_job_is_created(tmp_path: Path) -> None:
    with pipeline(ArchiveExecutor(lora_archive())) as stack:
        upload(stack, dataset(tmp_path))
        stack.wait_until_idle(timeout=120)

        (execution,) = stack.executions()
        assert execution.status == "SUCCEEDED"
        (job,) = stack.training_jobs()
        (started,) = pipeline_events(stack, "Training Started")
        assert started["training_job_name"] == job["TrainingJobName"]
        assert datetime.fromisoformat(started["time"]) >= job["CreationTime"]
        assert subjects(stack).count("Training started: bluebot") == 1
