"""cancel: an execution ended -> clean up after a stop, time-out or crash (stop its job, free its slot and
dataset, emit the run's last event if it put none), then start the follow-up run uploads asked for."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from lora_pipeline.aws.clients import client
from lora_pipeline.aws.envelopes import EventBridgeEvent
from lora_pipeline.aws.event_publisher import EventPublisher
from lora_pipeline.aws.observability import FunctionObservability
from lora_pipeline.aws.run_objects import delete_published
from lora_pipeline.aws.run_table import RunTable
from lora_pipeline.aws.sagemaker_jobs import SageMakerTrainingJobs
from lora_pipeline.aws.settings import CancelEnv
from lora_pipeline.aws.step_functions import StepFunctionsExecutions
from lora_pipeline.use_cases.cancel import ExecutionEnd, run_ended
from lora_pipeline.use_cases.salvage import salvage_run

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

observability = FunctionObservability()


@observability.handler(EventBridgeEvent)
def lambda_handler(event: EventBridgeEvent, context: LambdaContext) -> dict[str, Any]:
    env = CancelEnv.from_environ()
    end = ExecutionEnd.model_validate(event.detail)
    observability.run_keys(dataset=end.run.dataset, run_id=end.run.run_id)
    s3 = client("s3")
    job, follow_up = run_ended(
        RunTable(client("dynamodb"), env.table_name),
        SageMakerTrainingJobs(client("sagemaker")),
        StepFunctionsExecutions(client("stepfunctions"), env.state_machine_arn),
        EventPublisher(client("events"), env.event_bus_name),
        partial(salvage_run, s3),
        partial(delete_published, s3),
        end,
        datetime.now(UTC),
    )
    observability.logger.info(
        "execution ended",
        extra={"execution": end.execution_arn, "status": end.status, "job": job, "follow_up": follow_up},
    )
    observability.count("RunsEnded", status=end.status)
    return {"status": end.status, "stopped_job": job, "follow_up_run": follow_up}
