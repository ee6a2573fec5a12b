"""The repository's own template.yaml comes up on the embedded AWS, wired the way the pipeline needs."""

from __future__ import annotations

import json
from pathlib import Path

from moto.s3.models import s3_backends

from embedded_aws import EmbeddedStack

REPO = Path(__file__).resolve().parents[2]


def test_the_real_template_deploys_with_executable_state_machine_and_local_handlers() -> None:
    with EmbeddedStack.up(REPO / "template.yaml", {"QuietPeriodSeconds": "1"}) as stack:
        assert {"BucketName", "EventBusName", "StateMachineArn", "TopicArn", "TableName"} <= set(
            stack.outputs
        )
        assert stack.outputs["BucketName"] == stack.bucket
        assert "AWS::Lambda::Function" not in stack.unemulated_resource_types
        assert "AWS::CodeBuild::Project" in stack.unemulated_resource_types  # image builds are AWS-only

        sfn = stack.client("stepfunctions")
        definition = sfn.describe_state_machine(stateMachineArn=stack.outputs["StateMachineArn"])[
            "definition"
        ]
        assert "${" not in definition, "every DefinitionSubstitutions placeholder is filled in"
        json.loads(definition)

        bucket = s3_backends[stack.account_id]["aws"].buckets[stack.bucket]
        assert bucket.notification_configuration.event_bridge is not None, "uploads reach EventBridge"

        code_folders = {
            path.relative_to(REPO).as_posix() for path in stack.runtime.lambdas._code_dirs.values()
        }
        functions = {path.parent.name for path in (REPO / "functions").glob("*/app.py")}
        assert {f"functions/{name}" for name in functions} <= code_folders

        events = stack.client("events")
        default_targets = [
            target["Arn"]
            for rule in events.list_rules(EventBusName="default")["Rules"]
            for target in events.list_targets_by_rule(Rule=rule["Name"], EventBusName="default")["Targets"]
        ]
        lambda_arns = {
            function["FunctionName"]: function["FunctionArn"]
            for function in stack.client("lambda").list_functions()["Functions"]
        }
        assert any(arn in lambda_arns.values() for arn in default_targets), "S3 uploads reach a function"
