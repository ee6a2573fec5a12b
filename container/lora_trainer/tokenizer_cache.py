"""Bake the two SDXL CLIP tokenizers into the image, where sd-scripts' `--tokenizer_cache_dir` looks for them.

sd-scripts v0.10.1 loads `openai/clip-vit-large-patch14` and `laion/CLIP-ViT-bigG-14-laion2B-39B-b160k` from
`<cache dir>/<model id with "/" replaced by "_">` when that folder exists, and from the Hugging Face hub
otherwise. Run at image build time: `python -m lora_trainer.tokenizer_cache /opt/tokenizers`.
"""

from __future__ import annotations

import sys
from pathlib import Path

SDXL_TOKENIZERS = ("openai/clip-vit-large-patch14", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k")


def cache_path(cache_dir: Path, model_id: str) -> Path:
    return cache_dir / model_id.replace("/", "_")


def bake(cache_dir: Path) -> list[Path]:
    from transformers import CLIPTokenizer

    written = []
    for model_id in SDXL_TOKENIZERS:
        target = cache_path(cache_dir, model_id)
        CLIPTokenizer.from_pretrained(model_id).save_pretrained(str(target))
        written.append(target)
    return written


if __name__ == "__main__":
    for path in bake(Path(sys.argv[1])):
        print(f"tokenizer saved to {path}")
