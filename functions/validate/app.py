"""validate: check the dataset in S3, store validation.json and the job's config, answer the Choice."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lora_pipeline.aws.clients import client
from lora_pipeline.aws.powertools import Powertools
from lora_pipeline.aws.settings import ValidateFunctionEnv
from lora_pipeline.aws.steps import RunInput, validate_run
from lora_pipeline.aws.training_image import pinned_training_image

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

powertools = Powertools()


@powertools.handler(RunInput)
def lambda_handler(event: RunInput, context: LambdaContext) -> dict[str, Any]:
    env = ValidateFunctionEnv.from_environ()
    image = pinned_training_image(client("ssm"), env.training_image_parameter)
    outcome = validate_run(client("s3"), event, env.limits(), image)
    powertools.logger.info(
        "dataset validated",
        extra={"dataset": event.dataset, "valid": outcome["valid"], "errors": outcome["error_count"]},
    )
    powertools.count("DatasetsValid" if outcome["valid"] else "DatasetsInvalid")
    return outcome
