"""Static checks of the state machine definition against the template and the domain package.

The ASL stays hand-written (readable, and what the console shows); each fact it shares with Python has its home
in Python, and a test here pins the ASL's copy to it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from embedded_aws.sam import load_template
from lora_pipeline import events, run_names
from lora_pipeline.aws import run_table
from lora_pipeline.dataset_lock import RunStatus
from lora_pipeline.training_metrics import METRIC_DEFINITIONS
from lora_trainer.sagemaker_env import OptMl

REPO = Path(__file__).resolve().parents[2]
ASL_TEXT = (REPO / "statemachine" / "pipeline.asl.json").read_text()


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # "x" and "x.$" name the same field of a Step Functions payload template (a value and a path).
    fields = [key.removesuffix(".$") for key, _ in pairs]
    duplicates = sorted({field for field in fields if fields.count(field) > 1})
    if duplicates:
        raise ValueError(f"duplicate keys {duplicates} in the object with keys {[key for key, _ in pairs]}")
    return dict(pairs)


def _strict(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_no_duplicate_keys)


ASL: dict[str, Any] = _strict(ASL_TEXT)


def _machines(machine: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The machine and every Parallel branch in it, nested ones too (each has its own StartAt and States)."""
    yield machine
    for state in machine["States"].values():
        for branch in state.get("Branches", []):
            yield from _machines(branch)


# Every state by name, those in Parallel branches too (Step Functions requires names unique in the machine).
STATES: dict[str, dict[str, Any]] = {
    name: state for machine in _machines(ASL) for name, state in machine["States"].items()
}
TEMPLATE = load_template(REPO / "template.yaml")


def _walk(node: Any) -> Any:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _render_format(expression: str, substitutions: dict[str, str], values: dict[str, str]) -> str:
    """What Step Functions makes of `States.Format('<template>', <path>, ...)` once CloudFormation has put the
    DefinitionSubstitutions in: each `{}` takes the value at the next path."""
    template, paths = re.fullmatch(r"States\.Format\('(.*)', (.+)\)", expression).groups()
    for name, value in substitutions.items():
        template = template.replace(f"${{{name}}}", value)
    pieces = template.split("{}")
    arguments = [values[path] for path in paths.split(", ")]
    assert len(pieces) == len(arguments) + 1, expression
    return pieces[0] + "".join(value + piece for value, piece in zip(arguments, pieces[1:], strict=True))


def _transitions(state: dict[str, Any]) -> list[str]:
    """Where a state can go next: Next, Choice rules and Default, Catch targets."""
    targets = [state["Next"]] if "Next" in state else []
    targets += [choice["Next"] for choice in state.get("Choices", [])]
    targets += [state["Default"]] if "Default" in state else []
    targets += [catcher["Next"] for catcher in state.get("Catch", [])]
    return targets


def test_the_definition_has_no_duplicate_keys() -> None:
    _strict(ASL_TEXT)
    with pytest.raises(ValueError, match=r"duplicate keys \['logs_url'\]"):
        _strict('{"Parameters": {"logs_url": null, "logs_url.$": "$.links.logs_url"}}')
    with pytest.raises(ValueError, match=r"duplicate keys \['stage'\]"):
        _strict('{"stage": "training", "stage": "unpack"}')
    assert len(STATES) == sum(len(m["States"]) for m in _machines(ASL))


def test_every_state_is_reachable_from_start_at_and_every_target_is_defined() -> None:
    for machine in _machines(ASL):
        states = machine["States"]
        seen, todo = set(), [machine["StartAt"]]
        while todo:
            name = todo.pop()
            assert name in states, f"{name} is a transition target but not a state of its machine"
            if name not in seen:
                seen.add(name)
                todo += _transitions(states[name])
        assert seen == set(states), f"unreachable: {sorted(set(states) - seen)}"
        ends = {name for name, state in states.items() if not _transitions(state)}
        assert all(states[name]["Type"] in ("Succeed", "Fail") or states[name].get("End") for name in ends), (
            ends
        )


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
    assert set(STATES) - targets == {machine["StartAt"] for machine in _machines(ASL)}


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
    # SageMaker syncs the checkpoints folder the container writes (OptMl, without OPT_ML: SageMaker's /opt/ml).
    assert params["CheckpointConfig"]["LocalPath"] == str(OptMl.from_environ({}).checkpoints_dir)
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


def test_the_run_tables_updates_are_the_python_owners() -> None:
    release, free, record = STATES["ReleaseSlot"], STATES["FreeDataset"], STATES["RecordOutcome"]
    assert release["Parameters"]["Key"] == run_table.SLOTS_KEY
    assert release["Parameters"]["UpdateExpression"] == run_table.RELEASE_SLOT_UPDATE
    assert release["Parameters"]["ConditionExpression"] == run_table.RELEASE_SLOT_CONDITION
    assert free["Parameters"]["UpdateExpression"] == run_table.free_dataset_update(follow_up=True)
    assert free["Parameters"]["ConditionExpression"] == run_table.FREE_DATASET_CONDITION
    assert record["Parameters"]["UpdateExpression"] == run_table.RECORD_OUTCOME_UPDATE
    run = {"$.dataset": "bluebot", "$.run_id": "r1"}
    owners = [run_table.SLOTS_KEY, run_table.dataset_key("bluebot"), run_table.run_key("bluebot", "r1")]
    keys = [state["Parameters"]["Key"] for state in STATES.values() if "Key" in state.get("Parameters", {})]
    for key in keys:
        rendered = {}
        for attribute, value in key.items():
            if "S" in value:
                rendered[attribute] = value
            else:
                template, path = re.fullmatch(r"States\.Format\('(.*)', (\$\.\w+)\)", value["S.$"]).groups()
                rendered[attribute] = {"S": template.replace("{}", run[path])}
        assert rendered in owners, key
    assert len(keys) == 9  # every DynamoDB state


def test_the_run_statuses_the_state_machine_records_are_run_statuses() -> None:
    recorded = {
        state["Result"]["status"]
        for state in STATES.values()
        if state["Type"] == "Pass" and state.get("ResultPath") == "$.outcome"
    }
    assert recorded == {
        RunStatus.SUCCEEDED,
        RunStatus.REJECTED,
        RunStatus.FAILED,
    }
    (failed,) = STATES["HowDidItEnd"]["Choices"]
    assert failed["StringEquals"] == RunStatus.FAILED
    assert STATES["RecordOutcome"]["Parameters"]["ExpressionAttributeValues"][":status"] == {
        "S.$": "$.outcome.status"
    }


def test_one_retry_policy_per_kind_of_error() -> None:
    # Step Functions has no shared retriers: each state repeats its policy. Retriers for the same errors must be
    # the same policy, so a change made to one copy and not the others fails here.
    policies: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for name, state in STATES.items():
        for retrier in state.get("Retry", []):
            policies.setdefault(tuple(retrier["ErrorEquals"]), []).append({"state": name, **retrier})
    for errors, copies in policies.items():
        distinct = {json.dumps({k: v for k, v in c.items() if k != "state"}, sort_keys=True) for c in copies}
        assert len(distinct) == 1, (errors, [c["state"] for c in copies])
    dynamodb = policies[tuple(e for e in STATES["FreeDataset"]["Retry"][0]["ErrorEquals"])]
    assert len(dynamodb) == sum(
        1 for s in STATES.values() if s.get("Resource", "").startswith("arn:aws:states:::aws-sdk:dynamodb:")
    )


def test_every_detail_type_and_schema_version_are_the_models() -> None:
    for state in STATES.values():
        for entry in state.get("Parameters", {}).get("Entries", []):
            model = events.BY_DETAIL_TYPE[entry["DetailType"]]
            assert entry["Detail"]["schema_version"] == model.SCHEMA_VERSION
            assert entry["Detail"]["time.$"] == "$$.State.EnteredTime"
            assert entry["EventBusName"] == "${EventBusName}"


def _worst_case_wait(retrier: dict[str, Any]) -> float:
    """The longest a retrier waits in all (Step Functions' defaults; full jitter only shortens the waits)."""
    interval, rate = retrier.get("IntervalSeconds", 1), retrier.get("BackoffRate", 2.0)
    cap = retrier.get("MaxDelaySeconds", float("inf"))
    return float(sum(min(interval * rate**k, cap) for k in range(retrier.get("MaxAttempts", 3))))


def test_training_started_waits_for_the_job_to_exist_and_is_cancelled_when_it_never_will() -> None:
    parallel = STATES["TrainAndAnnounce"]
    train_branch, announce_branch = parallel["Branches"]
    assert train_branch["StartAt"] == "Train" and "EmitStarted" in announce_branch["States"]
    # Train is the run's result; the announcing branch's output is dropped.
    assert parallel["OutputPath"] == "$[0]"
    # Started only after DescribeTrainingJob found the job, and only on the first attempt.
    assert STATES["FindTrainingJob"]["Next"] == "EmitStarted"
    assert STATES["FindTrainingJob"]["Resource"].endswith("sagemaker:describeTrainingJob")
    assert [c["Next"] for c in STATES["IsFirstAttempt"]["Choices"]] == ["FindTrainingJob"]
    # Train failing before the job exists fails its branch, which ends the Parallel and the announcement.
    assert STATES["DescribeFailedJob"]["Catch"][0]["Next"] == "DidTheJobExist"
    assert STATES["DidTheJobExist"]["Default"] == "TrainingJobNeverCreated"
    assert STATES["TrainingJobNeverCreated"]["Type"] == "Fail"
    assert [c["Next"] for c in parallel["Catch"]] == ["NoTrainingJob"]
    # The finder keeps looking for longer than Train keeps retrying CreateTrainingJob, in a few history events:
    # each attempt is TaskScheduled, TaskStarted and TaskFailed.
    (create_retry,) = STATES["Train"]["Retry"]
    (find_retry,) = STATES["FindTrainingJob"]["Retry"]
    assert "JitterStrategy" not in find_retry
    assert _worst_case_wait(find_retry) > 2 * _worst_case_wait(create_retry)
    assert 3 * (find_retry["MaxAttempts"] + 1) < 100


def test_the_training_jobs_console_link_is_run_names() -> None:
    expression = STATES["LinkTrainingJob"]["Parameters"]["console_url.$"]
    rendered = _render_format(expression, {"Region": "eu-west-1"}, {"$.training.job_name": "bluebot-r1-0"})
    assert rendered == run_names.console_url("eu-west-1", "bluebot-r1-0")


def test_the_execution_link_is_run_names() -> None:
    arn = "arn:aws:states:eu-west-1:123456789012:execution:Pipeline:bluebot-r1"
    expression = STATES["Init"]["Parameters"]["links"]["execution_url.$"]
    rendered = _render_format(expression, {"Region": "eu-west-1"}, {"$$.Execution.Id": arn})
    assert rendered == run_names.execution_console_url(arn)


def test_the_training_logs_link_opens_the_jobs_streams_in_run_names_log_group() -> None:
    expression = STATES["LinkTrainingJob"]["Parameters"]["logs_url.$"]
    rendered = _render_format(expression, {"Region": "eu-west-1"}, {"$.training.job_name": "bluebot-r1-0"})
    assert rendered.startswith("https://eu-west-1.console.aws.amazon.com/cloudwatch/home?region=eu-west-1#")
    assert f"#logStream:group={run_names.TRAINING_LOG_GROUP};prefix=bluebot-r1-0;" in rendered


def test_the_dataset_phases_the_state_machine_writes_are_run_tables() -> None:
    for name in ("Settled", "ConfirmSettled"):
        assert STATES[name]["Parameters"]["ExpressionAttributeValues"][":running"] == {
            "S": run_table.PHASE_RUNNING
        }
    values = STATES["Resettle"]["Parameters"]["ExpressionAttributeValues"]
    assert values[":settling"] == {"S": run_table.PHASE_SETTLING}
