"""The embedded AWS runs a small SAM stack with the real template's shapes end to end (fixture template)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from embedded_aws import (
    ArchiveExecutor,
    DeliveryFailed,
    EmbeddedStack,
    FailingExecutor,
    FlakyExecutor,
    HeldExecutor,
    SnsMessage,
    TimelineEntry,
    tar_gz,
)

FIXTURE = Path(__file__).parent / "fixtures" / "embedded_aws" / "template.yaml"
MODEL_ARCHIVE = tar_gz({"lora.safetensors": b"weights"})


def _upload(stack: EmbeddedStack, key: str, body: bytes = b"png") -> None:
    stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=body)


def _request_of(job: dict[str, Any]) -> dict[str, Any]:
    names = ("TrainingJobName", "AlgorithmSpecification", "RoleArn", "OutputDataConfig", "ResourceConfig")
    return {name: job[name] for name in (*names, "StoppingCondition")}


def test_an_upload_runs_ingest_state_machine_training_and_email() -> None:
    with EmbeddedStack.up(FIXTURE, {"QuietPeriodSeconds": "0"}, ArchiveExecutor(MODEL_ARCHIVE)) as stack:
        _upload(stack, "datasets/cat/1_cat/a.png")
        stack.wait_until_idle(timeout=30)

        (execution,) = stack.executions()
        assert execution.status == "SUCCEEDED"
        assert execution.states_entered() == ["Settle", "Validate", "IsValid", "Train", "EmitSucceeded"]
        model_uri = f"s3://{stack.bucket}/runs/cat/output/fixture-cat/output/model.tar.gz"
        (message,) = stack.sns_messages()
        assert message.subject == "Training Succeeded: cat"
        assert json.loads(message.message) == {"billable_seconds": 42, "dataset": "cat", "model": model_uri}
        stored = stack.s3.get_object(
            Bucket=stack.bucket, Key="runs/cat/output/fixture-cat/output/model.tar.gz"
        )
        assert stored["Body"].read() == MODEL_ARCHIVE


def test_the_timeline_reports_states_events_and_training_progress() -> None:
    timeline: list[TimelineEntry] = []
    executor = ArchiveExecutor(MODEL_ARCHIVE)
    with EmbeddedStack.up(
        FIXTURE, {"QuietPeriodSeconds": "0"}, executor, on_timeline=timeline.append
    ) as stack:
        stack.follow_states(timeline.append)
        _upload(stack, "datasets/cat/1_cat/a.png")
        stack.wait_until_idle(timeout=30)

    texts = [(entry.kind, entry.text) for entry in timeline]
    assert [text for kind, text in texts if kind == "state"] == [
        f"run-cat: {state}" for state in ("Settle", "Validate", "IsValid", "Train", "EmitSucceeded")
    ]
    assert ("event", "fixture-pipeline: Training Succeeded") in texts
    assert ("training-status", "fixture-cat: Uploading: Uploading generated training model") in texts


def test_training_job_is_described_like_sagemaker() -> None:
    with EmbeddedStack.up(FIXTURE, {"QuietPeriodSeconds": "0"}, ArchiveExecutor(MODEL_ARCHIVE, 99)) as stack:
        _upload(stack, "datasets/cat/1_cat/a.png")
        stack.wait_until_idle(timeout=30)

        (job,) = stack.training_jobs()
        assert job["TrainingJobStatus"] == "Completed"
        assert job["BillableTimeInSeconds"] == 99
        assert "MetricDefinitions" not in job["AlgorithmSpecification"]  # moto's sample ones are gone
        assert [step["Status"] for step in job["SecondaryStatusTransitions"]] == [
            "Starting",
            "Training",
            "Uploading",
            "Completed",
        ]
        train_output = json.loads(
            next(
                event["taskSucceededEventDetails"]["output"]
                for event in stack.executions()[0].history
                if event["type"] == "TaskSucceeded"
                and event["taskSucceededEventDetails"]["resourceType"] == "sagemaker"
            )
        )
        assert train_output["TrainingJobStatus"] == "Completed"
        assert isinstance(train_output["CreationTime"], int)  # epoch millis, as Step Functions renders them
        sagemaker = stack.client("sagemaker")
        with pytest.raises(sagemaker.exceptions.ClientError, match="in status Completed"):
            sagemaker.stop_training_job(TrainingJobName="fixture-cat")
        with pytest.raises(sagemaker.exceptions.ClientError, match="must be unique"):
            sagemaker.create_training_job(**_request_of(job))
        with pytest.raises(sagemaker.exceptions.ClientError, match="Invalid TrainingJobName"):
            sagemaker.create_training_job(**{**_request_of(job), "TrainingJobName": "no_underscores"})


def test_handlers_get_their_environment_a_context_and_iso_event_times() -> None:
    with EmbeddedStack.up(FIXTURE, {"QuietPeriodSeconds": "0"}, ArchiveExecutor(MODEL_ARCHIVE)) as stack:
        _upload(stack, "datasets/cat/1_cat/a.png")
        stack.wait_until_idle(timeout=30)

        table = stack.client("dynamodb")
        item = table.get_item(TableName=stack.outputs["TableName"], Key={"pk": {"S": "cat"}})["Item"]
        assert item["function"]["S"] == stack.physical_id("IngestFunction")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", item["time"]["S"])
        (validate_call,) = stack.lambda_invocations(stack.physical_id("ValidateFunction"))
        assert 0 < json.loads(validate_call.payload)["remaining_ms"] <= 30_000


def test_duplicate_uploads_reach_ingest_every_time_but_start_one_run() -> None:
    with EmbeddedStack.up(FIXTURE, {"QuietPeriodSeconds": "0"}, ArchiveExecutor(MODEL_ARCHIVE)) as stack:
        for index in range(6):
            _upload(stack, f"datasets/cat/1_cat/{index}.png")
        _upload(stack, "elsewhere/ignored.png")
        stack.wait_until_idle(timeout=30)

        assert len(stack.lambda_invocations(stack.physical_id("IngestFunction"))) == 6
        assert len(stack.executions()) == 1


def test_failed_training_job_fails_the_task_with_states_task_failed_and_the_describe_as_cause() -> None:
    with EmbeddedStack.up(
        FIXTURE, {"QuietPeriodSeconds": "0"}, FailingExecutor("AlgorithmError: out of VRAM")
    ) as stack:
        _upload(stack, "datasets/cat/1_cat/a.png")
        stack.wait_until_idle(timeout=30)

        (execution,) = stack.executions()
        assert execution.status == "FAILED" and execution.error == "TrainingFailed"
        (failed,) = stack.events(detail_type="Training Failed")
        assert failed.detail["error"] == "States.TaskFailed"
        cause = json.loads(failed.detail["cause"])
        assert cause["TrainingJobStatus"] == "Failed"
        assert cause["FailureReason"] == "AlgorithmError: out of VRAM"
        assert not stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="runs/").get("Contents")


def test_throttled_create_training_job_is_retried_by_the_asl_retry() -> None:
    executor = FlakyExecutor(then=ArchiveExecutor(MODEL_ARCHIVE), throttled_creates=1)
    with EmbeddedStack.up(FIXTURE, {"QuietPeriodSeconds": "0"}, executor) as stack:
        _upload(stack, "datasets/cat/1_cat/a.png")
        stack.wait_until_idle(timeout=30)

        (execution,) = stack.executions()
        assert execution.status == "SUCCEEDED"
        (failure,) = [
            event["taskFailedEventDetails"] for event in execution.history if event["type"] == "TaskFailed"
        ]
        assert failure["error"] == "SageMaker.AmazonSageMakerException"
        assert "Error Code: ThrottlingException" in failure["cause"]
        assert executor.throttled == 1


def test_a_handler_exception_is_a_function_error_the_asl_can_catch() -> None:
    with EmbeddedStack.up(FIXTURE, {"QuietPeriodSeconds": "0"}, ArchiveExecutor(MODEL_ARCHIVE)) as stack:
        _upload(stack, "datasets/cat/_CRASH")
        stack.wait_until_idle(timeout=30)

        (failed,) = stack.events(detail_type="Training Failed")
        assert failed.detail["error"] == "ValueError"
        assert json.loads(failed.detail["cause"])["errorMessage"] == "validator crashed on purpose"
        assert not stack.training_jobs()


def test_sns_target_gets_the_input_transformer_text() -> None:
    with EmbeddedStack.up(FIXTURE, {"QuietPeriodSeconds": "0"}, ArchiveExecutor(MODEL_ARCHIVE)) as stack:
        _upload(stack, "datasets/empty/readme.txt")
        stack.wait_until_idle(timeout=30)

        (message,) = stack.sns_messages(stack.outputs["TopicArn"])
        assert message.message == '"Dataset empty was rejected: 1 problem(s)"'
        assert not stack.training_jobs()


def test_step_functions_target_starts_an_execution_with_the_input_path() -> None:
    with EmbeddedStack.up(FIXTURE, {"QuietPeriodSeconds": "0"}, ArchiveExecutor(MODEL_ARCHIVE)) as stack:
        _upload(stack, "datasets/dog/1_dog/a.png")
        stack.wait_until_idle(timeout=30)
        detail = {"dataset": "dog", "job_name": "fixture-dog-2", "quiet_period_seconds": 0}
        stack.client("events").put_events(
            Entries=[
                {
                    "EventBusName": stack.outputs["EventBusName"],
                    "Source": "fixture-cli",
                    "DetailType": "Retrain Requested",
                    "Detail": json.dumps(detail),
                }
            ]
        )
        stack.wait_until_idle(timeout=30)

        _first, retrain = stack.executions()
        assert retrain.input == detail
        assert retrain.status == "SUCCEEDED"
        assert [job["TrainingJobName"] for job in stack.training_jobs()] == ["fixture-dog", "fixture-dog-2"]


def test_stopping_an_execution_stops_its_job_and_emits_the_aborted_status_change() -> None:
    executor = HeldExecutor(then=ArchiveExecutor(MODEL_ARCHIVE))
    with EmbeddedStack.up(FIXTURE, {"QuietPeriodSeconds": "0"}, executor) as stack:
        assert _jobs_of_one_held_run(stack, executor) == {"fixture-cat"}
        (execution,) = stack.executions()
        stack.client("stepfunctions").stop_execution(executionArn=execution.arn)
        stack.wait_until_idle(timeout=30)

        assert stack.executions()[0].status == "ABORTED"
        (job,) = stack.training_jobs()
        assert job["TrainingJobStatus"] == "Stopped"
        stack.client("sagemaker").stop_training_job(TrainingJobName="fixture-cat")  # a no-op once stopped
        statuses = [event.detail["status"] for event in stack.events(source="aws.states")]
        assert statuses == ["RUNNING", "ABORTED"]
        table = stack.client("dynamodb")
        item = table.get_item(TableName=stack.outputs["TableName"], Key={"pk": {"S": "status#run-cat"}})[
            "Item"
        ]
        assert item["status"]["S"] == "ABORTED"


def test_a_failed_async_delivery_is_reported_by_wait_until_idle() -> None:
    with EmbeddedStack.up(FIXTURE, {"QuietPeriodSeconds": "0"}, ArchiveExecutor(MODEL_ARCHIVE)) as stack:
        _upload(stack, "datasets/cat/_FAIL")
        with pytest.raises(DeliveryFailed, match="ingest refused datasets/cat/_FAIL"):
            stack.wait_until_idle(timeout=30)
        assert stack.failed_deliveries()[0].target_arn.endswith(stack.physical_id("IngestFunction"))


def test_leaving_the_stack_stops_running_executions_and_jobs() -> None:
    executor = HeldExecutor(then=ArchiveExecutor(MODEL_ARCHIVE))
    with EmbeddedStack.up(FIXTURE, {"QuietPeriodSeconds": "0"}, executor) as stack:
        assert _jobs_of_one_held_run(stack, executor) == {"fixture-cat"}

    assert executor.running() == set()


def test_wait_for_execution_returns_the_finished_execution_with_its_history() -> None:
    with EmbeddedStack.up(FIXTURE, {"QuietPeriodSeconds": "0"}, ArchiveExecutor(MODEL_ARCHIVE)) as stack:
        started = stack.client("stepfunctions").start_execution(
            stateMachineArn=stack.outputs["StateMachineArn"],
            name="direct",
            input=json.dumps({"dataset": "nothing-here", "job_name": "unused", "quiet_period_seconds": 1}),
        )
        record = stack.wait_for_execution(started["executionArn"], timeout=30)

        assert record.status == "SUCCEEDED"
        assert record.states_entered() == ["Settle", "Validate", "IsValid", "EmitRejected"]
        assert record.output["Entries"][0]["EventId"]


def test_a_stop_training_job_task_stops_the_job() -> None:
    executor = HeldExecutor(then=ArchiveExecutor(MODEL_ARCHIVE))
    definition = {
        "StartAt": "Stop",
        "States": {
            "Stop": {
                "Type": "Task",
                "Resource": "arn:aws:states:::sagemaker:stopTrainingJob",
                "Parameters": {"TrainingJobName.$": "$.job"},
                "End": True,
            }
        },
    }
    with EmbeddedStack.up(FIXTURE, {"QuietPeriodSeconds": "0"}, executor) as stack:
        (job,) = _jobs_of_one_held_run(stack, executor)
        sfn = stack.client("stepfunctions")
        machine = sfn.create_state_machine(
            name="stopper", definition=json.dumps(definition), roleArn="arn:aws:iam::123456789012:role/sfn"
        )
        started = sfn.start_execution(
            stateMachineArn=machine["stateMachineArn"], name="stop-it", input=json.dumps({"job": job})
        )

        assert stack.wait_for_execution(started["executionArn"]).status == "SUCCEEDED"
        stack.wait_until_idle(timeout=30)
        assert [described["TrainingJobStatus"] for described in stack.training_jobs()] == ["Stopped"]


def _jobs_of_one_held_run(stack: EmbeddedStack, executor: HeldExecutor) -> set[str]:
    _upload(stack, "datasets/cat/1_cat/a.png")
    deadline = time.monotonic() + 10
    while not executor.running() and time.monotonic() < deadline:
        time.sleep(0.02)
    return executor.running()


def test_history_in_reverse_order_logs_by_stream_prefix_and_sns_listeners() -> None:
    with EmbeddedStack.up(FIXTURE, {"QuietPeriodSeconds": "0"}, ArchiveExecutor(MODEL_ARCHIVE)) as stack:
        sent: list[SnsMessage] = []
        stack.on_sns_message(sent.append)
        _upload(stack, "datasets/cat/1_cat/a.png")
        stack.wait_until_idle(timeout=30)
        assert sent == stack.sns_messages() and len(sent) == 1

        (execution,) = stack.executions()
        sfn = stack.client("stepfunctions")
        oldest_first = sfn.get_execution_history(executionArn=execution.arn)["events"]
        newest_first = sfn.get_execution_history(executionArn=execution.arn, reverseOrder=True)["events"]
        assert oldest_first[0]["type"] == "ExecutionStarted"
        assert newest_first == oldest_first[::-1]

        logs = stack.client("logs")
        logs.create_log_group(logGroupName="jobs")
        for stream in ("job-a/algo-1", "job-ab/algo-1", "job-b/algo-1"):
            logs.create_log_stream(logGroupName="jobs", logStreamName=stream)
            logs.put_log_events(
                logGroupName="jobs",
                logStreamName=stream,
                logEvents=[{"timestamp": int(time.time() * 1000), "message": stream}],
            )

        def messages(**kwargs: Any) -> list[str]:
            return [e["message"] for e in logs.filter_log_events(logGroupName="jobs", **kwargs)["events"]]

        assert messages(logStreamNamePrefix="job-a/") == ["job-a/algo-1"]
        assert sorted(messages(logStreamNamePrefix="job-a")) == ["job-a/algo-1", "job-ab/algo-1"]
        assert messages(logStreamNamePrefix="job-c/") == []
        assert len(messages()) == 3
        with pytest.raises(logs.exceptions.InvalidParameterException):
            messages(logStreamNamePrefix="job-a/", logStreamNames=["job-b/algo-1"])
