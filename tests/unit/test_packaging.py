"""The wheel declares what `lora-pipeline local` imports, pinned as the development environment pins it, and
the CLI names the install command when the `local` extra or the checkout is missing."""

from __future__ import annotations

import ast
import email
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lora_pipeline_cli import local
from lora_pipeline_cli.main import EXIT_USAGE, main

REPO = Path(__file__).resolve().parents[2]
FIRST_PARTY = {
    "lora_pipeline",
    "lora_pipeline_cli",
    "embedded_aws",
    "lora_trainer",
    "lora_image_build",
    "tests",
}
# What `lora-pipeline local` runs: the CLI, the embedded AWS, the handlers and their domain package in process,
# and the training container's entrypoint (`container/train` runs lora_trainer).
LOCAL_SOURCES = [
    REPO / "cli" / "lora_pipeline_cli",
    REPO / "embedded" / "embedded_aws",
    REPO / "layers" / "common" / "lora_pipeline",
    REPO / "functions",
    REPO / "container" / "lora_trainer",
]


def distribution_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def wheel_metadata(tmp_path_factory: pytest.TempPathFactory) -> email.message.Message:
    """The METADATA the wheel carries, from the build backend's PEP 517 hook (`pip wheel` would also leave
    build/ in the checkout)."""
    out = tmp_path_factory.mktemp("metadata")
    hook = (
        f"from setuptools import build_meta; print(build_meta.prepare_metadata_for_build_wheel({str(out)!r}))"
    )
    built = subprocess.run([sys.executable, "-c", hook], cwd=REPO, check=True, capture_output=True, text=True)
    dist_info = built.stdout.strip().splitlines()[-1]
    return email.message_from_bytes((out / dist_info / "METADATA").read_bytes())


def test_the_wheel_ships_the_local_extra_pinned_as_the_development_environment(
    wheel_metadata: email.message.Message,
) -> None:
    assert local.EXTRA in wheel_metadata.get_all("Provides-Extra", [])
    extra = [
        requirement.split(";", 1)[0].strip()
        for requirement in wheel_metadata.get_all("Requires-Dist", [])
        if re.search(rf"""extra\s*==\s*["']{local.EXTRA}["']""", requirement)
    ]
    development = {
        normalized(distribution_name(line)): line
        for line in (REPO / "requirements-dev.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert extra, "the wheel declares the local extra's requirements"
    for requirement in extra:
        assert development.get(normalized(distribution_name(requirement))) == requirement.replace(" ", "")


def _imported_modules(folder: Path) -> set[str]:
    found: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return found


def _installed_closure(requirements: list[str]) -> set[str]:
    """The distributions `requirements` install (as installed here): each one's dependencies, following only
    the extras a requirement asks for."""
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        name = normalized(distribution_name(requirement))
        extras = (
            set(re.findall(r"[\w-]+", requirement.split("[", 1)[1].split("]")[0]))
            if "[" in requirement
            else set()
        )
        if name in seen and not extras:
            continue
        seen.add(name)
        try:
            dependencies = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for dependency in dependencies:
            asked = re.search(r"""extra\s*==\s*["']([\w-]+)["']""", dependency)
            if asked is None or asked[1] in extras:
                todo.append(dependency.split(";", 1)[0])
    return seen


def test_every_module_lora_pipeline_local_imports_is_installed_by_the_package_and_its_local_extra(
    wheel_metadata: email.message.Message,
) -> None:
    declared = [r.split(";", 1)[0] for r in wheel_metadata.get_all("Requires-Dist", [])]
    installed = _installed_closure(declared)
    providers = importlib.metadata.packages_distributions()
    third_party = set().union(*map(_imported_modules, LOCAL_SOURCES)) - FIRST_PARTY - sys.stdlib_module_names
    uncovered = {
        module: providers.get(module)
        for module in sorted(third_party)
        if not any(normalized(d) in installed for d in providers.get(module, []))
    }
    assert uncovered == {}


def test_local_without_its_extra_names_the_missing_packages_and_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = importlib.metadata.version

    def version(name: str) -> str:
        if name in ("moto", "aws-sam-translator"):
            raise importlib.metadata.PackageNotFoundError(name)
        return shipped(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert main(["local"]) == EXIT_USAGE
    assert capsys.readouterr().err == (
        "lora-pipeline: `lora-pipeline local` needs the packages of the `local` extra; not installed: moto, "
        "aws-sam-translator. Run `pip install -e '.[local]'` in the repository checkout.\n"
    )


def test_local_outside_a_checkout_says_to_install_from_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(local, "TEMPLATE", tmp_path / "template.yaml")
    assert main(["local"]) == EXIT_USAGE
    error = capsys.readouterr().err
    assert f"{tmp_path / 'template.yaml'} does not exist" in error
    assert "Clone the repository and run `pip install -e '.[local]'` in it." in error
