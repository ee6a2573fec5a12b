"""notify: a pipeline event on the custom bus -> a short email through the SNS topic."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from lora_pipeline.aws.clients import client
from lora_pipeline.aws.settings import NotifyEnv
from lora_pipeline.aws.steps import notify

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=EventBridgeModel)
def lambda_handler(event: EventBridgeModel, context: LambdaContext) -> dict[str, Any]:
    env = NotifyEnv.from_environ()
    subject = notify(
        client("s3"), client("sns"), env.topic_arn, event.detail_type, event.detail, env.link_expiry_seconds
    )
    logger.info("notification sent", extra={"detail_type": event.detail_type, "subject": subject})
    metrics.add_metric(name="Notifications", unit=MetricUnit.Count, value=1)
    return {"subject": subject}
