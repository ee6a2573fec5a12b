from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from safetensors import safe_open

from lora_pipeline.safetensors_lora import (
    LoraFormatError,
    SafetensorsHeaderError,
    inspect_lora_file,
    read_safetensors_header,
    summarise_lora,
)
from tests.lora_files import kohya_metadata, lora_tensors, safetensors_bytes, sdxl_lora_bytes


def header_of(data: bytes) -> object:
    return read_safetensors_header(io.BytesIO(data), size=len(data))


def summary_of(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> object:
    return summarise_lora(
        header_of(safetensors_bytes(tensors, metadata if metadata is not None else kohya_metadata()))
    )


def raw_file(header: object, data: bytes = b"", *, length: int | None = None) -> bytes:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(encoded) if length is None else length) + encoded + data


def test_full_size_sdxl_lora_is_summarised_like_sd_scripts_writes_it(tmp_path):
    data = sdxl_lora_bytes(rank=4)
    path = tmp_path / "bluebot.safetensors"
    path.write_bytes(data)

    header, summary = inspect_lora_file(path)

    assert (summary.unet_modules, summary.te1_modules, summary.te2_modules) == (722, 72, 192)
    assert summary.text_encoder_modules == 264
    assert summary.module_types == {"lora": 986}
    assert (summary.network_dim, summary.ranks, summary.network_alpha) == (4, [4], 1.0)
    assert summary.base_model_version == "sdxl_base_v1-0"
    assert summary.architecture == "stable-diffusion-xl-v1-base/lora"
    assert (summary.output_name, summary.network_module) == ("bluebot", "networks.lora")
    assert summary.dtypes == ["F16"] and summary.tensor_count == 986 * 3
    assert summary.warnings == []
    assert header.file_size == len(data)
    with safe_open(path, framework="numpy") as reference:
        assert header.metadata == reference.metadata()
        assert set(header.tensors) == set(reference.keys())
    down = header.tensors["lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight"]
    assert (down.dtype, down.shape, down.nbytes) == ("F16", (4, 2048), 4 * 2048 * 2)


def test_reader_consumes_exactly_the_header_so_a_stream_can_continue_with_the_data():
    data = sdxl_lora_bytes(module_limit=3)
    stream = io.BytesIO(data)
    header = read_safetensors_header(stream)
    assert stream.tell() == 8 + header.header_size
    assert header.data_size == len(data) - stream.tell() == len(stream.read())


def test_unet_only_lora_has_no_text_encoder_modules_and_no_warning():
    summary = summary_of(lora_tensors(text_encoders=False))
    assert (summary.unet_modules, summary.text_encoder_modules, summary.warnings) == (722, 0, [])


def test_smoke_sized_lora_is_accepted_with_a_warning_about_the_module_count():
    summary = summary_of(lora_tensors(module_limit=20))
    assert summary.unet_modules == 20
    assert any("20 U-Net modules" in w and "722" in w for w in summary.warnings)


def test_text_encoder_counts_unlike_sd_scripts_give_a_warning():
    tensors = lora_tensors()
    for key in [k for k in tensors if k.startswith("lora_te2_text_model_encoder_layers_31_")]:
        del tensors[key]
    assert any("72 + 186" in w for w in summary_of(tensors).warnings)


def test_missing_base_model_metadata_and_wrong_stated_dim_are_warnings():
    summary = summary_of(lora_tensors(rank=8), {"ss_network_dim": "16", "ss_network_alpha": "Dynamic"})
    assert summary.network_alpha is None and summary.network_dim == 8
    assert any("cannot be confirmed" in w for w in summary.warnings)
    assert any("ss_network_dim says 16" in w for w in summary.warnings)


# SDXL layers (LyCORIS names its modules as sd-scripts does); their shapes are not checked for loha/lokr.
LOHA = "lora_unet_output_blocks_5_1_proj_out"
LOKR = "lora_te1_text_model_encoder_layers_11_mlp_fc1"


def test_loha_lokr_and_dora_modules_are_accepted_and_counted():
    tensors = lora_tensors(module_limit=2)
    one = np.ones((4, 8), dtype=np.float16)
    alpha = np.array(1.0, dtype=np.float16)
    for name in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"):
        tensors[f"{LOHA}.{name}"] = one
    tensors[f"{LOHA}.alpha"] = alpha
    tensors[f"{LOKR}.lokr_w1"] = one
    tensors[f"{LOKR}.lokr_w2_a"] = one
    tensors[f"{LOKR}.lokr_w2_b"] = np.ones((2, 8), dtype=np.float16)
    tensors[f"{LOKR}.alpha"] = alpha
    first_module = next(iter(tensors)).split(".")[0]
    tensors[f"{first_module}.dora_scale"] = np.ones((1, 8), dtype=np.float16)

    summary = summary_of(tensors)

    assert summary.module_types == {"lokr": 1, "lora": 2, "loha": 1}
    assert summary.ranks == [2, 4]


def test_locon_conv_modules_with_4d_weights_are_accepted():
    tensors = lora_tensors(module_limit=1)
    tensors["lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight"] = np.zeros((4, 320, 3, 3), np.float16)
    tensors["lora_unet_input_blocks_1_0_in_layers_2.lora_up.weight"] = np.zeros((320, 4, 1, 1), np.float16)
    tensors["lora_unet_input_blocks_1_0_in_layers_2.alpha"] = np.array(1.0, np.float16)
    summary = summary_of(tensors)
    assert (summary.unet_modules, summary.ranks) == (2, [4])


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["unet.down_blocks.1.attentions.0.proj_in.lora_A.weight"], "diffusers/PEFT-format LoRA"),
        (["unet.down_blocks.1.attentions.0.processor.to_k_lora.down.weight"], "diffusers/PEFT-format LoRA"),
        (["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"], "SD 1.x/2.x LoRA"),
        (
            ["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.decoder.conv_in.weight"],
            "full model",
        ),
        (["down_blocks.0.resnets.0.conv1.weight"], "full model checkpoint"),
        (["embedding.weight"], "no Kohya LoRA keys"),
    ],
)
def test_files_that_are_not_kohya_loras_are_named_for_what_they_are(keys, expected):
    tensors = {key: np.zeros((2, 2), dtype=np.float16) for key in keys}
    with pytest.raises(LoraFormatError, match=expected):
        summary_of(tensors)


def test_foreign_keys_next_to_lora_keys_are_rejected():
    tensors = lora_tensors(module_limit=2) | {"conditioner.embedders.0.weight": np.zeros(2, dtype=np.float16)}
    with pytest.raises(LoraFormatError, match=r"1 tensors are not Kohya LoRA keys.*conditioner"):
        summary_of(tensors)


def test_incomplete_module_is_rejected_naming_the_module_and_its_missing_key():
    tensors = lora_tensors(module_limit=3)
    victim = next(iter(tensors)).split(".")[0]
    del tensors[f"{victim}.alpha"]
    with pytest.raises(LoraFormatError, match=f"module '{victim}' is incomplete.*alpha"):
        summary_of(tensors)


def test_lora_down_and_up_with_different_ranks_are_rejected():
    tensors = lora_tensors(module_limit=1)
    module = next(iter(tensors)).split(".")[0]
    tensors[f"{module}.lora_up.weight"] = np.zeros((8, 2), dtype=np.float16)
    with pytest.raises(LoraFormatError, match="do not share a rank"):
        summary_of(tensors)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("ss_base_model_version", "sd_v1", "not SDXL"),
        ("modelspec.architecture", "flux-1-dev/lora", "not for SDXL"),
    ],
)
def test_metadata_naming_another_base_model_is_rejected(key, value, expected):
    with pytest.raises(LoraFormatError, match=expected):
        summary_of(lora_tensors(module_limit=2), kohya_metadata() | {key: value})


def test_a_file_without_tensors_is_not_a_lora():
    with pytest.raises(LoraFormatError, match="no tensors"):
        summarise_lora(header_of(raw_file({"__metadata__": {"a": "b"}})))


TENSOR = {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]}


MALFORMED = [
    (b"\x10\x00", "too short"),
    (raw_file(b"{}", length=0), "allowed 2"),
    (raw_file(b"{}", length=200 * 1024 * 1024), "allowed 2"),
    (raw_file(b"{}", length=50), "file is only"),
    (b"PK\x03\x04" + bytes(60), "not a safetensors file"),
    (raw_file(b"[1, 2]"), "does not start with"),
    (raw_file(b"{not json}"), "not valid UTF-8 JSON"),
    (raw_file(b'{"a": 1, "a": 2}'), "duplicate key"),
    (raw_file({"__metadata__": {"epoch": 3}}), "strings to strings"),
    (
        raw_file({"w": {"dtype": "F16", "shape": [2, 2]}}, bytes(8)),
        "exactly dtype, shape and data_offsets",
    ),
    (raw_file({"w": TENSOR | {"dtype": "F128"}}, bytes(8)), "unknown dtype"),
    (raw_file({"w": TENSOR | {"shape": [2, -2]}}, bytes(8)), "invalid shape"),
    (raw_file({"w": TENSOR | {"data_offsets": [0]}}, bytes(8)), "invalid data_offsets"),
    (raw_file({"w": TENSOR | {"data_offsets": [0, 6]}}, bytes(6)), "do not hold"),
    (raw_file({"w": TENSOR, "v": TENSOR}, bytes(8)), "overlaps"),
    (raw_file({"w": TENSOR | {"data_offsets": [4, 12]}}, bytes(12)), "gap"),
    (raw_file({"w": TENSOR}, bytes(5)), "truncated"),
    (raw_file({"w": TENSOR}, bytes(9)), "trailing bytes"),
]


@pytest.mark.parametrize(("data", "expected"), MALFORMED, ids=[text for _, text in MALFORMED])
def test_malformed_headers_are_rejected_with_the_reason(data, expected):
    with pytest.raises(SafetensorsHeaderError, match=expected):
        header_of(data)


def test_stream_ending_inside_the_header_is_reported_as_truncated_when_the_size_is_unknown():
    data = raw_file({"w": TENSOR}, bytes(8))
    with pytest.raises(SafetensorsHeaderError, match="truncated"):
        read_safetensors_header(io.BytesIO(data[:20]))


def test_sub_byte_dtypes_use_bits_not_bytes():
    data = raw_file({"w": {"dtype": "F4", "shape": [4, 2], "data_offsets": [0, 4]}}, bytes(4))
    assert header_of(data).tensors["w"].nbytes == 4


def test_header_errors_are_lora_format_errors_for_callers_that_catch_one_type():
    assert issubclass(SafetensorsHeaderError, LoraFormatError)
    assert issubclass(LoraFormatError, ValueError)
