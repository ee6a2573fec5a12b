"""The pipeline's AWS adapters against moto: S3 dataset source, run table and slot queue, event publisher."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from moto import mock_aws

from lora_pipeline.aws.event_publisher import EventPublisher
from lora_pipeline.aws.run_table import SLOTS_KEY, RunTable
from lora_pipeline.aws.s3_source import S3DatasetSource
from lora_pipeline.aws.step_functions import StepFunctionsExecutions
from lora_pipeline.dataset_lock import IngestAction, RunStatus
from lora_pipeline.events import TrainingCancelled
from lora_pipeline.use_cases.ingest import ingest_upload

BUCKET = "pipeline-bucket"
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture
def s3(aws: None) -> Any:
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def table(aws: None) -> RunTable:
    client = boto3.client("dynamodb", region_name="us-east-1")
    client.create_table(
        TableName="t",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k in ("pk", "sk")],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    )
    return RunTable(client, "t")


def test_s3_source_lists_the_dataset_without_markers_and_placeholders(s3: Any) -> None:
    for key in ["datasets/d/10_a/x.png", "datasets/d/10_a/", "datasets/d/_READY", "datasets/d/config.toml",
                "datasets/dd/other.png", "runs/d/r/validation.json"]:  # fmt: skip
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"12345")
    source = S3DatasetSource(s3, BUCKET, "d")
    assert [(f.path, f.size) for f in source.list_files()] == [("10_a/x.png", 5), ("config.toml", 5)]
    assert source.location == f"s3://{BUCKET}/datasets/d/"


def test_s3_source_reads_ranges_and_past_the_end(s3: Any) -> None:
    data = bytes(range(256)) * 40
    s3.put_object(Bucket=BUCKET, Key="datasets/d/i.png", Body=data)
    source = S3DatasetSource(s3, BUCKET, "d")
    assert source.read_range("i.png", 10, 5) == data[10:15]
    assert source.read_range("i.png", len(data) - 3, 100) == data[-3:]
    assert source.read_range("i.png", len(data) + 10, 100) == b""
    assert source.read_small("i.png", len(data)) == data
    assert source.read_small("i.png", len(data) - 1) is None


def test_s3_source_serves_many_threads(s3: Any) -> None:
    for i in range(16):
        s3.put_object(Bucket=BUCKET, Key=f"datasets/d/{i}.bin", Body=bytes([i]) * 1000)
    source = S3DatasetSource(s3, BUCKET, "d")
    with ThreadPoolExecutor(8) as pool:
        heads = list(pool.map(lambda i: source.read_range(f"{i}.bin", 100, 4), range(16)))
    assert heads == [bytes([i]) * 4 for i in range(16)]


def test_one_run_holds_a_dataset_until_it_finishes(table: RunTable) -> None:
    state, finished = table.dataset_state("d")
    assert state.active is None and finished is None
    assert table.try_start("d", "r1", ready=False, now=NOW, last_finished=None)
    assert not table.try_start("d", "r2", ready=False, now=NOW, last_finished=None)
    active = table.record_upload("d", ready=True, now=NOW)
    assert active is not None and active.run_id == "r1" and active.settling
    table.finish("d", "r1", RunStatus.SUCCEEDED, NOW, follow_up=True)
    table.finish("d", "r1", RunStatus.SUCCEEDED, NOW, follow_up=True)  # idempotent
    state, finished = table.dataset_state("d")
    assert state.active is None and state.last_finished_at == NOW
    assert table.record_upload("d", ready=False, now=NOW) is None
    # The lock moved on since it was read: the start is refused, the caller reads it again.
    assert not table.try_start("d", "r2", ready=False, now=NOW, last_finished=None)
    assert table.try_start("d", "r2", ready=False, now=NOW, last_finished=finished)


def test_abandoned_start_lets_the_next_event_start_the_run(table: RunTable) -> None:
    assert table.try_start("d", "r1", ready=False, now=NOW, last_finished=None)
    table.abandon_start("d", "r1")
    assert table.try_start("d", "r2", ready=False, now=NOW, last_finished=None)


def test_changed_during_run_belongs_to_the_run(table: RunTable) -> None:
    table.try_start("d", "r1", ready=False, now=NOW, last_finished=None)
    table.mark_changed_during_run("d", "r1")
    table.mark_changed_during_run("d", "other")  # a stale run id changes nothing
    assert table.changed_during_run("d", "r1") and not table.changed_during_run("d", "other")


def _slots(table: RunTable, queue: list[str], holders: list[str]) -> None:
    item: dict[str, Any] = {**SLOTS_KEY, "queue": {"L": [{"S": r} for r in queue]}}
    if holders:
        item["holders"] = {"SS": holders}
    table._client.put_item(TableName="t", Item=item)


def test_release_slot_leaves_the_queue_or_the_holders(table: RunTable) -> None:
    _slots(table, ["q1", "q2", "q3"], ["h1", "h2"])
    assert table.release_slot("q2") and table.release_slot("h1")
    assert not table.release_slot("nobody")
    assert table.slots() == ({"h2"}, ["q1", "q3"])


def test_event_publisher_puts_the_model_on_the_bus(aws: None) -> None:
    events = boto3.client("events", region_name="us-east-1")
    events.create_event_bus(Name="bus")
    sent: list[dict[str, Any]] = []
    events.meta.events.register(
        "provide-client-params.events.PutEvents", lambda params, **_: sent.append(params)
    )
    detail = TrainingCancelled(
        dataset="d", run_id="r", bucket="b", time=NOW, execution_status="ABORTED",
        training_job_name=None, training_job_stopped=False,
    )  # fmt: skip
    EventPublisher(events, "bus").publish(detail)
    (entry,) = sent[0]["Entries"]
    assert entry["Source"] == "sdxl-lora-pipeline" and entry["DetailType"] == "Training Cancelled"
    assert entry["EventBusName"] == "bus" and json.loads(entry["Detail"])["execution_status"] == "ABORTED"


class RecordingSfn:
    def __init__(self, fail_start: bool = False) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail_start = fail_start

    def start_execution(self, **kwargs: Any) -> None:
        if self.fail_start:
            raise RuntimeError("Step Functions is down")
        self.calls.append(("start", kwargs))

    def send_task_heartbeat(self, **kwargs: Any) -> None:
        self.calls.append(("heartbeat", kwargs))

    def send_task_success(self, **kwargs: Any) -> None:
        self.calls.append(("success", kwargs))


def test_ingest_starts_once_then_prolongs_and_ends_the_settling(table: RunTable) -> None:
    sfn = RecordingSfn()
    assert (
        ingest_upload(
            table, StepFunctionsExecutions(sfn, "arn:sm"), BUCKET, "datasets/d/10_a/1.png", NOW, NOW
        )
        is IngestAction.START
    )
    ((kind, start),) = sfn.calls
    assert kind == "start" and json.loads(start["input"])["dataset"] == "d"
    assert start["name"].startswith("d-") and json.loads(start["input"])["run_id"] in start["name"]
    # No token stored yet: the upload is counted, nothing to signal.
    assert (
        ingest_upload(
            table, StepFunctionsExecutions(sfn, "arn:sm"), BUCKET, "datasets/d/10_a/2.png", NOW, NOW
        )
        is IngestAction.HEARTBEAT
    )
    table._client.update_item(
        TableName="t",
        Key={"pk": {"S": "DATASET#d"}, "sk": {"S": "DATASET"}},
        UpdateExpression="SET settle_token = :t",
        ExpressionAttributeValues={":t": {"S": "token-1"}},
    )
    assert (
        ingest_upload(
            table, StepFunctionsExecutions(sfn, "arn:sm"), BUCKET, "datasets/d/10_a/3.png", NOW, NOW
        )
        is IngestAction.HEARTBEAT
    )
    assert (
        ingest_upload(table, StepFunctionsExecutions(sfn, "arn:sm"), BUCKET, "datasets/d/_READY", NOW, NOW)
        is IngestAction.READY
    )
    assert [(kind, call.get("taskToken")) for kind, call in sfn.calls[1:]] == [
        ("heartbeat", "token-1"),
        ("success", "token-1"),
    ]
    assert (
        ingest_upload(
            table, StepFunctionsExecutions(sfn, "arn:sm"), BUCKET, "runs/d/r/validation.json", NOW, NOW
        )
        is None
    )


def test_ingest_releases_the_lock_when_the_execution_cannot_start(table: RunTable) -> None:
    with pytest.raises(RuntimeError, match="down"):
        ingest_upload(
            table,
            StepFunctionsExecutions(RecordingSfn(fail_start=True), "arn:sm"),
            BUCKET,
            "datasets/d/a.png",
            NOW,
            NOW,
        )
    state, _ = table.dataset_state("d")
    assert state.active is None
    sfn = RecordingSfn()
    assert (
        ingest_upload(table, StepFunctionsExecutions(sfn, "arn:sm"), BUCKET, "datasets/d/a.png", NOW, NOW)
        is IngestAction.START
    )
