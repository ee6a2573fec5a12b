"""Every change the embedded AWS makes to moto, one function each, pinned to moto 5.2.5.

Each adaptation checks that what it replaces still exists with the parameters it was adapted to, so a moto
upgrade fails here, loudly, by name.
They are installed once per process (`install()`) and act only while an EmbeddedStack is up
(`runtime.current_or_none()`); otherwise moto behaves as shipped.
"""

from __future__ import annotations

import copy
import datetime
import importlib.metadata
import inspect
import json
import re
import threading
from collections.abc import Callable
from typing import Any, Final

from . import runtime
from .eventbridge import DELIVERED_SERVICES, as_delivered_event, target_input, target_service

MOTO_VERSION: Final = "5.2.5"
TRAINING_JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")

_installed: list[str] = []
_install_lock = threading.Lock()


class AdaptationOutdated(RuntimeError):
    """moto changed under an adaptation: re-read moto's source at the named place and adapt again."""


def _require(owner: Any, attribute: str, parameters: str, adaptation: str) -> Any:
    """moto's `owner.attribute` (a function, or a property's getter), once it is known to still take
    `parameters`: its signature without annotations, as `inspect.signature` prints it ("(self, event=None)").
    An adaptation calls and replaces it with those parameters, so any other list means moto changed it."""
    if not hasattr(owner, attribute):
        raise AdaptationOutdated(f"{adaptation}: moto no longer has {owner.__name__}.{attribute}")
    found = _parameters(owner, attribute)
    if found != parameters:
        raise AdaptationOutdated(
            f"{adaptation}: moto's {owner.__name__}.{attribute} now takes {found}, the adaptation expects "
            f"{parameters}"
        )
    return getattr(owner, attribute)


def _parameters(owner: Any, attribute: str) -> str:
    declared = inspect.getattr_static(owner, attribute)
    function = declared.fget if isinstance(declared, property) else getattr(owner, attribute)
    signature = inspect.signature(function)
    return str(
        signature.replace(
            parameters=[p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()],
            return_annotation=inspect.Signature.empty,
        )
    )


def _require_absent(owner: Any, attribute: str, adaptation: str) -> None:
    if hasattr(owner, attribute):
        raise AdaptationOutdated(
            f"{adaptation}: moto now has {owner.__name__}.{attribute}; drop the adaptation"
        )


def check_moto_version() -> None:
    found = importlib.metadata.version("moto")
    if found != MOTO_VERSION:
        raise AdaptationOutdated(f"the embedded AWS is adapted to moto=={MOTO_VERSION}, found moto=={found}")


def run_lambda_handlers_in_process() -> None:
    """Lambda: moto runs handlers in Docker; run them in this process instead (no Docker engine here)."""
    from moto.awslambda.models import LambdaFunction

    shipped = _require(
        LambdaFunction, "_invoke_lambda", "(self, event=None)", "run_lambda_handlers_in_process"
    )

    def invoke_in_process(self: Any, event: Any = None) -> tuple[str, bool, str]:
        stack = runtime.current_or_none()
        if stack is None:
            return shipped(self, event)  # type: ignore[no-any-return]
        payload, errored = stack.lambdas.invoke(self, {} if event is None else event)
        return payload, errored, ""

    LambdaFunction._invoke_lambda = invoke_in_process


def deliver_events_to_lambda_sns_and_step_functions() -> None:
    """EventBridge: moto only delivers to SQS, logs, archives and buses; deliver Lambda, SNS and Step Functions
    targets too (asynchronously, with Input / InputPath / InputTransformer), skip disabled rules, and keep S3
    notifications on the default bus (moto's S3 offers them to the rules of every bus)."""
    from moto.events.models import Rule

    shipped = _require(
        Rule,
        "send_to_targets",
        "(self, original_event, transform_input=True)",
        "deliver_events_to_lambda_sns_and_step_functions",
    )

    def send_to_targets(self: Any, original_event: dict[str, Any], transform_input: bool = True) -> None:
        stack = runtime.current_or_none()
        if stack is None:
            shipped(self, original_event, transform_input)
            return
        if self.state != "ENABLED" or not self.event_pattern.matches_event(original_event):
            return
        if original_event.get("source") == "aws.s3" and self.event_bus_name != "default":
            return
        delivered_event = as_delivered_event(original_event)
        ours = [target for target in self.targets if target_service(target) in DELIVERED_SERVICES]
        for target in ours:
            stack.deliveries.submit(target, target_input(target, delivered_event, self.arn, self.name))
        if len(ours) < len(self.targets):
            others = copy.copy(self)
            others.targets = [target for target in self.targets if target not in ours]
            shipped(others, original_event, transform_input)

    Rule.send_to_targets = send_to_targets


def record_put_events() -> None:
    """EventBridge: record every PutEvents entry (for contract tests and the demo's timeline)."""
    from moto.events.models import EventsBackend

    shipped = _require(EventsBackend, "put_events", "(self, events)", "record_put_events")
    _require(EventsBackend, "_normalize_event_bus_arn", "(self, event_bus_arn)", "record_put_events")

    def put_events(self: Any, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        entries = shipped(self, events)
        stack = runtime.current_or_none()
        for event, entry in zip(events, entries, strict=True):
            if stack is not None and "EventId" in entry:
                stack.record_event(self._normalize_event_bus_arn(event.get("EventBusName")), event)
        return entries  # type: ignore[no-any-return]

    EventsBackend.put_events = put_events


def cloudformation_ref_of_event_bus_is_its_name() -> None:
    """CloudFormation: `!Ref` of an AWS::Events::EventBus gives moto's object, not the bus name AWS returns."""
    from moto.events.models import EventBus

    _require_absent(EventBus, "physical_resource_id", "cloudformation_ref_of_event_bus_is_its_name")
    EventBus.physical_resource_id = property(lambda bus: bus.name)  # type: ignore[attr-defined]


def cloudformation_bucket_notifications_and_versioning() -> None:
    """CloudFormation: moto's AWS::S3::Bucket ignores NotificationConfiguration and VersioningConfiguration;
    apply both (EventBridge notifications start the whole pipeline)."""
    from moto.s3.models import FakeBucket, s3_backends

    shipped = _require(
        FakeBucket,
        "create_from_cloudformation_json",
        "(resource_name, cloudformation_json, account_id, region_name, **kwargs)",
        "cloudformation_bucket_notifications",
    )

    def create_bucket(
        cls: Any,
        resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> Any:
        bucket = shipped.__func__(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        properties = cloudformation_json.get("Properties", {})
        backend = s3_backends[account_id]["aws"]
        versioning = properties.get("VersioningConfiguration", {}).get("Status")
        if versioning:
            backend.put_bucket_versioning(bucket.name, versioning)
        event_bridge = properties.get("NotificationConfiguration", {}).get("EventBridgeConfiguration", {})
        if str(event_bridge.get("EventBridgeEnabled", "false")).lower() == "true":
            backend.put_bucket_notification_configuration(bucket.name, {"EventBridgeConfiguration": {}})
        return bucket

    FakeBucket.create_from_cloudformation_json = classmethod(create_bucket)  # type: ignore[assignment]


def cloudformation_state_machines_are_executable() -> None:
    """CloudFormation: moto creates AWS::StepFunctions::StateMachine in the non-executing backend and ignores
    DefinitionSubstitutions; create it where StartExecution looks, with the substitutions applied."""
    from moto.stepfunctions.models import StateMachine
    from moto.stepfunctions.responses import get_backend

    _require(
        StateMachine,
        "create_from_cloudformation_json",
        "(resource_name, cloudformation_json, account_id, region_name, **kwargs)",
        "cloudformation_state_machines_are_executable",
    )

    def create_state_machine(
        cls: Any,
        resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> Any:
        properties = cloudformation_json["Properties"]
        definition = properties.get("DefinitionString") or json.dumps(properties.get("Definition", {}))
        for name, value in properties.get("DefinitionSubstitutions", {}).items():
            definition = definition.replace("${" + name + "}", str(value))
        tags = [{"key": tag["Key"], "value": tag["Value"]} for tag in properties.get("Tags", [])]
        return get_backend(account_id, region_name).create_state_machine(
            properties.get("StateMachineName", resource_name),
            definition,
            properties.get("RoleArn", ""),
            tags=tags,
            sm_type=properties.get("StateMachineType"),
        )

    StateMachine.create_from_cloudformation_json = classmethod(create_state_machine)  # type: ignore[assignment]


def sagemaker_training_jobs_run() -> None:
    """SageMaker: moto marks a job Completed at once and has no StopTrainingJob; run the job through the
    stack's executor (InProgress until it returns), validate the name like AWS, and add StopTrainingJob."""
    from moto.core.exceptions import JsonRESTError
    from moto.core.responses import EmptyResult
    from moto.sagemaker.models import SageMakerModelBackend
    from moto.sagemaker.responses import SageMakerResponse

    from .training import TrainingJobRejected

    shipped = _require(
        SageMakerModelBackend,
        "create_training_job",
        "(self, training_job_name, hyper_parameters, algorithm_specification, role_arn, input_data_config, "
        "output_data_config, resource_config, vpc_config, stopping_condition, tags, enable_network_isolation, "
        "enable_inter_container_traffic_encryption, enable_managed_spot_training, checkpoint_config, "
        "debug_hook_config, debug_rule_configurations, tensor_board_output_config, experiment_config)",
        "sagemaker_training_jobs_run",
    )

    def validation_error(message: str) -> JsonRESTError:
        return JsonRESTError("ValidationException", message)

    def create_training_job(self: Any, **request: Any) -> Any:
        stack = runtime.current_or_none()
        if stack is None:
            return shipped(self, **request)
        api_request = {_pascal_case(name): value for name, value in request.items() if value is not None}
        name = request["training_job_name"]
        if not TRAINING_JOB_NAME.match(name or ""):
            raise validation_error(
                f"Invalid TrainingJobName {name!r}: must match {TRAINING_JOB_NAME.pattern}"
            )
        if name in self.training_jobs:
            raise validation_error(
                "Job name must be unique within an AWS account and region, and a job with this name already "
                f"exists ({self.training_jobs[name].arn})"
            )
        runner = stack.training
        try:
            runner.executor.admit(copy.deepcopy(api_request))
        except TrainingJobRejected as rejected:
            raise JsonRESTError(rejected.code, rejected.message) from rejected
        job = shipped(self, **copy.deepcopy(request))
        runner.start(job, api_request)
        return job

    def stop_training_job(self: Any, training_job_name: str) -> None:
        job = self.training_jobs.get(training_job_name)
        if job is None:
            raise validation_error(f"Requested resource not found: training job {training_job_name}")
        if job.training_job_status in {"Stopping", "Stopped"}:
            return  # already stopping (e.g. by Step Functions when the execution stopped): nothing to do
        if job.training_job_status != "InProgress":
            raise validation_error(
                f"The request was rejected because the training job is in status {job.training_job_status}."
            )
        runtime.current().training.stop(job)

    def stop_training_job_response(self: Any) -> Any:
        self.sagemaker_backend.stop_training_job(self._get_param("TrainingJobName"))
        return EmptyResult()

    SageMakerModelBackend.create_training_job = create_training_job
    SageMakerModelBackend.stop_training_job = stop_training_job
    SageMakerResponse.stop_training_job = stop_training_job_response


def _pascal_case(snake: str) -> str:
    return "".join(word.capitalize() for word in snake.split("_"))


def step_functions_sagemaker_integration() -> None:
    """Step Functions: moto forwards sagemaker:* tasks without .sync; use our createTrainingJob(.sync) and
    stopTrainingJob integration."""
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import state_task_factory

    from .sagemaker import StateTaskServiceSageMaker

    shipped = _require(
        state_task_factory, "state_task_service_for", "(service_name)", "step_functions_sagemaker_integration"
    )

    def state_task_service_for(service_name: str) -> Any:
        if service_name == "sagemaker":
            return StateTaskServiceSageMaker()
        return shipped(service_name)

    state_task_factory.state_task_service_for = state_task_service_for


def step_functions_sdk_error_names_of_sagemaker() -> None:
    """Step Functions: moto names aws-sdk:sagemaker errors `sagemaker.sagemakerException`; AWS names them with
    the SDK's service name, `SageMaker.SageMakerException`, which is what the ASL's Retry and Catch match."""
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_aws_sdk import (
        StateTaskServiceAwsSdk,
    )

    shipped = _require(
        StateTaskServiceAwsSdk,
        "_normalise_service_error_name",
        "(service_name)",
        "step_functions_sdk_error_names_of_sagemaker",
    )

    def normalise_service_error_name(service_name: str) -> str:
        if runtime.current_or_none() is not None and service_name.lower() == "sagemaker":
            return "SageMaker"
        return shipped(service_name)  # type: ignore[no-any-return]

    StateTaskServiceAwsSdk._normalise_service_error_name = staticmethod(normalise_service_error_name)  # type: ignore[method-assign]


def step_functions_status_change_events() -> None:
    """Step Functions: emit "Step Functions Execution Status Change" on the default bus when an execution
    starts and ends, as AWS does (the pipeline's cancel path listens for ABORTED)."""
    from moto.stepfunctions.parser.backend.execution import BaseExecutionWorkerCommunication, Execution

    shipped_start = _require(Execution, "start", "(self)", "step_functions_status_change_events")
    shipped_terminated = _require(
        BaseExecutionWorkerCommunication, "terminated", "(self)", "step_functions_status_change_events"
    )

    def start(self: Any) -> None:
        # Announced before the worker thread exists so RUNNING always precedes the terminal status.
        if runtime.current_or_none() is not None:
            _put_status_change(self, "RUNNING")
        shipped_start(self)

    def terminated(self: Any) -> None:
        stack = runtime.current_or_none()
        if stack is None:
            shipped_terminated(self)
            return
        with stack.busy():
            shipped_terminated(self)
            _put_status_change(self.execution, self.execution.exec_status.value)

    Execution.start = start
    BaseExecutionWorkerCommunication.terminated = terminated


def _epoch_millis(moment: datetime.datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def _put_status_change(execution: Any, status: str) -> None:
    from moto.events.models import events_backends

    terminal = status != "RUNNING"
    detail = {
        "executionArn": execution.exec_arn,
        "stateMachineArn": execution.state_machine.arn,
        "name": execution.name,
        "status": status,
        "startDate": _epoch_millis(execution.start_date),
        "stopDate": _epoch_millis(execution.stop_date) if terminal else None,
        "input": json.dumps(execution.input_data),
        "output": json.dumps(execution.output) if status == "SUCCEEDED" else None,
        "inputDetails": {"included": True},
        "outputDetails": {"included": True} if status == "SUCCEEDED" else None,
        "error": execution.error if terminal else None,
        "cause": execution.cause if terminal else None,
    }
    events_backends[execution.account_id][execution.region_name].put_events(
        [
            {
                "Source": "aws.states",
                "DetailType": "Step Functions Execution Status Change",
                "Detail": json.dumps(detail),
                "Resources": [execution.exec_arn],
            }
        ]
    )


def step_functions_parse_each_definition_once() -> None:
    """Step Functions: moto re-parses the ASL with ANTLR (pure Python, ~0.3 s for the pipeline) for every
    execution; keep each definition's syntax tree and only rebuild the evaluation program from it."""
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
    from moto.stepfunctions.parser.asl.parse.preprocessor import Preprocessor

    shipped = _require(
        AmazonStateLanguageParser, "parse", "(definition)", "step_functions_parse_each_definition_once"
    )
    trees: dict[str, Any] = {}

    def parse(definition: str) -> tuple[Any, Any]:
        tree = trees.get(definition)
        if tree is None:
            _program, tree = shipped(definition)  # a definition with syntax errors raises, uncached
            trees[definition] = tree
        return Preprocessor().visit(tree), tree

    AmazonStateLanguageParser.parse = staticmethod(parse)  # type: ignore[method-assign]


def step_functions_new_executions_are_running() -> None:
    """Step Functions: moto lists an execution before its start sets `exec_status`, and reading its status
    then raises, failing any concurrent ListExecutions or SendTaskSuccess; on AWS a started execution is
    RUNNING from the moment StartExecution returns."""
    from moto.stepfunctions.parser.backend.execution import Execution

    _require(Execution, "status", "(self)", "step_functions_new_executions_are_running")

    def status(execution: Any) -> str:
        current = execution.exec_status
        return "RUNNING" if current is None else str(current.value)

    Execution.status = property(status)  # type: ignore[method-assign,assignment]


def step_functions_stop_aborts_task_token_waits() -> None:
    """Step Functions: moto's StopExecution leaves a `.waitForTaskToken` task waiting until its heartbeat or
    timeout runs out (and each SendTaskHeartbeat keeps it waiting), and the task's failure on waking turns
    the execution FAILED; AWS aborts the task at once and the execution stays ABORTED."""
    from moto.stepfunctions.parser.asl.eval.environment import Environment
    from moto.stepfunctions.parser.asl.eval.program_state import ProgramStopped

    shipped_stop = _require(
        Environment,
        "set_stop",
        "(self, stop_date, cause, error)",
        "step_functions_stop_aborts_task_token_waits",
    )
    shipped_error = _require(
        Environment, "set_error", "(self, error)", "step_functions_stop_aborts_task_token_waits"
    )

    def set_stop(self: Any, stop_date: Any, cause: str | None, error: str | None) -> None:
        shipped_stop(self, stop_date, cause, error)  # also called for each frame of the execution
        token = self.states.context_object.context_object_data.get("Task", {}).get("Token")
        endpoint = self.callback_pool_manager.get(token) if token else None
        if endpoint is not None:
            endpoint.interrupt_all()

    def set_error(self: Any, error: Any) -> None:
        if not isinstance(self.program_state(), ProgramStopped):
            shipped_error(self, error)

    Environment.set_stop = set_stop
    Environment.set_error = set_error


def step_functions_history_in_reverse_order() -> None:
    """Step Functions: moto's GetExecutionHistory ignores `reverseOrder`, so a caller asking for the newest
    events first (the CLI's current stage) reads the oldest. `maxResults` stays ignored: every event comes
    in one page, which paginating callers read just the same."""
    from moto.core.responses import ActionResult
    from moto.stepfunctions.responses import StepFunctionResponse

    shipped = _require(
        StepFunctionResponse, "get_execution_history", "(self)", "step_functions_history_in_reverse_order"
    )

    def get_execution_history(self: Any) -> Any:
        if runtime.current_or_none() is None or not self._get_param("reverseOrder"):
            return shipped(self)
        history = self.stepfunction_backend.get_execution_history(self._get_param("executionArn"))
        return ActionResult({**history, "events": list(reversed(history["events"]))})

    StepFunctionResponse.get_execution_history = get_execution_history


def logs_filter_by_stream_name_prefix() -> None:
    """CloudWatch Logs: moto's FilterLogEvents ignores `logStreamNamePrefix` and searches every stream of the
    group, so one training job's log showed every job's lines; search only the streams with that prefix."""
    from moto.logs.exceptions import InvalidParameterException
    from moto.logs.responses import LogsResponse

    shipped = _require(LogsResponse, "filter_log_events", "(self)", "logs_filter_by_stream_name_prefix")

    def filter_log_events(self: Any) -> Any:
        prefix = self._get_param("logStreamNamePrefix")
        if runtime.current_or_none() is None or prefix is None:
            return shipped(self)
        if self._get_param("logStreamNames"):
            raise InvalidParameterException(
                msg="logStreamNames and logStreamNamePrefix are mutually exclusive."
            )
        group = self.logs_backend.groups.get(self._get_param("logGroupName"))
        names = sorted(name for name in (group.streams if group else {}) if name.startswith(prefix))
        if group is not None and not names:
            return json.dumps({"events": [], "searchedLogStreams": []})
        events, next_token, searched = self.logs_backend.filter_log_events(
            self._get_param("logGroupName"),
            names,
            self._get_param("startTime"),
            self._get_param("endTime"),
            self._get_param("limit"),
            self._get_param("nextToken"),
            self._get_param("filterPattern"),
            self._get_param("interleaved", False),
        )
        return json.dumps({"events": events, "nextToken": next_token, "searchedLogStreams": searched})

    LogsResponse.filter_log_events = filter_log_events


def record_sns_publishes() -> None:
    """SNS: tell the stack's listeners about every message published to a topic (`lora-pipeline local` prints
    each email as it is sent)."""
    from moto.sns.models import Topic

    shipped = _require(
        Topic,
        "publish",
        "(self, message, subject=None, message_attributes=None, group_id=None, deduplication_id=None, message_structure=None)",
        "record_sns_publishes",
    )

    def publish(self: Any, message: str, subject: str | None = None, *args: Any, **kwargs: Any) -> str:
        message_id: str = shipped(self, message, subject, *args, **kwargs)
        stack = runtime.current_or_none()
        if stack is not None:
            stack.record_sns_message(self.arn, subject, message)
        return message_id

    Topic.publish = publish


def dynamodb_atomic_requests() -> None:
    """DynamoDB: moto checks a ConditionExpression and then writes, unlocked, so two threads can both pass
    the check; and its UpdateItem response deep-copies the stored item outside any lock, so a concurrent write
    to the same item fails it with "dictionary changed size during iteration". Serve one DynamoDB request at a
    time, which gives every request the item-level atomicity DynamoDB guarantees (concurrent ingest calls and
    slot acquisitions race in the pipeline)."""
    from moto.dynamodb.responses import DynamoHandler

    shipped = _require(DynamoHandler, "call_action", "(self)", "dynamodb_atomic_requests")
    DynamoHandler.call_action = _serialised(shipped, threading.RLock())


def _serialised(method: Callable[..., Any], lock: threading.RLock) -> Callable[..., Any]:
    def serialised(self: Any, *args: Any, **kwargs: Any) -> Any:
        with lock:
            return method(self, *args, **kwargs)

    return serialised


ADAPTATIONS: Final[tuple[Callable[[], None], ...]] = (
    run_lambda_handlers_in_process,
    deliver_events_to_lambda_sns_and_step_functions,
    record_put_events,
    cloudformation_ref_of_event_bus_is_its_name,
    cloudformation_bucket_notifications_and_versioning,
    cloudformation_state_machines_are_executable,
    sagemaker_training_jobs_run,
    step_functions_sagemaker_integration,
    step_functions_sdk_error_names_of_sagemaker,
    step_functions_status_change_events,
    step_functions_parse_each_definition_once,
    step_functions_new_executions_are_running,
    step_functions_stop_aborts_task_token_waits,
    step_functions_history_in_reverse_order,
    logs_filter_by_stream_name_prefix,
    record_sns_publishes,
    dynamodb_atomic_requests,
)


def install() -> list[str]:
    """Apply every adaptation once per process; return their names."""
    with _install_lock:
        if not _installed:
            check_moto_version()
            for adaptation in ADAPTATIONS:
                adaptation()
                _installed.append(adaptation.__name__)
        return list(_installed)
