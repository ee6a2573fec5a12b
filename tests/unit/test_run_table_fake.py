"""The in-memory run table the use-case tests use (tests/fakes.py) answers as the DynamoDB one does: one
script of calls, including what the state machine writes, runs against both and must give the same answers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws

from lora_pipeline.aws.run_table import SLOTS_KEY, RunTable, dataset_key
from tests.fakes import InMemoryRunTable

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
EVERY = timedelta(seconds=30)


class StateMachineWrites:
    """What the state machine's states do to the DynamoDB table (statemachine/pipeline.asl.json)."""

    def __init__(self, table: RunTable) -> None:
        self.client, self.name = table._client, table._table

    def _update(self, key: dict[str, Any], expression: str, values: dict[str, Any], **extra: Any) -> None:
        self.client.update_item(
            TableName=self.name,
            Key=key,
            UpdateExpression=expression,
            ExpressionAttributeValues=values,
            **extra,
        )

    def store_settle_token(self, dataset: str, token: str) -> None:
        self._update(dataset_key(dataset), "SET settle_token = :token", {":token": {"S": token}})

    def mark_settled(self, dataset: str, now: datetime) -> None:
        self._update(
            dataset_key(dataset),
            "SET phase = :running, settled_at = :now REMOVE settle_token",
            {":running": {"S": "running"}, ":now": {"S": now.isoformat()}},
        )

    def join_queue(self, run_id: str) -> None:
        self._update(
            SLOTS_KEY,
            "SET #queue = list_append(if_not_exists(#queue, :empty), :me)",
            {":empty": {"L": []}, ":me": {"L": [{"S": run_id}]}},
            ExpressionAttributeNames={"#queue": "queue"},
        )

    def acquire_slot(self, run_id: str) -> None:
        self._update(
            SLOTS_KEY,
            "REMOVE #queue[0] ADD holders :me",
            {":me": {"SS": [run_id]}},
            ExpressionAttributeNames={"#queue": "queue"},
        )


def _script(table: Any, machine: Any, slots: Any) -> list[Any]:
    answers: list[Any] = [
        table.try_start("d", "r1", False, T0, None),
        table.try_start("d", "r2", False, T0, None),
    ]
    table.record_run("d", "r1", "d-r1", T0)
    answers.append(table.record_upload("d", False, T0 + timedelta(seconds=1)))
    machine.store_settle_token("d", "token-1")
    answers.append(table.record_upload("d", True, T0 + timedelta(seconds=2)))
    for seconds in (2, 12, 32, 33):
        answers.append(table.claim_heartbeat("d", "r1", T0 + timedelta(seconds=seconds), EVERY))
    answers.append(table.claim_heartbeat("d", "other", T0 + timedelta(seconds=99), EVERY))
    machine.mark_settled("d", T0 + timedelta(seconds=40))
    answers += [table.record_upload("d", False, T0 + timedelta(seconds=41)), table.dataset_state("d")]
    answers.append(table.changed_during_run("d", "r1"))
    table.mark_changed_during_run("d", "other")
    answers.append(table.changed_during_run("d", "r1"))
    table.mark_changed_during_run("d", "r1")
    answers += [table.changed_during_run("d", "r1"), table.run_status("d", "r1"), table.run_status("d", "r0")]
    for run_id in ("r1", "x1", "x2"):
        machine.join_queue(run_id)
    machine.acquire_slot("r1")
    answers.append(slots())
    answers += [table.claim_terminal_event("d", "r1", "Training Failed") for _ in range(2)]
    table.unclaim_terminal_event("d", "r1")
    answers.append(table.claim_terminal_event("d", "r1", "Training Failed"))
    answers += [table.release_slot("r1"), table.release_slot("r1"), table.release_slot("x2"), slots()]
    table.finish("d", "r1", "FAILED", T0 + timedelta(minutes=5), follow_up=True)
    table.finish("d", "r1", "FAILED", T0 + timedelta(minutes=6), follow_up=True)  # a redelivery
    answers += [table.dataset_state("d"), table.run_status("d", "r1"), table.changed_during_run("d", "r1")]
    answers.append(table.try_start("d", "r3", False, T0 + timedelta(minutes=7), None))
    _, last_finished = table.dataset_state("d")
    answers.append(table.try_start("d", "r3", True, T0 + timedelta(minutes=7), last_finished))
    table.record_run("d", "r3", "d-r3", T0 + timedelta(minutes=7))
    table.abandon_start("d", "r3")
    answers += [table.dataset_state("d"), table.run_status("d", "r3")]
    table.finish("e", "r4", "CANCELLED", T0, follow_up=False)  # a run that never held its dataset
    answers += [table.dataset_state("e"), table.run_status("e", "r4")]
    return answers


@pytest.fixture
def dynamodb_table() -> Iterator[RunTable]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName="runs",
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k in ("pk", "sk")],
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
        )
        yield RunTable(client, "runs")


def test_the_in_memory_run_table_answers_like_the_dynamodb_one(dynamodb_table: RunTable) -> None:
    fake = InMemoryRunTable()
    expected = _script(dynamodb_table, StateMachineWrites(dynamodb_table), dynamodb_table.slots)
    answers = _script(fake, fake, lambda: (set(fake.holders), list(fake.queue)))
    assert answers == expected
    # The script reaches the cases that matter: refused writes, a throttled heartbeat, a settled upload.
    assert expected[:2] == [True, False] and expected[4:9] == [True, False, True, False, False]
    assert expected[9] is None and expected[16] == ({"r1"}, ["x1", "x2"]) and expected[23] == (set(), ["x1"])
    assert expected[24][0].follow_up and expected[26:29] == [False, False, True]
