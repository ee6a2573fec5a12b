"""Every pin installs on a user's fresh machine: public versions only, and one list for the training image.

`make fresh-install-check` resolves the same files against the public registry with pip's configuration off.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE_REQUIREMENTS = REPO / "container" / "image-requirements.txt"
REQUIREMENT_FILES = [
    REPO / "requirements-dev.txt",
    REPO / "constraints.txt",
    REPO / "requirements-sam.txt",
    REPO / "requirements-checkov.txt",
    REPO / "layers" / "common" / "requirements.txt",
    IMAGE_REQUIREMENTS,
]
VENDORED_SD_SCRIPTS = REPO.parent / "shared" / "vendor" / "sd-scripts-v0.10.1.tar.gz"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(\[[\w,-]+\])?==(?P<version>[0-9][0-9A-Za-z.!]*)$")


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def sd_scripts_pin() -> tuple[str, str]:
    found = re.search(
        r"^# sd-scripts: (v[\d.]+) ([0-9a-f]{40})$", IMAGE_REQUIREMENTS.read_text(), re.MULTILINE
    )
    assert found, "image-requirements.txt names the sd-scripts tag and commit"
    return found[1], found[2]


@pytest.mark.parametrize("path", REQUIREMENT_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_pins_are_public_versions(path: Path) -> None:
    """A `+cpu` label or a local path exists only on the machine that wrote it."""
    for line in requirement_lines(path):
        assert not line.startswith("-"), f"{path.name}: pip option {line!r} (find-links, index, file)"
        assert PIN.match(line), f"{path.name}: {line!r} is not `name==public.version`"


def test_image_pin_list_is_complete_and_unique() -> None:
    names = [
        PIN.match(line)["name"].lower().replace("_", "-") for line in requirement_lines(IMAGE_REQUIREMENTS)
    ]  # type: ignore[index]
    assert len(names) == len(set(names))
    for package in ("torch", "torchvision", "accelerate", "diffusers", "transformers", "safetensors", "peft"):
        assert package in names, package


@pytest.mark.skipif(
    not VENDORED_SD_SCRIPTS.is_file(), reason="the vendored sd-scripts archive is not beside us"
)
def test_sd_scripts_pin_is_the_vendored_engine() -> None:
    _, commit = sd_scripts_pin()
    unzipped = subprocess.run(["gzip", "-dc", str(VENDORED_SD_SCRIPTS)], capture_output=True, check=True)
    archived = subprocess.run(
        ["git", "get-tar-commit-id"], input=unzipped.stdout, capture_output=True, check=True
    ).stdout.decode()
    assert archived.strip() == commit


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_reads_the_engine_pin_from_the_list() -> None:
    tag, commit = sd_scripts_pin()
    printed = subprocess.run(
        ["make", "-s", "--no-print-directory", "-f", "Makefile", "-f", "-", "show"],
        input="show:\n\t@echo $(SD_SCRIPTS_TAG) $(SD_SCRIPTS_COMMIT)\n",
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert printed.stdout.split() == [tag, commit]
