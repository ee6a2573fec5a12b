"""Files written by other tools than sd-scripts, which the pipeline must accept (the smoke trainer uses diffusers)."""

from __future__ import annotations

import io

import torch
from diffusers.utils import convert_state_dict_to_kohya
from safetensors.torch import save

from lora_pipeline.safetensors_lora import check_lora_stream, read_safetensors_header, summarise_lora

PEFT_MODULES = {
    "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": (640, 640),
    "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k": (2048, 1280),
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": (768, 768),
    "text_encoder_2.text_model.encoder.layers.0.mlp.fc1": (1280, 5120),
}


def test_a_peft_lora_converted_by_diffusers_to_kohya_keys_is_an_sdxl_lora():
    state = {}
    for module, (in_features, out_features) in PEFT_MODULES.items():
        state[f"{module}.lora_A.weight"] = torch.zeros(8, in_features, dtype=torch.float16)
        state[f"{module}.lora_B.weight"] = torch.zeros(out_features, 8, dtype=torch.float16)
    data = save(convert_state_dict_to_kohya(state), metadata={"ss_base_model_version": "sdxl_base_v1-0"})

    summary = summarise_lora(read_safetensors_header(io.BytesIO(data), size=len(data)))

    assert (summary.unet_modules, summary.te1_modules, summary.te2_modules) == (2, 1, 1)
    assert summary.module_types == {"lora": 4} and summary.network_dim == 8


def test_the_full_output_check_accepts_a_trained_diffusers_converted_lora_with_integer_alphas():
    state = {}
    for module, (in_features, out_features) in PEFT_MODULES.items():
        state[f"{module}.lora_A.weight"] = torch.full((8, in_features), 0.01, dtype=torch.float16)
        state[f"{module}.lora_B.weight"] = torch.full((out_features, 8), 0.01, dtype=torch.float16)
    data = save(convert_state_dict_to_kohya(state), metadata={"ss_base_model_version": "sdxl_base_v1-0"})

    result = check_lora_stream(io.BytesIO(data), len(data))

    assert result.problems == []
    assert result.header is not None and "I64" in {t.dtype for t in result.header.tensors.values()}
    assert result.alphas == [8.0]
