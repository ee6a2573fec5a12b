"""The jobs `make kohya-check` and the GPU benchmark start: valid datasets laid out as SageMaker would.

The training itself runs in `make kohya-check` (CPU) and `benchmarks/gpu_train_step.py` (CUDA); these tests
keep their inputs valid, so neither breaks unnoticed when the rules change.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from kohya_check.__main__ import CHECK_CONFIG, CHECK_SETTINGS
from kohya_check.job import REPO, CheckFailed, lay_out_opt_ml, write_dataset


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_train_step", REPO / "benchmarks" / "gpu_train_step.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_train_step"] = module
    spec.loader.exec_module(module)
    return module


def test_kohya_check_job_trains_both_text_encoders_for_three_epochs(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "d", config=CHECK_CONFIG, settings=CHECK_SETTINGS, images=2, size=64)
    plan = lay_out_opt_ml(dataset, tmp_path / "opt-ml", Path("/models/sdxl"))
    assert (plan.epochs, plan.steps_per_epoch, plan.total_steps) == (3, 2, 6)
    assert plan.trains_text_encoders
    config = tmp_path / "opt-ml" / "input" / "config"
    hyperparameters = json.loads((config / "hyperparameters.json").read_text())
    assert hyperparameters["trainer"] == "kohya"
    assert hyperparameters["base_model"] == "/models/sdxl"
    assert set(json.loads((config / "inputdataconfig.json").read_text())) == {"train", "config"}
    channel = tmp_path / "opt-ml" / "input" / "data"
    kohya = tomllib.loads((channel / "config" / "kohya.toml").read_text())
    assert kohya["resolution"] == "256,256"
    assert "--w 256 --h 256 --s 2" in (channel / "config" / "prompts.txt").read_text()
    assert sorted(p.name for p in (channel / "train" / "1_bluebot").glob("*.caption")) == [
        "bluebot_00.caption",
        "bluebot_01.caption",
    ]


@pytest.mark.parametrize("name", ["default", "aws-blog"])
def test_gpu_benchmark_configs_are_valid_one_epoch_jobs(tmp_path: Path, name: str) -> None:
    benchmark = _benchmark()
    dataset = write_dataset(
        tmp_path / "d", config=benchmark.CONFIGS[name], settings=benchmark.SETTINGS, images=3, size=64
    )
    plan = lay_out_opt_ml(dataset, tmp_path / "opt-ml", Path("/models/sdxl"))
    assert plan.epochs == 1
    assert plan.total_steps == 3


def test_a_rejected_dataset_stops_the_job_before_training(tmp_path: Path) -> None:
    dataset = write_dataset(
        tmp_path / "d", config='resolution = "abc"\n', settings=CHECK_SETTINGS, images=1, size=64
    )
    with pytest.raises(CheckFailed, match="rejected"):
        lay_out_opt_ml(dataset, tmp_path / "opt-ml", Path("/models/sdxl"))
    assert not (tmp_path / "opt-ml").exists()
