"""`python -m lora_image_build --stack NAME [--tag TAG]` (CodeBuild) or `--local [--tag TAG]` (Docker here)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lora_image_build import source_zip, stage_context
from lora_image_build.codebuild import ImageBuildError, build_in_codebuild

LOCAL_TAG = "sdxl-lora-trainer:dev"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lora_image_build", description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--stack", help="the deployed stack whose CodeBuild project builds the image")
    where.add_argument("--local", action="store_true", help="build with the Docker engine on this machine")
    where.add_argument("--zip", type=Path, help="only write the build context zip to this file")
    parser.add_argument(
        "--tag",
        help="image tag, new to the repository (default: <UTC time>-<context sha256>, or sdxl-lora-trainer:dev)",
    )
    parser.add_argument("--region", help="AWS region of the stack (default: the AWS configuration's)")
    return parser.parse_args(argv)


def _build_locally(tag: str) -> int:
    if shutil.which("docker") is None:
        print(
            "docker is not installed; use `make image STACK=<stack>` to build in AWS CodeBuild",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="training-image-") as context:
        stage_context(Path(context))
        return subprocess.run(["docker", "build", "--tag", tag, context], check=False).returncode


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if args.zip:
        args.zip.write_bytes(source_zip())
        print(f"wrote {args.zip}")
        return 0
    if args.local:
        return _build_locally(args.tag or LOCAL_TAG)
    import boto3

    try:
        image = build_in_codebuild(
            boto3.session.Session(region_name=args.region), args.stack, source_zip(), args.tag, print
        )
    except ImageBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"training image: {image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
