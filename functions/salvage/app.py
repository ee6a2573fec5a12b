"""salvage: a training job that did not finish -> its newest epoch LoRA under model/, checkpoints kept to resume."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lora_pipeline.aws.clients import client
from lora_pipeline.aws.observability import FunctionObservability
from lora_pipeline.use_cases.run_input import SalvageInput
from lora_pipeline.use_cases.salvage import salvage_run

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

observability = FunctionObservability()


@observability.handler(SalvageInput)
def lambda_handler(event: SalvageInput, context: LambdaContext) -> dict[str, Any] | None:
    observability.run_keys(dataset=event.dataset, run_id=event.run_id)
    salvaged = salvage_run(client("s3"), event)
    observability.logger.info(
        "run salvaged" if salvaged else "nothing to salvage",
        extra={"epoch": salvaged.epoch if salvaged else None},
    )
    return salvaged.model_dump(mode="json") if salvaged else None
