"""The run-specific half of SageMaker's CreateTrainingJob: channels, stopping condition, hyperparameters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from lora_pipeline.run_names import training_job_base_name
from lora_pipeline.s3_layout import RunLayout, dataset_prefix, s3_uri

if TYPE_CHECKING:
    from lora_pipeline.job_settings import JobSettings

HYPERPARAMETER_VALUE_LIMIT = 2500  # CreateTrainingJob's limit on one hyperparameter value
# The job's input channels; SageMaker downloads each to /opt/ml/input/data/<channel>/ before the image starts.
TRAIN_CHANNEL = "train"  # the dataset folder
CONFIG_CHANNEL = "config"  # the run's config/ folder: the validated kohya.toml and prompts.txt
MODEL_CHANNEL = "model"  # the base model, when pipeline.toml names an s3:// file


class TrainingJobSpec(BaseModel):
    """The run-specific half of CreateTrainingJob; the state machine adds role, metrics and tags."""

    name: str = Field(description="Base job name; the state machine appends '-<attempt>'.")
    training_image: str = Field(
        description="`<repository>@sha256:<digest>`, read once per run: every attempt and resume runs it."
    )
    instance_type: str
    volume_size_gb: int
    spot: bool
    trainer: str
    base_model: str
    output_name: str
    max_runtime_seconds: int
    stopping_condition: dict[str, int]
    input_data_config: list[dict[str, Any]]
    output_path: str
    checkpoint_uri: str
    hyperparameters: dict[str, str]
    estimated_cost_usd: float | None


def _channel(name: str, uri: str) -> dict[str, Any]:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": uri,
                "S3DataDistributionType": "FullyReplicated",
            }
        },
        "InputMode": "File",
    }


def training_job_spec(
    bucket: str,
    dataset: str,
    run_id: str,
    job: JobSettings,
    output_name: str,
    estimated_cost_usd: float | None,
    trigger_phrase: str | None = None,
    checkpoint_every_n_steps: int | None = None,
    *,
    training_image: str,
) -> TrainingJobSpec:
    """`trigger_phrase` (the subsets' class tokens) is written into the LoRA's metadata by the container;
    `checkpoint_every_n_steps` (from the plan's CheckpointIntervalMinutes) makes it save state that often."""
    run = RunLayout(dataset, run_id)
    channels = [
        _channel(TRAIN_CHANNEL, s3_uri(bucket, dataset_prefix(dataset))),
        _channel(CONFIG_CHANNEL, s3_uri(bucket, run.config_prefix)),
    ]
    if job.base_model_from_s3:
        channels.append(_channel(MODEL_CHANNEL, job.base_model))
    max_runtime = int(job.max_runtime_hours * 3600)
    stopping = {"MaxRuntimeInSeconds": max_runtime}
    if job.spot:
        # How long SageMaker may wait for spot capacity and resume after interruptions, training included.
        stopping["MaxWaitTimeInSeconds"] = 2 * max_runtime
    return TrainingJobSpec(
        name=training_job_base_name(dataset, run_id),
        training_image=training_image,
        instance_type=job.instance_type,
        volume_size_gb=job.volume_size_gb,
        spot=job.spot,
        trainer=job.trainer,
        base_model=job.base_model,
        output_name=output_name,
        max_runtime_seconds=max_runtime,
        stopping_condition=stopping,
        input_data_config=channels,
        output_path=s3_uri(bucket, run.output_prefix),
        checkpoint_uri=s3_uri(bucket, run.checkpoints_prefix),
        hyperparameters=_hyperparameters(
            dataset, run_id, job, output_name, trigger_phrase, checkpoint_every_n_steps
        ),
        estimated_cost_usd=estimated_cost_usd,
    )


def _hyperparameters(
    dataset: str,
    run_id: str,
    job: JobSettings,
    output_name: str,
    trigger_phrase: str | None,
    checkpoint_every_n_steps: int | None,
) -> dict[str, str]:
    """The container's hyperparameters (all strings); optional ones only when they differ from its defaults."""
    from lora_pipeline.job_settings import DEFAULT_KEEP_EPOCH_LORAS

    values = {
        "trainer": job.trainer,
        "output_name": output_name,
        "dataset": dataset,
        "run_id": run_id,
        "base_model": job.base_model,
    }
    if job.keep_epoch_loras != DEFAULT_KEEP_EPOCH_LORAS:
        values["keep_epoch_loras"] = str(job.keep_epoch_loras)
    if trigger_phrase:
        values["trigger_phrase"] = trigger_phrase[:HYPERPARAMETER_VALUE_LIMIT]
    if checkpoint_every_n_steps:
        values["checkpoint_every_n_steps"] = str(checkpoint_every_n_steps)
    return values
