"""The smoke trainer: a few real LoRA steps on the dataset, on a tiny random SDXL-shaped model, on CPU.

It takes the same options as sd-scripts for what the entrypoint decides (config file, data, output, resume,
sample prompts) and honours the same contract: the dataset rules of sd-scripts (including "No data found" and
exit 0 when no subset folder is usable), `<output_name>-<NNNNNN>-state` / `<output_name>-step<NNNNNNNN>-state`
directories written by `accelerate` with `train_state.json`, resume with the step count kept, samples in
`<output_dir>/sample/`, and a Kohya-format `<output_name>.safetensors` with sd-scripts' metadata. The result
proves the pipeline, not a style: the base model is random.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from lora_pipeline.training_metrics import TrainingProgress, format_metric_line
from lora_trainer.kohya_command import read_kohya_config

IMAGE_EXTENSIONS = frozenset(
    ext for e in (".png", ".jpg", ".jpeg", ".webp", ".bmp") for ext in (e, e.upper())
)
DEFAULT_STEPS = 10
MAX_RANK = 8
MAX_BATCH = 4
UNET_TARGETS = (
    r".*attentions\.\d+\.(proj_in|proj_out"
    r"|transformer_blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)"
    r"|transformer_blocks\.\d+\.ff\.net\.(0\.proj|2))"
)
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
SAVE_DTYPES = {"float": "float32", "fp16": "float16", "bf16": "bfloat16"}
SMOKE_COMMENT = "smoke trainer: tiny random SDXL-shaped model; proves the pipeline, not usable for images"


@dataclass(frozen=True)
class TrainingImage:
    path: Path
    caption: str
    repeats: int
    subset: str


def find_training_images(train_data_dir: Path, caption_extension: str) -> list[TrainingImage]:
    """The images sd-scripts would train on: `<repeats>_<class tokens>/` folders, caption files over tokens."""
    images = []
    for folder in sorted(p for p in train_data_dir.iterdir() if p.is_dir()):
        repeats_text, _, class_tokens = folder.name.partition("_")
        if not repeats_text.isdigit():
            print(
                f"WARNING: skipping folder {folder.name}: the name does not start with <repeats>_", flush=True
            )
            continue
        if int(repeats_text) < 1:
            continue
        for file in sorted(folder.iterdir()):
            if file.suffix not in IMAGE_EXTENSIONS:
                continue
            caption_file = file.with_suffix(caption_extension)
            caption = class_tokens
            if caption_file.is_file():
                lines = caption_file.read_text(encoding="utf-8").splitlines()
                if not lines or not lines[0].strip():
                    raise ValueError(f"caption file {caption_file} is empty")
                caption = lines[0].strip()
            images.append(TrainingImage(file, caption, int(repeats_text), folder.name))
    return images


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config_file", type=Path, required=True)
    parser.add_argument("--train_data_dir", type=Path, required=True)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--output_name", required=True)
    parser.add_argument("--max_train_steps", type=int, default=None)
    parser.add_argument("--resume", type=Path, default=None)
    parser.add_argument("--sample_prompts", type=Path, default=None)
    return parser.parse_args(argv)


class _StopRequest:
    """SIGTERM ends the run after the current step, so a state being written is finished first."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        print("SIGTERM received: stopping after the current step", flush=True)
        self.requested = True


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    stop = _StopRequest()
    config = read_kohya_config(args.config_file)
    images = find_training_images(args.train_data_dir, str(config.get("caption_extension", ".caption")))
    if not images:
        # sd-scripts' behaviour, kept on purpose: the entrypoint must catch it by the missing output file.
        print(
            "No data found. Please verify arguments (train_data_dir must be the parent of folders with images)"
        )
        return 0
    # Heavy imports after the cheap checks: they take seconds.
    from lora_trainer.smoke_run import SmokeRun

    run = SmokeRun(args, config, images)
    return run.train(stop=lambda: stop.requested)


def metadata_for(
    config: dict[str, Any],
    args: argparse.Namespace,
    images: list[TrainingImage],
    *,
    rank: int,
    alpha: float,
    steps: int,
    epoch: int,
    total_steps: int,
    steps_per_epoch: int,
    started_at: float,
    unet_only: bool,
) -> dict[str, str]:
    """sd-scripts' `ss_*` training metadata and the SAI `modelspec.*` keys, as strings."""
    tag_frequency: dict[str, dict[str, int]] = {}
    for image in images:
        counts = tag_frequency.setdefault(image.subset, {})
        for tag in (t.strip() for t in image.caption.split(",")):
            if tag:
                counts[tag] = counts.get(tag, 0) + 1
    dataset_dirs = {
        subset: {"n_repeats": next(i.repeats for i in images if i.subset == subset), "img_count": count}
        for subset, count in _count_by_subset(images).items()
    }
    finished = time.time()
    metadata = {
        "ss_session_id": str(random.randint(0, 2**32)),
        "ss_training_started_at": str(started_at),
        "ss_training_finished_at": str(finished),
        "ss_output_name": args.output_name,
        "ss_learning_rate": str(config.get("learning_rate", 1e-4)),
        "ss_unet_lr": str(config.get("unet_lr", config.get("learning_rate", 1e-4))),
        "ss_text_encoder_lr": str(config.get("text_encoder_lr", config.get("learning_rate", 1e-4))),
        "ss_num_train_images": str(sum(i.repeats for i in images)),
        "ss_num_reg_images": "0",
        "ss_num_batches_per_epoch": str(steps_per_epoch),
        "ss_num_epochs": str(math.ceil(total_steps / steps_per_epoch)),
        "ss_epoch": str(epoch),
        "ss_steps": str(steps),
        "ss_max_train_steps": str(total_steps),
        "ss_gradient_accumulation_steps": "1",
        "ss_lr_scheduler": "constant",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_network_train_unet_only": str(unet_only),
        "ss_mixed_precision": "no",
        "ss_optimizer": "torch.optim.adamw.AdamW",
        "ss_resolution": "(64, 64)",
        "ss_caption_extension": str(config.get("caption_extension", ".caption")),
        "ss_seed": str(config.get("seed", 42)),
        "ss_v2": "False",
        "ss_base_model_version": "sdxl_base_v1-0",
        "ss_sd_model_name": "smoke-tiny-sdxl",
        "ss_training_comment": SMOKE_COMMENT,
        "ss_tag_frequency": json.dumps(tag_frequency),
        "ss_dataset_dirs": json.dumps(dataset_dirs),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": args.output_name,
        "modelspec.resolution": "1024x1024",
        "modelspec.prediction_type": "epsilon",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(finished)),
        "modelspec.description": SMOKE_COMMENT,
    }
    return metadata


def _count_by_subset(images: list[TrainingImage]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for image in images:
        counts[image.subset] = counts.get(image.subset, 0) + 1
    return counts


def progress_line(step: int, total: int, epoch: int, loss: float, lr: float, sec_per_step: float) -> str:
    eta = round(sec_per_step * (total - step))
    return format_metric_line(
        TrainingProgress(
            step=step,
            total_steps=total,
            epoch=epoch,
            loss=loss,
            lr=lr,
            sec_per_step=sec_per_step,
            eta_seconds=eta,
        )
    )


def state_dir_name(output_name: str, *, epoch: int | None = None, step: int | None = None) -> str:
    """sd-scripts' names: `<name>-<epoch:06d>-state` for epoch saves, `<name>-step<step:08d>-state` for steps."""
    if step is not None:
        return f"{output_name}-step{step:08d}-state"
    return f"{output_name}-{epoch:06d}-state"


if __name__ == "__main__":
    sys.exit(main())
