"""The SDXL CLIP tokenizers built offline tokenize as CLIP does, and sd-scripts loads them from the cache.

Runs in `.venv-kohya` (`make kohya-tests`), which has open-clip-torch and sd-scripts' `library` package.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

pytest.importorskip("open_clip", reason="open-clip-torch is in the image's pins: run `make kohya-tests`")

from open_clip.tokenizer import SimpleTokenizer

from lora_trainer.tokenizer_cache import CLIP_VOCAB_SIZE, SDXL_TOKENIZERS, bake, build_sdxl_tokenizers

TEXTS = [
    "a photo of bluebot, a small blue robot waving on the moon",
    "Zkq Dog  on a BEACH at 5pm -- café naïve 🤖 <tag> (masterpiece:1.2)",
    "",
]


@pytest.fixture(scope="module")
def tokenizers():  # type: ignore[no-untyped-def]
    return build_sdxl_tokenizers()


def test_ids_equal_clips_own_tokenizer(tokenizers) -> None:  # type: ignore[no-untyped-def]
    reference = SimpleTokenizer()
    for text in TEXTS:
        expected = [reference.sot_token_id, *reference.encode(text), reference.eot_token_id]
        for tokenizer in tokenizers:
            assert tokenizer(text).input_ids == expected, text


def test_vocabulary_and_padding(tokenizers) -> None:  # type: ignore[no-untyped-def]
    vit_l, big_g = tokenizers
    assert len(vit_l) == len(big_g) == CLIP_VOCAB_SIZE
    assert vit_l.model_max_length == big_g.model_max_length == 77
    assert vit_l.pad_token == "<|endoftext|>"
    assert big_g.pad_token == "!"


def test_sd_scripts_loads_the_baked_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sdxl_train_util = pytest.importorskip("library.sdxl_train_util")
    baked = bake(tmp_path)
    assert [p.name for p in baked] == [model_id.replace("/", "_") for model_id in SDXL_TOKENIZERS]
    loaded = sdxl_train_util.load_tokenizers(argparse.Namespace(tokenizer_cache_dir=str(tmp_path)))
    assert [t.pad_token_id for t in loaded] == [49407, 0]
    reference = SimpleTokenizer()
    assert loaded[0](TEXTS[0]).input_ids[1:-1] == reference.encode(TEXTS[0])
