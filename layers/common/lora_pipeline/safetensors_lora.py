"""The project's one reader of safetensors LoRAs, and the check that a file is a trained SDXL LoRA in Kohya format.

`check_lora_stream` reads a file once, front to back, with bounded memory: the header (8-byte
little-endian length, then a JSON object), then every tensor in chunks. The unpack step runs it on the
stream it is copying out of model.tar.gz, the training container (`inspect_lora_file`) before it reports
success, and `lora-pipeline inspect` on a file or an archive, so all three judge a file the same way.

What is checked:
- structure: a well-formed safetensors file whose every key belongs to a complete module (below);
- identity, from the tensors alone (metadata can be missing or wrong): every module name is one that
  sd-scripts' `networks/lora.py` `create_modules` gives on SDXL (`sdxl_lora_targets`), and every
  `lora` module's shapes are that layer's; `ss_base_model_version` / `modelspec.architecture`, when
  present, must say SDXL too;
- numbers: no NaN or Inf anywhere, and not every `lora_up` zero (sd-scripts initialises `lora_up` to
  zero in `networks/lora.py`, `dylora.py` and `lora_fa.py`, so an all-zero `lora_up` learned nothing).

What is accepted as a LoRA (what A1111, ComfyUI and diffusers load as Kohya-format networks):
- `lora` modules (sd-scripts `networks.lora`, LoCon with `conv_dim`, DoRA's extra `dora_scale`):
  `<module>.lora_down.weight`, `<module>.lora_up.weight`, `<module>.alpha`;
- `loha` and `lokr` modules (LyCORIS `lycoris.kohya`), with their own complete key sets.
Module names start with `lora_unet_`, `lora_te1_` (CLIP ViT-L) or `lora_te2_` (OpenCLIP ViT-bigG).
Anything else is a `LoraFormatError` whose message says what the file looks like instead.
"""

from __future__ import annotations

import functools
import math
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from lora_pipeline.kohya_contract import parse_subset_folder
from lora_pipeline.text_formats import loads_json

# The reference implementation refuses headers above 100 MB; a LoRA header is about 300 KB.
MAX_HEADER_BYTES = 100 * 1024 * 1024

# Bits per element of every dtype safetensors 0.8 defines (F4/F6 pack several elements per byte).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
}

# sd-scripts v0.10.1 `networks.lora` on SDXL without conv_dim (its "create LoRA for ..." log lines).
SDXL_UNET_MODULES = 722
SDXL_TE1_MODULES = 72
SDXL_TE2_MODULES = 192

PART_PREFIXES = {"unet": "lora_unet_", "te1": "lora_te1_", "te2": "lora_te2_"}
# What the unpack step reads per call: bounds the memory of the tensor scan.
CHUNK_BYTES = 1024 * 1024


# The smoke trainer's `ss_sd_model_name`: names the file's origin in messages, never decides a verdict.
SMOKE_MODEL_NAME = "smoke-tiny-sdxl"


class Architecture(StrEnum):
    """What a LoRA must fit. Chosen by the caller from the run's trainer, never from the file."""

    SDXL = "sdxl"
    """sd-scripts on SDXL: module names and every layer's width."""
    SMOKE = "smoke"
    """The smoke trainer's tiny SDXL-shaped model: SDXL module names, tiny widths (not checked)."""

    @classmethod
    def for_trainer(cls, trainer: str) -> Architecture:
        return cls.SMOKE if trainer == "smoke" else cls.SDXL


@dataclass(frozen=True)
class LayerShape:
    """A layer sd-scripts can put a LoRA module on: `in_features` -> `out_features`, and the kernel size
    of a convolution (None for a Linear layer)."""

    in_features: int
    out_features: int
    kernel: int | None = None


# sdxl_original_unet.py: time embedding 1280 (4 x 320 model channels), cross-attention context 2048.
_SDXL_TIME_EMBED = 1280
_SDXL_CONTEXT = 2048
# (Kohya block name, in channels, out channels) of every ResnetBlock2D, in SdxlUNet2DConditionModel order.
_SDXL_RESNETS = (
    ("input_blocks_1_0", 320, 320),
    ("input_blocks_2_0", 320, 320),
    ("input_blocks_4_0", 320, 640),
    ("input_blocks_5_0", 640, 640),
    ("input_blocks_7_0", 640, 1280),
    ("input_blocks_8_0", 1280, 1280),
    ("middle_block_0", 1280, 1280),
    ("middle_block_2", 1280, 1280),
    ("output_blocks_0_0", 2560, 1280),
    ("output_blocks_1_0", 2560, 1280),
    ("output_blocks_2_0", 1920, 1280),
    ("output_blocks_3_0", 1920, 640),
    ("output_blocks_4_0", 1280, 640),
    ("output_blocks_5_0", 960, 640),
    ("output_blocks_6_0", 960, 320),
    ("output_blocks_7_0", 640, 320),
    ("output_blocks_8_0", 640, 320),
)
# (Kohya block name, diffusers block name, channels, transformer depth) of every Transformer2DModel.
# The diffusers name is what diffusers' convert_state_dict_to_kohya writes; A1111 and ComfyUI load both.
_SDXL_TRANSFORMERS = (
    ("input_blocks_4_1", "down_blocks_1_attentions_0", 640, 2),
    ("input_blocks_5_1", "down_blocks_1_attentions_1", 640, 2),
    ("input_blocks_7_1", "down_blocks_2_attentions_0", 1280, 10),
    ("input_blocks_8_1", "down_blocks_2_attentions_1", 1280, 10),
    ("middle_block_1", "mid_block_attentions_0", 1280, 10),
    *((f"output_blocks_{i}_1", f"up_blocks_0_attentions_{i}", 1280, 10) for i in (0, 1, 2)),
    *((f"output_blocks_{i + 3}_1", f"up_blocks_1_attentions_{i}", 640, 2) for i in (0, 1, 2)),
)
# Downsample2D (`op`) and Upsample2D (`conv`) convolutions: (Kohya name, channels).
_SDXL_RESAMPLERS = (
    ("input_blocks_3_0_op", 320),
    ("input_blocks_6_0_op", 640),
    ("output_blocks_2_2_conv", 1280),
    ("output_blocks_5_2_conv", 640),
)
# CLIP ViT-L (text_encoder 1) and OpenCLIP ViT-bigG (text_encoder 2): layers, width, MLP width.
_SDXL_TEXT_ENCODERS = (("te1", 12, 768, 3072), ("te2", 32, 1280, 5120))


@functools.cache
def sdxl_lora_targets() -> dict[str, LayerShape]:
    """Every Kohya module name sd-scripts v0.10.1 can train on SDXL, with its layer's shape.

    Mirrors `networks/lora.py` `LoRANetwork.create_modules` over `library/sdxl_original_unet.py`
    (Linear layers of Transformer2DModel always; with `conv_dim`, the Linear and Conv2d layers of
    ResnetBlock2D, Downsample2D and Upsample2D too) and the CLIPAttention/CLIPMLP layers of both text
    encoders. 722 U-Net Linear modules, 72 + 192 text encoder modules, 66 more U-Net modules with conv_dim;
    the attention modules also under their diffusers names.
    """
    targets: dict[str, LayerShape] = {}
    for kohya_block, diffusers_block, width, depth in _SDXL_TRANSFORMERS:
        for block in (kohya_block, diffusers_block):
            prefix = f"lora_unet_{block}"
            targets[f"{prefix}_proj_in"] = targets[f"{prefix}_proj_out"] = LayerShape(width, width)
            for index in range(depth):
                layer = f"{prefix}_transformer_blocks_{index}"
                for attention, context in (("attn1", width), ("attn2", _SDXL_CONTEXT)):
                    targets[f"{layer}_{attention}_to_q"] = LayerShape(width, width)
                    targets[f"{layer}_{attention}_to_k"] = LayerShape(context, width)
                    targets[f"{layer}_{attention}_to_v"] = LayerShape(context, width)
                    targets[f"{layer}_{attention}_to_out_0"] = LayerShape(width, width)
                targets[f"{layer}_ff_net_0_proj"] = LayerShape(width, 8 * width)  # GEGLU: two halves
                targets[f"{layer}_ff_net_2"] = LayerShape(4 * width, width)
    for block, in_width, out_width in _SDXL_RESNETS:
        prefix = f"lora_unet_{block}"
        targets[f"{prefix}_in_layers_2"] = LayerShape(in_width, out_width, 3)
        targets[f"{prefix}_emb_layers_1"] = LayerShape(_SDXL_TIME_EMBED, out_width)
        targets[f"{prefix}_out_layers_3"] = LayerShape(out_width, out_width, 3)
        if in_width != out_width:
            targets[f"{prefix}_skip_connection"] = LayerShape(in_width, out_width, 1)
    for name, width in _SDXL_RESAMPLERS:
        targets[f"lora_unet_{name}"] = LayerShape(width, width, 3)
    for part, layers, width, mlp in _SDXL_TEXT_ENCODERS:
        for index in range(layers):
            layer = f"lora_{part}_text_model_encoder_layers_{index}"
            for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
                targets[f"{layer}_self_attn_{projection}"] = LayerShape(width, width)
            targets[f"{layer}_mlp_fc1"] = LayerShape(width, mlp)
            targets[f"{layer}_mlp_fc2"] = LayerShape(mlp, width)
    return targets


class ByteReader(Protocol):
    """What the readers need from a stream: a binary file, an S3 body, a tar member."""

    def read(self, size: int = -1, /) -> bytes: ...


class LoraFormatError(ValueError):
    """The file is not a usable SDXL LoRA in Kohya format; the message says why and what to do."""


class SafetensorsHeaderError(LoraFormatError):
    """The file is not a well-formed safetensors file (truncated, corrupt, or another format)."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.data_offsets[1] - self.data_offsets[0]


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_size: int
    """Length of the JSON header in bytes (the file starts with 8 more bytes that hold this number)."""
    data_size: int

    @property
    def file_size(self) -> int:
        return 8 + self.header_size + self.data_size


def read_exact(stream: ByteReader, count: int) -> bytes:
    """`count` bytes, or fewer only at the end of the stream (a single read may return less)."""
    chunks: list[bytes] = []
    remaining = count
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_safetensors_header(
    stream: ByteReader, size: int | None = None, *, max_header_bytes: int = MAX_HEADER_BYTES
) -> SafetensorsHeader:
    """Read and check the header at the current position of `stream`, consuming exactly 8 + header bytes.

    `size` is the whole file's size when known: then the tensor data must fill the file exactly.
    Raises `SafetensorsHeaderError` naming the first problem found.
    """
    prefix = read_exact(stream, 8)
    if len(prefix) < 8:
        raise SafetensorsHeaderError(
            f"file is {len(prefix)} bytes long: too short for a safetensors file (8-byte header length first)"
        )
    (header_size,) = struct.unpack("<Q", prefix)
    if header_size < 2 or header_size > max_header_bytes:
        raise SafetensorsHeaderError(
            f"header length field says {header_size} bytes (allowed 2..{max_header_bytes}): not a safetensors "
            "file, or a corrupt one (a .ckpt/.pt pickle or a zip starts differently)"
        )
    if size is not None and 8 + header_size > size:
        raise SafetensorsHeaderError(
            f"header length field says {header_size} bytes but the file is only {size} bytes: truncated or "
            "not a safetensors file"
        )
    raw = read_exact(stream, header_size)
    if len(raw) < header_size:
        raise SafetensorsHeaderError(
            f"file ends inside the header ({len(raw)} of {header_size} bytes): the file is truncated"
        )
    if not raw.startswith(b"{"):
        raise SafetensorsHeaderError("header does not start with '{': not a safetensors file")
    try:
        document = loads_json(raw.decode("utf-8"), object_pairs_hook=_refuse_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as error:
        raise SafetensorsHeaderError(
            f"header is not valid UTF-8 JSON ({error}): the file is corrupt"
        ) from error
    if not isinstance(document, dict):
        raise SafetensorsHeaderError("header is not a JSON object: not a safetensors file")

    metadata = _parse_metadata(document.pop("__metadata__", {}))
    tensors = {name: _parse_tensor(name, entry) for name, entry in document.items()}
    data_size = _check_layout(tensors)
    if size is not None and 8 + header_size + data_size != size:
        raise SafetensorsHeaderError(
            f"the header describes {8 + header_size + data_size} bytes but the file has {size}: "
            + (
                "the file is truncated"
                if size < 8 + header_size + data_size
                else "trailing bytes after the data"
            )
        )
    return SafetensorsHeader(tensors=tensors, metadata=metadata, header_size=header_size, data_size=data_size)


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _parse_metadata(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise SafetensorsHeaderError("__metadata__ must map strings to strings")
    return value


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_tensor(name: str, entry: object) -> TensorInfo:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise SafetensorsHeaderError(f"tensor {name!r} must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BITS:
        raise SafetensorsHeaderError(f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise SafetensorsHeaderError(f"tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise SafetensorsHeaderError(f"tensor {name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if end < begin or bits % 8 or end - begin != bits // 8:
        raise SafetensorsHeaderError(
            f"tensor {name!r}: data_offsets {offsets} do not hold a {dtype} tensor of shape {shape}"
        )
    return TensorInfo(dtype=dtype, shape=tuple(shape), data_offsets=(begin, end))


def _check_layout(tensors: dict[str, TensorInfo]) -> int:
    """The tensors must tile the data section from 0 without holes or overlaps; returns its size."""
    position = 0
    for name, info in sorted(tensors.items(), key=lambda item: item[1].data_offsets):
        begin, end = info.data_offsets
        if begin != position:
            problem = "overlaps the previous tensor" if begin < position else "leaves a gap before it"
            raise SafetensorsHeaderError(
                f"tensor {name!r} at offset {begin} {problem}: the header is corrupt"
            )
        position = end
    return position


# ---------------------------------------------------------------------------------------------------------
# LoRA summary


@dataclass(frozen=True)
class _ModuleKind:
    name: str
    required: tuple[tuple[frozenset[str], ...], ...]
    """For each requirement, alternative key sets: one of them must be present in full."""
    optional: frozenset[str]
    rank_key: str
    """Weight whose first dimension is the rank (absent for an undecomposed LoKr factor)."""
    markers: tuple[str, ...]
    """Key prefixes that identify the kind of an incomplete module."""

    def accepts(self, suffixes: set[str]) -> bool:
        covered: set[str] = set()
        for alternatives in self.required:
            match = next((keys for keys in alternatives if keys <= suffixes), None)
            if match is None:
                return False
            covered |= match
        return suffixes - covered <= self.optional

    def describe_keys(self) -> str:
        return ", ".join(" or ".join("+".join(sorted(keys)) for keys in alts) for alts in self.required)


def _one_of(*alternatives: str | tuple[str, ...]) -> tuple[frozenset[str], ...]:
    return tuple(frozenset((alt,) if isinstance(alt, str) else alt) for alt in alternatives)


_MODULE_KINDS = (
    _ModuleKind(
        "lora",
        required=(_one_of("lora_down.weight"), _one_of("lora_up.weight"), _one_of("alpha")),
        optional=frozenset({"lora_mid.weight", "dora_scale"}),
        rank_key="lora_down.weight",
        markers=("lora_down", "lora_up"),
    ),
    _ModuleKind(
        "loha",
        required=tuple(_one_of(key) for key in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha")),
        optional=frozenset({"hada_t1", "hada_t2", "dora_scale"}),
        rank_key="hada_w1_b",
        markers=("hada_",),
    ),
    _ModuleKind(
        "lokr",
        required=(
            _one_of("lokr_w1", ("lokr_w1_a", "lokr_w1_b")),
            _one_of("lokr_w2", ("lokr_w2_a", "lokr_w2_b")),
            _one_of("alpha"),
        ),
        optional=frozenset({"lokr_t2", "dora_scale"}),
        rank_key="lokr_w2_b",
        markers=("lokr_",),
    ),
)


class LoraSummary(BaseModel):
    """What the header says about a LoRA: module counts per model part, rank, alpha, training metadata."""

    model_config = ConfigDict(frozen=True)

    unet_modules: int
    te1_modules: int
    te2_modules: int
    module_types: dict[str, int]
    """Modules per network type: lora, loha, lokr."""
    network_dim: int | None
    """Largest rank found (the rank of every module for an ordinary LoRA)."""
    ranks: list[int]
    network_alpha: float | None
    """From `ss_network_alpha` (alpha tensors are data, not header)."""
    network_module: str | None
    base_model_version: str | None
    architecture: str | None
    output_name: str | None
    dtypes: list[str]
    tensor_count: int
    warnings: list[str]

    @property
    def text_encoder_modules(self) -> int:
        return self.te1_modules + self.te2_modules


_DIFFUSERS_MARKERS = ("lora_A.", "lora_B.", ".lora.down.", ".lora.up.", "_lora.down.", "_lora.up.")
_CHECKPOINT_PREFIXES = (
    "model.diffusion_model.",
    "conditioner.embedders.",
    "first_stage_model.",
    "cond_stage_model.",
)
_DIFFUSERS_MODEL_PREFIXES = (
    "down_blocks.",
    "up_blocks.",
    "mid_block.",
    "conv_in.",
    "text_model.",
    "encoder.",
)


def _examples(keys: list[str], count: int = 3) -> str:
    shown = ", ".join(repr(k) for k in keys[:count])
    return shown + (f" and {len(keys) - count} more" if len(keys) > count else "")


def _diagnose_foreign(keys: list[str]) -> LoraFormatError:
    """Say what a file without Kohya LoRA keys looks like, and what to do about it."""
    if any(marker in key for key in keys for marker in _DIFFUSERS_MARKERS):
        sample = [k for k in keys if any(m in k for m in _DIFFUSERS_MARKERS)]
        return LoraFormatError(
            f"this is a diffusers/PEFT-format LoRA (keys like {_examples(sample, 2)}), not Kohya format "
            "('lora_unet_…lora_down.weight'). A1111 and Kohya tools expect Kohya keys: convert it with "
            "diffusers' convert_state_dict_to_kohya (peft's get_peft_model_state_dict first), or train with "
            "sd-scripts"
        )
    if any(k.startswith("lora_te_") for k in keys):
        return LoraFormatError(
            "this is an SD 1.x/2.x LoRA (one text encoder, 'lora_te_' keys); an SDXL LoRA has 'lora_te1_' "
            "and 'lora_te2_' keys. Train with sdxl_train_network.py on an SDXL base model"
        )
    if any(k.startswith(_CHECKPOINT_PREFIXES + _DIFFUSERS_MODEL_PREFIXES) for k in keys):
        return LoraFormatError(
            f"this is a full model checkpoint ({len(keys)} tensors, e.g. {_examples(keys, 2)}), not a LoRA: "
            "it has no 'lora_unet_'/'lora_te1_'/'lora_te2_' keys. The training job saved the model instead "
            "of the network: check network_module (networks.lora) and the output folder"
        )
    return LoraFormatError(
        f"no Kohya LoRA keys ('lora_unet_*', 'lora_te1_*', 'lora_te2_*') among {len(keys)} tensors "
        f"(e.g. {_examples(keys, 2)}): not an SDXL LoRA"
    )


def _part_of(module: str) -> str | None:
    return next((part for part, prefix in PART_PREFIXES.items() if module.startswith(prefix)), None)


def _kind_of(module: str, suffixes: set[str]) -> _ModuleKind:
    for kind in _MODULE_KINDS:
        if kind.accepts(suffixes):
            return kind
    expected = next(
        (kind for kind in _MODULE_KINDS if any(s.startswith(kind.markers) for s in suffixes)),
        _MODULE_KINDS[0],
    )
    raise LoraFormatError(
        f"module {module!r} is incomplete or mixed: it has {sorted(suffixes)}, a {expected.name} module needs "
        f"{expected.describe_keys()}. The file was cut or edited; use the file the trainer wrote"
    )


def _metadata_number(metadata: dict[str, str], key: str) -> float | None:
    try:
        return float(metadata[key])
    except (KeyError, ValueError):
        return None


def summarise_lora(header: SafetensorsHeader, architecture: Architecture = Architecture.SDXL) -> LoraSummary:
    """Check that `header` describes an SDXL LoRA in Kohya format and summarise it (header only: the
    numbers are `check_lora_stream`'s).

    Raises `LoraFormatError` for anything else; unusual but loadable files give `warnings`.
    """
    keys = sorted(header.tensors)
    if not keys:
        raise LoraFormatError("the file holds no tensors: training wrote an empty network")
    kohya = [k for k in keys if _part_of(k.split(".", 1)[0]) is not None and "." in k]
    if not kohya:
        raise _diagnose_foreign(keys)
    foreign = sorted(set(keys) - set(kohya))
    if foreign:
        raise LoraFormatError(
            f"{len(foreign)} tensors are not Kohya LoRA keys ({_examples(foreign)}) next to {len(kohya)} that "
            "are: the file mixes formats (a merged or converted file?); use the file the trainer wrote"
        )

    modules: dict[str, set[str]] = {}
    for key in kohya:
        module, suffix = key.split(".", 1)
        modules.setdefault(module, set()).add(suffix)

    part_counts: Counter[str] = Counter()
    kind_counts: Counter[str] = Counter()
    ranks: Counter[int] = Counter()
    for module, suffixes in modules.items():
        kind = _kind_of(module, suffixes)
        part_counts[_part_of(module) or ""] += 1
        kind_counts[kind.name] += 1
        rank_tensor = header.tensors.get(f"{module}.{kind.rank_key}")
        if rank_tensor is not None and rank_tensor.shape:
            ranks[rank_tensor.shape[0]] += 1
        _check_lora_shapes(module, kind, header)
        _check_identity(module, kind, header, architecture)

    metadata = header.metadata
    base_version = metadata.get("ss_base_model_version")
    stated_architecture = metadata.get("modelspec.architecture")
    _check_base_model(base_version, stated_architecture)
    warnings = _count_warnings(part_counts) + _metadata_warnings(metadata, ranks)

    return LoraSummary(
        unet_modules=part_counts["unet"],
        te1_modules=part_counts["te1"],
        te2_modules=part_counts["te2"],
        module_types=dict(sorted(kind_counts.items())),
        network_dim=max(ranks) if ranks else None,
        ranks=sorted(ranks),
        network_alpha=_metadata_number(metadata, "ss_network_alpha"),
        network_module=metadata.get("ss_network_module"),
        base_model_version=base_version,
        architecture=stated_architecture,
        output_name=metadata.get("ss_output_name"),
        dtypes=sorted({info.dtype for info in header.tensors.values()}),
        tensor_count=len(keys),
        warnings=warnings,
    )


def _check_lora_shapes(module: str, kind: _ModuleKind, header: SafetensorsHeader) -> None:
    if kind.name != "lora":
        return
    down = header.tensors[f"{module}.lora_down.weight"].shape
    up = header.tensors[f"{module}.lora_up.weight"].shape
    alpha = header.tensors[f"{module}.alpha"].shape
    if len(down) < 2 or len(up) < 2 or down[0] != up[1]:
        raise LoraFormatError(
            f"module {module!r}: lora_down {list(down)} and lora_up {list(up)} do not share a rank: the file "
            "is corrupt"
        )
    if math.prod(alpha) != 1:
        raise LoraFormatError(f"module {module!r}: alpha has shape {list(alpha)}, expected a single number")


def _check_identity(
    module: str, kind: _ModuleKind, header: SafetensorsHeader, architecture: Architecture
) -> None:
    target = sdxl_lora_targets().get(module)
    if target is None:
        raise LoraFormatError(
            f"module {module!r} is not a layer sd-scripts trains on SDXL: this LoRA was made for another "
            "model (SD 1.x/2.x, SD3, Flux, a refiner...) or by a tool that targets other layers. Train it with "
            "sdxl_train_network.py on an SDXL base model"
        )
    if kind.name != "lora" or architecture is not Architecture.SDXL:
        return
    down = header.tensors[f"{module}.lora_down.weight"].shape
    up = header.tensors[f"{module}.lora_up.weight"].shape
    rank = down[0]
    if f"{module}.lora_mid.weight" in header.tensors:  # LoCon Tucker: the kernel sits in lora_mid
        expected_down: tuple[int, ...] = (rank, target.in_features, 1, 1)
    elif target.kernel is None:
        expected_down = (rank, target.in_features)
    else:
        expected_down = (rank, target.in_features, target.kernel, target.kernel)
    expected_up = (target.out_features, rank) + ((1, 1) if target.kernel is not None else ())
    if down != expected_down or up != expected_up:
        raise LoraFormatError(
            f"module {module!r}: lora_down {list(down)} and lora_up {list(up)} do not fit SDXL's layer "
            f"({target.in_features} -> {target.out_features}, which needs {list(expected_down)} and "
            f"{list(expected_up)}): this LoRA was trained on a model with other layer widths, not SDXL"
        )


def _check_base_model(base_version: str | None, architecture: str | None) -> None:
    if base_version is not None and not base_version.startswith("sdxl"):
        raise LoraFormatError(
            f"ss_base_model_version is {base_version!r}: this LoRA was trained for another base model, not "
            "SDXL. Use an SDXL base model and sdxl_train_network.py"
        )
    if architecture is not None and not architecture.startswith("stable-diffusion-xl"):
        raise LoraFormatError(
            f"modelspec.architecture is {architecture!r}: this LoRA is not for SDXL "
            "(an SDXL LoRA says 'stable-diffusion-xl-v1-base/lora')"
        )


def _count_warnings(part_counts: Counter[str]) -> list[str]:
    warnings = []
    unet, te1, te2 = part_counts["unet"], part_counts["te1"], part_counts["te2"]
    if unet == 0:
        warnings.append(
            "no U-Net modules: only the text encoders were trained (network_train_text_encoder_only?)"
        )
    elif unet < SDXL_UNET_MODULES:
        warnings.append(
            f"{unet} U-Net modules; sd-scripts writes {SDXL_UNET_MODULES} for SDXL (fewer from the smoke trainer, "
            "or with network_args that exclude blocks)"
        )
    if (te1 or te2) and (te1, te2) != (SDXL_TE1_MODULES, SDXL_TE2_MODULES):
        warnings.append(
            f"text encoder modules {te1} + {te2}; sd-scripts writes {SDXL_TE1_MODULES} + {SDXL_TE2_MODULES} "
            "for SDXL"
        )
    return warnings


def _metadata_warnings(metadata: dict[str, str], ranks: Counter[int]) -> list[str]:
    warnings = []
    if "ss_base_model_version" not in metadata and "modelspec.architecture" not in metadata:
        warnings.append(
            "no ss_base_model_version or modelspec.architecture metadata: the base model cannot be confirmed"
        )
    stated_dim = _metadata_number(metadata, "ss_network_dim")
    if stated_dim is not None and ranks and set(ranks) != {int(stated_dim)}:
        warnings.append(
            f"ss_network_dim says {metadata['ss_network_dim']} but module ranks are {sorted(ranks)}"
        )
    return warnings


# ---------------------------------------------------------------------------------------------------------
# Tensor data


# sd-scripts saves LoRA weights as float32, float16 or bfloat16 (`--save_precision float|fp16|bf16`).
# Per dtype: the unsigned integer of the same width, and the exponent and mantissa masks of IEEE 754.
_FLOAT_BITS: dict[str, tuple[type[np.unsignedinteger[Any]], int, int]] = {
    "F16": (np.uint16, 0x7C00, 0x03FF),
    "BF16": (np.uint16, 0x7F80, 0x007F),
    "F32": (np.uint32, 0x7F80_0000, 0x007F_FFFF),
    "F64": (np.uint64, 0x7FF0_0000_0000_0000, 0x000F_FFFF_FFFF_FFFF),
}
# Elements examined per numpy pass: keeps the temporaries of a 1 MiB read well under a megabyte.
_SCAN_ELEMENTS = 64 * 1024


@dataclass
class TensorNumbers:
    """What one pass over a tensor's bytes found."""

    nan: int = 0
    inf: int = 0
    nonzero: int = 0
    value: float | None = None
    """The value of a one-element tensor (an `alpha`)."""


def _scan_words(words: np.ndarray[Any, Any], exponent: int, mantissa: int, numbers: TensorNumbers) -> None:
    for start in range(0, len(words), _SCAN_ELEMENTS):
        part = words[start : start + _SCAN_ELEMENTS]
        special = part[(part & exponent) == exponent]
        if len(special):
            nan = int(np.count_nonzero(special & mantissa))
            numbers.nan += nan
            numbers.inf += len(special) - nan
        numbers.nonzero += int(np.count_nonzero(part & (exponent | mantissa)))


def scan_tensor_data(
    stream: ByteReader, header: SafetensorsHeader, chunk_bytes: int = CHUNK_BYTES
) -> dict[str, TensorNumbers]:
    """Read the data section that follows `header` in `stream` once, `chunk_bytes` at a time, and count
    each float tensor's NaN, Inf and non-zero elements. Other dtypes are read past, not examined.

    Raises `SafetensorsHeaderError` when the stream ends inside the data.
    """
    found: dict[str, TensorNumbers] = {}
    for name, info in sorted(header.tensors.items(), key=lambda item: item[1].data_offsets):
        numbers = found[name] = TensorNumbers()
        bits = _FLOAT_BITS.get(info.dtype)
        word = np.dtype(bits[0]).newbyteorder("<") if bits else None
        step = max(1, chunk_bytes // (word.itemsize if word else 1)) * (word.itemsize if word else 1)
        remaining = info.nbytes
        while remaining:
            data = read_exact(stream, min(step, remaining))
            if not data or (word is not None and len(data) % word.itemsize):
                raise SafetensorsHeaderError(f"the file ends inside tensor {name!r}: it is truncated")
            remaining -= len(data)
            if math.prod(info.shape) == 1 and info.dtype in _SCALAR_DTYPES:
                numbers.value = _scalar_value(info.dtype, data)
            if word is not None and bits is not None:
                _scan_words(np.frombuffer(data, dtype=word), bits[1], bits[2], numbers)
    return found


# How a one-element tensor (an `alpha`) is read; diffusers' convert_state_dict_to_kohya writes I64 alphas.
_SCALAR_DTYPES = {
    "F16": "<f2",
    "F32": "<f4",
    "F64": "<f8",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "BF16": "",
}


def _scalar_value(dtype: str, data: bytes) -> float:
    if dtype == "BF16":  # the upper half of a float32
        return float(np.frombuffer(b"\0\0" + data, dtype="<f4")[0])
    return float(np.frombuffer(data, dtype=_SCALAR_DTYPES[dtype])[0])


@dataclass(frozen=True)
class LoraCheck:
    """The verdict on one LoRA file: accepted when `problems` is empty."""

    header: SafetensorsHeader | None
    """None when the file is not a readable safetensors file."""
    summary: LoraSummary | None
    """None when the file is not an SDXL LoRA in Kohya format."""
    problems: list[str] = field(default_factory=list)
    alphas: list[float] = field(default_factory=list)
    """The distinct `alpha` values stored in the modules."""

    @property
    def accepted(self) -> bool:
        return not self.problems


def check_lora_stream(
    stream: ByteReader,
    size: int | None,
    architecture: Architecture = Architecture.SDXL,
    chunk_bytes: int = CHUNK_BYTES,
) -> LoraCheck:
    """Read a whole LoRA file from `stream` once (`size` bytes when known) and judge it: structure,
    identity (`summarise_lora`), then every tensor's numbers. Never raises for a bad file.

    Memory: the header plus one `chunk_bytes` read.
    """
    try:
        header = read_safetensors_header(stream, size)
    except LoraFormatError as error:
        return LoraCheck(None, None, [str(error)])
    try:
        summary = summarise_lora(header, architecture)
        numbers = scan_tensor_data(stream, header, chunk_bytes)
    except LoraFormatError as error:
        return LoraCheck(header, None, [str(error)])
    problems, warnings = _number_findings(header, numbers)
    alphas = sorted({n.value for key, n in numbers.items() if key.endswith(".alpha") and n.value is not None})
    return LoraCheck(
        header, summary.model_copy(update={"warnings": summary.warnings + warnings}), problems, alphas
    )


def _number_findings(
    header: SafetensorsHeader, numbers: dict[str, TensorNumbers]
) -> tuple[list[str], list[str]]:
    problems = []
    unexamined = sorted(
        {
            info.dtype
            for name, info in header.tensors.items()
            if info.dtype not in _FLOAT_BITS and not name.endswith(".alpha")
        }
    )
    if unexamined:
        problems.append(
            f"weights of dtype {', '.join(unexamined)}: sd-scripts saves LoRA weights as F32, F16 or BF16 "
            "(save_precision float, fp16 or bf16), so this file was converted or corrupted. Use the file the "
            "trainer wrote"
        )
    for kind, attribute in (("NaN", "nan"), ("Inf", "inf")):
        bad = {name: getattr(n, attribute) for name, n in numbers.items() if getattr(n, attribute)}
        if bad:
            example = next(iter(bad))
            problems.append(
                f"{len(bad)} of {len(numbers)} tensors hold {kind} values ({sum(bad.values()):,} in all, e.g. "
                f"{bad[example]:,} in {example!r}): the training diverged and the LoRA renders black or noise. "
                'Train again with a lower learning rate and mixed_precision = "bf16" (fp16 overflows on SDXL)'
            )
    ups = {
        name[: -len(".lora_up.weight")]: n for name, n in numbers.items() if name.endswith(".lora_up.weight")
    }
    # A module adds lora_up @ lora_down to its layer: all-zero either way, it changes nothing.
    untrained = {
        module
        for module, up in ups.items()
        if up.nonzero == 0 or numbers[f"{module}.lora_down.weight"].nonzero == 0
    }
    warnings = []
    if ups and untrained == set(ups):
        problems.append(
            f"every one of its {len(ups)} modules has an all-zero lora_up (or lora_down); zero is the lora_up "
            "sd-scripts starts from (networks/lora.py zero-initialises it): the LoRA learned nothing and changes "
            "no image. Check that the learning rates (unet_lr, text_encoder_lr, learning_rate) are above 0 and "
            "that the job ran its steps"
        )
    elif untrained:
        for part, prefix in PART_PREFIXES.items():
            mine = {m for m in ups if m.startswith(prefix)}
            if mine and mine <= untrained:
                warnings.append(
                    f"all {len(mine)} {part} modules have an all-zero lora_up (or lora_down), so they change "
                    "nothing: that part was not trained (a learning rate of 0 for it?)"
                )
    return problems, warnings


def trigger_words(metadata: dict[str, str]) -> list[str]:
    """The words that call the LoRA, from sd-scripts' training metadata: the class tokens of each subset
    folder (`ss_dataset_dirs` / `ss_tag_frequency` keys, `<repeats>_<class tokens>`), then the tags found
    in every caption of a subset (`ss_tag_frequency`). Empty without that metadata."""
    words: list[str] = []
    folders: dict[str, Any] = {}
    frequencies: dict[str, Any] = {}
    for key, target in (("ss_dataset_dirs", folders), ("ss_tag_frequency", frequencies)):
        try:
            value = loads_json(metadata.get(key, "{}"))
        except ValueError:
            continue
        if isinstance(value, dict):
            target.update(value)
    for folder in [*folders, *frequencies]:
        subset = parse_subset_folder(folder)
        tokens = subset.class_tokens.strip() if subset is not None else ""
        if tokens and tokens not in words:
            words.append(tokens)
    for folder, tags in frequencies.items():
        images = folders.get(folder, {}).get("img_count") if isinstance(folders.get(folder), dict) else None
        if not isinstance(tags, dict) or not tags:
            continue
        most = max(count for count in tags.values() if isinstance(count, int)) if images is None else images
        words += [tag for tag, count in tags.items() if count == most and tag not in words]
    return words


def inspect_lora_file(
    path: Path | str, architecture: Architecture = Architecture.SDXL
) -> tuple[SafetensorsHeader, LoraSummary]:
    """Header and summary of a LoRA on disk, judged as the unpack step judges it (the container's check
    before it reports success). Raises `LoraFormatError` listing every problem found."""
    with open(path, "rb") as file:
        check = check_lora_stream(file, os.fstat(file.fileno()).st_size, architecture)
    if check.problems or check.header is None or check.summary is None:
        raise LoraFormatError("; ".join(check.problems))
    return check.header, check.summary
