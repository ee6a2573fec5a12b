"""The output check: SDXL identity from the tensors alone, and every tensor's numbers, read once.

Expected values come from sd-scripts v0.10.1: `networks/lora.py` (`LoRANetwork.create_modules` names a module
`lora_unet_` / `lora_te1_` / `lora_te2_` + its path with dots as underscores; `LoRAModule` stores lora_down
`[rank, in]` (`[rank, in, k, k]` for a convolution), lora_up `[out, rank]` (`[out, rank, 1, 1]`) and
zero-initialises lora_up), `library/sdxl_original_unet.py` (layer widths) and the CLIP text encoders.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from lora_pipeline.model_archive import LocalFolderSink, ModelArchiveError, unpack_model_archive
from lora_pipeline.safetensors_lora import (
    SMOKE_MODEL_NAME,
    Architecture,
    LayerShape,
    check_lora_stream,
    sdxl_lora_targets,
    trigger_words,
)
from lora_pipeline_cli.main import main
from tests.lora_files import (
    Member,
    kohya_metadata,
    lora_tensors,
    safetensors_bytes,
    sdxl_module_shapes,
    tar_bytes,
)


def check(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None, **options: object):
    data = safetensors_bytes(tensors, kohya_metadata() if metadata is None else metadata)
    return check_lora_stream(io.BytesIO(data), len(data), **options)  # type: ignore[arg-type]


def test_the_sdxl_layer_table_matches_an_independent_derivation_and_sd_scripts_counts() -> None:
    targets = sdxl_lora_targets()
    for module, (in_features, out_features) in sdxl_module_shapes().items():
        assert targets[module] == LayerShape(in_features, out_features), module
    linear_unet = [m for m in sdxl_module_shapes() if m.startswith("lora_unet_")]
    assert len(linear_unet) == 722
    assert sum(m.startswith("lora_te1_") for m in targets) == 72
    assert sum(m.startswith("lora_te2_") for m in targets) == 192
    # ResnetBlock2D convolutions (conv_dim): in_layers.2 is 3x3 in -> out, skip_connection 1x1 where widths differ
    assert targets["lora_unet_output_blocks_0_0_in_layers_2"] == LayerShape(2560, 1280, 3)
    assert targets["lora_unet_output_blocks_0_0_skip_connection"] == LayerShape(2560, 1280, 1)
    assert "lora_unet_input_blocks_1_0_skip_connection" not in targets  # 320 -> 320: Identity
    assert targets["lora_unet_input_blocks_3_0_op"] == LayerShape(320, 320, 3)


def test_a_trained_sdxl_lora_is_accepted_with_its_alpha_read_from_the_tensors() -> None:
    result = check(lora_tensors(rank=2, module_limit=30))
    assert result.accepted and result.summary is not None
    assert result.alphas == [1.0] and result.summary.ranks == [2]


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize(("value", "word"), [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_non_finite_weights_anywhere_are_refused_naming_a_tensor(dtype, value, word) -> None:
    tensors = lora_tensors(module_limit=30, dtype=dtype)
    victim = "lora_unet_input_blocks_4_1_transformer_blocks_1_ff_net_2.lora_down.weight"
    tensors[victim][-1, -1] = value  # the very last element of a tensor in the middle of the file
    result = check(tensors)
    assert not result.accepted
    (problem,) = result.problems
    assert f"1 of {len(tensors)} tensors hold {word}" in problem and victim in problem


def test_bfloat16_is_read_from_its_bits() -> None:
    tensors = lora_tensors(module_limit=3, dtype=np.float32)
    data = bytearray(safetensors_bytes(tensors, kohya_metadata()))
    # Rewrite as BF16 by hand (numpy has no bfloat16): the upper half of each float32, NaN in one.
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + length])
    body = bytes(data[8 + length :])
    out, position = {}, 0
    chunks = []
    placed = False
    for name, info in sorted(
        ((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"]
    ):
        words = np.frombuffer(body[info["data_offsets"][0] : info["data_offsets"][1]], "<u4") >> 16
        halves = words.astype("<u2")
        if name.endswith("lora_up.weight") and not placed:
            halves[0], placed = 0x7FC0, True  # bfloat16 quiet NaN
        chunks.append(halves.tobytes())
        out[name] = {
            "dtype": "BF16",
            "shape": info["shape"],
            "data_offsets": [position, position + halves.nbytes],
        }
        position += halves.nbytes
    out["__metadata__"] = header["__metadata__"]
    encoded = json.dumps(out).encode()
    raw = struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks)
    result = check_lora_stream(io.BytesIO(raw), len(raw))
    assert not result.accepted and "NaN" in result.problems[0]


def test_every_lora_up_at_its_zero_initialisation_means_nothing_was_learned() -> None:
    tensors = lora_tensors(module_limit=30)
    for name in tensors:
        if name.endswith(".lora_up.weight"):
            tensors[name][:] = 0
            tensors[name][0, 0] = -0.0  # a negative zero is still zero
    result = check(tensors)
    assert not result.accepted and "learned nothing" in result.problems[0]


def test_modules_whose_lora_down_is_zero_change_nothing_either() -> None:
    tensors = lora_tensors(module_limit=30)
    for name in tensors:
        if name.endswith(".lora_down.weight"):
            tensors[name][:] = 0
    assert "learned nothing" in check(tensors).problems[0]


def test_a_part_left_at_zero_is_a_warning_not_a_refusal() -> None:
    tensors = lora_tensors()
    for name in tensors:
        if name.startswith("lora_te") and name.endswith(".lora_up.weight"):
            tensors[name][:] = 0
    result = check(tensors)
    assert result.accepted and result.summary is not None
    assert any("all 72 te1 modules" in w for w in result.summary.warnings)
    assert any("all 192 te2 modules" in w for w in result.summary.warnings)


@pytest.mark.parametrize("metadata", [None, {}], ids=["sdxl-metadata", "no-metadata"])
def test_sdxl_names_with_another_models_widths_are_refused_whatever_the_metadata_says(metadata) -> None:
    tensors = lora_tensors(module_limit=1)
    module = "lora_unet_input_blocks_7_1_transformer_blocks_0_attn2_to_k"  # SDXL: 2048 -> 1280
    tensors[f"{module}.lora_down.weight"] = np.full((4, 768), 0.01, np.float16)  # SD 1.5's context width
    tensors[f"{module}.lora_up.weight"] = np.full((1280, 4), 0.01, np.float16)
    tensors[f"{module}.alpha"] = np.array(1.0, np.float16)
    result = check(tensors, metadata)
    assert not result.accepted and "do not fit SDXL's layer (2048 -> 1280" in result.problems[0]


@pytest.mark.parametrize("metadata", [None, {}], ids=["sdxl-metadata", "no-metadata"])
def test_modules_of_layers_sdxl_does_not_have_are_refused(metadata) -> None:
    tensors = lora_tensors(module_limit=2)
    module = "lora_unet_double_blocks_0_img_attn_qkv"  # a Flux layer
    tensors[f"{module}.lora_down.weight"] = np.full((4, 3072), 0.01, np.float16)
    tensors[f"{module}.lora_up.weight"] = np.full((9216, 4), 0.01, np.float16)
    tensors[f"{module}.alpha"] = np.array(1.0, np.float16)
    result = check(tensors, metadata)
    assert (
        not result.accepted and f"{module!r} is not a layer sd-scripts trains on SDXL" in result.problems[0]
    )


def test_locon_convolutions_must_have_the_layers_kernel() -> None:
    tensors = lora_tensors(module_limit=1)
    module = "lora_unet_input_blocks_1_0_in_layers_2"
    tensors[f"{module}.lora_down.weight"] = np.full((4, 320, 3, 3), 0.01, np.float16)
    tensors[f"{module}.lora_up.weight"] = np.full((320, 4, 1, 1), 0.01, np.float16)
    tensors[f"{module}.alpha"] = np.array(1.0, np.float16)
    assert check(tensors).accepted
    tensors[f"{module}.lora_down.weight"] = np.full((4, 320, 1, 1), 0.01, np.float16)
    assert "do not fit" in check(tensors).problems[0]


def test_the_smoke_architecture_skips_widths_but_not_names_or_numbers() -> None:
    small = {}
    for name in ("lora_unet_input_blocks_4_1_proj_in", "lora_te1_text_model_encoder_layers_0_mlp_fc1"):
        small[f"{name}.lora_down.weight"] = np.full((4, 32), 0.01, np.float32)
        small[f"{name}.lora_up.weight"] = np.full((64, 4), 0.01, np.float32)
        small[f"{name}.alpha"] = np.array(2.0, np.float32)
    assert not check(small).accepted
    assert check(small, architecture=Architecture.SMOKE).accepted
    small["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"][0, 0] = np.nan
    assert not check(small, architecture=Architecture.SMOKE).accepted
    assert Architecture.for_trainer("smoke") is Architecture.SMOKE
    assert Architecture.for_trainer("kohya") is Architecture.SDXL


def test_a_stream_ending_inside_the_data_is_refused_as_truncated() -> None:
    data = safetensors_bytes(lora_tensors(module_limit=3), kohya_metadata())
    result = check_lora_stream(io.BytesIO(data[:-10]), None)
    assert not result.accepted and "truncated" in result.problems[0]


@pytest.mark.parametrize("chunk_bytes", [7, 4096])
def test_odd_chunk_sizes_still_see_every_element(chunk_bytes: int) -> None:
    tensors = lora_tensors(module_limit=4, dtype=np.float32)
    last = sorted(tensors)[-1]
    tensors[last].reshape(-1)[-1] = np.inf
    data = safetensors_bytes(tensors, kohya_metadata())
    result = check_lora_stream(io.BytesIO(data), len(data), chunk_bytes=chunk_bytes)
    assert "Inf" in result.problems[0]


def test_unpack_refuses_a_nan_lora_and_leaves_nothing(tmp_path: Path) -> None:
    tensors = lora_tensors(module_limit=10)
    tensors[next(iter(tensors))][0, 0] = np.nan
    archive = tar_bytes([Member("bluebot.safetensors", safetensors_bytes(tensors, kohya_metadata()))])
    with pytest.raises(ModelArchiveError, match="NaN") as caught:
        unpack_model_archive(io.BytesIO(archive), LocalFolderSink(tmp_path), output_name="bluebot")
    assert caught.value.lora is not None and caught.value.lora.summary is not None
    assert list(tmp_path.iterdir()) == []


def test_trigger_words_come_from_folder_class_tokens_and_tags_in_every_caption() -> None:
    metadata = {
        "ss_dataset_dirs": '{"12_zkq dog": {"n_repeats": 12, "img_count": 3}}',
        "ss_tag_frequency": '{"12_zkq dog": {"zkq dog": 3, "beach": 1, "standing": 3}}',
    }
    assert trigger_words(metadata) == ["zkq dog", "standing"]
    assert trigger_words({}) == [] and trigger_words({"ss_tag_frequency": "not json"}) == []


# --- lora-pipeline inspect ----------------------------------------------------------------------------------


def write(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> Path:
    path.write_bytes(safetensors_bytes(tensors, metadata))
    return path


def test_inspect_prints_parts_rank_alpha_dtype_metadata_and_trigger_words(tmp_path: Path, capsys) -> None:
    metadata = kohya_metadata(rank=4) | {"ss_tag_frequency": '{"10_bluebot": {"bluebot": 2}}'}
    path = write(tmp_path / "bluebot.safetensors", lora_tensors(rank=4), metadata)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "VALID SDXL LoRA" in out
    assert "U-Net 722, text encoder 1 72, text encoder 2 192 (lora 986)" in out
    assert "rank: 4; alpha: 1 in the tensors, 1.0 in the metadata" in out
    assert "dtype: F16" in out and "trigger words: bluebot" in out and "ss_output_name = bluebot" in out


def test_inspect_judges_an_archive_as_the_unpack_step_does(tmp_path: Path, capsys) -> None:
    tensors = lora_tensors(module_limit=10)
    tensors[next(iter(tensors))][:] = np.nan
    good = safetensors_bytes(lora_tensors(module_limit=10), kohya_metadata())
    bad = safetensors_bytes(tensors, kohya_metadata())
    (tmp_path / "good.tar.gz").write_bytes(tar_bytes([Member("bluebot.safetensors", good)]))
    (tmp_path / "bad.tar.gz").write_bytes(tar_bytes([Member("bluebot.safetensors", bad)]))
    assert main(["inspect", str(tmp_path / "good.tar.gz")]) == 0
    assert main(["inspect", str(tmp_path / "bad.tar.gz")]) == 1
    out = capsys.readouterr().out
    assert "bad.tar.gz!/bluebot.safetensors: REJECTED" in out and "NaN" in out


def test_inspect_usage_errors_exit_2_without_a_traceback(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["inspect", str(tmp_path / "missing.safetensors")]) == 2
    assert main(["inspect", str(tmp_path / "notes.txt")]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_inspect_refuses_garbage_with_exit_1(tmp_path: Path, capsys) -> None:
    (tmp_path / "x.safetensors").write_bytes(b"PK\x03\x04" + bytes(60))
    assert main(["inspect", str(tmp_path / "x.safetensors")]) == 1
    assert "not a safetensors file" in capsys.readouterr().out


def test_inspect_checks_a_smoke_file_with_trainer_smoke_and_says_so_otherwise(tmp_path: Path, capsys) -> None:
    small = {}
    for name in ("lora_unet_input_blocks_4_1_proj_in", "lora_te1_text_model_encoder_layers_0_mlp_fc1"):
        small[f"{name}.lora_down.weight"] = np.full((4, 32), 0.01, np.float32)
        small[f"{name}.lora_up.weight"] = np.full((64, 4), 0.01, np.float32)
        small[f"{name}.alpha"] = np.array(2.0, np.float32)
    path = write(
        tmp_path / "bluebot.safetensors", small, kohya_metadata() | {"ss_sd_model_name": SMOKE_MODEL_NAME}
    )
    assert main(["inspect", str(path)]) == 1
    assert "--trainer smoke" in capsys.readouterr().out
    assert main(["inspect", str(path), "--trainer", "smoke"]) == 0
