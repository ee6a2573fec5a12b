"""The metadata sd-scripts writes into a LoRA (`ss_*` training facts, SAI `modelspec.*`), for the smoke trainer."""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections import Counter
from typing import Any

from lora_pipeline.kohya_contract import caption_extension
from lora_pipeline.safetensors_lora import SMOKE_MODEL_NAME
from lora_trainer.smoke_dataset import TrainingImage

SMOKE_COMMENT = "smoke trainer: tiny random SDXL-shaped model; proves the pipeline, not usable for images"


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
        for subset, count in Counter(image.subset for image in images).items()
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
        "ss_caption_extension": caption_extension(config),
        "ss_seed": str(config.get("seed", 42)),
        "ss_v2": "False",
        "ss_base_model_version": "sdxl_base_v1-0",
        "ss_sd_model_name": SMOKE_MODEL_NAME,
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
    if args.metadata_trigger_phrase:
        metadata["modelspec.trigger_phrase"] = args.metadata_trigger_phrase
    return metadata
