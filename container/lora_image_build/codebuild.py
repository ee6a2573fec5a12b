"""The CodeBuild side of `make image`: find the stack, upload the source, start the build, follow it, check ECR."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lora_image_build import SOURCE_KEY

STACK_OUTPUTS = ("BucketName", "TrainingImageRepositoryUri", "ImageBuildProjectName")


class ImageBuildError(Exception):
    """Something a user can act on; the message says what and how."""


@dataclass(frozen=True)
class BuildTarget:
    bucket: str
    repository_uri: str
    project_name: str

    @property
    def repository_name(self) -> str:
        return self.repository_uri.split("/", 1)[1]


def find_build_target(cloudformation: Any, stack_name: str) -> BuildTarget:
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except cloudformation.exceptions.ClientError as error:
        raise ImageBuildError(
            f"Stack {stack_name!r} was not found ({error.response['Error']['Message']}). Deploy it first with "
            "`sam build && sam deploy --guided`, or pass the right STACK= and AWS region (AWS_REGION)."
        ) from None
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    missing = [name for name in STACK_OUTPUTS if name not in outputs]
    if missing:
        raise ImageBuildError(
            f"Stack {stack_name!r} has no output(s) {', '.join(missing)}: it is not an sdxl-lora-pipeline stack, "
            "or it was deployed from an older template. Deploy the current template.yaml, then run again."
        )
    return BuildTarget(
        outputs["BucketName"], outputs["TrainingImageRepositoryUri"], outputs["ImageBuildProjectName"]
    )


def upload_source(s3: Any, target: BuildTarget, archive: bytes) -> str:
    s3.put_object(Bucket=target.bucket, Key=SOURCE_KEY, Body=archive, ContentType="application/zip")
    return f"s3://{target.bucket}/{SOURCE_KEY}"


def start_build(codebuild: Any, target: BuildTarget, image_tag: str | None) -> tuple[str, str]:
    """Start the project's build; returns the build id and the tag it pushes."""
    overrides = [{"name": "IMAGE_TAG", "value": image_tag, "type": "PLAINTEXT"}] if image_tag else []
    build = codebuild.start_build(projectName=target.project_name, environmentVariablesOverride=overrides)[
        "build"
    ]
    if image_tag is None:
        project = codebuild.batch_get_projects(names=[target.project_name])["projects"][0]
        variables = {
            v["name"]: v["value"] for v in project.get("environment", {}).get("environmentVariables", [])
        }
        image_tag = variables.get("IMAGE_TAG")
        if not image_tag:
            raise ImageBuildError(
                f"CodeBuild project {target.project_name} has no IMAGE_TAG variable; pass a tag (TAG=...) or "
                "deploy the current template.yaml."
            )
    return build["id"], image_tag


def follow_build(
    codebuild: Any,
    build_id: str,
    report: Callable[[str], None],
    poll_seconds: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Report each phase as it starts until the build completes; the finished build, or ImageBuildError."""
    reported: set[str] = set()
    started = time.monotonic()
    while True:
        build: dict[str, Any] = codebuild.batch_get_builds(ids=[build_id])["builds"][0]
        for phase in build.get("phases", []):
            name = phase["phaseType"]
            if name not in reported:
                reported.add(name)
                report(f"[{time.monotonic() - started:6.0f}s] {name.lower().replace('_', ' ')}")
        if build.get("buildComplete") or build["buildStatus"] != "IN_PROGRESS":
            break
        sleep(poll_seconds)
    if build["buildStatus"] != "SUCCEEDED":
        raise ImageBuildError(_failure_message(build))
    return build


def _failure_message(build: dict[str, Any]) -> str:
    failed = [p for p in build.get("phases", []) if p.get("phaseStatus") not in (None, "SUCCEEDED")]
    details = "; ".join(
        f"{p['phaseType']}: {c.get('message', '')}".strip()
        for p in failed
        for c in p.get("contexts", []) or [{}]
    )
    logs = build.get("logs", {}).get("deepLink", "the CodeBuild console")
    return (
        f"Image build {build['id']} ended {build['buildStatus']}"
        + (f" ({details})" if details else "")
        + f". The full log is at {logs}. Fix the cause and run `make image` again; nothing was pushed."
    )


def find_image(ecr: Any, target: BuildTarget, image_tag: str) -> dict[str, Any]:
    try:
        images = ecr.describe_images(
            repositoryName=target.repository_name, imageIds=[{"imageTag": image_tag}]
        )
    except ecr.exceptions.ImageNotFoundException:
        images = {"imageDetails": []}
    if not images["imageDetails"]:
        raise ImageBuildError(
            f"CodeBuild reported success but {target.repository_uri} has no image tagged {image_tag!r}. Check the "
            "post_build phase of the build log (docker push) and the project's ECR permissions."
        )
    detail: dict[str, Any] = images["imageDetails"][0]
    return detail


def build_in_codebuild(
    session: Any,
    stack_name: str,
    archive: bytes,
    image_tag: str | None,
    report: Callable[[str], None],
    poll_seconds: float = 10.0,
) -> str:
    """The whole `make image`; returns the pushed image's URI with its digest."""
    target = find_build_target(session.client("cloudformation"), stack_name)
    report(
        f"uploading {len(archive) / 1024:.0f} KiB of build context to {upload_source(session.client('s3'), target, archive)}"
    )
    codebuild = session.client("codebuild")
    build_id, tag = start_build(codebuild, target, image_tag)
    report(f"started CodeBuild build {build_id} for {target.repository_uri}:{tag} (about 15-25 minutes)")
    follow_build(codebuild, build_id, report, poll_seconds)
    image = find_image(session.client("ecr"), target, tag)
    size = image.get("imageSizeInBytes")
    report(
        f"image in ECR: {target.repository_uri}:{tag}" + (f", {size / 1e9:.2f} GB compressed" if size else "")
    )
    return f"{target.repository_uri}@{image['imageDigest']}"
