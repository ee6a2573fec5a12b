"""Generated SDXL LoRA files and model archives for tests and benchmarks (no binary fixtures in the repo).

Module names and shapes follow sd-scripts' SDXL LoRA: 70 transformer blocks with 10 Linear modules each plus
proj_in/proj_out of 11 transformer models (722 U-Net modules), 12 CLIP ViT-L and 32 OpenCLIP ViT-bigG
layers with 6 modules each (72 + 192 text encoder modules).
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import save

# (block name, channels, transformer depth) of every SDXL U-Net block with attention, SGM naming.
_UNET_ATTENTION_BLOCKS = (
    [(f"input_blocks_{i}_1", 640, 2) for i in (4, 5)]
    + [(f"input_blocks_{i}_1", 1280, 10) for i in (7, 8)]
    + [("middle_block_1", 1280, 10)]
    + [(f"output_blocks_{i}_1", 1280, 10) for i in (0, 1, 2)]
    + [(f"output_blocks_{i}_1", 640, 2) for i in (3, 4, 5)]
)
_CONTEXT_DIM = 2048
_TEXT_ENCODERS = (("te1", 12, 768, 3072), ("te2", 32, 1280, 5120))


def sdxl_module_shapes(*, text_encoders: bool = True) -> dict[str, tuple[int, int]]:
    """Kohya module name -> (in_features, out_features) of every module sd-scripts trains on SDXL."""
    shapes: dict[str, tuple[int, int]] = {}
    for block, channels, depth in _UNET_ATTENTION_BLOCKS:
        prefix = f"lora_unet_{block}"
        shapes[f"{prefix}_proj_in"] = (channels, channels)
        shapes[f"{prefix}_proj_out"] = (channels, channels)
        for index in range(depth):
            layer = f"{prefix}_transformer_blocks_{index}"
            for attention, context in (("attn1", channels), ("attn2", _CONTEXT_DIM)):
                shapes[f"{layer}_{attention}_to_q"] = (channels, channels)
                shapes[f"{layer}_{attention}_to_k"] = (context, channels)
                shapes[f"{layer}_{attention}_to_v"] = (context, channels)
                shapes[f"{layer}_{attention}_to_out_0"] = (channels, channels)
            shapes[f"{layer}_ff_net_0_proj"] = (channels, 8 * channels)
            shapes[f"{layer}_ff_net_2"] = (4 * channels, channels)
    if text_encoders:
        for part, layers, hidden, mlp in _TEXT_ENCODERS:
            for index in range(layers):
                layer = f"lora_{part}_text_model_encoder_layers_{index}"
                for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
                    shapes[f"{layer}_self_attn_{projection}"] = (hidden, hidden)
                shapes[f"{layer}_mlp_fc1"] = (hidden, mlp)
                shapes[f"{layer}_mlp_fc2"] = (mlp, hidden)
    return shapes


def kohya_metadata(rank: int = 4, alpha: float = 1.0, output_name: str = "bluebot") -> dict[str, str]:
    return {
        "ss_base_model_version": "sdxl_base_v1-0",
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
        "modelspec.sai_model_spec": "1.0.0",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_output_name": output_name,
    }


def lora_tensors(
    rank: int = 4,
    *,
    text_encoders: bool = True,
    module_limit: int | None = None,
    dtype: type[np.floating] = np.float16,
) -> dict[str, np.ndarray]:
    """Kohya LoRA tensors of a trained SDXL LoRA (real layer shapes, no lora_up left at its zero
    initialisation); the first `module_limit` modules only (the first are the narrow 640-wide ones)."""
    modules = list(sdxl_module_shapes(text_encoders=text_encoders).items())[:module_limit]
    tensors: dict[str, np.ndarray] = {}
    for module, (in_features, out_features) in modules:
        tensors[f"{module}.lora_down.weight"] = _filled((rank, in_features), 0.01, dtype)
        tensors[f"{module}.lora_up.weight"] = _filled((out_features, rank), 0.001, dtype)
        tensors[f"{module}.alpha"] = np.array(1.0, dtype=dtype)
    return tensors


def _filled(shape: tuple[int, int], scale: float, dtype: type[np.floating]) -> np.ndarray:
    """Cheap non-constant values (full-size files have 14 M of them): a ramp through [-scale, scale]."""
    size = shape[0] * shape[1]
    return (np.linspace(-scale, scale, size, dtype=np.float32).reshape(shape)).astype(dtype)


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    return save(tensors, metadata=metadata)


def sdxl_lora_bytes(rank: int = 4, **options: object) -> bytes:
    """A small but complete SDXL LoRA file (722 + 264 modules) with sd-scripts metadata."""
    return safetensors_bytes(lora_tensors(rank, **options), kohya_metadata(rank))  # type: ignore[arg-type]


@dataclass
class Member:
    """One archive member: a file (`data`), a directory, or a special entry via `kind`/`linkname`."""

    name: str
    data: bytes = b""
    kind: bytes = tarfile.REGTYPE
    linkname: str = ""
    claimed_size: int | None = None


def tar_bytes(members: Iterable[Member], *, compress: bool = True) -> bytes:
    """A tar (gzip unless `compress` is false) with exactly the given members, links and lies included."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.kind
            info.linkname = member.linkname
            info.size = len(member.data)
            if member.claimed_size is not None:
                # A header that lies about its size: write it by hand, then only the bytes we have.
                info.size = member.claimed_size
                raw.write(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
                raw.write(member.data)
                break
            archive.addfile(info, io.BytesIO(member.data) if info.size else None)
    data = raw.getvalue()
    return gzip.compress(data, compresslevel=1, mtime=0) if compress else data
