"""The in-memory run table the use-case tests use (tests/fakes.py) answers as the DynamoDB one does: one
script of calls, including what the state machine writes, runs against both and must give the same answers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from lora_pipeline.aws.run_table import RunTable
from tests.fakes import InMemoryRunTable

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
EVERY = timedelta(seconds=30)


ASL = json.loads((Path(__file__).resolve().parents[2] / "statemachine" / "pipeline.asl.json").read_text())


def _states(machine: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, state in machine["States"].items():
        yield name, state
        for branch in state.get("Branches", []):
            yield from _states(branch)


ASL_STATES = dict(_states(ASL))
_FORMAT = re.compile(r"States\.Format\('(.*)', (\S+)\)")
_ARRAY = re.compile(r"States\.Array\((\S+)\)")


def _resolve(node: Any, context: dict[str, str]) -> Any:
    """A state's Parameters as Step Functions sends them: `.$` fields take the value at their path (or what the
    intrinsic function makes of it), `${...}` the DefinitionSubstitutions. `context` maps each path and
    substitution name the state uses to its value."""
    if isinstance(node, list):
        return [_resolve(value, context) for value in node]
    if isinstance(node, str):
        return re.sub(r"\$\{(\w+)\}", lambda name: context[name[1]], node)
    if not isinstance(node, dict):
        return node
    resolved = {}
    for key, value in node.items():
        if not key.endswith(".$"):
            resolved[key] = _resolve(value, context)
        elif format_ := _FORMAT.fullmatch(value):
            resolved[key.removesuffix(".$")] = format_[1].replace("{}", context[format_[2]])
        elif array := _ARRAY.fullmatch(value):
            resolved[key.removesuffix(".$")] = [context[array[1]]]
        else:
            resolved[key.removesuffix(".$")] = context[value]
    return resolved


class StateMachineWrites:
    """What the state machine's states do to the DynamoDB table: their Parameters, read from
    statemachine/pipeline.asl.json, sent as the state machine sends them."""

    def __init__(self, table: RunTable) -> None:
        self.client = table._client
        self.substitutions = {"TableName": table._table, "MaxConcurrentTrainingJobs": "1"}

    def _run(self, state: str, context: dict[str, str]) -> None:
        assert ASL_STATES[state]["Resource"].startswith("arn:aws:states:::aws-sdk:dynamodb:updateItem")
        self.client.update_item(
            **_resolve(ASL_STATES[state]["Parameters"], {**self.substitutions, **context})
        )

    def store_settle_token(self, dataset: str, run_id: str, token: str) -> None:
        self._run("WaitForUploadToSettle", {"$.dataset": dataset, "$.run_id": run_id, "$$.Task.Token": token})

    def mark_settled(self, dataset: str, run_id: str, now: datetime) -> None:
        self._run(
            "Settled", {"$.dataset": dataset, "$.run_id": run_id, "$$.State.EnteredTime": now.isoformat()}
        )

    def join_queue(self, run_id: str) -> None:
        self._run("JoinSlotQueue", {"$.run_id": run_id})

    def acquire_slot(self, run_id: str) -> None:
        self._run("AcquireSlot", {"$.run_id": run_id})


def _script(table: Any, machine: Any, slots: Any) -> list[Any]:
    answers: list[Any] = [
        table.try_start("d", "r1", False, T0, None),
        table.try_start("d", "r2", False, T0, None),
    ]
    table.record_run("d", "r1", "d-r1", T0)
    answers.append(table.record_upload("d", False, T0 + timedelta(seconds=1)))
    machine.store_settle_token("d", "r1", "token-1")
    answers.append(table.record_upload("d", True, T0 + timedelta(seconds=2)))
    for seconds in (2, 12, 32, 33):
        answers.append(table.claim_heartbeat("d", "r1", T0 + timedelta(seconds=seconds), EVERY))
    answers.append(table.claim_heartbeat("d", "other", T0 + timedelta(seconds=99), EVERY))
    machine.mark_settled("d", "r1", T0 + timedelta(seconds=40))
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
