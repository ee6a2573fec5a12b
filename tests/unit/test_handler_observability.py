"""Every log line of a handler names the run (`dataset`, `run_id`) as soon as it is known, and no key of one
call leaks into the next; what varies in a metric (an outcome, a status) is a dimension, not part of its name."""

from __future__ import annotations

import importlib.util
import io
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from moto import mock_aws

from embedded.embedded_aws.lambda_runtime import LambdaContext

ROOT = Path(__file__).resolve().parents[2]
TABLE = "runs"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        dynamodb.create_table(
            TableName=TABLE,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k in ("pk", "sk")],
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
        )
        machine = boto3.client("stepfunctions", region_name="us-east-1").create_state_machine(
            name="pipeline",
            definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
            roleArn="arn:aws:iam::123456789012:role/pipeline",
        )["stateMachineArn"]
        env = {
            "AWS_REGION": "us-east-1",
            "POWERTOOLS_SERVICE_NAME": "sdxl-lora-pipeline",
            "POWERTOOLS_METRICS_NAMESPACE": "SdxlLoraPipeline",
            "TABLE_NAME": TABLE,
            "STATE_MACHINE_ARN": machine,
            "QUIET_PERIOD_SECONDS": "60",
            "EVENT_BUS_NAME": "pipeline-bus",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        yield env


class Handler:
    """One function's app.py, loaded fresh, its log lines and EMF metric blobs read back per call."""

    def __init__(self, function: str, capsys: pytest.CaptureFixture[str]) -> None:
        spec = importlib.util.spec_from_file_location(
            f"_observed_{function}", ROOT / "functions" / function / "app.py"
        )
        assert spec is not None and spec.loader is not None
        self.module: ModuleType = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.module)
        self.logs = io.StringIO()
        # Not setStream: it flushes the handler's old stream, which an earlier in-process demo (its lambda.log,
        # the stdout Powertools' shared handler captured) may have closed.
        self.module.observability.logger.registered_handler.stream = self.logs
        self.capsys = capsys
        self.function = function

    def __call__(self, event: dict[str, Any]) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
        """The handler's answer, its log lines and its metric blobs."""
        self.logs.seek(0)
        self.logs.truncate()
        self.capsys.readouterr()
        context = LambdaContext(
            self.function, "$LATEST", f"arn:aws:lambda:us-east-1:1:function:{self.function}", 256, 30
        )
        answer = self.module.lambda_handler(event, context)
        lines = [json.loads(line) for line in self.logs.getvalue().splitlines()]
        printed = [
            json.loads(line) for line in self.capsys.readouterr().out.splitlines() if line.startswith("{")
        ]
        return answer, lines, [blob for blob in printed if "_aws" in blob]


def _s3_event(key: str, time: str = "2026-11-30T08:00:00Z") -> dict[str, Any]:
    return {
        "id": "e1",
        "source": "aws.s3",
        "detail-type": "Object Created",
        "time": time,
        "detail": {"bucket": {"name": "bkt"}, "object": {"key": key}},
    }


def _dimensions_and_metric(blob: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    (directive,) = blob["_aws"]["CloudWatchMetrics"]
    (dimension_names,) = directive["Dimensions"]
    return {name: blob[name] for name in dimension_names}, [metric["Name"] for metric in directive["Metrics"]]


def test_ingest_logs_name_the_dataset_and_the_run_it_started(
    aws: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    ingest = Handler("ingest", capsys)
    answer, lines, metrics = ingest(_s3_event("datasets/bluebot/10_a/1.png"))
    assert answer == {"action": "start"}
    (line,) = [line for line in lines if line["message"] == "upload recorded"]
    assert line["dataset"] == "bluebot" and line["run_id"].startswith("2026")
    (execution,) = boto3.client("stepfunctions", region_name="us-east-1").list_executions(
        stateMachineArn=aws["STATE_MACHINE_ARN"]
    )["executions"]
    assert execution["name"].endswith(line["run_id"])
    ((dimensions, names),) = [_dimensions_and_metric(blob) for blob in metrics]
    assert names == ["Uploads"] and dimensions == {"action": "start", "service": "sdxl-lora-pipeline"}

    # A key outside the dataset folders: no run, and nothing of the last call's keys.
    answer, lines, metrics = ingest(_s3_event("runs/bluebot/r/validation.json"))
    assert answer == {"action": "ignored"}
    assert all("dataset" not in line and "run_id" not in line for line in lines)
    ((dimensions, names),) = [_dimensions_and_metric(blob) for blob in metrics]
    assert names == ["Uploads"] and dimensions["action"] == "ignored"


def test_the_end_of_run_function_counts_runs_by_status_and_logs_the_run(
    aws: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    cancel = Handler("cancel", capsys)
    detail = {
        "executionArn": "arn:aws:states:us-east-1:123456789012:execution:pipeline:bluebot-r1",
        "status": "SUCCEEDED",
        "input": json.dumps({"dataset": "bluebot", "run_id": "r1", "bucket": "bkt"}),
    }
    event = {"id": "e2", "source": "aws.states", "detail-type": "Step Functions Execution Status Change",
             "time": "2026-11-30T09:00:00Z", "detail": detail}  # fmt: skip
    answer, lines, metrics = cancel(event)
    assert answer == {"status": "SUCCEEDED", "stopped_job": None, "follow_up_run": None}
    assert lines and all((line["dataset"], line["run_id"]) == ("bluebot", "r1") for line in lines)
    ((dimensions, names),) = [_dimensions_and_metric(blob) for blob in metrics]
    assert names == ["RunsEnded"] and dimensions["status"] == "SUCCEEDED"
    assert not any(name.startswith("Runs_") for blob in metrics for name in blob)
