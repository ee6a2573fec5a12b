"""The project's one reader of safetensors headers, and the check that a file is an SDXL LoRA in Kohya format.

Only the header is read (8-byte little-endian length, then a JSON object), never the tensor data, so a
multi-gigabyte file costs a few kilobytes. The training container uses `inspect_lora_file` before it
reports success; the unpack step uses `read_safetensors_header` on the stream it is copying.

What is accepted as a LoRA (what A1111, ComfyUI and diffusers load as Kohya-format networks):
- `lora` modules (sd-scripts `networks.lora`, LoCon with `conv_dim`, DoRA's extra `dora_scale`):
  `<module>.lora_down.weight`, `<module>.lora_up.weight`, `<module>.alpha`;
- `loha` and `lokr` modules (LyCORIS `lycoris.kohya`), with their own complete key sets.
Module names start with `lora_unet_`, `lora_te1_` (CLIP ViT-L) or `lora_te2_` (OpenCLIP ViT-bigG).
Anything else is a `LoraFormatError` whose message says what the file looks like instead.
"""

from __future__ import annotations

import math
import os
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

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


def summarise_lora(header: SafetensorsHeader) -> LoraSummary:
    """Check that `header` describes an SDXL LoRA in Kohya format and summarise it.

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

    metadata = header.metadata
    base_version = metadata.get("ss_base_model_version")
    architecture = metadata.get("modelspec.architecture")
    _check_base_model(base_version, architecture)
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
        architecture=architecture,
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


def inspect_lora_file(path: Path | str) -> tuple[SafetensorsHeader, LoraSummary]:
    """Header and summary of a LoRA on disk (the container's check before it reports success)."""
    with open(path, "rb") as file:
        header = read_safetensors_header(file, size=os.fstat(file.fileno()).st_size)
    return header, summarise_lora(header)
