"""The embedded AWS: the real template.yaml, ASL and handlers running on in-process moto (pinned 5.2.5).

    from embedded_aws import ArchiveExecutor, EmbeddedStack, tar_gz

    with EmbeddedStack.up(template="template.yaml", parameters={"QuietPeriodSeconds": "1"},
                          executor=ArchiveExecutor(tar_gz({"lora.safetensors": data}))) as stack:
        stack.upload_folder(Path("examples/datasets/bluebot"), "datasets/bluebot/")
        stack.wait_until_idle(timeout=60)   # no running execution, pending delivery or running job
        stack.sns_messages()                # what SNS sent (subject, message): the emails
        stack.events(bus=stack.outputs["EventBusName"])   # every PutEvents entry on a bus
        stack.executions()                  # every execution with its history

What runs: the SAM template is translated offline and created by CloudFormation; Lambda handlers run in this
process with their Environment; S3 EventBridge notifications and EventBridge rules reach Lambda, SNS and Step
Functions targets; state machines execute (DefinitionSubstitutions applied) including
`sagemaker:createTrainingJob.sync`, whose jobs a TrainingExecutor completes (ContainerExecutor runs the
training container's entrypoint; the others in `training` are for tests). `adaptations.py` lists every
change made to moto. `refuse_real_aws()` guarantees no request leaves the machine.
"""

from .adaptations import AdaptationOutdated
from .container_executor import ContainerExecutor
from .eventbridge import FailedDelivery
from .guard import RealAwsRefused, refuse_real_aws
from .lambda_runtime import Invocation
from .runtime import RecordedEvent, SnsMessage
from .sagemaker import TrainingUpdate
from .stack import (
    DeliveryFailed,
    EmbeddedStack,
    ExecutionRecord,
    StackDeployFailed,
    TimelineEntry,
)
from .training import (
    CAPACITY_FAILURE_REASON,
    STAND_IN_TRAINING_IMAGE,
    ArchiveExecutor,
    FailingExecutor,
    FlakyExecutor,
    HeldExecutor,
    NoExecutor,
    TrainingExecutor,
    TrainingJobRejected,
    TrainingProgress,
    TrainingResult,
    model_artifact_uri,
    tar_gz,
)

__all__ = [
    "CAPACITY_FAILURE_REASON",
    "STAND_IN_TRAINING_IMAGE",
    "AdaptationOutdated",
    "ArchiveExecutor",
    "ContainerExecutor",
    "DeliveryFailed",
    "EmbeddedStack",
    "ExecutionRecord",
    "FailedDelivery",
    "FailingExecutor",
    "FlakyExecutor",
    "HeldExecutor",
    "Invocation",
    "NoExecutor",
    "RealAwsRefused",
    "RecordedEvent",
    "SnsMessage",
    "StackDeployFailed",
    "TimelineEntry",
    "TrainingExecutor",
    "TrainingJobRejected",
    "TrainingProgress",
    "TrainingResult",
    "TrainingUpdate",
    "model_artifact_uri",
    "refuse_real_aws",
    "tar_gz",
]
