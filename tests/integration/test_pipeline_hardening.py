"""The pipeline under duplicate deliveries and load, on the embedded AWS (real template, ASL and handlers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedded_aws.training import ArchiveExecutor
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
