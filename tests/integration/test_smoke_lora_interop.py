"""The smoke trainer's LoRA is a Kohya-format SDXL LoRA that diffusers loads onto an SDXL pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lora_pipeline.safetensors_lora import Architecture, inspect_lora_file
from lora_trainer.kohya_format import original_unet_path
from lora_trainer.tiny_sdxl import UNET_CONFIG, build_tiny_sdxl, build_tokenizer
from tests.corpus import make_good_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("interop")
    make_good_dataset(root / "dataset", size=(64, 64), settings=False)
    config = root / "kohya.toml"
    config.write_text("network_dim = 4\nnetwork_alpha = 4\nlearning_rate = 0.01\n")
    arguments = {
        "--config_file": config,
        "--train_data_dir": root / "dataset",
        "--output_dir": root / "out",
        "--output_name": "bluebot",
        "--max_train_steps": 3,
    }
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lora_trainer.smoke_cli",
            *(str(x) for pair in arguments.items() for x in pair),
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=True,
        capture_output=True,
        timeout=120,
    )
    return root / "out" / "bluebot.safetensors"


def _render(pipeline: object) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipeline(  # type: ignore[operator]
        "bluebot, a photo", num_inference_steps=2, height=64, width=64, generator=generator, output_type="np"
    ).images[0]


def _lora_layers(model: torch.nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    return {
        name.split(".lora_B.")[0]: parameter
        for name, parameter in model.named_parameters()
        if f".lora_B.{adapter}." in name
    }


def test_diffusers_loads_every_module_where_kohya_names_it_and_the_output_changes(
    smoke_lora: Path, tmp_path: Path
) -> None:
    _, summary = inspect_lora_file(smoke_lora, Architecture.SMOKE)
    model = build_tiny_sdxl(seed=1, tokenizer_dir=tmp_path / "tokenizer")
    pipeline = model.pipeline()
    pipeline.set_progress_bar_config(disable=True)
    before = _render(pipeline)

    pipeline.load_lora_weights(str(smoke_lora), adapter_name="smoke")

    unet_layers = _lora_layers(model.unet, "smoke")
    assert len(unet_layers) == summary.unet_modules
    assert len(_lora_layers(model.text_encoder, "smoke")) == summary.te1_modules
    assert len(_lora_layers(model.text_encoder_2, "smoke")) == summary.te2_modules
    weights = load_file(smoke_lora)
    for module, lora_up in unet_layers.items():
        kohya = "lora_unet_" + original_unet_path(module, UNET_CONFIG["layers_per_block"]).replace(".", "_")
        assert torch.equal(lora_up, weights[f"{kohya}.lora_up.weight"]), module
    after = _render(pipeline)
    assert np.abs(after - before).max() > 1e-4, "the LoRA must change what the pipeline draws"


def test_tokenizer_made_from_the_captions_keeps_their_words_whole(tmp_path: Path) -> None:
    tokenizer = build_tokenizer(tmp_path, ["bluebot, a small blue robot", "bluebot at night"])
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("Bluebot at night, zq").input_ids)
    assert tokens == [
        "<|startoftext|>",
        "bluebot</w>",
        "at</w>",
        "night</w>",
        ",</w>",
        "z",
        "q</w>",
        "<|endoftext|>",
    ]
    assert tokenizer.bos_token_id == 512 and tokenizer.eos_token_id == 513
