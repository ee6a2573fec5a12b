"""The base model must be SDXL: Hugging Face ids checked offline against what is known about them."""

from __future__ import annotations

import pytest

from lora_pipeline.base_model import check_hugging_face_id


@pytest.mark.parametrize(
    "model_id",
    ["stabilityai/stable-diffusion-xl-base-1.0", "cagliostrolab/animagine-xl-3.1", "stabilityai/sdxl-turbo"],
)
def test_known_sdxl_bases_pass(model_id: str) -> None:
    assert check_hugging_face_id(model_id, "pipeline.toml") is None


@pytest.mark.parametrize(
    ("model_id", "family"),
    [
        ("runwayml/stable-diffusion-v1-5", "1.5"),
        ("CompVis/stable-diffusion-v1-4", "1.4"),
        ("stabilityai/stable-diffusion-2-1", "2.1"),
        ("stabilityai/stable-diffusion-3.5-large", "3.5"),
        ("black-forest-labs/FLUX.1-dev", "FLUX"),
        ("stabilityai/stable-diffusion-xl-refiner-1.0", "refiner"),
        ("someone/my-sd15-finetune", "1.5"),  # by name pattern
    ],
)
def test_other_architectures_are_errors_that_name_sdxl_and_the_family(model_id: str, family: str) -> None:
    problem = check_hugging_face_id(model_id, "pipeline.toml")
    assert problem is not None and problem.code == "JOB_BASE_MODEL_NOT_SDXL"
    assert family in problem.message and "SDXL" in problem.message


@pytest.mark.parametrize("model_id", ["someone/my-finetune", "someone/flux-style-xl-merge"])
def test_unknown_ids_are_a_warning_that_they_cannot_be_checked_offline(model_id: str) -> None:
    problem = check_hugging_face_id(model_id, "pipeline.toml")
    assert problem is not None and problem.code == "JOB_BASE_MODEL_UNCHECKED"
    assert problem.severity == "warning" and "offline" in problem.message
