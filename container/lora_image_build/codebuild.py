"""The CodeBuild side of `make image`: find the stack, upload the source, start the build, follow it, check ECR,
pin the pushed image's digest in the stack's SSM parameter (lora_pipeline.aws.training_image)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lora_image_build import SOURCE_KEY

STACK_OUTPUTS = (
    "BucketName",
    "TrainingImageRepositoryUri",
    "ImageBuildProjectName",
    "TrainingImageParameterName",
)


class ImageBuildError(Exception):
    """Something a user can act on; the message says what and how."""


@dataclass(frozen=True)
class BuildTarget:
    bucket: str
    repository_uri: str
    project_name: str
    image_parameter: str
    """The SSM parameter the validate step reads the training image from."""

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
    return BuildTarget(*(outputs[name] for name in STACK_OUTPUTS))


def upload_source(s3: Any, target: BuildTarget, archive: bytes) -> str:
    s3.put_object(Bucket=target.bucket, Key=SOURCE_KEY, Body=archive, ContentType="application/zip")
    return f"s3://{target.bucket}/{SOURCE_KEY}"


def unique_tag(archive: bytes, now: float) -> str:
    """`<UTC time>-<first 12 hex of the build context's sha256>`: a new tag for every build."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"{stamp}-{hashlib.sha256(archive).hexdigest()[:12]}"


def refuse_existing_tag(ecr: Any, target: BuildTarget, image_tag: str) -> None:
    """The repository's tags are immutable: ECR would refuse the push at the end of the build."""
    if _images_tagged(ecr, target, image_tag):
        raise ImageBuildError(
            f"{target.repository_uri} already has an image tagged {image_tag!r}, and its tags are immutable "
            "(every run uses one exact image). Pass a new TAG=..., or leave TAG out for a unique one."
        )


def start_build(codebuild: Any, target: BuildTarget, image_tag: str) -> str:
    """Start the project's build of `image_tag`; returns the build id."""
    overrides = [{"name": "IMAGE_TAG", "value": image_tag, "type": "PLAINTEXT"}]
    build = codebuild.start_build(projectName=target.project_name, environmentVariablesOverride=overrides)
    build_id: str = build["build"]["id"]
    return build_id


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


def _images_tagged(ecr: Any, target: BuildTarget, image_tag: str) -> list[dict[str, Any]]:
    try:
        images = ecr.describe_images(
            repositoryName=target.repository_name, imageIds=[{"imageTag": image_tag}]
        )
    except ecr.exceptions.ImageNotFoundException:
        return []
    details: list[dict[str, Any]] = images["imageDetails"]
    return details


def find_image(ecr: Any, target: BuildTarget, image_tag: str) -> dict[str, Any]:
    images = _images_tagged(ecr, target, image_tag)
    if not images:
        raise ImageBuildError(
            f"CodeBuild reported success but {target.repository_uri} has no image tagged {image_tag!r}. Check the "
            "post_build phase of the build log (docker push) and the project's ECR permissions."
        )
    return images[0]


def pin_image(ssm: Any, target: BuildTarget, image_uri: str) -> None:
    """Make `image_uri` (by digest) the image of every run that starts from now on."""
    ssm.put_parameter(Name=target.image_parameter, Value=image_uri, Type="String", Overwrite=True)


def build_in_codebuild(
    session: Any,
    stack_name: str,
    archive: bytes,
    image_tag: str | None,
    report: Callable[[str], None],
    poll_seconds: float = 10.0,
) -> str:
    """The whole `make image`; returns the pushed image's URI with its digest, now pinned for new runs.
    `image_tag` None: a unique tag (unique_tag)."""
    target = find_build_target(session.client("cloudformation"), stack_name)
    tag = image_tag or unique_tag(archive, time.time())
    ecr = session.client("ecr")
    refuse_existing_tag(ecr, target, tag)
    report(
        f"uploading {len(archive) / 1024:.0f} KiB of build context to {upload_source(session.client('s3'), target, archive)}"
    )
    codebuild = session.client("codebuild")
    build_id = start_build(codebuild, target, tag)
    report(f"started CodeBuild build {build_id} for {target.repository_uri}:{tag} (about 15-25 minutes)")
    follow_build(codebuild, build_id, report, poll_seconds)
    image = find_image(ecr, target, tag)
    size = image.get("imageSizeInBytes")
    report(
        f"image in ECR: {target.repository_uri}:{tag}" + (f", {size / 1e9:.2f} GB compressed" if size else "")
    )
    image_uri = f"{target.repository_uri}@{image['imageDigest']}"
    pin_image(session.client("ssm"), target, image_uri)
    report(f"pinned in {target.image_parameter}: runs that start from now on train with it")
    return image_uri
