"""`make image` against the embedded AWS: stack outputs, source upload, CodeBuild start and follow, ECR check,
the digest pinned in SSM. The embedded CodeBuild runs no buildspec: `_BuildThatPushes` does its `docker push`."""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from lora_image_build import SOURCE_KEY, source_zip
from lora_image_build.codebuild import ImageBuildError, build_in_codebuild, follow_build
from lora_pipeline.aws.training_image import pinned_training_image

REGION = "us-east-1"
BUCKET = "pipeline-bucket"
REPOSITORY = "sdxl-lora-trainer"
PROJECT = "sdxl-lora-image-build"
PARAMETER = "/lora/training-image"
NOT_BUILT = "none yet: run make image"


def _stack_template(outputs: dict[str, str]) -> str:
    return json.dumps(
        {
            "Resources": {"Placeholder": {"Type": "AWS::SNS::Topic"}},
            "Outputs": {name: {"Value": value} for name, value in outputs.items()},
        }
    )


@pytest.fixture
def session() -> Iterator[boto3.session.Session]:
    with mock_aws():
        session = boto3.session.Session(region_name=REGION)
        session.client("s3").create_bucket(Bucket=BUCKET)
        repository_uri = session.client("ecr").create_repository(
            repositoryName=REPOSITORY, imageTagMutability="IMMUTABLE"
        )["repository"]["repositoryUri"]
        session.client("ssm").put_parameter(Name=PARAMETER, Value=NOT_BUILT, Type="String")
        session.client("codebuild").create_project(
            name=PROJECT,
            source={"type": "S3", "location": f"{BUCKET}/{SOURCE_KEY}"},
            artifacts={"type": "NO_ARTIFACTS"},
            environment={
                "type": "LINUX_CONTAINER",
                "image": "aws/codebuild/standard:7.0",
                "computeType": "BUILD_GENERAL1_LARGE",
                "privilegedMode": True,
                "environmentVariables": [{"name": "IMAGE_REPO_URI", "value": repository_uri}],
            },
            serviceRole="arn:aws:iam::123456789012:role/codebuild",
        )
        outputs = {
            "BucketName": BUCKET,
            "TrainingImageRepositoryUri": repository_uri,
            "ImageBuildProjectName": PROJECT,
            "TrainingImageParameterName": PARAMETER,
        }
        session.client("cloudformation").create_stack(StackName="lora", TemplateBody=_stack_template(outputs))
        yield session


def _push_image(session: boto3.session.Session, tag: str) -> None:
    """What the buildspec's `docker push` does; the embedded CodeBuild runs no commands."""
    layer = "sha256:" + hashlib.sha256(tag.encode()).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "layers": [{"digest": layer, "size": 1}],
    }
    session.client("ecr").put_image(
        repositoryName=REPOSITORY, imageManifest=json.dumps(manifest), imageTag=tag
    )


class _BuildThatPushes:
    """The session `make image` gets, whose CodeBuild pushes the IMAGE_TAG it was started with, as the
    project's buildspec would; `started` lists those tags."""

    def __init__(self, session: boto3.session.Session) -> None:
        self._session = session
        self.region_name = session.region_name
        self.started: list[str] = []

    def client(self, service: str) -> Any:
        real = self._session.client(service)
        if service != "codebuild":
            return real
        outer = self

        class CodeBuild:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def start_build(self, **request: Any) -> Any:
                (tag,) = [
                    v["value"] for v in request["environmentVariablesOverride"] if v["name"] == "IMAGE_TAG"
                ]
                outer.started.append(tag)
                _push_image(outer._session, tag)
                return real.start_build(**request)

        return CodeBuild()


def test_build_uploads_the_context_follows_the_phases_and_finds_the_image(
    session: boto3.session.Session,
) -> None:
    building = _BuildThatPushes(session)
    messages: list[str] = []

    image = build_in_codebuild(building, "lora", source_zip(), None, messages.append, poll_seconds=0)

    repository_uri = session.client("ecr").describe_repositories()["repositories"][0]["repositoryUri"]
    assert image.startswith(f"{repository_uri}@sha256:")
    (tag,) = building.started
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{12}", tag), "a new tag for every build"
    assert tag.endswith(hashlib.sha256(source_zip()).hexdigest()[:12])
    (pushed,) = session.client("ecr").describe_images(
        repositoryName=REPOSITORY, imageIds=[{"imageTag": tag}]
    )["imageDetails"]
    assert image == f"{repository_uri}@{pushed['imageDigest']}"
    assert pinned_training_image(session.client("ssm"), PARAMETER) == image
    uploaded = session.client("s3").get_object(Bucket=BUCKET, Key=SOURCE_KEY)["Body"].read()
    names = zipfile.ZipFile(io.BytesIO(uploaded)).namelist()
    assert {"buildspec.yml", "Dockerfile", "train", "lora_trainer/entrypoint.py"} <= set(names)
    assert "lora_pipeline/safetensors_lora.py" in names
    phases = " ".join(messages)
    assert "submitted" in phases and "build" in phases and "completed" in phases
    assert any("image in ECR" in m and f":{tag}" in m for m in messages)
    assert any(PARAMETER in m for m in messages)


def test_a_tag_already_in_the_repository_is_refused_before_building(session: boto3.session.Session) -> None:
    building = _BuildThatPushes(session)
    build_in_codebuild(building, "lora", source_zip(), "v1", lambda _: None, poll_seconds=0)
    pinned = pinned_training_image(session.client("ssm"), PARAMETER)

    with pytest.raises(ImageBuildError, match=r"already has an image tagged 'v1'.*immutable.*new TAG"):
        build_in_codebuild(building, "lora", source_zip(), "v1", lambda _: None, poll_seconds=0)
    assert building.started == ["v1"], "no second build was started"
    assert pinned_training_image(session.client("ssm"), PARAMETER) == pinned


def test_missing_image_after_a_successful_build_is_an_error(session: boto3.session.Session) -> None:
    with pytest.raises(ImageBuildError, match="no image tagged 'v2'"):
        build_in_codebuild(session, "lora", source_zip(), "v2", lambda _: None, poll_seconds=0)
    assert session.client("ssm").get_parameter(Name=PARAMETER)["Parameter"]["Value"] == NOT_BUILT


def test_unknown_stack_says_how_to_deploy(session: boto3.session.Session) -> None:
    with pytest.raises(ImageBuildError, match="sam deploy"):
        build_in_codebuild(session, "nope", source_zip(), None, lambda _: None, poll_seconds=0)


def test_stack_without_the_outputs_is_named(session: boto3.session.Session) -> None:
    session.client("cloudformation").create_stack(StackName="other", TemplateBody=_stack_template({"X": "y"}))
    with pytest.raises(ImageBuildError, match="ImageBuildProjectName"):
        build_in_codebuild(session, "other", source_zip(), None, lambda _: None, poll_seconds=0)


class _FailingCodeBuild:
    """A build that runs two polls and fails in its BUILD phase (the embedded CodeBuild always succeeds)."""

    def __init__(self) -> None:
        self.polls = 0

    def batch_get_builds(self, ids: list[str]) -> dict[str, object]:
        self.polls += 1
        phases = [{"phaseType": "SUBMITTED", "phaseStatus": "SUCCEEDED"}, {"phaseType": "BUILD"}]
        status = "IN_PROGRESS"
        if self.polls > 1:
            phases[1] |= {
                "phaseStatus": "FAILED",
                "contexts": [{"message": "COMMAND_EXECUTION_ERROR: exit 1"}],
            }
            status = "FAILED"
        return {
            "builds": [
                {
                    "id": ids[0],
                    "buildStatus": status,
                    "phases": phases,
                    "logs": {"deepLink": "https://logs/x"},
                }
            ]
        }


def test_failed_build_names_the_phase_the_error_and_the_log() -> None:
    messages: list[str] = []
    with pytest.raises(ImageBuildError) as failure:
        follow_build(_FailingCodeBuild(), "p:1", messages.append, poll_seconds=0)
    assert "FAILED" in str(failure.value) and "COMMAND_EXECUTION_ERROR" in str(failure.value)
    assert "https://logs/x" in str(failure.value)
    assert [m.split("] ")[1] for m in messages] == ["submitted", "build"]
