"""The functions' environment (set by template.yaml), read once per cold start into typed models."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from lora_pipeline.job_settings import StackLimits


class _Env(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    @classmethod
    def from_environ(cls) -> Self:
        names = [field.alias or name for name, field in cls.model_fields.items()]
        return cls.model_validate({name: os.environ[name] for name in names if name in os.environ})


class IngestEnv(_Env):
    table_name: str = Field(alias="TABLE_NAME")
    state_machine_arn: str = Field(alias="STATE_MACHINE_ARN")
    quiet_period_seconds: int = Field(alias="QUIET_PERIOD_SECONDS", ge=1)

    @property
    def heartbeat_every(self) -> timedelta:
        """A tenth of the quiet period: the settle wait then always lasts at least 90% of it."""
        return timedelta(seconds=self.quiet_period_seconds / 10)


class ValidateEnv(_Env):
    allowed_instance_types: tuple[str, ...] = Field(alias="ALLOWED_INSTANCE_TYPES")
    default_instance_type: str = Field(alias="DEFAULT_INSTANCE_TYPE")
    min_volume_size_gb: int = Field(alias="MIN_VOLUME_SIZE_GB")
    max_runtime_hours: float = Field(alias="MAX_RUNTIME_HOURS")
    use_spot: bool = Field(alias="USE_SPOT")
    checkpoint_interval_minutes: float = Field(30.0, alias="CHECKPOINT_INTERVAL_MINUTES", gt=0)
    base_model_s3_uri: str | None = Field(None, alias="BASE_MODEL_S3_URI")

    @field_validator("allowed_instance_types", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else value

    @field_validator("base_model_s3_uri", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return value or None

    def limits(self) -> StackLimits:
        # The validate function's rules: loaded by it alone.
        from lora_pipeline.job_settings import StackLimits

        return StackLimits(
            allowed_instance_types=self.allowed_instance_types,
            default_instance_type=self.default_instance_type,
            min_volume_size_gb=self.min_volume_size_gb,
            max_runtime_hours=self.max_runtime_hours,
            use_spot=self.use_spot,
            checkpoint_interval_minutes=self.checkpoint_interval_minutes,
            base_model_s3_uri=self.base_model_s3_uri,
        )


class ValidateFunctionEnv(ValidateEnv):
    """The validate function's whole environment: the limits (the CLI reads those from the stack's parameters)
    and the SSM parameter that pins the training image (lora_pipeline.aws.training_image)."""

    training_image_parameter: str = Field(alias="TRAINING_IMAGE_PARAMETER")


class UnpackEnv(_Env):
    table_name: str = Field(alias="TABLE_NAME")


class NotifyEnv(_Env):
    topic_arn: str = Field(alias="TOPIC_ARN")
    idempotency_table: str = Field(alias="IDEMPOTENCY_TABLE")
    # SigV4 presigned URLs live at most 7 days.
    link_expiry_seconds: int = Field(43200, alias="LINK_EXPIRY_SECONDS", ge=60, le=604800)


class CancelEnv(_Env):
    table_name: str = Field(alias="TABLE_NAME")
    event_bus_name: str = Field(alias="EVENT_BUS_NAME")
    state_machine_arn: str = Field(alias="STATE_MACHINE_ARN")
