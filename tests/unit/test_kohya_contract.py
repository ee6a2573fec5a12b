"""`kohya_contract` is the one home of the Kohya facts, and `names` of the name rules: the smoke trainer reads
a dataset as the validator does, and no other module keeps its own copy of a rule."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import botocore.session
import pytest
from PIL import Image

from lora_pipeline.kohya_contract import (
    CONTAINER_OWNED_KEYS,
    PIPELINE_DECIDED_KEYS,
    SDXL_BASE_MODEL,
    caption_extension,
)
from lora_pipeline.names import OUTPUT_NAME_MAX, is_output_name, name_slug, safe_output_name
from lora_pipeline.run_names import execution_name, training_job_name
from lora_trainer.smoke_dataset import find_training_images

ROOT = Path(__file__).resolve().parents[2]
# The pipeline's own code; the embedded AWS emulates AWS's syntax and keeps its own patterns.
SOURCES = [
    path
    for folder in ("layers/common/lora_pipeline", "container/lora_trainer", "cli", "functions", "kohya_check")
    for path in sorted((ROOT / folder).rglob("*.py"))
]
HOMES = {
    ROOT / "layers/common/lora_pipeline/kohya_contract.py",
    ROOT / "layers/common/lora_pipeline/names.py",
}


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(path)


def test_the_smoke_trainer_trains_the_folders_sd_scripts_trains(tmp_path: Path) -> None:
    for folder in ("+5_signed", "05_zeros", "x_5", "0_none", "2_face"):
        _image(tmp_path / folder / "a.png")
    (tmp_path / "+5_signed" / "a.txt").write_text("a signed caption\n")
    _image(tmp_path / "2_face" / "me_1_2_3_4.png")
    (tmp_path / "2_face" / "me.txt").write_text("the face-crop caption\n")

    images = find_training_images(tmp_path, caption_extension({"caption_extension": "txt"}))

    found = {(image.subset, image.path.name): (image.repeats, image.caption) for image in images}
    assert found == {
        ("+5_signed", "a.png"): (5, "a signed caption"),
        ("05_zeros", "a.png"): (5, "zeros"),
        ("2_face", "a.png"): (2, "face"),
        ("2_face", "me_1_2_3_4.png"): (2, "the face-crop caption"),
    }


def test_the_keys_the_command_line_sets_are_never_taken_from_the_config() -> None:
    assert CONTAINER_OWNED_KEYS < PIPELINE_DECIDED_KEYS
    command_line = {"train_data_dir", "output_dir", "output_name", "logging_dir", "tokenizer_cache_dir"}
    command_line |= {"pretrained_model_name_or_path", "sdpa", "sample_prompts", "resume", "initial_step"}
    assert command_line <= PIPELINE_DECIDED_KEYS


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        *[("_x", True), ("dog_v1", True), ("a.b", True), ("x" * OUTPUT_NAME_MAX, True), ("x" * 101, False)],
        *[(".hidden", False), ("-option", False), ("a/b", False), ("a b", False), ("", False)],
    ],
)
def test_one_output_name_rule(name: str, valid: bool) -> None:
    assert is_output_name(name) is valid


@pytest.mark.parametrize("name", ["My Dogs (2024)", "__x--", "!!!", "d" * 300, "a" * 99 + "-b"])
def test_the_sanitised_output_name_passes_the_rule(name: str) -> None:
    assert is_output_name(safe_output_name(name))


@pytest.mark.parametrize("dataset", ["bluebot", "My Dogs (2024)", "__x--", "..", "ü" * 80, "a" * 200])
def test_job_and_execution_names_fit_what_the_services_accept(dataset: str) -> None:
    shapes = botocore.session.get_session().get_service_model("sagemaker").shape_for("TrainingJobName")
    job = training_job_name(dataset, "20261126-112430-3f9a", 9)
    assert re.fullmatch(shapes.metadata["pattern"], job) and len(job) <= shapes.metadata["max"]
    execution = execution_name(dataset, "20261126-112430-3f9a")
    assert re.fullmatch(r"[A-Za-z0-9-]{1,80}", execution)
    assert name_slug(dataset, 63) == name_slug(dataset, 63).strip("-") != ""


def _string_constants(tree: ast.AST) -> list[str]:
    """The strings the code uses (docstrings, which may name the id or a pattern in prose, left out)."""
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def _called_names(node: ast.AST) -> set[str]:
    names = set()
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            function = call.func
            names.add(function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", ""))
    return names


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_module_keeps_its_own_copy_of_a_contract_rule(path: Path) -> None:
    if path in HOMES:
        return
    tree = ast.parse(path.read_text(encoding="utf-8"))
    constants = _string_constants(tree)
    assert not [c for c in constants if SDXL_BASE_MODEL in c], (
        "the SDXL base id is kohya_contract.SDXL_BASE_MODEL"
    )
    called = _called_names(tree)
    # A name rule is a character class of letters and digits; they all live in lora_pipeline.names.
    patterns = [c for c in constants if "A-Za-z0-9" in c or "a-zA-Z0-9" in c]
    assert not (patterns and called & {"compile", "fullmatch", "match", "sub", "search"}), patterns
    # The owned keys are one set; another set naming them would drift from it.
    for node in ast.walk(tree):
        if isinstance(node, ast.Set):
            members = {e.value for e in node.elts if isinstance(e, ast.Constant)}
            assert not members & CONTAINER_OWNED_KEYS, f"a set of owned keys at line {node.lineno}"
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        inner = _called_names(function)
        # The folder rule `<repeats>_<class tokens>`: splitting at "_" and reading a number is parse_subset_folder.
        splits = any(
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr in ("split", "partition")
            and any(isinstance(a, ast.Constant) and a.value == "_" for a in call.args)
            for call in ast.walk(function)
        )
        assert not (splits and inner & {"isdigit", "int"}), f"{function.name} parses a subset folder name"
        assert "parse_resolution" not in function.name, (
            "resolution parsing is kohya_contract.parse_resolution"
        )
        assert "flatten" not in function.name or "config_entries" in inner, (
            f"{function.name} flattens a config without kohya_contract.config_entries"
        )
