"""Build the training image: in AWS CodeBuild (`make image STACK=<name>`) or with a local Docker (`make image-local`).

The build context is `container/` (Dockerfile, buildspec.yml, the `train` launcher, the `lora_trainer` package)
plus the domain package `lora_pipeline`, laid out as the image expects it. For CodeBuild it is zipped, uploaded
to `s3://<BucketName>/build/container-source.zip` (the project's S3 source), the build is started and followed
phase by phase, the pushed image is looked up in ECR and its digest pinned for new runs (an SSM parameter). The
stack's outputs `BucketName`, `TrainingImageRepositoryUri`, `ImageBuildProjectName` and
`TrainingImageParameterName` say where everything is.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTAINER_DIR = REPO_ROOT / "container"
DOMAIN_PACKAGE_DIR = REPO_ROOT / "layers" / "common" / "lora_pipeline"
SOURCE_KEY = "build/container-source.zip"
CONTEXT_FILES = ("Dockerfile", ".dockerignore", "buildspec.yml", "image-requirements.txt", "train")
CONTEXT_PACKAGES = {"lora_trainer": CONTAINER_DIR / "lora_trainer", "lora_pipeline": DOMAIN_PACKAGE_DIR}
EXECUTABLES = frozenset({"train"})
# Zip entries get one fixed time, so the same source gives the same zip (and the same S3 ETag).
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class ContextFile:
    name: str
    """Path inside the build context (POSIX)."""
    source: Path


def context_files() -> list[ContextFile]:
    """Every file of the build context, sorted: caches and compiled files left out."""
    files = [ContextFile(name, CONTAINER_DIR / name) for name in CONTEXT_FILES]
    for package, directory in CONTEXT_PACKAGES.items():
        files += [
            ContextFile(f"{package}/{path.relative_to(directory).as_posix()}", path)
            for path in _package(directory)
        ]
    return sorted(files, key=lambda f: f.name)


def _package(directory: Path) -> Iterator[Path]:
    for path in sorted(directory.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in {".pyc", ".pyo"}:
            yield path


def source_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in context_files():
            entry = zipfile.ZipInfo(file.name, date_time=_ZIP_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            mode = 0o755 if file.name in EXECUTABLES else 0o644
            entry.external_attr = (0o100000 | mode) << 16
            archive.writestr(entry, file.source.read_bytes())
    return buffer.getvalue()


def stage_context(destination: Path) -> Path:
    """The build context as a folder, for `docker build` on this machine."""
    with zipfile.ZipFile(io.BytesIO(source_zip())) as archive:
        for entry in archive.infolist():
            target = destination / entry.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(entry))
            target.chmod((entry.external_attr >> 16) & 0o777)
    return destination
