"""The pipeline under duplicate deliveries and load, on the embedded AWS (real template, ASL and handlers)."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from embedded_aws.training import ArchiveExecutor
from lora_pipeline.aws import clients
from tests.integration.pipeline_support import dataset, lora_archive, pipeline, upload

pytestmark = pytest.mark.slow


def test_a_redelivered_or_put_again_event_sends_no_second_email(tmp_path: Path) -> None:
    with pipeline(ArchiveExecutor(lora_archive())) as stack:
        upload(stack, dataset(tmp_path))
        stack.wait_until_idle(timeout=120)
        topic = stack.outputs["TopicArn"]
        sent = [m.subject for m in stack.sns_messages(topic)]
        assert sent == ["Training started: bluebot", "LoRA ready: bluebot"]

        notify = stack.resources("AWS::Lambda::Function")["NotifyFunction"]
        (delivered,) = [
            call.event
            for call in stack.lambda_invocations(notify)
            if call.event["detail-type"] == "Training Succeeded"
        ]
        lambda_ = stack.client("lambda")
        # EventBridge delivers at least once (same id); a retried PutEvents gives the same detail a new id.
        for event in (delivered, {**delivered, "id": "put-again", "time": "2030-01-01T00:00:00Z"}):
            response = lambda_.invoke(FunctionName=notify, Payload=json.dumps(event).encode())
            assert json.loads(response["Payload"].read()) == {"subject": "LoRA ready: bluebot"}
        assert [m.subject for m in stack.sns_messages(topic)] == sent


class CallCounter:
    """Counts the AWS calls the in-process handlers make, by service and operation."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        shipped = clients._client.__wrapped__

        @functools.cache
        def counted(service: str, region: str | None, endpoint: str | None) -> Any:
            made = shipped(service, region, endpoint)
            made.meta.events.register("before-call", self._count)
            return made

        monkeypatch.setattr(clients, "_client", counted)

    def _count(self, model: Any, **_: Any) -> None:
        with self._lock:
            self.calls[f"{model.service_model.service_name}:{model.name}"] += 1

    def by_service(self, service: str) -> int:
        return sum(n for name, n in self.calls.items() if name.startswith(service + ":"))


def test_ingest_costs_are_bounded_per_object_and_heartbeats_per_tenth_of_the_quiet_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = CallCounter()
    counter.install(monkeypatch)
    images = 150
    quiet = 20  # a heartbeat at most every 2 s
    with pipeline(ArchiveExecutor(lora_archive()), QuietPeriodSeconds=str(quiet)) as stack:
        folder = dataset(tmp_path, images=images)
        started = time.monotonic()
        keys = upload(stack, folder)  # _READY last
        uploading = time.monotonic() - started
        stack.wait_until_idle(timeout=150)
        ingest = stack.resources("AWS::Lambda::Function")["IngestFunction"]
        invocations = len(stack.lambda_invocations(ingest))
        (execution,) = stack.executions()
        assert execution.status == "SUCCEEDED"
    objects = len(keys)
    assert invocations == objects
    dynamodb, sfn = counter.by_service("dynamodb"), counter.by_service("stepfunctions")
    heartbeats = counter.calls["stepfunctions:SendTaskHeartbeat"]
    print(
        f"\n{objects} objects in {uploading:.1f} s: {invocations} ingest calls, {dynamodb} DynamoDB calls, "
        f"{sfn} Step Functions calls ({heartbeats} heartbeats); all calls: {dict(counter.calls)}"
    )
    # One read and one write per object, plus the start and a heartbeat claim per heartbeat; the rest of the
    # pipeline (validate, unpack, notify) adds a few calls of its own.
    assert dynamodb <= 2 * objects + 2 * heartbeats + 20
    assert counter.calls["stepfunctions:StartExecution"] == 1 and counter.calls["stepfunctions:SendTaskSuccess"] == 1
    assert heartbeats <= uploading / (quiet / 10) + 2
