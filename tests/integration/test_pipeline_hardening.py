"""The pipeline under duplicate deliveries and load, on the embedded AWS (real template, ASL and handlers)."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from embedded_aws.stack import EmbeddedStack
from embedded_aws.training import ArchiveExecutor
from lora_pipeline.aws import clients
from tests.integration.pipeline_support import (
    dataset,
    lora_archive,
    pipeline,
    pipeline_events,
    table_item,
    upload,
)
from tests.integration.test_pipeline_runs import ConcurrencyProbe
from tests.unit.test_slot_queue_history import SLOT_POLL_EVENTS

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
    assert (
        counter.calls["stepfunctions:StartExecution"] == 1
        and counter.calls["stepfunctions:SendTaskSuccess"] == 1
    )
    assert heartbeats <= uploading / (quiet / 10) + 2


def test_a_hundred_datasets_at_a_cap_of_two_each_train_once(tmp_path: Path) -> None:
    probe = ConcurrencyProbe(
        ArchiveExecutor(lambda request: lora_archive(request["HyperParameters"]["output_name"])), 0.05
    )
    names = [f"set{i:03d}" for i in range(100)]
    started = time.monotonic()
    with pipeline(probe, MaxConcurrentTrainingJobs="2", ReadyGraceSeconds="0") as stack:
        folders = [dataset(tmp_path, name, images=1) for name in names]
        with ThreadPoolExecutor(max_workers=4) as uploaders:  # four users uploading at once
            list(uploaders.map(lambda folder: upload(stack, folder), folders))
        uploaded = time.monotonic() - started
        stack.wait_until_idle(timeout=600)
        elapsed = time.monotonic() - started

        executions = stack.executions()
        assert sorted(e.input["dataset"] for e in executions) == names
        assert {e.status for e in executions} == {"SUCCEEDED"}
        assert sorted(probe.started) == names  # each trained exactly once
        assert probe.most == 2
        assert sorted(e["dataset"] for e in pipeline_events(stack, "Training Succeeded")) == names
        slots = table_item(stack, "SLOTS", "SLOTS")
        assert "holders" not in slots and slots["queue"]["L"] == []

        # History events per slot-queue poll, measured: the run that waited longest against one that did not.
        by_polls = sorted(executions, key=lambda e: e.states_entered().count("WaitForSlot"))
        shortest, longest = by_polls[0], by_polls[-1]
        polls = [e.states_entered().count("WaitForSlot") for e in (shortest, longest)]
        events = [len(_history(stack, e.arn)) for e in (shortest, longest)]
    per_poll = (events[1] - events[0]) / (polls[1] - polls[0])
    print(
        f"\n100 datasets at a cap of 2: {elapsed:.0f} s (uploads {uploaded:.0f} s); longest wait {polls[1]} polls, "
        f"{per_poll:.1f} history events per poll"
    )
    assert polls[1] >= 10 and per_poll <= SLOT_POLL_EVENTS + 0.5  # + the odd throttling retry


def _history(stack: EmbeddedStack, arn: str) -> list[dict[str, Any]]:
    sfn = stack.client("stepfunctions")
    return [
        e
        for page in sfn.get_paginator("get_execution_history").paginate(executionArn=arn)
        for e in page["events"]
    ]
