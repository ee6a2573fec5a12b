"""The base model must be SDXL: sdxl_train_network.py (sdxl_train_util.load_target_model) loads it as the SDXL
base architecture and fails only after the training instance has started and downloaded it.

- A Hugging Face id is checked against `data/base_models.toml` (known SDXL repositories, known others and
  family name patterns). Anything else cannot be checked offline (the repository's model_index.json would
  need the network, which the validator does not have): a warning.
- An S3 `.safetensors` checkpoint: its header (the first 8 bytes give the JSON header's length) is read with
  ranged GETs, and the tensor names must hold the SDXL base's: `conditioner.embedders.1.` (the second text
  encoder, OpenCLIP ViT-bigG) and `model.diffusion_model.label_emb.` (the size/crop conditioning), as
  library/sdxl_model_util.py:load_models_from_sdxl_checkpoint reads them.
"""

from __future__ import annotations

import json
import struct
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from lora_pipeline.dataset_source import ObjectReader, ObjectUnreadable
from lora_pipeline.kohya_contract import SDXL_BASE_MODEL
from lora_pipeline.problems import Problem, Severity, define
from lora_pipeline.text_formats import loads_json

JOB_BASE_MODEL_NOT_SDXL = define(
    "JOB_BASE_MODEL_NOT_SDXL",
    Severity.ERROR,
    "base_model is not an SDXL base model, so sd-scripts' SDXL training fails after the instance has started",
    f'Use an SDXL base model, e.g. base_model = "{SDXL_BASE_MODEL}".',
)
JOB_BASE_MODEL_UNCHECKED = define(
    "JOB_BASE_MODEL_UNCHECKED",
    Severity.WARNING,
    "base_model could not be checked to be SDXL before the job",
    "Make sure the model is an SDXL base (its model_index.json names StableDiffusionXLPipeline), or use "
    f'base_model = "{SDXL_BASE_MODEL}".',
)

_SDXL_KEYS = ("conditioner.embedders.1.", "model.diffusion_model.label_emb.")
# Tensor-name prefixes that identify what a checkpoint is when it is not the SDXL base.
_OTHER_LAYOUTS = (
    ("cond_stage_model.transformer.", "a Stable Diffusion 1.x checkpoint"),
    ("cond_stage_model.model.", "a Stable Diffusion 2.x checkpoint"),
    ("model.diffusion_model.joint_blocks.", "a Stable Diffusion 3 checkpoint"),
    ("double_blocks.", "a FLUX checkpoint"),
    ("model.diffusion_model.double_blocks.", "a FLUX checkpoint"),
    ("lora_unet_", "a LoRA, not a base model"),
    ("down_blocks.", "a diffusers U-Net only, not a full single-file checkpoint"),
    ("conditioner.embedders.0.", "the SDXL refiner (one text encoder)"),
)
# safetensors headers of SDXL checkpoints are a few hundred KB; anything above this is not a checkpoint.
_MAX_HEADER_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class _KnownModels:
    sdxl: frozenset[str]
    other: dict[str, str]
    name_patterns: dict[str, str]


@cache
def _known() -> _KnownModels:
    text = resources.files("lora_pipeline").joinpath("data", "base_models.toml").read_text("utf-8")
    data = tomllib.loads(text)
    return _KnownModels(frozenset(data["sdxl"]), data["other"], data["name_patterns"])


def check_hugging_face_id(model_id: str, file: str) -> Problem | None:
    """The problem with `model_id` as an SDXL base, or None when it is a known SDXL repository."""
    known = _known()
    if model_id in known.sdxl:
        return None
    family = known.other.get(model_id)
    if family is None and "xl" not in model_id.lower():
        family = next(
            (name for pattern, name in known.name_patterns.items() if pattern in model_id.lower()), None
        )
    if family is not None:
        return JOB_BASE_MODEL_NOT_SDXL.at(
            file,
            f'base_model = "{model_id}" is {family}, not SDXL: sdxl_train_network.py loads it as an SDXL base '
            "and fails after the instance has started and downloaded it.",
        )
    return JOB_BASE_MODEL_UNCHECKED.at(
        file,
        f'base_model = "{model_id}" is not a repository known to be SDXL, and its model_index.json cannot be '
        "read offline; if it is not an SDXL base, the job fails after the instance has downloaded it.",
    )


def check_s3_checkpoint(uri: str, reader: ObjectReader, file: str) -> Problem | None:
    """Read the safetensors header of `uri` and check the SDXL base's tensor names; None when it is SDXL."""
    try:
        names = _tensor_names(reader, uri)
    except ObjectUnreadable as error:
        code = JOB_BASE_MODEL_NOT_SDXL if error.missing else JOB_BASE_MODEL_UNCHECKED
        return code.at(file, f"base_model = {uri!r}: {error}.")
    except ValueError as error:
        return JOB_BASE_MODEL_NOT_SDXL.at(
            file, f"base_model = {uri!r} is not a safetensors checkpoint: {error}."
        )
    if all(any(name.startswith(prefix) for name in names) for prefix in _SDXL_KEYS):
        return None
    what = next(
        (kind for prefix, kind in _OTHER_LAYOUTS if any(name.startswith(prefix) for name in names)),
        "a checkpoint without the SDXL base's tensors",
    )
    return JOB_BASE_MODEL_NOT_SDXL.at(
        file,
        f"base_model = {uri!r} is {what}: an SDXL base checkpoint has {' and '.join(_SDXL_KEYS)} tensors, "
        "and sdxl_train_network.py fails loading anything else.",
    )


def _tensor_names(reader: ObjectReader, uri: str) -> list[str]:
    """The tensor names of a safetensors file: 8 bytes of header length (little-endian), then JSON."""
    prefix = reader.read_range(uri, 0, 8)
    if len(prefix) < 8:
        raise ValueError("the file is shorter than a safetensors header")
    (length,) = struct.unpack("<Q", prefix)
    if not 2 <= length <= _MAX_HEADER_BYTES:
        raise ValueError(f"its header length ({length} bytes) is not a safetensors header's")
    raw = reader.read_range(uri, 8, length)
    try:
        header = loads_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("its header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    return [name for name in header if name != "__metadata__"]
