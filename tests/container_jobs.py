"""A SageMaker-shaped `/opt/ml` tree in a temporary folder, and the training entrypoint run on it for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.corpus import make_good_dataset

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
    config = root / "input" / "config"
    config.mkdir(parents=True)
    hyperparameters = {
        "trainer": "smoke",
        "output_name": "bluebot",
        "dataset": "bluebot",
        "run_id": "run-1",
        "max_steps": str(max_steps),
    }
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    dataset = root / "input" / "data" / "train"
    make_good_dataset(dataset, subsets=subsets, size=(64, 64))
    channel = root / "input" / "data" / "config"
    channel.mkdir(parents=True)
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
