"""A base model with the full SDXL 1.0 architecture and random weights, built offline and cached.

The configuration values are the public ones of `stabilityai/stable-diffusion-xl-base-1.0` (its `unet/`,
`text_encoder/`, `text_encoder_2/`, `vae/` and `scheduler/` config.json files). The model is saved as a Diffusers
folder in fp16 (about 7 GB), which sd-scripts loads with `StableDiffusionXLPipeline.from_pretrained`
(library/sdxl_train_util.py `_load_target_model`) and converts to its own U-Net: the LoRA it trains has the
same 722 U-Net and 264 text-encoder modules as one trained on the real SDXL base.

Run in an environment with diffusers and transformers (`.venv-kohya`):
`python -m kohya_check.sdxl_random [CACHE_DIR]` prints the folder, building it only when it is not cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": False,
    "use_linear_projection": True,
}
TEXT_ENCODER_CONFIG: dict[str, Any] = {  # CLIP ViT-L/14's text tower
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
}
TEXT_ENCODER_2_CONFIG: dict[str, Any] = {  # OpenCLIP ViT-bigG/14's text tower, with its projection
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
}
VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
}
SCHEDULER_CONFIG: dict[str, Any] = {  # EulerDiscreteScheduler
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}
SEED = 0
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sdxl-lora-pipeline"


def model_key() -> str:
    """Changes whenever a config value or the seed changes, so a stale cache is never used."""
    facts = [UNET_CONFIG, TEXT_ENCODER_CONFIG, TEXT_ENCODER_2_CONFIG, VAE_CONFIG, SCHEDULER_CONFIG, SEED]
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]


def cached_model_dir(cache_dir: Path = DEFAULT_CACHE) -> Path:
    return cache_dir / f"sdxl-random-{model_key()}"


def build(destination: Path) -> Path:
    """Write the Diffusers folder to `destination` (replaced atomically); returns it."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lora_trainer.tokenizer_cache import build_sdxl_tokenizers

    torch.manual_seed(SEED)
    staging = destination.with_name(destination.name + ".partial")
    for leftover in (staging, destination):
        shutil.rmtree(leftover, ignore_errors=True)
    tokenizer, tokenizer_2 = build_sdxl_tokenizers()
    with torch.no_grad():
        pipeline = StableDiffusionXLPipeline(
            vae=AutoencoderKL(**VAE_CONFIG),
            text_encoder=CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG)),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_ENCODER_2_CONFIG)),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=UNet2DConditionModel(**UNET_CONFIG),
            scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG),
        )
        pipeline.to(torch.float16)
        pipeline.save_pretrained(str(staging), safe_serialization=True)
    staging.replace(destination)
    return destination


def ensure_model(cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The cached model folder, built first when it is missing."""
    target = cached_model_dir(cache_dir)
    if not (target / "model_index.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        print(f"building a random-weight SDXL base model in {target} (once; about 7 GB)", flush=True)
        build(target)
    return target


if __name__ == "__main__":
    print(ensure_model(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CACHE))
