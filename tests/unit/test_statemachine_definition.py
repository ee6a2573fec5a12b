"""Static checks of the state machine definition against the template and the domain package."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from embedded_aws.sam import load_template
from lora_pipeline import events
from lora_pipeline.training_metrics import METRIC_DEFINITIONS

REPO = Path(__file__).resolve().parents[2]
ASL_TEXT = (REPO / "statemachine" / "pipeline.asl.json").read_text()
ASL: dict[str, Any] = json.loads(ASL_TEXT)
STATES: dict[str, dict[str, Any]] = ASL["States"]
TEMPLATE = load_template(REPO / "template.yaml")


def _walk(node: Any) -> Any:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_metric_definitions_are_the_containers() -> None:
    spec = STATES["Train"]["Parameters"]["AlgorithmSpecification"]
    assert spec["MetricDefinitions"] == METRIC_DEFINITIONS


def test_every_placeholder_is_substituted_and_every_substitution_used() -> None:
    placeholders = set(re.findall(r"\$\{(\w+)\}", ASL_TEXT))
    substitutions = set(TEMPLATE["Resources"]["StateMachine"]["Properties"]["DefinitionSubstitutions"])
    assert placeholders == substitutions
    assert not re.search(r"arn:aws:(lambda|dynamodb|iam|sagemaker):[a-z0-9-]+:\d{12}", ASL_TEXT)


def test_every_transition_leads_to_a_state_and_every_state_is_reachable() -> None:
    targets = {node["Next"] for node in _walk(STATES) if isinstance(node.get("Next"), str)}
    targets |= {node["Default"] for node in _walk(STATES) if isinstance(node.get("Default"), str)}
    assert targets <= set(STATES)
    assert set(STATES) - targets == {ASL["StartAt"]}


def test_every_emitted_detail_has_exactly_its_models_fields() -> None:
    emitted = {}
    for state in STATES.values():
        for entry in state.get("Parameters", {}).get("Entries", []):
            assert entry["Source"] == events.EVENT_SOURCE
            fields = {key.removesuffix(".$") for key in entry["Detail"]}
            emitted[entry["DetailType"]] = fields
    # Training Cancelled comes from the cancel function, built from its pydantic model.
    assert set(emitted) == set(events.BY_DETAIL_TYPE) - {"Training Cancelled"}
    for detail_type, fields in emitted.items():
        assert fields == set(events.BY_DETAIL_TYPE[detail_type].model_fields), detail_type


def test_training_job_request_has_spot_checkpoints_tags_and_retries() -> None:
    train = STATES["Train"]
    assert train["Resource"] == "arn:aws:states:::sagemaker:createTrainingJob.sync"
    params = train["Parameters"]
    assert params["CheckpointConfig"]["LocalPath"] == "/opt/ml/checkpoints"
    assert {tag["Key"] for tag in params["Tags"]} == {"dataset", "run"}
    assert "EnableManagedSpotTraining.$" in params and "StoppingCondition.$" in params
    (retry,) = train["Retry"]
    assert "SageMaker.AmazonSageMakerException" in retry["ErrorEquals"] and retry["BackoffRate"] > 1
    assert train["Catch"][0]["ErrorEquals"] == ["States.ALL"]


def test_every_task_outside_the_clean_up_chain_is_caught() -> None:
    # Emit states retry; if they or the last bookkeeping step still fail, the execution fails and the
    # cancel function (its rule includes FAILED) frees the slot and the dataset.
    uncaught = {
        name
        for name, state in STATES.items()
        if state["Type"] == "Task" and "Catch" not in state and not name.startswith("Emit")
    }
    assert uncaught == {"RecordOutcome"}


def test_the_end_of_run_function_knows_the_states_that_emit_last_events_and_begin_stages() -> None:
    from lora_pipeline.use_cases.cancel import STAGE_STARTS, TERMINAL_EVENT_STATES

    last = {"Dataset Rejected", "Training Succeeded", "Training Failed"}
    emitting = {
        name
        for name, state in STATES.items()
        for entry in state.get("Parameters", {}).get("Entries", [])
        if entry["DetailType"] in last
    }
    assert emitting == TERMINAL_EVENT_STATES
    assert set(STAGE_STARTS) <= set(STATES)
    failed_at = {STATES[name]["Parameters"]["stage"] for name in STATES if name.startswith("FailedAt")}
    assert {stage.value for stage in STAGE_STARTS.values()} | {"settle"} == failed_at


def test_files_that_came_after_the_settle_send_the_run_back_to_settling() -> None:
    assert STATES["Validate"]["Next"] == "ConfirmSettled"
    confirm = STATES["ConfirmSettled"]
    assert "attribute_not_exists(changed_during_run)" in confirm["Parameters"]["ConditionExpression"]
    (resettle,) = [
        c["Next"] for c in confirm["Catch"] if "DynamoDb.ConditionalCheckFailedException" in c["ErrorEquals"]
    ]
    assert STATES[resettle]["Next"] == "WaitForUploadToSettle"
    assert "REMOVE changed_during_run" in STATES[resettle]["Parameters"]["UpdateExpression"]
