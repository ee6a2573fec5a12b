"""The Kohya path of the entrypoint, through a real `accelerate launch`, with a stand-in for sdxl_train_network.py.

sd-scripts and a GPU are not available here: the stand-in records how it was called, draws sd-scripts' progress
bar and writes an SDXL LoRA, so everything around the trainer runs for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_pipeline.training_metrics import parse_metric_line
from tests.container_jobs import ENTRYPOINT, make_opt_ml, make_sd_scripts_stand_in

pytestmark = pytest.mark.slow


def test_kohya_job_runs_sd_scripts_through_accelerate_with_forced_paths(tmp_path: Path) -> None:
    sd_scripts = make_sd_scripts_stand_in(tmp_path / "sd-scripts")
    opt_ml = make_opt_ml(tmp_path / "opt_ml", prompts="a bluebot\n")
    hyperparameters = opt_ml / "input/config/hyperparameters.json"
    hyperparameters.write_text(json.dumps({**json.loads(hyperparameters.read_text()), "trainer": "kohya"}))
    (opt_ml / "input/data/model").mkdir()
    base_model = opt_ml / "input/data/model/sd_xl_base_1.0.safetensors"
    base_model.write_bytes(b"base model")

    result = subprocess.run(
        [sys.executable, str(ENTRYPOINT)],
        env={**os.environ, "OPT_ML": str(opt_ml), "SD_SCRIPTS_DIR": str(sd_scripts)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    call = json.loads((sd_scripts / "call.json").read_text())
    options = call["options"]
    assert options["pretrained_model_name_or_path"] == str(base_model)
    # Under checkpoints/: the latent caches sd-scripts writes next to the images survive a spot restart.
    assert options["train_data_dir"] == str(opt_ml / "checkpoints/dataset")
    assert options["output_dir"] == str(opt_ml / "checkpoints")
    assert options["tokenizer_cache_dir"] is not None and "sdpa" in options and "save_state" in options
    assert options["sample_every_n_epochs"] == "1" and "resume" not in options
    assert call["environment"]["HF_HUB_OFFLINE"] == "1", "a base model from S3 means no hub access"
    assert call["environment"]["ACCELERATE_MIXED_PRECISION"] == "no", "started by accelerate launch"
    progress = [p for line in result.stdout.splitlines() if (p := parse_metric_line(line))]
    assert (
        progress[-1].step == 3 and progress[-1].total_steps == 3 and progress[-1].loss == pytest.approx(0.13)
    )
    assert progress[-1].epoch == 1
    assert "steps:" not in result.stdout, "progress bar redraws are replaced by metric lines"
    assert (opt_ml / "model/bluebot.safetensors").read_bytes() == (
        sd_scripts / "lora.safetensors"
    ).read_bytes()
    # Published with the LoRA (model.tar.gz), no longer only in output.tar.gz.
    assert (opt_ml / "model/samples/bluebot_000001_00.png").exists()
