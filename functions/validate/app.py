"""validate: check the dataset in S3, store validation.json and the job's config, answer the Choice."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from lora_pipeline.aws.clients import client
from lora_pipeline.aws.settings import ValidateEnv
from lora_pipeline.aws.steps import RunInput, validate_run

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=RunInput)
def lambda_handler(event: RunInput, context: LambdaContext) -> dict[str, Any]:
    outcome = validate_run(client("s3"), event, ValidateEnv.from_environ().limits())
    logger.info(
        "dataset validated",
        extra={"dataset": event.dataset, "valid": outcome["valid"], "errors": outcome["error_count"]},
    )
    metrics.add_metric(
        name="DatasetsValid" if outcome["valid"] else "DatasetsInvalid", unit=MetricUnit.Count, value=1
    )
    return outcome
