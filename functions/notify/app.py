"""notify: a pipeline event on the custom bus -> a short email through the SNS topic, once per event."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

from lora_pipeline.aws.clients import client
from lora_pipeline.aws.envelopes import EventBridgeEvent
from lora_pipeline.aws.observability import FunctionObservability
from lora_pipeline.aws.settings import NotifyEnv
from lora_pipeline.use_cases.notify import notify

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig
    from aws_lambda_powertools.utilities.typing import LambdaContext

observability = FunctionObservability()
# The same event content is one email: EventBridge redelivers an event (same id) and a retried state can put
# the same detail again (new id), so the key is the detail type and the whole detail, not the event id. It
# outlives the notify rule's retry window (24 h).
IDEMPOTENCY_KEY = '["detail-type", detail]'
IDEMPOTENCY_SECONDS = 2 * 86400


@cache
def _send_once(table_name: str) -> tuple[Callable[..., str], IdempotencyConfig]:
    """`notify` behind Powertools idempotency, made at the first call (its DynamoDB layer imports boto3)."""
    from aws_lambda_powertools.utilities.idempotency import (
        DynamoDBPersistenceLayer,
        IdempotencyConfig,
        idempotent_function,
    )

    config = IdempotencyConfig(event_key_jmespath=IDEMPOTENCY_KEY, expires_after_seconds=IDEMPOTENCY_SECONDS)
    persistence = DynamoDBPersistenceLayer(table_name=table_name, boto3_client=client("dynamodb"))

    @idempotent_function(data_keyword_argument="event", persistence_store=persistence, config=config)
    def send(event: dict[str, Any]) -> str:
        env = NotifyEnv.from_environ()
        return notify(
            client("s3"),
            client("sns"),
            env.topic_arn,
            event["detail-type"],
            event["detail"],
            env.link_expiry_seconds,
        )

    return send, config


@observability.handler(EventBridgeEvent)
def lambda_handler(event: EventBridgeEvent, context: LambdaContext) -> dict[str, Any]:
    observability.run_keys(dataset=event.detail.get("dataset"), run_id=event.detail.get("run_id"))
    send, config = _send_once(NotifyEnv.from_environ().idempotency_table)
    config.register_lambda_context(context)
    subject = send(event=event.model_dump(mode="json", by_alias=True))
    observability.logger.info(
        "notification handled", extra={"detail_type": event.detail_type, "subject": subject}
    )
    observability.count("Notifications")
    return {"subject": subject}
