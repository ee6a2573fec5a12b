"""ingest: an S3 `Object Created` under datasets/ starts the dataset's run, or prolongs/ends its settling."""

from __future__ import annotations

from datetime import UTC, datetime

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.parser.models import S3EventNotificationEventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from lora_pipeline.aws.clients import client
from lora_pipeline.aws.run_table import RunTable
from lora_pipeline.aws.settings import IngestEnv
from lora_pipeline.aws.steps import ingest_upload

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=S3EventNotificationEventBridgeModel)
def lambda_handler(event: S3EventNotificationEventBridgeModel, context: LambdaContext) -> dict[str, str]:
    env = IngestEnv.from_environ()
    key = event.detail.object.key
    action = ingest_upload(
        RunTable(client("dynamodb"), env.table_name),
        client("stepfunctions"),
        env.state_machine_arn,
        event.detail.bucket.name,
        key,
        event.time,
        datetime.now(UTC),
    )
    outcome = action.value if action else "ignored"
    logger.info("upload recorded", extra={"key": key, "action": outcome})
    metrics.add_metric(name=f"Uploads_{outcome}", unit=MetricUnit.Count, value=1)
    return {"action": outcome}
