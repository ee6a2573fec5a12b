"""notify: a pipeline event on the custom bus -> a short email through the SNS topic."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lora_pipeline.aws.clients import client
from lora_pipeline.aws.envelopes import EventBridgeEvent
from lora_pipeline.aws.powertools import Powertools
from lora_pipeline.aws.settings import NotifyEnv
from lora_pipeline.aws.steps import notify

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

powertools = Powertools()


@powertools.handler(EventBridgeEvent)
def lambda_handler(event: EventBridgeEvent, context: LambdaContext) -> dict[str, Any]:
    env = NotifyEnv.from_environ()
    subject = notify(
        client("s3"), client("sns"), env.topic_arn, event.detail_type, event.detail, env.link_expiry_seconds
    )
    powertools.logger.info("notification sent", extra={"detail_type": event.detail_type, "subject": subject})
    powertools.count("Notifications")
    return {"subject": subject}
