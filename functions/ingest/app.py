"""ingest: an S3 `Object Created` under datasets/ starts the dataset's run, or prolongs/ends its settling."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from lora_pipeline.aws.clients import client
from lora_pipeline.aws.envelopes import S3ObjectCreatedEvent
from lora_pipeline.aws.powertools import Powertools
from lora_pipeline.aws.run_table import RunTable
from lora_pipeline.aws.settings import IngestEnv
from lora_pipeline.aws.steps import ingest_upload

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

powertools = Powertools()


@powertools.handler(S3ObjectCreatedEvent)
def lambda_handler(event: S3ObjectCreatedEvent, context: LambdaContext) -> dict[str, str]:
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
        env.heartbeat_every,
    )
    outcome = action.value if action else "ignored"
    powertools.logger.info("upload recorded", extra={"key": key, "action": outcome})
    powertools.count(f"Uploads_{outcome}")
    return {"action": outcome}
