"""A tiny SDXL-shaped model, built from configs with random weights: nothing is downloaded.

It has SDXL's structure where the LoRA format depends on it: a U-Net with `layers_per_block = 2`, a plain first
level and cross-attention levels after it, linear projections, the "text_time" added conditioning, and two CLIP
text encoders (the second with a projection) whose penultimate hidden states are concatenated. Only the widths
are tiny, so the smoke trainer's LoRA keys are real SDXL Kohya keys (`input_blocks_4_1_...`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

IMAGE_SIZE = 64
TEXT_HIDDEN = 32
TIME_EMBED_DIM = 8
MAX_CAPTION_WORDS = 2000

UNET_CONFIG: dict[str, Any] = {
    "sample_size": IMAGE_SIZE // 2,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (32, 64),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (2, 4),
    "transformer_layers_per_block": (1, 2),
    "use_linear_projection": True,
    "cross_attention_dim": 2 * TEXT_HIDDEN,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": TIME_EMBED_DIM,
    # six size/crop conditioning numbers, each embedded, plus the pooled text embedding
    "projection_class_embeddings_input_dim": 6 * TIME_EMBED_DIM + TEXT_HIDDEN,
    "norm_num_groups": 32,
}
VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "latent_channels": 4,
    "sample_size": IMAGE_SIZE,
}
TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": TEXT_HIDDEN,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "max_position_embeddings": 77,
    "projection_dim": TEXT_HIDDEN,
    "hidden_act": "gelu",
    "bos_token_id": 512,
    "eos_token_id": 513,
    "pad_token_id": 513,
}
SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "timestep_spacing": "leading",
    "steps_offset": 1,
}


def _byte_symbols() -> list[str]:
    """One printable symbol per byte value, the alphabet of CLIP's byte-level BPE."""
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    symbols = []
    shifted = 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def _word_merges(captions: Iterable[str]) -> list[tuple[str, str]]:
    """BPE merges that join each caption word letter by letter, so known words become single tokens.

    CLIP's pre-tokenizer cuts text into runs of letters, single digits and punctuation; only lower-case ASCII
    letter runs get merges (anything else still tokenizes, byte by byte).
    """
    words = sorted({word for caption in captions for word in re.findall(r"[a-z]+", caption.lower())})
    merges: dict[tuple[str, str], None] = {}
    for word in words[:MAX_CAPTION_WORDS]:
        pieces = [*word[:-1], word[-1] + "</w>"]
        joined = pieces[0]
        for piece in pieces[1:]:
            merges[(joined, piece)] = None
            joined += piece
    return list(merges)


def build_tokenizer(directory: Path, captions: Iterable[str] = ()) -> CLIPTokenizer:
    """A CLIP tokenizer made here: a byte vocabulary (every text tokenizes) plus the captions' words.

    Ids 0-511 are the bytes alone and ending a word, 512 and 513 the start and end markers, then one id per
    merge; TEXT_ENCODER_CONFIG's marker ids rely on that order.
    """
    symbols = _byte_symbols()
    merges = _word_merges(captions)
    tokens = [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]
    tokens += [first + second for first, second in merges]
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.json"
    merges_file = directory / "merges.txt"
    vocab_file.write_text(json.dumps({token: index for index, token in enumerate(tokens)}), encoding="utf-8")
    merges_file.write_text(
        "\n".join(["#version: 0.2", *(f"{first} {second}" for first, second in merges)]) + "\n",
        encoding="utf-8",
    )
    return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)


@dataclass
class TinySdxl:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer

    def pipeline(self) -> StableDiffusionXLPipeline:
        return StableDiffusionXLPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            text_encoder_2=self.text_encoder_2,
            tokenizer=self.tokenizer,
            tokenizer_2=self.tokenizer_2,
            unet=self.unet,
            scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG),
        )


def build_tiny_sdxl(seed: int, tokenizer_dir: Path, captions: Iterable[str] = ()) -> TinySdxl:
    """Random weights from `seed`: the same seed and captions give the same model."""
    tokenizer = build_tokenizer(tokenizer_dir, captions)
    torch.manual_seed(seed)
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), **TEXT_ENCODER_CONFIG)
    return TinySdxl(
        unet=UNet2DConditionModel(**UNET_CONFIG),
        vae=AutoencoderKL(**VAE_CONFIG),
        text_encoder=CLIPTextModel(text_config),
        text_encoder_2=CLIPTextModelWithProjection(text_config),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
    )
