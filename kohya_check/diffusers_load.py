"""Load a Kohya SDXL LoRA into an SDXL pipeline with this environment's Diffusers, as users do.

`python -m kohya_check.diffusers_load BASE_MODEL_DIR LORA_FILE` builds the pipeline in fp16 on the CPU, calls
`load_lora_weights` (Diffusers converts Kohya's `lora_unet_*`/`lora_te*_*` keys itself) and counts the layers
that received the adapter. Exit 0 and a one-line summary when every Kohya module found its layer, else 1.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from safetensors import safe_open

PARTS = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}


def kohya_modules(lora_file: str) -> dict[str, int]:
    """Kohya modules per pipeline part, from the file's `<module>.lora_down.weight` keys."""
    with safe_open(lora_file, framework="pt") as handle:
        downs = [key for key in handle.keys() if key.endswith(".lora_down.weight")]  # noqa: SIM118
    return {part: sum(key.startswith(prefix) for key in downs) for part, prefix in PARTS.items()}


def adapted_layers(modules: Iterable[torch.nn.Module]) -> int:
    """Layers that peft wrapped with a LoRA adapter."""
    return sum(1 for module in modules if hasattr(module, "lora_A") and len(module.lora_A) > 0)


def main(base_model: str, lora_file: str) -> int:
    import diffusers

    pipeline = StableDiffusionXLPipeline.from_pretrained(base_model, torch_dtype=torch.float16)
    # Offline, Diffusers 0.32 needs the folder and the file name apart (it would look the file up on the hub).
    pipeline.load_lora_weights(str(Path(lora_file).parent), weight_name=Path(lora_file).name)
    expected = kohya_modules(lora_file)
    loaded = {part: adapted_layers(getattr(pipeline, part).modules()) for part in PARTS}
    print(
        f"diffusers {diffusers.__version__}: "
        + ", ".join(f"{part} {loaded[part]}/{expected[part]}" for part in PARTS)
        + " LoRA layers loaded"
    )
    return 0 if loaded == expected else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
