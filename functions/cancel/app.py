"""cancel: an execution ended -> clean up after a stop, time-out or crash (stop its job, free its slot and
dataset, emit the run's last event if it put none), then start the follow-up run uploads asked for."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lora_pipeline.aws.clients import client
from lora_pipeline.aws.envelopes import EventBridgeEvent
from lora_pipeline.aws.event_publisher import EventPublisher
from lora_pipeline.aws.powertools import Powertools
from lora_pipeline.aws.run_table import RunTable
from lora_pipeline.aws.settings import CancelEnv
from lora_pipeline.aws.steps import ExecutionEnd, run_ended

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

powertools = Powertools()


@powertools.handler(EventBridgeEvent)
def lambda_handler(event: EventBridgeEvent, context: LambdaContext) -> dict[str, Any]:
    env = CancelEnv.from_environ()
    end = ExecutionEnd.model_validate(event.detail)
    job, follow_up = run_ended(
        RunTable(client("dynamodb"), env.table_name),
        client("sagemaker"),
        client("s3"),
        client("stepfunctions"),
        EventPublisher(client("events"), env.event_bus_name),
        env.state_machine_arn,
        end,
        datetime.now(UTC),
    )
    powertools.logger.info(
        "execution ended",
        extra={"execution": end.execution_arn, "status": end.status, "job": job, "follow_up": follow_up},
    )
    powertools.count(f"Runs_{end.status}")
    return {"status": end.status, "stopped_job": job, "follow_up_run": follow_up}
