"""cancel: an execution was stopped, timed out or crashed -> stop its job, free its slot and dataset."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lora_pipeline.aws.clients import client
from lora_pipeline.aws.envelopes import EventBridgeEvent
from lora_pipeline.aws.event_publisher import EventPublisher
from lora_pipeline.aws.powertools import Powertools
from lora_pipeline.aws.run_table import RunTable
from lora_pipeline.aws.settings import CancelEnv
from lora_pipeline.aws.steps import clean_up_run

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

powertools = Powertools()


@powertools.handler(EventBridgeEvent)
def lambda_handler(event: EventBridgeEvent, context: LambdaContext) -> dict[str, Any]:
    env = CancelEnv.from_environ()
    status = event.detail["status"]
    job = clean_up_run(
        RunTable(client("dynamodb"), env.table_name),
        client("sagemaker"),
        client("s3"),
        EventPublisher(client("events"), env.event_bus_name),
        status,
        event.detail["input"],
        datetime.now(UTC),
    )
    powertools.logger.info(
        "run cleaned up", extra={"execution": event.detail.get("name"), "status": status, "job": job}
    )
    powertools.count(f"Runs_{status}")
    return {"status": status, "stopped_job": job}
