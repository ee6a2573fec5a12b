"""The stack's safety properties, read from template.yaml (what a reviewer would check by hand)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from embedded_aws.sam import load_template
from lora_image_build import SOURCE_KEY
from lora_pipeline.aws.training_image import DIGEST_URI

TEMPLATE = load_template(Path(__file__).resolve().parents[2] / "template.yaml")
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]


def props(name: str) -> dict[str, Any]:
    properties: dict[str, Any] = RESOURCES[name]["Properties"]
    return properties


def test_bucket_is_private_encrypted_versioned_tls_only_and_notifies_eventbridge() -> None:
    bucket = props("Bucket")
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert bucket["NotificationConfiguration"] == {"EventBridgeConfiguration": {"EventBridgeEnabled": True}}
    assert (
        "ServerSideEncryptionByDefault" in bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    )
    (statement,) = props("BucketPolicy")["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny" and statement["Condition"] == {
        "Bool": {"aws:SecureTransport": "false"}
    }
    rules = {rule["Id"]: rule for rule in bucket["LifecycleConfiguration"]["Rules"]}
    assert (
        rules["abort-incomplete-multipart-uploads"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
        <= 7
    )
    assert rules["expire-old-run-file-versions"]["Prefix"] == "runs/"


def test_only_datasets_trigger_the_pipeline() -> None:
    pattern = props("IngestFunction")["Events"]["DatasetObjectCreated"]["Properties"]["Pattern"]
    assert pattern["source"] == ["aws.s3"] and pattern["detail-type"] == ["Object Created"]
    assert pattern["detail"]["object"]["key"] == [{"prefix": "datasets/"}]


def test_table_topic_and_state_machine_settings() -> None:
    table = props("Table")
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props("Topic")["KmsMasterKeyId"] == "alias/aws/sns"
    assert RESOURCES["EmailSubscription"]["Condition"] == "HasEmail"
    machine = props("StateMachine")
    assert machine["Tracing"] == {"Enabled": True} and machine["Logging"]["Destinations"]


def test_functions_run_python312_on_arm64_with_tracing() -> None:
    function_globals = TEMPLATE["Globals"]["Function"]
    assert function_globals["Runtime"] == "python3.12" and function_globals["Architectures"] == ["arm64"]
    assert function_globals["Tracing"] == "Active"
    functions = {name for name, r in RESOURCES.items() if r["Type"] == "AWS::Serverless::Function"}
    assert functions == {
        "IngestFunction",
        "ValidateFunction",
        "UnpackFunction",
        "SalvageFunction",
        "NotifyFunction",
        "CancelFunction",
    }
    for name in functions:
        assert props(name)["CodeUri"] == f"functions/{name.removesuffix('Function').lower()}/"


def _statements(policies: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for policy in policies:
        document = policy.get("PolicyDocument", policy)
        for statement in document.get("Statement", []):
            if isinstance(statement, dict) and "Fn::If" in statement:
                statement = statement["Fn::If"][1]
            if isinstance(statement, dict) and "Effect" in statement:
                found.append(statement)
    return found


def test_sagemaker_role_is_scoped_to_this_bucket_and_repository() -> None:
    role = props("SageMakerExecutionRole")
    assert "ManagedPolicyArns" not in role
    for statement in _statements(role["Policies"]):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert not any(action.endswith(":*") or action == "*" for action in actions), statement
        if any(action.startswith("s3:") for action in actions) and statement.get("Sid") != "ReadBaseModel":
            resources = (
                statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            )
            assert all("Bucket" in str(resource) for resource in resources), statement
        if statement["Resource"] == "*":
            assert actions in (["ecr:GetAuthorizationToken"], ["cloudwatch:PutMetricData"]), statement


def test_outputs_the_cli_and_the_image_build_rely_on() -> None:
    assert set(TEMPLATE["Outputs"]) == {
        "BucketName",
        "TrainingImageRepositoryUri",
        "ImageBuildProjectName",
        "TrainingImageParameterName",
        "StateMachineArn",
        "EventBusName",
        "TableName",
        "TopicArn",
    }
    build = props("ImageBuildProject")
    assert build["Environment"]["PrivilegedMode"] is True
    # IMAGE_TAG comes from `make image`, a new tag for each build.
    assert {v["Name"] for v in build["Environment"]["EnvironmentVariables"]} == {"IMAGE_REPO_URI"}
    assert build["Source"]["Location"] == {"Fn::Sub": f"${{Bucket}}/{SOURCE_KEY}"}


def test_jobs_run_one_image_by_digest_from_an_immutable_repository() -> None:
    assert props("TrainingImageRepository")["ImageTagMutability"] == "IMMUTABLE"
    parameter = TEMPLATE["Parameters"]["TrainingImageUri"]
    assert parameter["AllowedPattern"] == f"^$|^{DIGEST_URI.pattern}$"
    assert re.fullmatch(parameter["AllowedPattern"], f"r.dkr.ecr.us-east-1.amazonaws.com/x@sha256:{'a' * 64}")
    assert not re.fullmatch(parameter["AllowedPattern"], "r.dkr.ecr.us-east-1.amazonaws.com/x:latest")
    validate_env = props("ValidateFunction")["Environment"]["Variables"]
    assert validate_env["TRAINING_IMAGE_PARAMETER"] == {"Ref": "TrainingImageParameter"}
    assert "TrainingImageUri" not in props("StateMachine")["DefinitionSubstitutions"]
    asl = json.loads((Path(__file__).resolve().parents[2] / "statemachine" / "pipeline.asl.json").read_text())
    train = asl["States"]["TrainAndAnnounce"]["Branches"][0]["States"]["Train"]
    algorithm = train["Parameters"]["AlgorithmSpecification"]
    assert algorithm["TrainingImage.$"] == "$.validation.job.training_image"


def test_every_checkov_skip_names_a_check_and_gives_a_reason() -> None:
    skips = [
        (name, skip)
        for name, resource in RESOURCES.items()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    ]
    assert skips
    for name, skip in skips:
        assert skip["id"].startswith("CKV_"), (name, skip)
        assert len(skip.get("comment", "").split()) >= 8, f"{name}: skip {skip['id']} needs a written reason"


def _alarmed_queues() -> set[str]:
    watched = set()
    for resource in RESOURCES.values():
        if (
            resource["Type"] == "AWS::CloudWatch::Alarm"
            and resource["Properties"].get("Namespace") == "AWS/SQS"
        ):
            (dimension,) = resource["Properties"]["Dimensions"]
            assert resource["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}]
            watched.add(dimension["Value"]["Fn::GetAtt"][0])
    return watched


def test_every_dead_letter_and_failure_queue_has_an_alarm() -> None:
    queues = {name for name, r in RESOURCES.items() if r["Type"] == "AWS::SQS::Queue"}
    for name, resource in RESOURCES.items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        on_failure = resource["Properties"].get("EventInvokeConfig", {}).get("DestinationConfig", {})
        if on_failure:
            assert on_failure["OnFailure"] == {"Type": "SQS"}
            queues.add(f"{name}EventInvokeConfigOnFailureQueue")  # the queue SAM makes for it
        for event in resource["Properties"].get("Events", {}).values():
            if event["Type"] == "EventBridgeRule":
                assert event["Properties"]["DeadLetterConfig"] == {
                    "Arn": {"Fn::GetAtt": ["RuleDeadLetterQueue", "Arn"]}
                }, name
                # Asynchronous targets keep their failed calls too.
                assert on_failure, f"{name} is invoked asynchronously but keeps no failed call"
    assert queues == _alarmed_queues()


def test_failed_and_timed_out_executions_raise_an_alarm() -> None:
    alarm = props("FailedExecutionsAlarm")
    metrics = {m["Id"]: m for m in alarm["Metrics"]}
    assert metrics["ended_badly"]["Expression"] == "failed + timed_out"
    for metric_id, name in (("failed", "ExecutionsFailed"), ("timed_out", "ExecutionsTimedOut")):
        metric = metrics[metric_id]["MetricStat"]["Metric"]
        assert metric["MetricName"] == name and metric["Dimensions"][0]["Value"] == {"Ref": "StateMachine"}
    assert alarm["Threshold"] == 0 and alarm["ComparisonOperator"] == "GreaterThanThreshold"


def test_notify_is_idempotent_and_ingest_can_be_capped() -> None:
    notify = props("NotifyFunction")
    assert notify["Environment"]["Variables"]["IDEMPOTENCY_TABLE"] == {"Ref": "IdempotencyTable"}
    assert props("IdempotencyTable")["TimeToLiveSpecification"] == {
        "AttributeName": "expiration",
        "Enabled": True,
    }
    assert props("IngestFunction")["ReservedConcurrentExecutions"] == {
        "Fn::If": ["HasIngestCap", {"Ref": "IngestReservedConcurrency"}, {"Ref": "AWS::NoValue"}]
    }


def test_validate_can_read_base_model_headers_where_training_reads_base_models() -> None:
    def readable(name: str) -> list[str]:
        return [
            json.dumps(statement["Resource"])
            for statement in _statements(props(name)["Policies"])
            if "s3:GetObject"
            in (statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
        ]

    training = readable("SageMakerExecutionRole")
    validate = readable("ValidateFunction")
    for place in ("base-models/*", "BaseModelS3Uri"):
        assert any(place in resource for resource in training)
        assert any(place in resource for resource in validate)
