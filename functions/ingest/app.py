"""ingest: an S3 `Object Created` under datasets/ starts the dataset's run, or prolongs/ends its settling."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from lora_pipeline.aws.clients import client
from lora_pipeline.aws.envelopes import S3ObjectCreatedEvent
from lora_pipeline.aws.observability import FunctionObservability
from lora_pipeline.aws.run_table import RunTable
from lora_pipeline.aws.settings import IngestEnv
from lora_pipeline.aws.step_functions import StepFunctionsExecutions
from lora_pipeline.s3_layout import parse_dataset_key
from lora_pipeline.use_cases.ingest import ingest_upload

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

observability = FunctionObservability()


@observability.handler(S3ObjectCreatedEvent)
def lambda_handler(event: S3ObjectCreatedEvent, context: LambdaContext) -> dict[str, str]:
    env = IngestEnv.from_environ()
    key = event.detail.object.key
    if obj := parse_dataset_key(key):
        observability.run_keys(dataset=obj.dataset)
    action = ingest_upload(
        RunTable(client("dynamodb"), env.table_name),
        StepFunctionsExecutions(client("stepfunctions"), env.state_machine_arn),
        event.detail.bucket.name,
        key,
        event.time,
        datetime.now(UTC),
        env.heartbeat_every,
        run_known=lambda run_id: observability.run_keys(run_id=run_id),
    )
    outcome = action.value if action else "ignored"
    observability.logger.info("upload recorded", extra={"key": key, "action": outcome})
    observability.count("Uploads", action=outcome)
    return {"action": outcome}
