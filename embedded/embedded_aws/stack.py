"""EmbeddedStack: a SAM template deployed on in-process moto, with its handlers, events and jobs running."""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moto import mock_aws
from moto.cloudformation.parsing import get_model_map
from moto.core import DEFAULT_ACCOUNT_ID

from . import adaptations, runtime, sam
from .clients import client
from .eventbridge import Deliveries, FailedDelivery
from .guard import refuse_real_aws
from .lambda_runtime import Invocation, LambdaHost
from .runtime import RecordedEvent, Runtime, SnsMessage
from .sagemaker import TrainingJobRunner, TrainingUpdate
from .training import NoExecutor, TrainingExecutor

_IDLE_POLL_SECONDS = 0.02
_TIMELINE_POLL_SECONDS = 0.2
_SHUTDOWN_SECONDS = 10.0


class StackDeployFailed(RuntimeError):
    """CloudFormation (moto) did not reach CREATE_COMPLETE."""


class DeliveryFailed(AssertionError):
    """An asynchronous EventBridge delivery failed (e.g. a handler raised); its traceback is in the log."""


@dataclass(frozen=True)
class ExecutionRecord:
    arn: str
    name: str
    state_machine_arn: str
    status: str
    input: Any
    output: Any
    error: str | None
    cause: str | None
    history: list[dict[str, Any]]

    def states_entered(self) -> list[str]:
        return [
            event["stateEnteredEventDetails"]["name"]
            for event in self.history
            if event.get("type", "").endswith("StateEntered")
        ]


@dataclass(frozen=True)
class TimelineEntry:
    """One thing the demo's live timeline shows: a state entered, an event put on a bus, a training update."""

    kind: str  # "state" | "event" | "training-status" | "training-log"
    text: str
    payload: Any


class EmbeddedStack:
    """A deployed stack on the embedded AWS. Create it with `EmbeddedStack.up(...)`:

        with EmbeddedStack.up(template="template.yaml", parameters={"QuietPeriodSeconds": "1"},
                              executor=ArchiveExecutor(archive_bytes)) as stack:
            stack.upload_folder(Path("examples/datasets/bluebot"), "datasets/bluebot/")
            stack.wait_until_idle(timeout=60)
            stack.sns_messages(), stack.events(bus=...), stack.executions(), stack.outputs["..."]

    Every boto3 client made in this process while the stack is up talks to it (moto's in-process mock).
    """

    def __init__(self, stack_name: str, region: str, state: Runtime, outputs: dict[str, str]) -> None:
        self.stack_name = stack_name
        self.region = region
        self.runtime = state
        self.outputs = outputs
        self.account_id = DEFAULT_ACCOUNT_ID
        self.s3 = self.client("s3")
        # Template resource types moto's CloudFormation skips (created nowhere, e.g. a CodeBuild project).
        self.unemulated_resource_types: list[str] = []

    @classmethod
    @contextmanager
    def up(
        cls,
        template: str | Path = "template.yaml",
        parameters: dict[str, str] | None = None,
        executor: TrainingExecutor | None = None,
        stack_name: str = "sdxl-lora-pipeline",
        region: str = "us-east-1",
        on_timeline: Callable[[TimelineEntry], None] | None = None,
    ) -> Iterator[EmbeddedStack]:
        """Deploy `template` (SAM, translated offline) on a fresh in-process moto; tear it all down on exit.

        `executor` completes SageMaker training jobs (see embedded_aws.training); without one, every job fails
        with a FailureReason saying so.
        """
        refuse_real_aws()
        adaptations.install()
        template_path = Path(template).resolve()
        parameters = dict(parameters or {})
        packaged = sam.package(sam.load_template(template_path), template_path.parent)
        state = Runtime(
            lambdas=LambdaHost(packaged.code_dirs, packaged.layer_dirs),
            deliveries=Deliveries(region),
            training=TrainingJobRunner(executor or NoExecutor(), region),
        )
        mock = mock_aws(config={"stepfunctions": {"execute_state_machine": True}})
        mock.start()
        runtime.activate(state)
        try:
            stack = cls._deploy(packaged, parameters, stack_name, region, state)
            if on_timeline is not None:
                stack.on_timeline(on_timeline)
            yield stack
        finally:
            try:
                _stop_everything(state, region)
            finally:
                runtime.activate(None)
                mock.stop()

    @classmethod
    def _deploy(
        cls,
        packaged: sam.PackagedTemplate,
        parameters: dict[str, str],
        stack_name: str,
        region: str,
        state: Runtime,
    ) -> EmbeddedStack:
        sam.upload_artifacts(packaged, client("s3", region))
        translated = sam.translate(packaged.template, parameters, region)
        cloudformation = client("cloudformation", region)
        with _unemulated_resources_quiet():
            cloudformation.create_stack(
                StackName=stack_name,
                TemplateBody=json.dumps(translated),
                Parameters=[
                    {"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()
                ],
                Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
            )
            described = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
        if described["StackStatus"] != "CREATE_COMPLETE":
            raise StackDeployFailed(
                f"{stack_name}: {described['StackStatus']} {described.get('StackStatusReason')}"
            )
        outputs = {output["OutputKey"]: output["OutputValue"] for output in described.get("Outputs", [])}
        stack = cls(stack_name, region, state, outputs)
        resource_types = {resource["Type"] for resource in translated.get("Resources", {}).values()}
        stack.unemulated_resource_types = sorted(resource_types - set(get_model_map()))
        return stack

    # --- clients and resources -------------------------------------------------------------------------
    def client(self, service: str) -> Any:
        """A boto3 client for `service` on this stack (fake credentials, the stack's region)."""
        return client(service, self.region)

    def physical_id(self, logical_id: str) -> str:
        """The name/ARN CloudFormation gave a template resource (e.g. "IngestFunction")."""
        with _unemulated_resources_quiet():
            resource = self.client("cloudformation").describe_stack_resource(
                StackName=self.stack_name, LogicalResourceId=logical_id
            )
        return str(resource["StackResourceDetail"]["PhysicalResourceId"])

    def resources(self, resource_type: str | None = None) -> dict[str, str]:
        """Logical id -> physical id of the stack's resources, optionally of one CloudFormation type."""
        with _unemulated_resources_quiet():
            listed = self.client("cloudformation").list_stack_resources(StackName=self.stack_name)
        return {
            item["LogicalResourceId"]: item["PhysicalResourceId"]
            for item in listed["StackResourceSummaries"]
            if resource_type is None or item["ResourceType"] == resource_type
        }

    @property
    def bucket(self) -> str:
        """The stack's S3 bucket (the template must have exactly one)."""
        (name,) = self.resources("AWS::S3::Bucket").values()
        return name

    def upload_folder(
        self, folder: Path, prefix: str, bucket: str | None = None, order: Iterable[Path] = ()
    ) -> list[str]:
        """Upload every file under `folder` to `prefix` (files in `order` first, the rest sorted); return keys."""
        first = [folder / path for path in order]
        rest = sorted(path for path in folder.rglob("*") if path.is_file() and path not in first)
        keys = []
        for path in [*first, *rest]:
            key = prefix + path.relative_to(folder).as_posix()
            self.s3.put_object(Bucket=bucket or self.bucket, Key=key, Body=path.read_bytes())
            keys.append(key)
        return keys

    # --- waiting ---------------------------------------------------------------------------------------
    def wait_until_idle(self, timeout: float = 60.0, allow_failed_deliveries: bool = False) -> None:
        """Block until nothing is in flight: no running execution, no pending delivery, no running job.

        Raises TimeoutError (naming what still runs) or DeliveryFailed when an async delivery failed.
        """
        deadline = time.monotonic() + timeout
        quiet_checks = 0
        while quiet_checks < 2:
            if time.monotonic() > deadline:
                running = [f"{record.name} at {record.states_entered()[-1:]}" for record in self._running()]
                raise TimeoutError(
                    f"embedded AWS still busy after {timeout}s: running executions {running}, "
                    f"{self.runtime.in_flight()} deliveries/jobs in flight"
                )
            quiet = self.runtime.in_flight() == 0 and not self._running_arns()
            quiet_checks = quiet_checks + 1 if quiet else 0
            time.sleep(_IDLE_POLL_SECONDS)
        if self.runtime.deliveries.failures and not allow_failed_deliveries:
            raise DeliveryFailed(
                "asynchronous deliveries failed: "
                + "; ".join(
                    f"{failure.target_arn}: {failure.error}" for failure in self.runtime.deliveries.failures
                )
            )

    def wait_for_execution(self, execution_arn: str, timeout: float = 60.0) -> ExecutionRecord:
        """Block until the execution is no longer RUNNING; return it with its history."""
        sfn = self.client("stepfunctions")
        deadline = time.monotonic() + timeout
        while sfn.describe_execution(executionArn=execution_arn)["status"] == "RUNNING":
            if time.monotonic() > deadline:
                raise TimeoutError(f"execution {execution_arn} still RUNNING after {timeout}s")
            time.sleep(_IDLE_POLL_SECONDS)
        return self._record(execution_arn)

    def _state_machine_arns(self) -> list[str]:
        machines = self.client("stepfunctions").list_state_machines()["stateMachines"]
        return [machine["stateMachineArn"] for machine in machines]

    def _running_arns(self) -> list[str]:
        sfn = self.client("stepfunctions")
        return [
            execution["executionArn"]
            for machine in self._state_machine_arns()
            for execution in sfn.list_executions(stateMachineArn=machine, statusFilter="RUNNING")[
                "executions"
            ]
        ]

    def _running(self) -> list[ExecutionRecord]:
        return [self._record(arn) for arn in self._running_arns()]

    # --- what happened -----------------------------------------------------------------------------------
    def _record(self, execution_arn: str) -> ExecutionRecord:
        sfn = self.client("stepfunctions")
        described = sfn.describe_execution(executionArn=execution_arn)
        history = sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
        return ExecutionRecord(
            arn=execution_arn,
            name=described["name"],
            state_machine_arn=described["stateMachineArn"],
            status=described["status"],
            input=json.loads(described.get("input") or "null"),
            output=json.loads(described["output"]) if "output" in described else None,
            error=described.get("error"),
            cause=described.get("cause"),
            history=history,
        )

    def executions(self, state_machine_arn: str | None = None) -> list[ExecutionRecord]:
        """Every execution (oldest first) of one state machine or of all, with its history."""
        sfn = self.client("stepfunctions")
        machines = [state_machine_arn] if state_machine_arn else self._state_machine_arns()
        listed = [
            execution
            for machine in machines
            for execution in sfn.list_executions(stateMachineArn=machine, maxResults=1000)["executions"]
        ]
        listed.sort(key=lambda execution: execution["startDate"])
        return [self._record(execution["executionArn"]) for execution in listed]

    def events(
        self, bus: str | None = None, source: str | None = None, detail_type: str | None = None
    ) -> list[RecordedEvent]:
        """Every PutEvents entry accepted so far (bus by name), optionally filtered."""
        return [
            event
            for event in list(self.runtime.events)
            if (bus is None or event.bus == bus)
            and (source is None or event.source == source)
            and (detail_type is None or event.detail_type == detail_type)
        ]

    def sns_messages(self, topic_arn: str | None = None) -> list[SnsMessage]:
        """What SNS published (to every subscriber, emails included), in order."""
        from moto.sns.models import sns_backends

        topics = sns_backends[self.account_id][self.region].topics
        return [
            SnsMessage(arn, subject, message)
            for arn, topic in topics.items()
            if topic_arn is None or arn == topic_arn
            for _message_id, message, subject, _attributes, _group in topic.sent_notifications
        ]

    def training_jobs(self) -> list[dict[str, Any]]:
        """DescribeTrainingJob of every job created so far."""
        sagemaker = self.client("sagemaker")
        return [
            sagemaker.describe_training_job(TrainingJobName=job["TrainingJobName"])
            for page in sagemaker.get_paginator("list_training_jobs").paginate()
            for job in page["TrainingJobSummaries"]
        ]

    def lambda_invocations(self, function_name: str | None = None) -> list[Invocation]:
        """Every in-process handler call (event, payload, traceback if it raised)."""
        return [
            call
            for call in list(self.runtime.lambdas.invocations)
            if function_name is None or call.function_name == function_name
        ]

    def failed_deliveries(self) -> list[FailedDelivery]:
        return list(self.runtime.deliveries.failures)

    def on_timeline(self, callback: Callable[[TimelineEntry], None]) -> None:
        """Call `callback` (from other threads) for every event put on a bus and every training status change
        or log line (metric lines included). `follow_states` adds the states executions enter."""

        def from_event(event: RecordedEvent) -> None:
            callback(TimelineEntry("event", f"{event.source}: {event.detail_type}", event))

        def from_training(update: TrainingUpdate) -> None:
            callback(TimelineEntry(f"training-{update.kind}", f"{update.job_name}: {update.text}", update))

        self.runtime.event_listeners.append(from_event)
        self.runtime.training.listeners.append(from_training)

    def on_sns_message(self, callback: Callable[[SnsMessage], None]) -> None:
        """Call `callback` (from the publishing thread) with every message published to a topic."""
        self.runtime.sns_listeners.append(callback)

    def follow_states(self, callback: Callable[[TimelineEntry], None]) -> None:
        """Call `callback` with a "state" entry for every state an execution enters (histories polled in a
        thread, reading only running executions; a last pass runs when the stack goes down)."""
        follower = threading.Thread(target=self._follow_states, args=(callback,), name="states", daemon=True)
        self.runtime.followers.append(follower)
        follower.start()

    def _follow_states(self, callback: Callable[[TimelineEntry], None]) -> None:
        read: dict[str, int] = {}
        finished: set[str] = set()
        stopping = False
        while not stopping:
            stopping = self.runtime.stopping.wait(_TIMELINE_POLL_SECONDS)  # then one last pass
            self._announce_states(callback, read, finished)

    def _announce_states(
        self, callback: Callable[[TimelineEntry], None], read: dict[str, int], finished: set[str]
    ) -> None:
        sfn = self.client("stepfunctions")
        for machine in self._state_machine_arns():
            for execution in sfn.list_executions(stateMachineArn=machine, maxResults=1000)["executions"]:
                arn = execution["executionArn"]
                if arn in finished:
                    continue
                history = sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
                for event in history[read.get(arn, 0) :]:
                    if event["type"].endswith("StateEntered"):
                        state = event["stateEnteredEventDetails"]["name"]
                        callback(TimelineEntry("state", f"{execution['name']}: {state}", event))
                read[arn] = len(history)
                if execution["status"] != "RUNNING":
                    finished.add(arn)


@contextmanager
def _unemulated_resources_quiet() -> Iterator[None]:
    """moto warns about each resource it cannot create, on every stack call; `unemulated_resource_types`
    reports them once instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Tried to parse .* not supported by moto", UserWarning)
        yield


def _stop_everything(state: Runtime, region: str) -> None:
    """Stop running executions and jobs so no thread calls moto after the mock is gone."""
    state.stopping.set()
    for follower in state.followers:
        follower.join()
    state.deliveries.close()
    sfn = client("stepfunctions", region)
    machines = [machine["stateMachineArn"] for machine in sfn.list_state_machines()["stateMachines"]]

    def running() -> list[str]:
        return [
            execution["executionArn"]
            for machine in machines
            for execution in sfn.list_executions(stateMachineArn=machine, statusFilter="RUNNING")[
                "executions"
            ]
        ]

    for execution_arn in running():
        sfn.stop_execution(executionArn=execution_arn)
    sagemaker = client("sagemaker", region)
    for job in sagemaker.list_training_jobs(StatusEquals="InProgress")["TrainingJobSummaries"]:
        sagemaker.stop_training_job(TrainingJobName=job["TrainingJobName"])
    deadline = time.monotonic() + _SHUTDOWN_SECONDS
    while (running() or state.training.active()) and time.monotonic() < deadline:
        time.sleep(_IDLE_POLL_SECONDS)
    state.lambdas.close()
