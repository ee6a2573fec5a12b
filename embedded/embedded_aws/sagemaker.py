"""Training jobs that really run (through an executor) behind moto's SageMaker API, and the Step Functions
optimized integration `arn:aws:states:::sagemaker:createTrainingJob.sync` / `stopTrainingJob`."""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import botocore.session
from botocore.exceptions import ClientError
from moto.stepfunctions.parser.api import HistoryEventType, TaskFailedEventDetails
from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import CustomErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
    FailureEvent,
    FailureEventException,
)
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import StatesErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
    StatesErrorNameType,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.resource import ResourceCondition
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_callback import (
    StateTaskServiceCallback,
)
from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails
from moto.stepfunctions.parser.asl.utils.encoding import to_json_str

from lora_pipeline.run_names import TRAINING_LOG_GROUP

from .clients import client
from .training import TrainingExecutor, TrainingResult

LOG = logging.getLogger(__name__)

TERMINAL_STATUSES: Final = frozenset({"Completed", "Failed", "Stopped"})
# Step Functions names every SageMaker API error of an optimized integration this way (the API's error code
# is in the cause), e.g. a throttled or over-quota CreateTrainingJob.
API_ERROR_NAME: Final = "SageMaker.AmazonSageMakerException"
_SYNC_POLL_SECONDS: Final = 0.05


@dataclass(frozen=True)
class TrainingUpdate:
    """Something a running job reported: a secondary status change or a log line (metric lines included)."""

    job_name: str
    kind: str  # "status" | "log"
    text: str


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


class _JobProgress:
    """Records what a job reports: on moto's job (secondary statuses), in CloudWatch Logs where SageMaker
    puts a job's output (`/aws/sagemaker/TrainingJobs`, stream `<job>/algo-1-<epoch>`), and to listeners."""

    def __init__(self, job: Any, notify: Callable[[TrainingUpdate], None], region: str) -> None:
        self._job = job
        self._notify = notify
        self._logs = client("logs", region)
        self._stream = f"{job.training_job_name}/algo-1-{int(time.time())}"
        with contextlib.suppress(self._logs.exceptions.ResourceAlreadyExistsException):
            self._logs.create_log_group(logGroupName=TRAINING_LOG_GROUP)
        self._logs.create_log_stream(logGroupName=TRAINING_LOG_GROUP, logStreamName=self._stream)

    def secondary_status(self, status: str, message: str) -> None:
        now = _utcnow()
        transitions = self._job.secondary_status_transitions
        if transitions and "EndTime" not in transitions[-1]:
            transitions[-1]["EndTime"] = now
        transitions.append({"Status": status, "StartTime": now, "StatusMessage": message})
        self._job.secondary_status = status
        self._job.last_modified_time = now
        self._notify(TrainingUpdate(self._job.training_job_name, "status", f"{status}: {message}"))

    def log_line(self, line: str) -> None:
        event = {"timestamp": int(time.time() * 1000), "message": line}
        self._logs.put_log_events(
            logGroupName=TRAINING_LOG_GROUP, logStreamName=self._stream, logEvents=[event]
        )
        self._notify(TrainingUpdate(self._job.training_job_name, "log", line))


class TrainingJobRunner:
    """Runs each created job through the executor in its own thread and writes the outcome onto moto's job."""

    def __init__(self, executor: TrainingExecutor, region: str) -> None:
        self.executor = executor
        self._region = region
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self.listeners: list[Callable[[TrainingUpdate], None]] = []

    def active(self) -> int:
        with self._lock:
            return sum(thread.is_alive() for thread in self._threads.values())

    def _notify(self, update: TrainingUpdate) -> None:
        for listener in list(self.listeners):
            listener(update)

    def start(self, job: Any, request: dict[str, Any]) -> None:
        now = _utcnow()
        job.training_job_status = "InProgress"
        job.training_start_time = now
        job.training_end_time = None
        job.final_metric_data_list = []
        job.secondary_status_transitions = []
        # moto replaces the request's MetricDefinitions with a sample; describe must echo the request.
        job.algorithm_specification = copy.deepcopy(request["AlgorithmSpecification"])
        progress = _JobProgress(job, self._notify, self._region)
        progress.secondary_status("Starting", "Launching requested ML instances")
        thread = threading.Thread(
            target=self._run,
            args=(job, request, progress),
            name=f"training-{job.training_job_name}",
            daemon=True,
        )
        with self._lock:
            self._threads[job.training_job_name] = thread
        thread.start()

    def _run(self, job: Any, request: dict[str, Any], progress: _JobProgress) -> None:
        try:
            result = self.executor.run(copy.deepcopy(request), client("s3", self._region), progress)
        except Exception as failure:  # an executor crash is a failed job, as an instance crash would be
            LOG.warning("training executor crashed on %s:\n%s", job.training_job_name, traceback.format_exc())
            result = TrainingResult(status="Failed", failure_reason=f"InternalServerError: {failure}")
        if job.training_job_status == "Stopping" and result.status == "Completed":
            result = TrainingResult(status="Stopped", billable_seconds=result.billable_seconds)
        self._finish(job, result, progress)

    @staticmethod
    def _finish(job: Any, result: TrainingResult, progress: _JobProgress) -> None:
        now = _utcnow()
        job.billable_time_in_seconds = result.billable_seconds
        job.training_time_in_seconds = result.billable_seconds
        job.training_end_time = now
        job.final_metric_data_list = [
            {"MetricName": name, "Value": value, "Timestamp": now}
            for name, value in result.final_metrics.items()
        ]
        if result.status == "Failed":
            job.failure_reason = result.failure_reason or "AlgorithmError: the training job failed"
        if result.status != "Completed":
            job.model_artifacts = None
        progress.secondary_status(
            result.secondary_status or result.status,
            result.failure_reason or f"Training job {result.status.lower()}",
        )
        job.secondary_status_transitions[-1]["EndTime"] = now
        job.training_job_status = result.status

    def stop(self, job: Any) -> None:
        job.training_job_status = "Stopping"
        job.secondary_status = "Stopping"
        self.executor.stop(job.training_job_name)


@functools.cache
def _api_parameters(operation: str) -> set[str]:
    """Every request parameter of a SageMaker API operation (the task passes them all through)."""
    model = botocore.session.get_session().get_service_model("sagemaker").operation_model(operation)
    return set(model.input_shape.members)


def _epoch_millis(value: Any) -> Any:
    """Step Functions renders the describe output's timestamps as epoch milliseconds."""
    if isinstance(value, datetime.datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, dict):
        return {name: _epoch_millis(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_epoch_millis(item) for item in value]
    return value


class StateTaskServiceSageMaker(StateTaskServiceCallback):
    """createTrainingJob (request-response and .sync) and stopTrainingJob, as the optimized integration."""

    _SUPPORTED_ACTIONS: Final = {
        "createtrainingjob": "CreateTrainingJob",
        "stoptrainingjob": "StopTrainingJob",
    }

    def __init__(self) -> None:
        # The callback base class needs a task-token endpoint even for .sync tasks.
        super().__init__(
            supported_integration_patterns={ResourceCondition.WaitForTaskToken, ResourceCondition.Sync}
        )
        self._job_name: str | None = None

    def _get_supported_parameters(self) -> set[str] | None:
        operation = self._SUPPORTED_ACTIONS.get(self.resource.api_action.lower())
        return None if operation is None else _api_parameters(operation)

    def _from_error(self, env: Any, ex: Exception) -> FailureEvent:
        if isinstance(ex, ClientError):
            error = ex.response["Error"]
            metadata = ex.response["ResponseMetadata"]
            cause = (
                f"{error['Message']} (Service: AmazonSageMaker; Status Code: {metadata['HTTPStatusCode']}; "
                f"Error Code: {error['Code']}; Request ID: {metadata.get('RequestId')}; Proxy: null)"
            )
            return FailureEvent(
                env=env,
                error_name=CustomErrorName(API_ERROR_NAME),
                event_type=HistoryEventType.TaskFailed,
                event_details=EventDetails(
                    taskFailedEventDetails=TaskFailedEventDetails(
                        error=API_ERROR_NAME,
                        cause=cause,
                        resource=self._get_sfn_resource(),
                        resourceType=self._get_sfn_resource_type(),
                    )
                ),
            )
        return super()._from_error(env=env, ex=ex)  # type: ignore[no-any-return]

    def _client(self, resource_runtime_part: Any, state_credentials: Any) -> Any:
        # moto's boto_client_for builds a new client per call; SageMaker's model takes long to load.
        return client("sagemaker", resource_runtime_part.region)

    def _eval_service_task(
        self,
        env: Any,
        resource_runtime_part: Any,
        normalised_parameters: dict[str, Any],
        state_credentials: Any,
    ) -> None:
        client = self._client(resource_runtime_part, state_credentials)
        self._job_name = normalised_parameters.get("TrainingJobName")
        action = self._get_boto_service_action()
        response = getattr(client, action)(**normalised_parameters)
        response.pop("ResponseMetadata", None)
        env.stack.append(response)

    def _build_sync_resolver(
        self,
        env: Any,
        resource_runtime_part: Any,
        normalised_parameters: dict[str, Any],
        state_credentials: Any,
    ) -> Callable[[], Any]:
        client = self._client(resource_runtime_part, state_credentials)
        env.stack.pop()  # CreateTrainingJob's own response; the task's result is the final describe
        job_name = normalised_parameters["TrainingJobName"]

        def resolve() -> dict[str, Any] | None:
            described = client.describe_training_job(TrainingJobName=job_name)
            described.pop("ResponseMetadata", None)
            if described["TrainingJobStatus"] not in TERMINAL_STATUSES:
                return None
            described = _epoch_millis(described)
            if described["TrainingJobStatus"] == "Completed":
                return described  # type: ignore[no-any-return]
            raise FailureEventException(
                FailureEvent(
                    env=env,
                    error_name=StatesErrorName(typ=StatesErrorNameType.StatesTaskFailed),
                    event_type=HistoryEventType.TaskFailed,
                    event_details=EventDetails(
                        taskFailedEventDetails=TaskFailedEventDetails(
                            resource=self._get_sfn_resource(),
                            resourceType=self._get_sfn_resource_type(),
                            error=StatesErrorNameType.StatesTaskFailed.to_name(),
                            cause=to_json_str(described),
                        )
                    ),
                )
            )

        return resolve

    def _eval_sync(self, env: Any, sync_resolver: Callable[[], Any], **_callback_endpoints: Any) -> Any:
        # moto polls every 0.5 s and listens for a task token; SageMaker .sync has no task token, and a short
        # poll keeps runs that train in milliseconds from waiting.
        while env.is_running():
            outcome = sync_resolver()
            if outcome:
                return outcome
            time.sleep(_SYNC_POLL_SECONDS)
        if self._job_name:
            # A stopped execution stops the job it was waiting for, as Step Functions does for .sync tasks.
            try:
                client("sagemaker", env.aws_execution_details.region).stop_training_job(
                    TrainingJobName=self._job_name
                )
            except ClientError as refused:
                LOG.info("best-effort stop of %s refused: %s", self._job_name, refused)
        return None
