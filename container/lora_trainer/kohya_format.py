"""PEFT LoRA weights of an SDXL model written as an sd-scripts (Kohya) LoRA file.

Kohya names a module after its path in Stability's original SDXL U-Net (`input_blocks.4.1...`, not diffusers'
`down_blocks.1.attentions.0...`) with dots turned into underscores, and stores `lora_down`/`lora_up` (PEFT's
`lora_A`/`lora_B`) plus an `alpha` number per module. A1111, ComfyUI and diffusers all read that layout.
"""

from __future__ import annotations

import re

import torch

PART_PREFIX = {"unet": "lora_unet_", "te1": "lora_te1_", "te2": "lora_te2_"}
_PEFT_SUFFIX = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}
_DOWN = re.compile(r"^down_blocks\.(\d+)\.attentions\.(\d+)\.")
_UP = re.compile(r"^up_blocks\.(\d+)\.attentions\.(\d+)\.")
_MID = re.compile(r"^mid_block\.attentions\.0\.")


def original_unet_path(diffusers_path: str, layers_per_block: int) -> str:
    """The module's path in the original SDXL U-Net.

    Each down level has `layers_per_block` (resnet, attention) pairs and then a downsampler, each up level one
    more pair: `input_blocks` count them all after the first convolution, `output_blocks` from zero.
    """
    if match := _DOWN.match(diffusers_path):
        level, index = int(match[1]), int(match[2])
        block = level * (layers_per_block + 1) + index + 1
        return f"input_blocks.{block}.1." + diffusers_path[match.end() :]
    if match := _UP.match(diffusers_path):
        level, index = int(match[1]), int(match[2])
        block = level * (layers_per_block + 1) + index
        return f"output_blocks.{block}.1." + diffusers_path[match.end() :]
    if match := _MID.match(diffusers_path):
        return "middle_block.1." + diffusers_path[match.end() :]
    raise ValueError(
        f"{diffusers_path} is not inside an attention block; this LoRA only targets attention blocks"
    )


def peft_lora_weights(model: torch.nn.Module, adapter: str = "default") -> dict[str, torch.Tensor]:
    """`<module>.lora_A.weight` / `<module>.lora_B.weight` of one adapter injected by PEFT."""
    marker_a, marker_b = f".lora_A.{adapter}.", f".lora_B.{adapter}."
    return {
        name.replace(f".{adapter}.", "."): parameter
        for name, parameter in model.named_parameters()
        if marker_a in name or marker_b in name
    }


def kohya_state_dict(
    peft_state: dict[str, torch.Tensor], part: str, alpha: float, layers_per_block: int, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """`peft_state` comes from `peft_lora_weights` of one model part ("unet", "te1", "te2")."""
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in peft_state.items():
        peft_suffix = ".".join(key.split(".")[-2:])
        if peft_suffix not in _PEFT_SUFFIX:
            raise ValueError(
                f"{key} is not a LoRA A/B weight; only plain LoRA layers can be written for Kohya"
            )
        module_path, suffix = key.removesuffix("." + peft_suffix), _PEFT_SUFFIX[peft_suffix]
        if part == "unet":
            module_path = original_unet_path(module_path, layers_per_block)
        else:
            # Kohya names text encoder modules from CLIPTextModel's inner `text_model`, which transformers 5
            # folded into CLIPTextModel itself (not into CLIPTextModelWithProjection).
            module_path = "text_model." + module_path.removeprefix("text_model.")
        module = PART_PREFIX[part] + module_path.replace(".", "_")
        converted[f"{module}.{suffix}"] = tensor.detach().to("cpu", dtype).contiguous()
        converted[f"{module}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    return converted
