"""`make image` against the embedded AWS: stack outputs, source upload, CodeBuild start and follow, ECR check."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from lora_image_build import SOURCE_KEY, source_zip
from lora_image_build.codebuild import ImageBuildError, build_in_codebuild, follow_build

REGION = "us-east-1"
BUCKET = "pipeline-bucket"
REPOSITORY = "sdxl-lora-trainer"
PROJECT = "sdxl-lora-image-build"


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
        repository_uri = session.client("ecr").create_repository(repositoryName=REPOSITORY)["repository"][
            "repositoryUri"
        ]
        session.client("codebuild").create_project(
            name=PROJECT,
            source={"type": "S3", "location": f"{BUCKET}/{SOURCE_KEY}"},
            artifacts={"type": "NO_ARTIFACTS"},
            environment={
                "type": "LINUX_CONTAINER",
                "image": "aws/codebuild/standard:7.0",
                "computeType": "BUILD_GENERAL1_LARGE",
                "privilegedMode": True,
                "environmentVariables": [
                    {"name": "IMAGE_REPO_URI", "value": repository_uri},
                    {"name": "IMAGE_TAG", "value": "v1"},
                ],
            },
            serviceRole="arn:aws:iam::123456789012:role/codebuild",
        )
        outputs = {
            "BucketName": BUCKET,
            "TrainingImageRepositoryUri": repository_uri,
            "ImageBuildProjectName": PROJECT,
        }
        session.client("cloudformation").create_stack(StackName="lora", TemplateBody=_stack_template(outputs))
        yield session


def _push_image(session: boto3.session.Session, tag: str) -> None:
    """What the buildspec's `docker push` does; the embedded CodeBuild runs no commands."""
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}
    session.client("ecr").put_image(
        repositoryName=REPOSITORY, imageManifest=json.dumps(manifest), imageTag=tag
    )


def test_build_uploads_the_context_follows_the_phases_and_finds_the_image(
    session: boto3.session.Session,
) -> None:
    _push_image(session, "v1")
    messages: list[str] = []

    image = build_in_codebuild(session, "lora", source_zip(), None, messages.append, poll_seconds=0)

    assert image.startswith(
        f"{session.client('ecr').describe_repositories()['repositories'][0]['repositoryUri']}@sha256:"
    )
    uploaded = session.client("s3").get_object(Bucket=BUCKET, Key=SOURCE_KEY)["Body"].read()
    names = zipfile.ZipFile(io.BytesIO(uploaded)).namelist()
    assert {"buildspec.yml", "Dockerfile", "train", "lora_trainer/entrypoint.py"} <= set(names)
    assert "lora_pipeline/safetensors_lora.py" in names
    phases = " ".join(messages)
    assert "submitted" in phases and "build" in phases and "completed" in phases
    assert any("image in ECR" in m and ":v1" in m for m in messages)


def test_missing_image_after_a_successful_build_is_an_error(session: boto3.session.Session) -> None:
    with pytest.raises(ImageBuildError, match="no image tagged 'v2'"):
        build_in_codebuild(session, "lora", source_zip(), "v2", lambda _: None, poll_seconds=0)


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
