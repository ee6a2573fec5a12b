"""Finding the deployed stack (or the embedded one) and talking to its resources."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions

from lora_pipeline.aws.settings import ValidateEnv
from lora_pipeline.aws.training_image import TrainingImageNotPinned, pinned_training_image
from lora_pipeline.job_settings import StackLimits

STACK_ENV_VAR = "LORA_PIPELINE_STACK"
# The validate function's environment variable for each stack parameter that limits a job (template.yaml).
_LIMIT_PARAMETERS = {
    "ALLOWED_INSTANCE_TYPES": "AllowedInstanceTypes",
    "DEFAULT_INSTANCE_TYPE": "DefaultInstanceType",
    "MIN_VOLUME_SIZE_GB": "MinVolumeSizeGB",
    "MAX_RUNTIME_HOURS": "MaxRuntimeHours",
    "USE_SPOT": "UseSpot",
    "BASE_MODEL_S3_URI": "BaseModelS3Uri",
}
SAMCONFIG = Path("samconfig.toml")


class StackError(Exception):
    """Cannot reach the stack; the message says what to do."""


def stack_name_from(explicit: str | None, samconfig: Path = SAMCONFIG) -> str:
    """--stack, else $LORA_PIPELINE_STACK, else samconfig.toml's stack_name (deploy, then global)."""
    if explicit:
        return explicit
    if os.environ.get(STACK_ENV_VAR):
        return os.environ[STACK_ENV_VAR]
    if samconfig.is_file():
        environment = tomllib.loads(samconfig.read_text(encoding="utf-8")).get("default", {})
        for command in ("deploy", "global"):
            name = environment.get(command, {}).get("parameters", {}).get("stack_name")
            if isinstance(name, str) and name:
                return name
    raise StackError(
        f"No stack given: pass --stack NAME, set {STACK_ENV_VAR}, or run from the folder with samconfig.toml."
    )


@dataclass
class Stack:
    """A deployed pipeline stack: its outputs and clients bound to its region (and endpoint, when embedded)."""

    name: str
    outputs: dict[str, str]
    session: boto3.Session
    endpoint_url: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    _clients: dict[str, Any] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self.session.client(service, endpoint_url=self.endpoint_url)
        return self._clients[service]

    def output(self, key: str) -> str:
        try:
            return self.outputs[key]
        except KeyError:
            raise StackError(
                f"Stack {self.name} has no output {key}: is it an sdxl-lora-pipeline stack?"
            ) from None

    def limits(self) -> StackLimits:
        """The limits this stack's validate function applies, from the stack's parameters."""
        settings = {
            env: self.parameters[name] for env, name in _LIMIT_PARAMETERS.items() if name in self.parameters
        }
        return replace(ValidateEnv.model_validate(settings).limits(), bucket=self.bucket)

    @property
    def bucket(self) -> str:
        return self.output("BucketName")

    @property
    def table_name(self) -> str:
        return self.output("TableName")


def connect(name: str, session: boto3.Session | None = None, endpoint_url: str | None = None) -> Stack:
    session = session or boto3.Session()
    if session.get_credentials() is None:
        raise StackError(
            "No AWS credentials found: run `aws configure` (or `aws sso login`) or set AWS_PROFILE."
        )
    if session.region_name is None:
        raise StackError("No AWS region set: pass --region, set AWS_REGION, or configure a default region.")
    cloudformation = session.client("cloudformation", endpoint_url=endpoint_url)
    try:
        described = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
    except botocore.exceptions.ClientError as exc:
        if "does not exist" in str(exc):
            raise StackError(
                f"Stack {name!r} not found in {session.region_name}: deploy it with `sam build && sam deploy "
                "--guided`, or pass the right --stack / --region."
            ) from None
        raise
    except botocore.exceptions.NoCredentialsError:
        raise StackError("No AWS credentials found: run `aws configure` or set AWS_PROFILE.") from None
    except botocore.exceptions.EndpointConnectionError:
        if endpoint_url:
            raise StackError(
                f"No embedded stack answers at {endpoint_url}: start one with `lora-pipeline local` in another terminal."
            ) from None
        raise StackError(
            f"Cannot reach AWS in {session.region_name}: check the network and the region."
        ) from None
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    parameters = {p["ParameterKey"]: p.get("ParameterValue", "") for p in described.get("Parameters", [])}
    return Stack(
        name=name, outputs=outputs, session=session, endpoint_url=endpoint_url, parameters=parameters
    )


def require_training_image(stack: Stack) -> None:
    """Refuse to start runs on a stack whose pinned training image (SSM, lora_pipeline.aws.training_image) is
    not there yet: every job would fail to start. An image outside the stack's own repository is trusted."""
    parameter = stack.output("TrainingImageParameterName")
    not_built = StackError(
        f"The training image is not built yet: run `make image STACK={stack.name}` (about 20 minutes), "
        "then upload again."
    )
    try:
        image = pinned_training_image(stack.client("ssm"), parameter)
    except TrainingImageNotPinned:
        raise not_built from None
    repository_uri, digest = image.split("@", 1)
    if repository_uri != stack.output("TrainingImageRepositoryUri"):
        return
    try:
        stack.client("ecr").describe_images(
            repositoryName=repository_uri.split("/", 1)[1], imageIds=[{"imageDigest": digest}]
        )
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] in ("ImageNotFoundException", "RepositoryNotFoundException"):
            raise not_built from None
        raise
