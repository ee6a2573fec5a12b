"""A SageMaker-shaped `/opt/ml` tree in a temporary folder, and the training entrypoint run on it for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lora_trainer.sagemaker_env import OptMl
from tests.corpus import make_good_dataset
from tests.lora_files import sdxl_lora_bytes

REPO = Path(__file__).resolve().parent.parent
ENTRYPOINT = REPO / "container" / "train"

SMOKE_KOHYA_TOML = """\
output_name = "bluebot"
caption_extension = ".caption"
resolution = "1024,1024"
network_module = "networks.lora"
network_dim = 4
network_alpha = 2
learning_rate = 0.001
train_batch_size = 2
"""


def make_opt_ml(
    root: Path,
    *,
    kohya_toml: str = SMOKE_KOHYA_TOML,
    prompts: str | None = None,
    max_steps: int = 4,
    subsets: dict[str, int] | None = None,
) -> Path:
    """`root` laid out as SageMaker lays out /opt/ml for a smoke job on a small good dataset."""
    layout = OptMl(root)
    hyperparameters = {
        "trainer": "smoke",
        "output_name": "bluebot",
        "dataset": "bluebot",
        "run_id": "run-1",
        "max_steps": str(max_steps),
    }
    layout.write_job_config(hyperparameters, ["train", "config"])
    make_good_dataset(layout.channel("train"), subsets=subsets, size=(64, 64))
    channel = layout.channel("config")
    (channel / "kohya.toml").write_text(kohya_toml)
    if prompts is not None:
        (channel / "prompts.txt").write_text(prompts)
    return root


def entrypoint_environment(opt_ml: Path) -> dict[str, str]:
    return {**os.environ, "OPT_ML": str(opt_ml), "HF_HUB_OFFLINE": "1"}


def start_entrypoint(opt_ml: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ENTRYPOINT)],
        env=entrypoint_environment(opt_ml),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_entrypoint(opt_ml: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ENTRYPOINT)],
        env=entrypoint_environment(opt_ml),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# sd-scripts and a GPU are not available here: this stand-in for sdxl_train_network.py records how it was
# called, draws sd-scripts' progress bar and writes an SDXL LoRA, so everything around the trainer runs for real.
SD_SCRIPTS_STAND_IN = """\
import json, os, shutil, sys
from pathlib import Path

here = Path(__file__).parent
argv = sys.argv[1:]
options = {}
for index, token in enumerate(argv):
    if token.startswith("--"):
        value = argv[index + 1] if index + 1 < len(argv) and not argv[index + 1].startswith("--") else None
        options[token[2:]] = value
seen = {name: os.environ.get(name) for name in ("HF_HUB_OFFLINE", "ACCELERATE_MIXED_PRECISION", "OMP_NUM_THREADS")}
(here / "call.json").write_text(json.dumps({"options": options, "environment": seen}))
print("epoch 1/1", flush=True)
for step in (1, 2, 3):
    sys.stderr.write(f"\\rsteps:  33%|###   | {step}/3 [00:0{step}<00:0{3 - step}, 1.00s/it, avr_loss=0.1{step}]")
    sys.stderr.flush()
output = Path(options["output_dir"])
shutil.copyfile(here / "lora.safetensors", output / (options["output_name"] + ".safetensors"))
(output / "sample").mkdir(exist_ok=True)
(output / "sample" / "bluebot_000001_00.png").write_bytes(b"png")
"""


def make_sd_scripts_stand_in(folder: Path) -> Path:
    """An sd-scripts "checkout" whose sdxl_train_network.py is the stand-in above."""
    folder.mkdir(parents=True)
    (folder / "sdxl_train_network.py").write_text(SD_SCRIPTS_STAND_IN)
    (folder / "lora.safetensors").write_bytes(sdxl_lora_bytes(rank=4))
    return folder
