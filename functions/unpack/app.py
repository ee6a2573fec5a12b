"""unpack: the job's model.tar.gz -> model/<output_name>.safetensors and model/manifest.json."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lora_pipeline.aws.clients import client
from lora_pipeline.aws.observability import FunctionObservability
from lora_pipeline.aws.run_table import RunTable
from lora_pipeline.aws.settings import UnpackEnv
from lora_pipeline.instances import load_instance_table
from lora_pipeline.use_cases.unpack import UnpackInput, unpack_run

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

observability = FunctionObservability()


@observability.handler(UnpackInput)
def lambda_handler(event: UnpackInput, context: LambdaContext) -> dict[str, Any]:
    observability.run_keys(dataset=event.dataset, run_id=event.run_id)
    table = RunTable(client("dynamodb"), UnpackEnv.from_environ().table_name)
    outcome = unpack_run(client("s3"), table, event, load_instance_table())
    observability.logger.info(
        "model unpacked", extra={"model_uri": outcome.model_uri, "size_bytes": outcome.size_bytes}
    )
    observability.count("ModelsUnpacked")
    return outcome.model_dump(mode="json")
