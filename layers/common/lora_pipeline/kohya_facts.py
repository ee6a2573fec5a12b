"""Facts from sd-scripts v0.10.1 about its `--config_file` and the problem codes of the Kohya config rules.

Shared by the reader (`kohya_config`) and the registered rules (`kohya_rules`); each fact names where in
sd-scripts it comes from.
"""

from __future__ import annotations

from typing import Any, TypeGuard

import tomli_w

from lora_pipeline.kohya_args import SD_SCRIPTS_VERSION
from lora_pipeline.problems import Severity, define

CONFIG_PARSE_ERROR = define(
    "CONFIG_PARSE_ERROR",
    Severity.ERROR,
    "config.toml is not valid TOML",
    "Fix the TOML syntax at the line and column given (strings need quotes, arrays need brackets).",
)
CONFIG_DATASET_CONFIG_FORMAT = define(
    "CONFIG_DATASET_CONFIG_FORMAT",
    Severity.ERROR,
    "config.toml uses sd-scripts' --dataset_config format ([[datasets]] / [[datasets.subsets]])",
    "This pipeline builds the dataset from the folder layout `<repeats>_<class tokens>/`: put the images in "
    "such folders and keep only training arguments in config.toml.",
)
CONFIG_NESTED_TABLE = define(
    "CONFIG_NESTED_TABLE",
    Severity.ERROR,
    "A table nested two levels deep, which sd-scripts does not flatten",
    "Move the keys into a top-level table such as [training_arguments] or to the top of the file.",
)
CONFIG_DUPLICATE_KEY = define(
    "CONFIG_DUPLICATE_KEY",
    Severity.ERROR,
    "The same argument is set in two tables (sd-scripts would silently keep the last one)",
    "Keep the key in one place only.",
)
CONFIG_UNKNOWN_KEY = define(
    "CONFIG_UNKNOWN_KEY",
    Severity.ERROR,
    f"A key that sdxl_train_network.py {SD_SCRIPTS_VERSION} does not know (it would be silently ignored)",
    "Fix the spelling or remove the key.",
)
CONFIG_WRONG_TYPE = define(
    "CONFIG_WRONG_TYPE",
    Severity.ERROR,
    "A value of the wrong TOML type (sd-scripts does not convert config values)",
    "Write the value with the type shown.",
)
CONFIG_BAD_CHOICE = define(
    "CONFIG_BAD_CHOICE",
    Severity.ERROR,
    "A value outside the choices sd-scripts accepts",
    "Use one of the values listed.",
)
CONFIG_BAD_VALUE = define(
    "CONFIG_BAD_VALUE",
    Severity.ERROR,
    "A value of the right type that sd-scripts cannot use (out of range or badly formed)",
    "Change the value as described.",
)
CONFIG_GUI_KEY_NORMALISED = define(
    "CONFIG_GUI_KEY_NORMALISED",
    Severity.WARNING,
    "A Kohya GUI key or value was translated to what sd-scripts understands, or dropped",
    "Nothing to do; to silence this, write the sd-scripts form given or remove the key.",
)
CONFIG_SECRET = define(
    "CONFIG_SECRET",
    Severity.ERROR,
    "A key that carries a secret (it would be stored in S3 and in the job's hyperparameters)",
    "Remove the key from config.toml and revoke the token if the file was shared.",
)
CONFIG_OUTSIDE_SERVICE = define(
    "CONFIG_OUTSIDE_SERVICE",
    Severity.ERROR,
    "A key that makes the training job upload to or log with an outside service",
    "Remove the key: the pipeline writes the LoRA to S3 and the logs to CloudWatch.",
)
CONFIG_UNSUPPORTED = define(
    "CONFIG_UNSUPPORTED",
    Severity.ERROR,
    "An sd-scripts argument this pipeline cannot honour",
    "Remove the key.",
)
CONFIG_NOT_ALLOWED = define(
    "CONFIG_NOT_ALLOWED",
    Severity.ERROR,
    "sd-scripts imports this value as code; only the listed names are allowed",
    "Use one of the allowed names.",
)
CONFIG_PIPELINE_OWNED = define(
    "CONFIG_PIPELINE_OWNED",
    Severity.WARNING,
    "A key the pipeline sets itself was removed from the config",
    "Remove the key from config.toml; the pipeline sets it.",
)
CONFIG_EMPTY_KEY_DROPPED = define(
    "CONFIG_EMPTY_KEY_DROPPED",
    Severity.INFO,
    "An empty or false value of a key the pipeline refuses or sets itself was dropped",
    "Nothing to do; remove the key to silence this.",
)
CONFIG_CONFLICT = define(
    "CONFIG_CONFLICT",
    Severity.ERROR,
    "A combination of settings sd-scripts refuses or crashes on at run time",
    "Change one of the settings as described.",
)
CONFIG_NO_EFFECT = define(
    "CONFIG_NO_EFFECT",
    Severity.WARNING,
    "A setting sd-scripts ignores, adjusts or only warns about in SDXL LoRA training",
    "Change or remove the setting as described.",
)
CONFIG_NOTHING_TRAINS = define(
    "CONFIG_NOTHING_TRAINS",
    Severity.ERROR,
    "No part of the model would train (every part's learning rate is 0)",
    "Give the part you want to train a learning rate above 0.",
)
CONFIG_DIVERGES = define(
    "CONFIG_DIVERGES",
    Severity.ERROR,
    "A precision setting known to turn the training into NaN",
    "Change the setting as described.",
)
CONFIG_RATE_SUSPECT = define(
    "CONFIG_RATE_SUSPECT",
    Severity.WARNING,
    "A learning rate far from what the optimizer needs: the LoRA diverges (NaN) or barely moves",
    "Use the rate suggested for the optimizer.",
)
CONFIG_PRECISION_RISK = define(
    "CONFIG_PRECISION_RISK",
    Severity.WARNING,
    "A full-precision-off setting that often gives NaN, or updates too small to change the LoRA",
    "Change the setting as described.",
)
CONFIG_ARGS_UNKNOWN_KEY = define(
    "CONFIG_ARGS_UNKNOWN_KEY",
    Severity.WARNING,
    "An optimizer_args / lr_scheduler_args / network_args keyword its receiver is not known to accept",
    "Check the keyword's spelling against the list given.",
)
CONFIG_OUTPUT_NAME = define(
    "CONFIG_OUTPUT_NAME",
    Severity.WARNING,
    "The LoRA's file name differs from the config's output_name",
    "Set output_name in pipeline.toml (it wins) or remove it from config.toml.",
)

# --- Facts from sd-scripts v0.10.1 and the decisions built on them -------------------------------------------

# Kohya GUI keys that sd-scripts ignores (README, "config.toml"); dropped with a warning.
GUI_ONLY_KEYS = frozenset(
    {"model_list", "sdxl", "unit", "train_on_input", "noise_offset_type", "no_token_padding"}
)
# `xformers` as the Kohya GUI writes it: a string naming the attention implementation.
GUI_ATTENTION_VALUES = ("xformers", "sdpa", "none")

OUTSIDE_LOGGERS = ("wandb", "all")

# Network modules whose output round-trips: they save `lora_unet_*` / `lora_te*_*` modules with
# `lora_down.weight`, `lora_up.weight` and `alpha` (networks/dylora.py:DyLoRAModule.state_dict joins its
# per-rank lora_A/lora_B lists into those keys), which the unpack step accepts (safetensors_lora).
ALLOWED_NETWORK_MODULES = ("networks.lora", "networks.dylora", "networks.lora_fa")
# Modules the image ships that are refused anyway, with the reason.
NETWORK_MODULES_REFUSED = {
    "networks.oft": "networks.oft saves `oft_unet_*` modules with `.oft_blocks` (networks/oft.py), not a LoRA: "
    "the unpack step refuses that output (as do A1111's and ComfyUI's LoRA loaders), so the paid run would be "
    "thrown away",
}
# train_util.get_optimizer matches its own names case-insensitively. DAdapt* are left out: `dadaptation`
# is not in sd-scripts' requirements.txt, so the image does not have it.
BUILTIN_OPTIMIZERS = (
    "AdamW",
    "AdamW8bit",
    "PagedAdamW",
    "PagedAdamW8bit",
    "PagedAdamW32bit",
    "SGDNesterov",
    "SGDNesterov8bit",
    "Lion",
    "Lion8bit",
    "PagedLion8bit",
    "Prodigy",
    "Adafactor",
    "RAdamScheduleFree",
    "AdamWScheduleFree",
    "SGDScheduleFree",
)
# Any other name is looked up in torch.optim, case-sensitively (dotted names are imported: refused).
TORCH_OPTIMIZERS = (
    "Adam",
    "SGD",
    "RMSprop",
    "Adagrad",
    "Adadelta",
    "Adamax",
    "NAdam",
    "RAdam",
    "ASGD",
    "Rprop",
)
# train_util.get_scheduler_fix: transformers' SchedulerType names it handles, diffusers' piecewise_constant,
# and "adafactor" (Adafactor's own schedule).
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "warmup_stable_decay",
    "piecewise_constant",
    "adafactor",
)
# `lr_scheduler_type` is looked up in torch.optim.lr_scheduler (dotted names are imported: refused).
TORCH_LR_SCHEDULERS = (
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "PolynomialLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "OneCycleLR",
)

# Keys that are not sd-scripts arguments but that people write; the hint beats a "did you mean".
UNKNOWN_KEY_HINTS = {
    "epoch": "the Kohya GUI's `epoch` is not an sd-scripts argument: use max_train_epochs",
    "num_repeats": "repeats come from the subset folder name `<repeats>_<class tokens>`",
    "class_tokens": "class tokens come from the subset folder name `<repeats>_<class tokens>`",
    "image_dir": "images come from the subset folders of the dataset",
    "batch_size": "the sd-scripts argument is train_batch_size",
}

BLOG_OUTPUT_NAME = "custom_lora_model"

# --- SDXL defaults for what the user leaves out ----------------------------------------------------------------

# An SDXL LoRA at dim 32 over the U-Net (722 modules) and both text encoders (264) has 114.0 M parameters:
# 228 MB (217 MiB) in bf16. Dim 16 halves that; see the README's config.toml section.
DEFAULT_NETWORK_DIM = 32
DEFAULT_NETWORK_ALPHA = 16.0
ADAFACTOR_ARGS = ("scale_parameter=False", "relative_step=False", "warmup_init=False")
DEFAULTS: dict[str, Any] = {
    "sdpa": True,
    "mixed_precision": "bf16",
    "gradient_checkpointing": True,
    "no_half_vae": True,
    "network_module": "networks.lora",
    "network_dim": DEFAULT_NETWORK_DIM,
    "network_alpha": DEFAULT_NETWORK_ALPHA,
    "learning_rate": 1e-4,
    "lr_scheduler": "constant_with_warmup",
    "resolution": "1024,1024",
    "enable_bucket": True,
    "min_bucket_reso": 256,
    "max_bucket_reso": 2048,
    "bucket_reso_steps": 64,
    "bucket_no_upscale": False,
    "train_batch_size": 1,
    "caption_extension": ".caption",
    "save_model_as": "safetensors",
    # A fixed seed makes a resumed spot run replay the same shuffle.
    "seed": 42,
}
DEFAULT_MAX_TRAIN_EPOCHS = 10
DEFAULT_SAMPLE_SAMPLER = "euler_a"
# Keys by which config.toml decides about the text encoders itself; without any of them the pipeline trains
# the U-Net only, from cached text-encoder outputs (kohya_config's defaults).
TEXT_ENCODER_KEYS = (
    "network_train_unet_only",
    "network_train_text_encoder_only",
    "cache_text_encoder_outputs",
    "cache_text_encoder_outputs_to_disk",
    "text_encoder_lr",
)
# train_util.py BaseDataset.is_text_encoder_output_cacheable: captions that change between steps.
CAPTION_CHANGING_KEYS = (
    "shuffle_caption",
    "caption_dropout_rate",
    "token_warmup_step",
    "caption_tag_dropout_rate",
)
# The text encoders' rate as a fraction of the U-Net's when both train (docs/sdxl_train_network.md).
TEXT_ENCODER_LR_RATIO = 0.1


def toml_text(value: Any) -> str:
    """`value` as it would be written in TOML, on one line, for messages."""
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_text, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {toml_text(item)}" for key, item in value.items()) + "}"
    return tomli_w.dumps({"v": value}).removeprefix("v = ").strip()


def is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_empty(value: Any) -> bool:
    return value is False or value == "" or value == []
