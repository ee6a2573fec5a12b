"""The two SDXL CLIP tokenizers, built offline, where sd-scripts' `--tokenizer_cache_dir` looks for them.

sd-scripts v0.10.1 (library/sdxl_train_util.py `load_tokenizers`) loads `openai/clip-vit-large-patch14` and
`laion/CLIP-ViT-bigG-14-laion2B-39B-b160k` from `<cache dir>/<model id with "/" replaced by "_">` when that
folder exists, and from the Hugging Face hub otherwise. Both are the same byte-level BPE: OpenAI CLIP's
vocabulary of 49,408 tokens, which open-clip-torch ships as `bpe_simple_vocab_16e6.txt.gz` (a registry package,
so nothing is fetched from the hub). They differ only in the padding token: `<|endoftext|>` for CLIP ViT-L,
`!` for OpenCLIP bigG (sd-scripts then forces its id to 0).

Run at image build time and by `make kohya-check`: `python -m lora_trainer.tokenizer_cache /opt/tokenizers`.
"""

from __future__ import annotations

import gzip
import json
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

SDXL_TOKENIZERS = ("openai/clip-vit-large-patch14", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k")
_PAD_TOKENS = {SDXL_TOKENIZERS[0]: "<|endoftext|>", SDXL_TOKENIZERS[1]: "!"}
CLIP_VOCAB_SIZE = 49408
_BYTE_TOKENS = 256
_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
# The vocabulary file holds more merges than CLIP uses; CLIP keeps the first ones that fill 49,408 tokens.
_MERGES_USED = CLIP_VOCAB_SIZE - 2 * _BYTE_TOKENS - len(_SPECIAL_TOKENS)


def cache_path(cache_dir: Path, model_id: str) -> Path:
    return cache_dir / model_id.replace("/", "_")


def byte_alphabet() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values, in vocabulary order.

    The printable Latin-1 bytes come first and stand for themselves; the other bytes follow in byte order,
    each mapped to the next code point from 256 up.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [byte for byte in range(_BYTE_TOKENS) if byte not in printable]
    return [chr(byte) for byte in printable] + [chr(256 + index) for index in range(len(others))]


def clip_bpe_files() -> tuple[dict[str, int], list[str]]:
    """The vocabulary (token -> id) and the merge rules of CLIP's BPE, read from open-clip-torch's file."""
    vocabulary_file = resources.files("open_clip").joinpath("bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.decompress(vocabulary_file.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 1 + _MERGES_USED]  # the first line is a version header
    alphabet = byte_alphabet()
    tokens = [*alphabet, *(symbol + "</w>" for symbol in alphabet)]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += _SPECIAL_TOKENS
    if len(tokens) != CLIP_VOCAB_SIZE:
        raise ValueError(f"open-clip-torch's vocabulary gave {len(tokens)} tokens, not {CLIP_VOCAB_SIZE}")
    return {token: index for index, token in enumerate(tokens)}, merges


def write_tokenizer_files(directory: Path, model_id: str) -> Path:
    """`vocab.json`, `merges.txt` and `tokenizer_config.json` for `model_id`, as CLIPTokenizer saves them."""
    from transformers import CLIPTokenizer

    vocabulary, merges = clip_bpe_files()
    with tempfile.TemporaryDirectory() as scratch:
        vocab_file = Path(scratch) / "vocab.json"
        merges_file = Path(scratch) / "merges.txt"
        vocab_file.write_text(json.dumps(vocabulary, ensure_ascii=False), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        tokenizer = CLIPTokenizer(
            str(vocab_file), str(merges_file), pad_token=_PAD_TOKENS[model_id], model_max_length=77
        )
        tokenizer.save_pretrained(str(directory))
    return directory


def build_sdxl_tokenizers() -> tuple[CLIPTokenizer, CLIPTokenizer]:
    """Both SDXL tokenizers as objects (for building a Diffusers pipeline)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        built = [
            CLIPTokenizer.from_pretrained(str(write_tokenizer_files(Path(scratch) / str(i), model_id)))
            for i, model_id in enumerate(SDXL_TOKENIZERS)
        ]
    return built[0], built[1]


def bake(cache_dir: Path) -> list[Path]:
    return [write_tokenizer_files(cache_path(cache_dir, model_id), model_id) for model_id in SDXL_TOKENIZERS]


if __name__ == "__main__":
    for path in bake(Path(sys.argv[1])):
        print(f"tokenizer saved to {path}")
