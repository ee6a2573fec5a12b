"""The moto adaptations fail loudly when moto changes, and the EventBridge input rules behave like AWS."""

from __future__ import annotations

import importlib.metadata
import json
import sys
import threading
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto import mock_aws

from embedded_aws import RealAwsRefused, adaptations, refuse_real_aws
from embedded_aws.eventbridge import as_delivered_event, render_input_template, resolve_path, target_input

EVENT: dict[str, Any] = {
    "version": "0",
    "id": "e-1",
    "detail-type": "Dataset Rejected",
    "source": "sdxl-lora-pipeline",
    "account": "123456789012",
    "time": 1795692000.0,
    "region": "us-east-1",
    "resources": [],
    "detail": {"dataset": "cat", "problems": [{"code": "E1"}, {"code": "E2"}], "count": 2},
    "ingestion-time": 1795692000.5,
}


def test_a_different_moto_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "5.3.0")
    with pytest.raises(adaptations.AdaptationOutdated, match=r"moto==5\.2\.5, found moto==5\.3\.0"):
        adaptations.check_moto_version()


def test_an_adaptation_names_the_moto_attribute_that_disappeared() -> None:
    class Moved:
        pass

    with pytest.raises(adaptations.AdaptationOutdated, match=r"run_lambda.*Moved\._invoke_lambda"):
        adaptations._require(Moved, "_invoke_lambda", "(self, event=None)", "run_lambda_handlers_in_process")


def test_an_adaptation_names_the_moto_function_whose_parameters_changed() -> None:
    class Changed:
        def _invoke_lambda(self, event: str | None = None, *, timeout: int = 3) -> None: ...

        @classmethod
        def create_from_cloudformation_json(cls, resource_name: str, properties: dict[str, str]) -> None: ...

        @property
        def status(self) -> str:
            return "RUNNING"

    with pytest.raises(
        adaptations.AdaptationOutdated,
        match=r"run_lambda_handlers_in_process: moto's Changed\._invoke_lambda now takes "
        r"\(self, event=None, \*, timeout=3\), the adaptation expects \(self, event=None\)",
    ):
        adaptations._require(
            Changed, "_invoke_lambda", "(self, event=None)", "run_lambda_handlers_in_process"
        )
    with pytest.raises(adaptations.AdaptationOutdated, match=r"now takes \(resource_name, properties\)"):
        adaptations._require(
            Changed,
            "create_from_cloudformation_json",
            "(resource_name, cloudformation_json, account_id, region_name, **kwargs)",
            "cloudformation_bucket_notifications",
        )
    # Annotations may change; the parameters an adaptation calls with may not.
    assert adaptations._require(Changed, "status", "(self)", "step_functions_new_executions_are_running")
    with pytest.raises(adaptations.AdaptationOutdated, match=r"Changed\.status now takes \(self\)"):
        adaptations._require(
            Changed, "status", "(execution, now)", "step_functions_new_executions_are_running"
        )


def test_an_adaptation_for_something_moto_now_does_itself_asks_to_be_dropped() -> None:
    class Fixed:
        physical_resource_id = "bus"

    with pytest.raises(adaptations.AdaptationOutdated, match="drop the adaptation"):
        adaptations._require_absent(
            Fixed, "physical_resource_id", "cloudformation_ref_of_event_bus_is_its_name"
        )


def test_install_applies_every_adaptation_once() -> None:
    names = adaptations.install()
    assert names == [adaptation.__name__ for adaptation in adaptations.ADAPTATIONS]
    assert adaptations.install() == names


def test_delivered_events_carry_iso_time_and_no_moto_internals() -> None:
    delivered = as_delivered_event(EVENT)
    assert delivered["time"] == "2026-11-26T11:20:00Z"
    assert "ingestion-time" not in delivered


def test_json_paths_resolve_like_eventbridge() -> None:
    assert resolve_path("$.detail.problems[1].code", EVENT) == "E2"
    assert resolve_path("$.detail.absent", EVENT) is None
    assert resolve_path("$", EVENT) is EVENT


def test_input_template_quotes_values_outside_strings_and_inlines_them_inside() -> None:
    values = {"dataset": 'cat "two"', "count": 2, "problems": [{"code": "E1"}]}
    rendered = render_input_template(
        '{"text": "Dataset <dataset> has <count> problems", "dataset": <dataset>, "problems": <problems>}',
        values,
    )
    assert json.loads(rendered) == {
        "text": 'Dataset cat "two" has 2 problems',
        "dataset": 'cat "two"',
        "problems": [{"code": "E1"}],
    }


def test_target_input_prefers_input_then_input_path_then_transformer() -> None:
    rule = ("arn:aws:events:us-east-1:123456789012:rule/bus/r", "r")
    assert target_input({"Arn": "a", "Input": '{"fixed": 1}'}, EVENT, *rule) == '{"fixed": 1}'
    assert json.loads(target_input({"Arn": "a", "InputPath": "$.detail.dataset"}, EVENT, *rule)) == "cat"
    transformer = {
        "InputPathsMap": {"d": "$.detail.dataset"},
        "InputTemplate": '"<d> at <aws.events.rule-name>"',
    }
    assert target_input({"Arn": "a", "InputTransformer": transformer}, EVENT, *rule) == '"cat at r"'
    assert json.loads(target_input({"Arn": "a"}, EVENT, *rule)) == EVENT


def test_refuse_real_aws_blocks_requests_that_would_leave_the_machine() -> None:
    refuse_real_aws()
    with pytest.raises(RealAwsRefused, match="sts"):
        boto3.client("sts", region_name="us-east-1").get_caller_identity()


def test_a_definition_is_parsed_once_but_every_execution_gets_its_own_program() -> None:
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

    adaptations.install()
    definition = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}})
    first_program, first_tree = AmazonStateLanguageParser.parse(definition)
    second_program, second_tree = AmazonStateLanguageParser.parse(definition)
    assert second_tree is first_tree
    assert second_program is not first_program


def test_conditional_dynamodb_writes_are_atomic_under_concurrency() -> None:
    adaptations.install()
    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # thread switches between moto's condition check and its write, if unlocked
    try:
        with mock_aws():
            dynamodb = boto3.client(
                "dynamodb", region_name="us-east-1", config=Config(max_pool_connections=20)
            )
            dynamodb.create_table(
                TableName="slots",
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                BillingMode="PAY_PER_REQUEST",
            )
            winners_per_round = [_race_for_one_slot(dynamodb, f"slot-{round_}") for round_ in range(10)]
    finally:
        sys.setswitchinterval(previous_interval)
    assert winners_per_round == [1] * 10


def test_concurrent_updates_of_one_item_never_see_it_change_mid_copy() -> None:
    """moto's UpdateItem deep-copies the stored item; unlocked, a concurrent write that adds map keys fails
    the copy with "dictionary changed size during iteration" (seen in a 50-dataset load run)."""
    adaptations.install()
    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    errors: list[Exception] = []
    try:
        with mock_aws():
            dynamodb = boto3.client(
                "dynamodb", region_name="us-east-1", config=Config(max_pool_connections=20)
            )
            dynamodb.create_table(
                TableName="runs",
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                BillingMode="PAY_PER_REQUEST",
            )
            dynamodb.put_item(TableName="runs", Item={"pk": {"S": "hot"}, "m": {"M": {}}})

            def write(writer: int) -> None:
                for n in range(40):
                    try:
                        dynamodb.update_item(
                            TableName="runs",
                            Key={"pk": {"S": "hot"}},
                            UpdateExpression="SET m.#k = :v",
                            ExpressionAttributeNames={"#k": f"w{writer}-{n}"},
                            ExpressionAttributeValues={":v": {"S": "x" * 64}},
                        )
                    except Exception as exc:
                        errors.append(exc)

            threads = [threading.Thread(target=write, args=(writer,)) for writer in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            stored = dynamodb.get_item(TableName="runs", Key={"pk": {"S": "hot"}})["Item"]["m"]["M"]
    finally:
        sys.setswitchinterval(previous_interval)
    assert errors == []
    assert len(stored) == 8 * 40


def _race_for_one_slot(dynamodb: Any, key: str, contenders: int = 12) -> int:
    start = threading.Barrier(contenders)
    winners: list[int] = []

    def acquire(contender: int) -> None:
        start.wait()
        try:
            dynamodb.update_item(
                TableName="slots",
                Key={"pk": {"S": key}},
                UpdateExpression="ADD holders :one",
                ConditionExpression="attribute_not_exists(holders) OR holders < :cap",
                ExpressionAttributeValues={":one": {"N": "1"}, ":cap": {"N": "1"}},
            )
            winners.append(contender)
        except dynamodb.exceptions.ConditionalCheckFailedException:
            pass

    threads = [threading.Thread(target=acquire, args=(contender,)) for contender in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(winners)


def test_an_execution_not_yet_started_reads_as_running() -> None:
    from moto.stepfunctions.parser.api import ExecutionStatus
    from moto.stepfunctions.parser.backend.execution import Execution

    adaptations.install()
    execution = Execution.__new__(Execution)
    execution.exec_status = None  # listed by StartExecution before its start sets the status
    assert execution.status == "RUNNING"
    execution.exec_status = ExecutionStatus.SUCCEEDED
    assert execution.status == "SUCCEEDED"


def test_aws_sdk_sagemaker_errors_carry_the_sdk_service_name_while_a_stack_is_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from botocore.exceptions import ClientError
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_aws_sdk import (
        StateTaskServiceAwsSdk,
    )

    from embedded_aws import runtime

    adaptations.install()
    not_found = ClientError(
        {"Error": {"Code": "ValidationException", "Message": "not found"}}, "DescribeTrainingJob"
    )

    def error_name(service: str) -> str:
        normalised = StateTaskServiceAwsSdk._normalise_service_error_name(service)
        return StateTaskServiceAwsSdk._normalise_exception_name(normalised, not_found)

    assert error_name("sagemaker") == "sagemaker.sagemakerException"  # moto as shipped
    monkeypatch.setattr(runtime, "_current", object())
    assert error_name("sagemaker") == "SageMaker.SageMakerException"
    assert error_name("dynamodb") == "DynamoDb.DynamoDbException"
