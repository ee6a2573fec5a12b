"""Shared set-up for the pipeline's behaviour tests on the embedded AWS (real template, ASL and handlers)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema

from embedded_aws.stack import EmbeddedStack
from embedded_aws.training import STAND_IN_TRAINING_IMAGE, TrainingExecutor
from lora_pipeline import events
from tests.corpus import make_good_dataset
from tests.lora_files import Member, sdxl_lora_bytes, tar_bytes

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
SCHEMAS = REPO / "schemas" / "events"
FAST = {
    "TrainingImageUri": STAND_IN_TRAINING_IMAGE,
    "QuietPeriodSeconds": "2",
    "ReadyGraceSeconds": "1",
    "SlotPollSeconds": "1",
    "CapacityRetrySeconds": "1",
}


@contextmanager
def pipeline(executor: TrainingExecutor | None, **parameters: str) -> Iterator[EmbeddedStack]:
    with EmbeddedStack.up(template=TEMPLATE, parameters={**FAST, **parameters}, executor=executor) as stack:
        yield stack
        assert_events_match_schemas(stack)


def dataset(root: Path, name: str = "bluebot", ready: bool = True, images: int = 3) -> Path:
    """A dataset the validator accepts, on the smoke trainer (CPU instance), with or without `_READY`."""
    folder = make_good_dataset(root / name, subsets={f"10_{name}": images})
    (folder / "pipeline.toml").write_text('trainer = "smoke"\n')
    if not ready:
        (folder / "_READY").unlink()
    return folder


def lora_archive(name: str = "bluebot") -> bytes:
    return tar_bytes([Member(f"{name}.safetensors", sdxl_lora_bytes())])


def upload(stack: EmbeddedStack, folder: Path, name: str | None = None) -> list[str]:
    """Upload a dataset folder with `_READY` last, as the CLI does."""
    ready = [Path("_READY")] if (folder / "_READY").exists() else []
    rest = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and p.name != "_READY")
    return stack.upload_folder(folder, f"datasets/{name or folder.name}/", order=[*rest, *ready])


def pipeline_events(stack: EmbeddedStack, detail_type: str | None = None) -> list[dict[str, Any]]:
    bus = stack.outputs["EventBusName"]
    return [e.detail for e in stack.events(bus=bus, source=events.EVENT_SOURCE, detail_type=detail_type)]


def assert_events_match_schemas(stack: EmbeddedStack) -> None:
    """The contract: every event the pipeline put on its bus validates against its committed JSON Schema."""
    bus = stack.outputs["EventBusName"]
    for event in stack.events(bus=bus, source=events.EVENT_SOURCE):
        model = events.BY_DETAIL_TYPE[event.detail_type]
        schema = json.loads((SCHEMAS / events.schema_file_name(model)).read_text())
        jsonschema.validate(event.detail, schema, format_checker=jsonschema.FormatChecker())
        assert set(schema["required"]) | {"schema_version"} <= set(event.detail), event.detail_type
        model.model_validate(event.detail)


def emails(stack: EmbeddedStack) -> dict[str, str]:
    """Subject -> body of every message published to the stack's topic."""
    return {m.subject or "": m.message for m in stack.sns_messages(stack.outputs["TopicArn"])}


def redeliver_upload(stack: EmbeddedStack, key: str, time: datetime | None = None) -> dict[str, Any]:
    """Deliver an S3 `Object Created` event for `key` to the ingest function again (EventBridge is
    at-least-once and unordered), with the event time S3 gave it or `time`."""
    s3_object = stack.s3.head_object(Bucket=stack.bucket, Key=key)
    when = time or s3_object["LastModified"]
    event = {
        "version": "0",
        "id": "redelivered",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": stack.account_id,
        "time": when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": stack.region,
        "resources": [f"arn:aws:s3:::{stack.bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": stack.bucket},
            "object": {"key": key, "size": s3_object["ContentLength"], "etag": s3_object["ETag"].strip('"')},
            "request-id": "R",
            "requester": stack.account_id,
            "reason": "PutObject",
        },
    }
    response = stack.client("lambda").invoke(
        FunctionName=stack.resources("AWS::Lambda::Function")["IngestFunction"],
        Payload=json.dumps(event).encode(),
    )
    payload: dict[str, Any] = json.loads(response["Payload"].read())
    return payload


def table_item(stack: EmbeddedStack, pk: str, sk: str) -> dict[str, Any]:
    item: dict[str, Any] = (
        stack.client("dynamodb")
        .get_item(
            TableName=stack.outputs["TableName"], Key={"pk": {"S": pk}, "sk": {"S": sk}}, ConsistentRead=True
        )
        .get("Item", {})
    )
    return item
