"""validate: check the dataset in S3, store validation.json and the job's config, answer the Choice."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lora_pipeline.aws.clients import client
from lora_pipeline.aws.observability import FunctionObservability
from lora_pipeline.aws.settings import ValidateFunctionEnv
from lora_pipeline.aws.training_image import pinned_training_image
from lora_pipeline.use_cases.run_input import RunInput
from lora_pipeline.use_cases.validate import validate_run

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

observability = FunctionObservability()


@observability.handler(RunInput)
def lambda_handler(event: RunInput, context: LambdaContext) -> dict[str, Any]:
    observability.run_keys(dataset=event.dataset, run_id=event.run_id)
    env = ValidateFunctionEnv.from_environ()
    image = pinned_training_image(client("ssm"), env.training_image_parameter)
    outcome = validate_run(client("s3"), event, env.limits(), image)
    observability.logger.info(
        "dataset validated", extra={"valid": outcome["valid"], "errors": outcome["error_count"]}
    )
    observability.count("DatasetsValidated", valid=str(outcome["valid"]).lower())
    return outcome
