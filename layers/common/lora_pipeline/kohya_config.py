"""Kohya config rules: a user's `config.toml` in, the effective `kohya.toml` the job runs with out.

sd-scripts v0.10.1 reads `--config_file` leniently: top-level tables are flattened one level, unknown keys
are ignored and values are neither type- nor choice-checked, so a typo or a GUI-only key silently changes
nothing and `xformers = "none"` turns xformers on. Here every key is checked against the v0.10.1 argument
table (`kohya_args`), GUI-only keys from Kohya GUI / AWS blog configs are normalised with a warning, keys
that import code, carry secrets or talk to outside services are refused, paths the container owns are
removed, the combinations sd-scripts refuses at run time (after the GPU is paid for) are refused here, and
SDXL defaults fill in what the user left out. Each rule names the sd-scripts function it comes from.
"""

from __future__ import annotations

import ast
import difflib
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeGuard

import tomli_w

from lora_pipeline.kohya_args import SD_SCRIPTS_VERSION, ArgKind, ArgSpec, argument_specs
from lora_pipeline.problems import Problem, ProblemCode, Severity, define

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
CONFIG_OUTPUT_NAME = define(
    "CONFIG_OUTPUT_NAME",
    Severity.WARNING,
    "The LoRA's file name differs from the config's output_name",
    "Set output_name in pipeline.toml (it wins) or remove it from config.toml.",
)

# --- Facts from sd-scripts v0.10.1 and the decisions built on them -------------------------------------------

# Kohya GUI keys that sd-scripts ignores (design.md); dropped with a warning.
GUI_ONLY_KEYS = frozenset(
    {"model_list", "sdxl", "unit", "train_on_input", "noise_offset_type", "no_token_padding"}
)
# `xformers` as the Kohya GUI writes it: a string naming the attention implementation.
_GUI_ATTENTION_VALUES = ("xformers", "sdpa", "none")

SECRET_KEYS = frozenset({"wandb_api_key", "huggingface_token"})
# Uploads to the Hugging Face hub (train_util.add_training_arguments).
HUGGING_FACE_UPLOAD_KEYS = frozenset(
    {
        "huggingface_repo_id",
        "huggingface_repo_type",
        "huggingface_path_in_repo",
        "huggingface_repo_visibility",
        "save_state_to_huggingface",
        "resume_from_huggingface",
        "async_upload",
    }
)
_OUTSIDE_LOGGERS = ("wandb", "all")

# Set by the training container on the command line (which sd-scripts reads after the config file), so a
# value here could only mislead. `console_log_file` would take the log (and the metric lines) off stdout;
# the initial_* keys would fight the container's spot resume. `pretrained_model_name_or_path` is handled
# with the base model (it comes from pipeline.toml).
PIPELINE_OWNED_KEYS = frozenset(
    {
        "train_data_dir",
        "output_dir",
        "logging_dir",
        "resume",
        "sample_prompts",
        "config_file",
        "tokenizer_cache_dir",
        "console_log_file",
        "initial_epoch",
        "initial_step",
        "skip_until_initial_step",
    }
)

# Arguments this pipeline refuses, with the reason. Dataset sources other than the folder convention would
# train on something the validator never saw; the weight and VAE paths name files the job cannot receive.
UNSUPPORTED_KEYS: dict[str, str] = {
    "reg_data_dir": "regularisation images are not supported by the folder convention yet",
    "in_json": "fine-tuning metadata files are not supported; captions come from caption files",
    "dataset_config": "the dataset comes from the `<repeats>_<class tokens>/` folders, not a dataset config",
    "dataset_class": "sd-scripts imports this class by name; the dataset comes from the folders",
    "conditioning_data_dir": "mask folders are not supported; use alpha_mask with transparent images",
    "network_weights": "the job cannot receive an existing LoRA to continue from",
    "dim_from_weights": "it needs network_weights, which the job cannot receive",
    "base_weights": "the job cannot receive extra weight files to merge",
    "base_weights_multiplier": "it only applies to base_weights, which the job cannot receive",
    "vae": "the job cannot receive a separate VAE file (no_half_vae = true avoids the SDXL VAE NaN problem)",
    "log_tracker_config": "the job cannot receive a tracker config file",
    "deepspeed": "DeepSpeed is not installed in the training image",
    "offload_optimizer_nvme_path": "DeepSpeed is not installed in the training image",
    "offload_param_nvme_path": "DeepSpeed is not installed in the training image",
    "output_config": "sd-scripts would write the config and exit 0 without training",
    "debug_dataset": "sd-scripts would show the dataset and exit without training",
    "v2": "SD 2.x options cannot be used for SDXL (sdxl_train_util.verify_sdxl_training_args)",
}

# Network modules the image ships (sd-scripts' own `networks/`; LyCORIS is not installed).
ALLOWED_NETWORK_MODULES = ("networks.lora", "networks.dylora", "networks.oft", "networks.lora_fa")
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
_UNKNOWN_KEY_HINTS = {
    "epoch": "the Kohya GUI's `epoch` is not an sd-scripts argument: use max_train_epochs",
    "num_repeats": "repeats come from the subset folder name `<repeats>_<class tokens>`",
    "class_tokens": "class tokens come from the subset folder name `<repeats>_<class tokens>`",
    "image_dir": "images come from the subset folders of the dataset",
    "batch_size": "the sd-scripts argument is train_batch_size",
}

_POSITIVE_INTS = (
    "train_batch_size",
    "gradient_accumulation_steps",
    "max_train_epochs",
    "max_train_steps",
    "network_dim",
    "vae_batch_size",
    "save_every_n_epochs",
    "save_every_n_steps",
    "bucket_reso_steps",
    "min_bucket_reso",
    "max_bucket_reso",
    "lr_scheduler_num_cycles",
    "dataset_repeats",
)
_NON_NEGATIVE_NUMBERS = (
    "unet_lr",
    "text_encoder_lr",
    "network_alpha",
    "max_data_loader_n_workers",
    "keep_tokens",
    "noise_offset",
    "min_snr_gamma",
    "max_grad_norm",
    "prior_loss_weight",
    "caption_dropout_every_n_epochs",
)
_FRACTIONS = ("caption_dropout_rate", "caption_tag_dropout_rate", "network_dropout")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_BLOG_OUTPUT_NAME = "custom_lora_model"

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
# the U-Net only, from cached text-encoder outputs (see with_defaults).
TEXT_ENCODER_KEYS = (
    "network_train_unet_only",
    "network_train_text_encoder_only",
    "cache_text_encoder_outputs",
    "cache_text_encoder_outputs_to_disk",
    "text_encoder_lr",
)
# BaseDataset.is_text_encoder_output_cacheable (train_util.py): captions that change between steps.
CAPTION_CHANGING_KEYS = (
    "shuffle_caption",
    "caption_dropout_rate",
    "token_warmup_step",
    "caption_tag_dropout_rate",
)
TEXT_ENCODER_LR_RATIO = 0.1


@dataclass(frozen=True)
class PipelineInputs:
    dataset_name: str
    output_name: str | None  # from pipeline.toml; wins over config.toml's output_name (warn if both differ)
    base_model_hf_id: str | None  # a Hugging Face id; None when an S3 `model` channel supplies the base model
    sample_every_n_epochs: int | None  # None = no sample prompts


@dataclass(frozen=True)
class KohyaConfigResult:
    effective: dict[str, Any] | None  # None only when the file cannot be parsed at all
    problems: list[Problem]

    def to_toml(self) -> str:
        """The effective, normalised kohya.toml (all keys at the top level, sorted)."""
        if self.effective is None:
            raise ValueError("config.toml could not be parsed, so there is no effective config")
        header = (
            f"# Effective Kohya config for sdxl_train_network.py (sd-scripts {SD_SCRIPTS_VERSION}),\n"
            "# written by sdxl-lora-pipeline from config.toml and its SDXL defaults.\n"
            "# The training container adds the paths (data, output, model, resume) on the command line.\n\n"
        )
        return header + tomli_w.dumps(dict(sorted(self.effective.items())))


def safe_output_name(name: str) -> str:
    """`name` reduced to [A-Za-z0-9_-]: other runs of characters become one `_`; never empty."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-")
    return cleaned or "lora"


def build_effective_config(
    text: str | None, inputs: PipelineInputs, file: str = "config.toml"
) -> KohyaConfigResult:
    """Check `text` (config.toml's content; None when the dataset has none) and build the effective config."""
    builder = _Builder(file, inputs)
    if text is None:
        return builder.finish({})
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        problem = CONFIG_PARSE_ERROR.at(file, f"{file} is not valid TOML: {error}.")
        return KohyaConfigResult(effective=None, problems=[problem])
    return builder.finish(builder.flatten(document))


def _toml(value: Any) -> str:
    """`value` as it would be written in TOML, on one line, for messages."""
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {_toml(item)}" for key, item in value.items()) + "}"
    return tomli_w.dumps({"v": value}).removeprefix("v = ").strip()


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_empty(value: Any) -> bool:
    return value is False or value == "" or value == []


def _kind_text(spec: ArgSpec) -> str:
    return {
        ArgKind.STR: "a string",
        ArgKind.PATH: "a string",
        ArgKind.INT: "an integer",
        ArgKind.FLOAT: "a number",
        ArgKind.INT_OR_FLOAT: "an integer (steps) or a number below 1 (a ratio)",
        ArgKind.FLAG: "true or false",
        ArgKind.STR_LIST: 'an array of strings, e.g. ["a=1", "b=2"]',
        ArgKind.FLOAT_LIST: "an array of numbers",
    }[spec.kind]


def _has_kind(spec: ArgSpec, value: Any) -> bool:
    if spec.kind in (ArgKind.STR, ArgKind.PATH):
        return isinstance(value, str)
    if spec.kind is ArgKind.INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if spec.kind in (ArgKind.FLOAT, ArgKind.INT_OR_FLOAT):
        return _is_number(value)
    if spec.kind is ArgKind.FLAG:
        return isinstance(value, bool)
    if spec.kind is ArgKind.STR_LIST:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    # train_network.py accepts a single number for text_encoder_lr ("toml backward compatibility").
    if spec.name == "text_encoder_lr" and _is_number(value):
        return True
    return isinstance(value, list) and all(_is_number(item) for item in value)


def _args_entry_problem(entry: str, literal_value: bool) -> str | None:
    """Why `entry` of an *_args array would crash sd-scripts, or None."""
    # get_optimizer / get_scheduler_fix: `key, value = arg.split("=")` then ast.literal_eval(value);
    # train_network.py: `key, value = net_arg.split("=", 1)`.
    parts = entry.split("=") if literal_value else entry.split("=", 1)
    if len(parts) != 2 or not parts[0].strip():
        return f'"{entry}" is not of the form "name=value" with a single "="'
    if literal_value:
        try:
            ast.literal_eval(parts[1])
        except (ValueError, SyntaxError):
            return f'"{entry}": the value must be a Python literal such as False, 0.9, (0.9, 0.999) or "text"'
    return None


def _parse_resolution(text: str) -> tuple[int, int] | None:
    """train_util.prepare_dataset_args: "W,H" or "S" (meaning S,S)."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) not in (1, 2) or not all(part.isdigit() and int(part) > 0 for part in parts):
        return None
    width, height = int(parts[0]), int(parts[-1])
    return width, height


class _Builder:
    def __init__(self, file: str, inputs: PipelineInputs) -> None:
        self.file = file
        self.inputs = inputs
        self.specs = argument_specs()
        self.problems: list[Problem] = []
        self.tables: dict[str, str | None] = {}

    # -- reporting --

    def where(self, key: str, value: Any) -> str:
        table = self.tables.get(key)
        place = f" in [{table}]" if table else ""
        return f"`{key} = {_toml(value)}`{place}"

    def report(self, code: ProblemCode, message: str, fix: str | None = None) -> None:
        self.problems.append(code.at(self.file, message, fix))

    # -- reading --

    def flatten(self, document: dict[str, Any]) -> dict[str, Any]:
        """Top-level tables flattened one level, as train_util.read_config_from_file does."""
        flat: dict[str, Any] = {}
        for name, value in document.items():
            if name == "datasets" or (isinstance(value, dict) and "subsets" in value):
                self.report(
                    CONFIG_DATASET_CONFIG_FORMAT,
                    f"[[{name}]] belongs to sd-scripts' --dataset_config format, which this pipeline does not "
                    "read.",
                )
                continue
            entries = value.items() if isinstance(value, dict) else [(name, value)]
            table = name if isinstance(value, dict) else None
            for key, item in entries:
                if isinstance(item, dict):
                    self.report(
                        CONFIG_NESTED_TABLE,
                        f"[{name}.{key}] is nested two levels deep; sd-scripts only flattens top-level tables.",
                    )
                    continue
                if key in flat:
                    first = self.tables[key]
                    self.report(
                        CONFIG_DUPLICATE_KEY,
                        f"`{key}` is set {f'in [{first}]' if first else 'at the top level'} and again "
                        f"{f'in [{table}]' if table else 'at the top level'}.",
                    )
                    continue
                flat[key] = item
                self.tables[key] = table
        return flat

    # -- the stages --

    def finish(self, user: dict[str, Any]) -> KohyaConfigResult:
        config = self.normalise_gui_keys(user)
        config = self.drop_refused_keys(config)
        config = self.check_types(config)
        self.check_values(config)
        effective = self.with_defaults(config)
        self.check_combinations(effective, config)
        return KohyaConfigResult(effective=effective, problems=self.problems)

    def normalise_gui_keys(self, user: dict[str, Any]) -> dict[str, Any]:
        config = dict(user)
        for key in sorted(GUI_ONLY_KEYS & config.keys()):
            self.report(
                CONFIG_GUI_KEY_NORMALISED,
                f"{self.where(key, config.pop(key))}: a Kohya GUI setting that sd-scripts ignores; dropped.",
                f"Remove {key}.",
            )
        self.normalise_attention(config)
        self.normalise_conv_args(config)
        gui_unset_values = {
            "vae_batch_size": (0, "sd-scripts v0.10.1 crashes caching latents with it (its default is 1)"),
            "max_token_length": (75, "75 tokens is what sd-scripts uses without the key"),
        }
        for key, (unset, why) in gui_unset_values.items():
            if key in config and config[key] == unset and not isinstance(config[key], bool):
                self.report(
                    CONFIG_GUI_KEY_NORMALISED,
                    f"{self.where(key, config.pop(key))}: the Kohya GUI's default; {why}; dropped.",
                    f"Remove {key}.",
                )
        if config.get("dynamo_backend") == "no" and not config.get("torch_compile"):
            self.report(
                CONFIG_GUI_KEY_NORMALISED,
                f"{self.where('dynamo_backend', config.pop('dynamo_backend'))}: the Kohya GUI's 'off' value; "
                "sd-scripts only uses dynamo_backend with torch_compile = true; dropped.",
                "Remove dynamo_backend.",
            )
        if "clip_skip" in config:
            # sdxl_train_util.verify_sdxl_training_args warns; the SDXL text encoding never reads it.
            self.report(
                CONFIG_NO_EFFECT,
                f"{self.where('clip_skip', config.pop('clip_skip'))}: SDXL training does not use clip_skip; "
                "dropped.",
                "Remove clip_skip.",
            )
        if "caption_extention" in config:
            # train_util.prepare_dataset_args: the misspelt key wins over caption_extension.
            value = config.pop("caption_extention")
            self.report(
                CONFIG_GUI_KEY_NORMALISED,
                f"{self.where('caption_extention', value)}: sd-scripts' old misspelling; used as "
                "caption_extension (it wins over caption_extension, as in sd-scripts).",
                f"Write caption_extension = {_toml(value)}.",
            )
            config["caption_extension"] = value
            self.tables["caption_extension"] = self.tables.get("caption_extention")
        return config

    def normalise_attention(self, config: dict[str, Any]) -> None:
        """The image has no xformers and always runs SDPA attention (design.md)."""
        if "xformers" in config:
            value = config.pop("xformers")
            if isinstance(value, str) and value.lower() in _GUI_ATTENTION_VALUES:
                self.report(
                    CONFIG_GUI_KEY_NORMALISED,
                    f"{self.where('xformers', value)}: the Kohya GUI's attention choice; sd-scripts would read "
                    "any non-empty string as xformers = true. The training image has no xformers and uses "
                    "PyTorch SDPA attention: written as sdpa = true.",
                    "Remove xformers; sdpa = true is the default.",
                )
            elif value is True:
                self.report(
                    CONFIG_GUI_KEY_NORMALISED,
                    f"{self.where('xformers', value)}: the training image has no xformers (sd-scripts would stop "
                    "with 'No xformers'); PyTorch SDPA attention gives the same memory saving: written as "
                    "sdpa = true.",
                    "Remove xformers; sdpa = true is the default.",
                )
            elif value is not False:
                self.report(
                    CONFIG_BAD_CHOICE,
                    f"{self.where('xformers', value)}: xformers must be true/false or one of the Kohya GUI "
                    f"values {', '.join(map(_toml, _GUI_ATTENTION_VALUES))}.",
                    "Remove xformers; the image uses sdpa = true.",
                )
        attention_overrides = [
            key for key, value in (("mem_eff_attn", True), ("sdpa", False)) if config.get(key) is value
        ]
        for key in attention_overrides:
            self.report(
                CONFIG_NO_EFFECT,
                f"{self.where(key, config.pop(key))}: the training image always uses PyTorch SDPA attention "
                "(sdpa = true); dropped.",
                f"Remove {key}.",
            )

    def normalise_conv_args(self, config: dict[str, Any]) -> None:
        """The GUI's conv_dim / conv_alpha become networks.lora's network_args (LoRA for 3x3 convolutions)."""
        conv = {key: config.pop(key) for key in ("conv_dim", "conv_alpha") if key in config}
        if not conv:
            return
        shown = ", ".join(self.where(key, value) for key, value in conv.items())
        if not all(_is_number(value) for value in conv.values()):
            self.report(CONFIG_WRONG_TYPE, f"{shown}: conv_dim and conv_alpha must be numbers.")
            return
        if conv.get("conv_dim", 0) <= 0:
            self.report(
                CONFIG_GUI_KEY_NORMALISED,
                f"{shown}: a Kohya GUI setting; without a positive conv_dim no convolution layers are trained; "
                "dropped.",
            )
            return
        network_args = config.get("network_args", [])
        if not isinstance(network_args, list):
            return  # check_types reports network_args itself
        named = {str(entry).split("=", 1)[0].strip() for entry in network_args}
        added = [f"{key}={value:g}" for key, value in conv.items() if key not in named]
        config["network_args"] = [*network_args, *added]
        self.tables.setdefault("network_args", self.tables.get("conv_dim"))
        self.report(
            CONFIG_GUI_KEY_NORMALISED,
            f"{shown}: a Kohya GUI setting sd-scripts ignores as a key; written as network_args "
            f"{_toml(config['network_args'])}, which also trains LoRA on the U-Net's 3x3 convolutions "
            "(a larger file).",
            "Write the network_args shown, or remove conv_dim/conv_alpha for a plain LoRA.",
        )

    def drop_refused_keys(self, config: dict[str, Any]) -> dict[str, Any]:
        kept: dict[str, Any] = {}
        for key, value in config.items():
            if key not in self.specs:
                self.report_unknown(key, value)
            elif key in PIPELINE_OWNED_KEYS:
                if _is_empty(value):
                    self.report(
                        CONFIG_EMPTY_KEY_DROPPED, f"{self.where(key, value)}: set by the pipeline; dropped."
                    )
                else:
                    self.report(
                        CONFIG_PIPELINE_OWNED,
                        f"{self.where(key, value)}: the training container sets {key}; removed.",
                        f"Remove {key} from {self.file}.",
                    )
            elif key in SECRET_KEYS or key in HUGGING_FACE_UPLOAD_KEYS or key in UNSUPPORTED_KEYS:
                if _is_empty(value):
                    self.report(
                        CONFIG_EMPTY_KEY_DROPPED,
                        f"{self.where(key, value)}: empty or false, so harmless; dropped.",
                    )
                else:
                    self.report_refused(key, value)
            elif key == "log_with" and value in _OUTSIDE_LOGGERS:
                self.report(
                    CONFIG_OUTSIDE_SERVICE,
                    f"{self.where(key, value)}: Weights & Biases needs an API key and an outside connection, "
                    "which the pipeline does not give the job.",
                    'Remove log_with, or write log_with = "tensorboard" (written under the run\'s logs).',
                )
            else:
                kept[key] = value
        return kept

    def report_unknown(self, key: str, value: Any) -> None:
        hint = _UNKNOWN_KEY_HINTS.get(key)
        if hint is None:
            close = difflib.get_close_matches(key, self.specs.keys(), n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else "it is not an argument of sd-scripts"
        self.report(
            CONFIG_UNKNOWN_KEY,
            f"{self.where(key, value)}: sdxl_train_network.py {SD_SCRIPTS_VERSION} has no argument `{key}` "
            f"and would silently ignore it; {hint}",
            "Fix the name or remove the key (`python sdxl_train_network.py --help` in sd-scripts v0.10.1 lists every argument).",
        )

    def report_refused(self, key: str, value: Any) -> None:
        shown = self.where(key, "***") if key in SECRET_KEYS else self.where(key, value)
        if key in SECRET_KEYS:
            self.report(
                CONFIG_SECRET,
                f"{shown}: a secret in {self.file} would be copied into the run's files and the job's "
                "settings, and the pipeline has no use for it (nothing is sent to W&B or the Hugging Face hub).",
            )
        elif key in HUGGING_FACE_UPLOAD_KEYS:
            self.report(
                CONFIG_OUTSIDE_SERVICE,
                f"{shown}: uploads to the Hugging Face hub are not supported; the LoRA is written to "
                "runs/<dataset>/<run-id>/model/ in the bucket.",
            )
        else:
            self.report(CONFIG_UNSUPPORTED, f"{shown}: not supported here: {UNSUPPORTED_KEYS[key]}.")

    def check_types(self, config: dict[str, Any]) -> dict[str, Any]:
        checked: dict[str, Any] = {}
        for key, value in config.items():
            spec = self.specs[key]
            if not _has_kind(spec, value):
                fix = f"Write {key} as {_kind_text(spec)}."
                if key == "resolution":
                    fix = 'Write resolution as a string: "1024,1024" (width,height) or "1024".'
                self.report(
                    CONFIG_WRONG_TYPE,
                    f"{self.where(key, value)}: {key} must be {_kind_text(spec)} (sd-scripts does not convert "
                    "config values).",
                    fix,
                )
            elif spec.choices and value not in spec.choices:
                self.report(
                    CONFIG_BAD_CHOICE,
                    f"{self.where(key, value)}: {key} must be one of {', '.join(map(_toml, spec.choices))}.",
                )
            else:
                checked[key] = float(value) if spec.kind is ArgKind.FLOAT else value
        return checked

    def bad_value(self, config: dict[str, Any], key: str, problem: str, fix: str | None = None) -> None:
        self.report(CONFIG_BAD_VALUE, f"{self.where(key, config.pop(key))}: {problem}.", fix)

    def check_values(self, config: dict[str, Any]) -> None:
        """Single-key rules; a key that breaks one is reported and left out of the effective config."""
        for key in _POSITIVE_INTS:
            if key in config and config[key] < 1:
                self.bad_value(config, key, f"{key} must be at least 1")
        for key in _NON_NEGATIVE_NUMBERS:
            values = config.get(key)
            if values is not None and any(v < 0 for v in (values if isinstance(values, list) else [values])):
                self.bad_value(config, key, f"{key} must not be negative")
        for key in _FRACTIONS:
            if key in config and not 0 <= config[key] <= 1:
                self.bad_value(config, key, f"{key} is a probability between 0 and 1")
        if "learning_rate" in config and config["learning_rate"] <= 0:
            self.bad_value(config, "learning_rate", "learning_rate must be greater than 0")
        if "validation_split" in config and not 0 <= config["validation_split"] < 1:
            self.bad_value(
                config, "validation_split", "validation_split is a fraction from 0 up to (not incl.) 1"
            )
        for key in ("lr_warmup_steps", "lr_decay_steps"):
            # get_scheduler_fix multiplies a float by the total steps: 1.5 would mean 150 % of the run.
            value = config.get(key)
            if (isinstance(value, float) and not 0 <= value < 1) or (isinstance(value, int) and value < 0):
                self.bad_value(
                    config, key, f"{key} is a step count (integer) or a ratio of the run (a number below 1)"
                )
        for key in ("min_timestep", "max_timestep"):
            if key in config and not 0 <= config[key] <= 1000:
                self.bad_value(config, key, f"{key} must be between 0 and 1000")
        if "resolution" in config and _parse_resolution(config["resolution"]) is None:
            self.bad_value(
                config,
                "resolution",
                'resolution must be "W,H" or "S" with positive whole numbers',
                'Write resolution = "1024,1024" or "1024".',
            )
        if "face_crop_aug_range" in config and not _is_float_pair(config["face_crop_aug_range"]):
            self.bad_value(
                config, "face_crop_aug_range", 'face_crop_aug_range must be "low,high", e.g. "2.0,4.0"'
            )
        thumbnail = config.get("metadata_thumbnail")
        if thumbnail and not thumbnail.startswith("data:"):
            # sai_model_spec.build_metadata reads any other value as a file and embeds it in the LoRA.
            self.report(
                CONFIG_UNSUPPORTED,
                f"{self.where('metadata_thumbnail', config.pop('metadata_thumbnail'))}: not a data: URL, so "
                "sd-scripts would read that file on the training machine and embed it in the published LoRA.",
                'Give the thumbnail as a data URL ("data:image/png;base64,...") or remove metadata_thumbnail.',
            )
        extension = config.get("caption_extension")
        if extension is not None and not re.fullmatch(r"\.[A-Za-z0-9_.-]+", extension):
            self.bad_value(
                config,
                "caption_extension",
                "sd-scripts appends caption_extension to the image's base name, so it must start with a dot",
                f'Write caption_extension = ".{extension.lstrip(".") or "caption"}".',
            )
        if "save_model_as" in config and config["save_model_as"] != "safetensors":
            self.bad_value(
                config,
                "save_model_as",
                "the pipeline publishes .safetensors files only",
                'Remove save_model_as or write "safetensors".',
            )
        self.check_args_arrays(config)
        self.check_imported_names(config)
        self.check_legacy_optimizer_flags(config)

    def check_args_arrays(self, config: dict[str, Any]) -> None:
        for key, literal in (("optimizer_args", True), ("lr_scheduler_args", True), ("network_args", False)):
            broken = [
                reason
                for reason in (_args_entry_problem(entry, literal) for entry in config.get(key, []))
                if reason
            ]
            if broken:
                self.bad_value(config, key, f"sd-scripts cannot read {'; '.join(broken)}")

    def check_imported_names(self, config: dict[str, Any]) -> None:
        """network_module, optimizer_type and lr_scheduler_type are imported by name: allow-lists only."""
        module = config.get("network_module")
        if module is not None and module not in ALLOWED_NETWORK_MODULES:
            reason = (
                "LyCORIS is not installed in the training image"
                if module.startswith("lycoris")
                else "sd-scripts imports network_module as Python code"
            )
            self.refuse(config, "network_module", reason, ALLOWED_NETWORK_MODULES)
        if config.get("optimizer_type") == "":
            config.pop("optimizer_type")  # sd-scripts reads "" as "not chosen"; so does the default below
        optimizer = config.get("optimizer_type")
        builtin = {name.lower() for name in BUILTIN_OPTIMIZERS}
        if optimizer is not None and optimizer.lower() not in builtin and optimizer not in TORCH_OPTIMIZERS:
            if optimizer.lower().startswith("dadapt"):
                reason = "the dadaptation package is not installed in the training image (try Prodigy)"
            elif "." in optimizer:
                reason = "sd-scripts imports a dotted optimizer_type as Python code"
            else:
                reason = "sd-scripts would not find it (torch.optim names are case-sensitive)"
            self.refuse(config, "optimizer_type", reason, BUILTIN_OPTIMIZERS + TORCH_OPTIMIZERS)
        scheduler_type = config.get("lr_scheduler_type")
        if scheduler_type == "":
            config.pop("lr_scheduler_type")
        elif scheduler_type is not None and scheduler_type not in TORCH_LR_SCHEDULERS:
            self.refuse(
                config,
                "lr_scheduler_type",
                "sd-scripts imports lr_scheduler_type by name",
                TORCH_LR_SCHEDULERS,
            )
        scheduler = config.get("lr_scheduler")
        if scheduler is not None and scheduler not in LR_SCHEDULERS:
            self.report(
                CONFIG_BAD_CHOICE,
                f"{self.where('lr_scheduler', config.pop('lr_scheduler'))}: get_scheduler_fix does not know this "
                "scheduler.",
                f"Use one of {', '.join(LR_SCHEDULERS)}.",
            )

    def refuse(self, config: dict[str, Any], key: str, reason: str, allowed: Iterable[str]) -> None:
        value = config.pop(key)
        close = difflib.get_close_matches(str(value), list(allowed), n=1)
        suggestion = f" Did you mean {close[0]}?" if close else ""
        self.report(
            CONFIG_NOT_ALLOWED,
            f"{self.where(key, value)}: {reason}; only known names are allowed.{suggestion}",
            f"Use one of: {', '.join(allowed)}.",
        )

    def check_legacy_optimizer_flags(self, config: dict[str, Any]) -> None:
        """train_util.get_optimizer: use_8bit_adam / use_lion_optimizer are old spellings of optimizer_type."""
        flags = {
            key: name
            for key, name in (("use_8bit_adam", "AdamW8bit"), ("use_lion_optimizer", "Lion"))
            if config.pop(key, False)
        }
        if not flags:
            return
        if len(flags) > 1 or "optimizer_type" in config:
            set_keys = [*flags, *(["optimizer_type"] if "optimizer_type" in config else [])]
            self.report(
                CONFIG_CONFLICT,
                f"{' and '.join(f'`{k}`' for k in set_keys)} both choose the optimizer; sd-scripts stops with "
                "an assertion (train_util.get_optimizer).",
                "Keep only optimizer_type.",
            )
            return
        (key, name), *_ = flags.items()
        config["optimizer_type"] = name
        self.report(
            CONFIG_GUI_KEY_NORMALISED,
            f'`{key} = true`: the old spelling of optimizer_type = "{name}"; written that way.',
            f'Write optimizer_type = "{name}".',
        )

    def with_defaults(self, config: dict[str, Any]) -> dict[str, Any]:
        effective = {**DEFAULTS, **config}
        if "optimizer_type" not in config and "optimizer_args" not in config:
            effective["optimizer_type"] = "Adafactor"
            effective["optimizer_args"] = list(ADAFACTOR_ARGS)
        elif "optimizer_type" not in config:
            effective["optimizer_type"] = "AdamW"
            self.report(
                CONFIG_NO_EFFECT,
                f"{self.where('optimizer_args', config['optimizer_args'])} without optimizer_type: the arguments "
                "are for sd-scripts' default optimizer, so optimizer_type = \"AdamW\" is written (the pipeline's "
                "own default, Adafactor, comes with its own arguments).",
                "Set optimizer_type next to optimizer_args.",
            )
        if "learning_rate" not in config and str(effective["optimizer_type"]).lower() == "prodigy":
            # Prodigy finds the step size itself; learning_rate scales it and 1.0 is its intended value.
            effective["learning_rate"] = 1.0
        if "save_precision" not in config:
            effective["save_precision"] = "fp16" if effective["mixed_precision"] == "fp16" else "bf16"
        if "max_train_epochs" not in config and "max_train_steps" not in config:
            effective["max_train_epochs"] = DEFAULT_MAX_TRAIN_EPOCHS
        latent_augmentation = config.get("color_aug") or config.get("random_crop")
        if (
            "cache_latents" not in config
            and "cache_latents_to_disk" not in config
            and not latent_augmentation
        ):
            effective["cache_latents"] = True
            # The container puts the dataset copy under /opt/ml/checkpoints: the .npz files written next to
            # the images survive a spot restart.
            effective["cache_latents_to_disk"] = True
        self.set_text_encoder_training(effective, config)
        effective["output_name"] = self.output_name(config.get("output_name"))
        self.set_base_model(effective, config.get("pretrained_model_name_or_path"))
        self.set_sampling(effective, config)
        return effective

    def set_text_encoder_training(self, effective: dict[str, Any], config: dict[str, Any]) -> None:
        """GPU time per step: sd-scripts' README recommends training only the U-Net for SDXL LoRAs; then the
        text encoders' outputs can be computed once and cached (docs/sdxl_train_network.md) instead of running
        both encoders every step. `network_train_unet_only = false` trains the text encoders again, at a tenth
        of the U-Net's learning rate (the ratio docs/sdxl_train_network.md uses) unless text_encoder_lr is set.
        A config that sets any TEXT_ENCODER_KEYS itself is taken as written."""
        if not any(key in config for key in TEXT_ENCODER_KEYS):
            effective["network_train_unet_only"] = True
            # sdxl_train_network.py assert_extra_args: cached outputs need fixed captions.
            if not any(config.get(key) for key in CAPTION_CHANGING_KEYS):
                effective["cache_text_encoder_outputs"] = True
            return
        trains_both = not (
            config.get("network_train_unet_only") or config.get("network_train_text_encoder_only")
        )
        unet_lr = config.get("unet_lr", effective.get("learning_rate"))
        prodigy = str(effective.get("optimizer_type", "")).lower() == "prodigy"  # adapts every rate itself
        if trains_both and "text_encoder_lr" not in config and _is_number(unet_lr) and not prodigy:
            effective["text_encoder_lr"] = float(unet_lr) * TEXT_ENCODER_LR_RATIO

    def output_name(self, configured: str | None) -> str:
        fallback = safe_output_name(self.inputs.dataset_name)
        if self.inputs.output_name is not None:
            if configured is not None and configured != self.inputs.output_name:
                self.report(
                    CONFIG_OUTPUT_NAME,
                    f"{self.where('output_name', configured)}: pipeline.toml's output_name "
                    f'"{self.inputs.output_name}" wins.',
                )
            return self.inputs.output_name
        if configured is None:
            return fallback
        name = configured.removesuffix(".safetensors")
        if name == _BLOG_OUTPUT_NAME:
            self.report(
                CONFIG_OUTPUT_NAME,
                f"{self.where('output_name', configured)}: the blog sample's name would give every LoRA the "
                f'same file name; using the dataset\'s name "{fallback}".',
                "Set output_name to a name for this LoRA, in pipeline.toml or config.toml.",
            )
            return fallback
        if not _SAFE_NAME.fullmatch(name):
            self.report(
                CONFIG_BAD_VALUE,
                f"{self.where('output_name', configured)}: output_name becomes a file name and an S3 key; use "
                "letters, digits, '.', '_' and '-' only.",
                f'Write output_name = "{safe_output_name(name)}".',
            )
            return fallback
        if name != configured:
            self.report(
                CONFIG_OUTPUT_NAME,
                f"{self.where('output_name', configured)}: sd-scripts adds the extension itself (it would write "
                f'"{configured}.safetensors"); using "{name}".',
                f'Write output_name = "{name}".',
            )
        return name

    def set_base_model(self, effective: dict[str, Any], configured: str | None) -> None:
        hf_id = self.inputs.base_model_hf_id
        if hf_id is not None:
            effective["pretrained_model_name_or_path"] = hf_id
        else:
            effective.pop("pretrained_model_name_or_path", None)
        if configured is None or configured == hf_id:
            return
        if _is_empty(configured):
            self.report(
                CONFIG_EMPTY_KEY_DROPPED,
                f"{self.where('pretrained_model_name_or_path', configured)}: set by the pipeline; dropped.",
            )
            return
        source = f'"{hf_id}"' if hf_id else "the S3 model channel"
        self.report(
            CONFIG_PIPELINE_OWNED,
            f"{self.where('pretrained_model_name_or_path', configured)}: the base model comes from pipeline.toml's "
            f"base_model ({source}); removed.",
            "Set base_model in pipeline.toml instead.",
        )

    def set_sampling(self, effective: dict[str, Any], config: dict[str, Any]) -> None:
        """Sample prompts come from pipeline.toml; the container writes them to the sample_prompts file."""
        every = self.inputs.sample_every_n_epochs
        # sample_sampler alone is harmless and stays.
        sample_keys = ("sample_every_n_epochs", "sample_every_n_steps", "sample_at_first")
        if every is None:
            for key in sample_keys:
                if key in effective:
                    self.report(
                        CONFIG_PIPELINE_OWNED,
                        f"{self.where(key, effective.pop(key))}: samples are only rendered when pipeline.toml "
                        "has sample_prompts; removed.",
                        "Give sample_prompts (and sample_every_n_epochs) in pipeline.toml.",
                    )
            return
        configured = config.get("sample_every_n_epochs")
        if configured is not None and configured != every:
            self.report(
                CONFIG_PIPELINE_OWNED,
                f"{self.where('sample_every_n_epochs', configured)}: pipeline.toml's sample_every_n_epochs = "
                f"{every} wins.",
                "Set sample_every_n_epochs in pipeline.toml only.",
            )
        effective["sample_every_n_epochs"] = every
        effective.setdefault("sample_sampler", DEFAULT_SAMPLE_SAMPLER)

    def conflict(self, message: str, fix: str) -> None:
        self.report(CONFIG_CONFLICT, message, fix)

    def check_combinations(self, effective: dict[str, Any], user: dict[str, Any]) -> None:
        """Rules over several keys, on the effective config; each cites where sd-scripts enforces it."""
        on = effective.get
        # train_network.py: train_unet = not te_only, train_text_encoder = not unet_only -> nothing to train.
        if on("network_train_unet_only") and on("network_train_text_encoder_only"):
            self.conflict(
                "network_train_unet_only and network_train_text_encoder_only are both true: nothing would be "
                "trained.",
                "Keep at most one of them.",
            )
        caching_te = on("cache_text_encoder_outputs") or on("cache_text_encoder_outputs_to_disk")
        # sdxl_train_network.py assert_extra_args.
        if caching_te and not on("network_train_unet_only"):
            self.conflict(
                "cache_text_encoder_outputs needs network_train_unet_only = true: sd-scripts cannot train the "
                "text encoders from cached outputs.",
                "Add network_train_unet_only = true, or remove cache_text_encoder_outputs.",
            )
        # sdxl_train_network.py assert_extra_args -> BaseDataset.is_text_encoder_output_cacheable.
        caption_changers = [
            key
            for key in (
                "shuffle_caption",
                "caption_dropout_rate",
                "token_warmup_step",
                "caption_tag_dropout_rate",
            )
            if on(key)
        ]
        if caching_te and caption_changers:
            self.conflict(
                f"cache_text_encoder_outputs cannot be used with {', '.join(caption_changers)}: cached outputs "
                "cannot change from step to step.",
                f"Remove {' / '.join(caption_changers)} or cache_text_encoder_outputs.",
            )
        # train_network.py: assert is_latent_cacheable (color_aug / random_crop change every epoch).
        augmenting = [key for key in ("color_aug", "random_crop") if on(key)]
        if (on("cache_latents") or on("cache_latents_to_disk")) and augmenting:
            self.conflict(
                f"cache_latents cannot be used with {' / '.join(augmenting)}: cached latents cannot change.",
                f"Remove {' / '.join(augmenting)}, or set cache_latents = false (slower, more memory).",
            )
        self.check_precision(effective)
        self.check_scheduler(effective, user)
        self.check_buckets(effective)
        # train_util.verify_training_args.
        if on("adaptive_noise_scale") is not None and on("noise_offset") is None:
            self.conflict("adaptive_noise_scale needs noise_offset.", "Set noise_offset, e.g. 0.0357.")
        if on("scale_v_pred_loss_like_noise_pred") and not on("v_parameterization"):
            self.conflict(
                "scale_v_pred_loss_like_noise_pred only works with v_parameterization.",
                "Remove scale_v_pred_loss_like_noise_pred.",
            )
        if on("v_pred_like_loss") and on("v_parameterization"):
            self.conflict(
                "v_pred_like_loss cannot be used with v_parameterization.", "Remove one of the two settings."
            )
        if on("zero_terminal_snr") and not on("v_parameterization"):
            self.report(
                CONFIG_NO_EFFECT,
                "zero_terminal_snr without v_parameterization: sd-scripts warns the result will be unexpected.",
                "Remove zero_terminal_snr unless the base model is a v-prediction model.",
            )
        # torch DataLoader: persistent workers need worker processes.
        if on("persistent_data_loader_workers") and on("max_data_loader_n_workers") == 0:
            self.conflict(
                "persistent_data_loader_workers needs max_data_loader_n_workers of at least 1 (PyTorch's "
                "DataLoader refuses persistent workers without workers).",
                "Remove max_data_loader_n_workers = 0 or persistent_data_loader_workers.",
            )
        if on("min_timestep", 0) > on("max_timestep", 1000):
            self.conflict(
                f"min_timestep ({on('min_timestep')}) is above max_timestep ({on('max_timestep', 1000)}): "
                "sd-scripts would silently train every step at max_timestep (train_util.get_timesteps).",
                "Make min_timestep at most max_timestep.",
            )
        if "max_train_epochs" in user and "max_train_steps" in user:
            # train_network.py: "override steps" from max_train_epochs.
            self.report(
                CONFIG_NO_EFFECT,
                f"max_train_epochs = {user['max_train_epochs']} and max_train_steps = {user['max_train_steps']} "
                "are both set: sd-scripts trains for max_train_epochs and ignores max_train_steps.",
                "Remove max_train_steps.",
            )
        if on("fused_backward_pass"):
            # Only get_optimizer's assertions read it; sdxl_train_network.py never fuses the backward pass.
            effective.pop("fused_backward_pass")
            self.report(
                CONFIG_NO_EFFECT,
                "fused_backward_pass has no effect in LoRA training (only sdxl_train.py uses it); dropped.",
                "Remove fused_backward_pass.",
            )
        if on("no_metadata"):
            self.report(
                CONFIG_NO_EFFECT,
                "no_metadata = true: the LoRA will carry no ss_* training metadata, so manifest.json and the "
                "tools that read it (base model, dim, alpha) will not find them.",
                "Remove no_metadata unless the metadata must not be shared.",
            )

    def check_precision(self, effective: dict[str, Any]) -> None:
        """train_network.py: full_fp16 / full_bf16 / fp8_base need the matching mixed_precision."""
        precision = effective["mixed_precision"]
        for key, needed in (("full_fp16", "fp16"), ("full_bf16", "bf16")):
            if effective.get(key) and precision != needed:
                self.conflict(
                    f'{key} needs mixed_precision = "{needed}" (it is "{precision}").',
                    f'Set mixed_precision = "{needed}" or remove {key}.',
                )
        for key in ("fp8_base", "fp8_base_unet"):
            if effective.get(key) and precision == "no":
                self.conflict(
                    f'{key} needs mixed_precision = "fp16" or "bf16".', 'Set mixed_precision = "bf16".'
                )

    def check_scheduler(self, effective: dict[str, Any], user: dict[str, Any]) -> None:
        """train_util.get_optimizer / get_scheduler_fix."""
        optimizer = str(effective["optimizer_type"]).lower()
        scheduler = effective.get("lr_scheduler")
        if scheduler == "adafactor" and optimizer != "adafactor":
            self.conflict(
                'lr_scheduler = "adafactor" only works with optimizer_type = "Adafactor".',
                'Use another lr_scheduler, e.g. "constant_with_warmup".',
            )
        relative_step = optimizer == "adafactor" and "relative_step=False" not in {
            entry.replace(" ", "") for entry in effective.get("optimizer_args", [])
        }
        # These schedules raise "does not require num_warmup_steps" when given warmup steps.
        if relative_step:
            refuses_warmup = "Adafactor with relative_step (its default) runs its own schedule"
        elif effective.get("lr_scheduler_type"):
            refuses_warmup = f"lr_scheduler_type {effective['lr_scheduler_type']}"
        elif scheduler in ("constant", "adafactor"):
            refuses_warmup = f'lr_scheduler = "{scheduler}"'
        else:
            refuses_warmup = ""
        if refuses_warmup and effective.get("lr_warmup_steps", 0) != 0:
            self.conflict(
                f"lr_warmup_steps = {effective['lr_warmup_steps']} with {refuses_warmup}: sd-scripts stops with "
                "'does not require num_warmup_steps'.",
                'Remove lr_warmup_steps, or use lr_scheduler = "constant_with_warmup".',
            )
        if relative_step and "learning_rate" in user:
            self.report(
                CONFIG_NO_EFFECT,
                "Adafactor with relative_step (its default) uses learning_rate only as the initial rate of its "
                "own schedule.",
                'Add "relative_step=False" (and "scale_parameter=False", "warmup_init=False") to optimizer_args '
                "for a fixed learning rate.",
            )

    def check_buckets(self, effective: dict[str, Any]) -> None:
        """BaseDataset.adjust_min_max_bucket_reso_by_steps and SDXL's verify_bucket_reso_steps(32)."""
        steps = effective["bucket_reso_steps"]
        if steps % 32:
            self.conflict(
                f"bucket_reso_steps = {steps}: SDXL needs a multiple of 32 (sdxl_train_network.py).",
                "Use bucket_reso_steps = 64.",
            )
            return
        resolution = _parse_resolution(effective["resolution"])
        if not effective["enable_bucket"] or resolution is None:
            return
        low = effective["min_bucket_reso"] - effective["min_bucket_reso"] % steps
        high = effective["max_bucket_reso"] + (-effective["max_bucket_reso"]) % steps
        for key, adjusted in (("min_bucket_reso", low), ("max_bucket_reso", high)):
            if adjusted != effective[key]:
                self.report(
                    CONFIG_NO_EFFECT,
                    f"{key} = {effective[key]} is not a multiple of bucket_reso_steps = {steps}; sd-scripts uses "
                    f"{adjusted}.",
                    f"Write {key} = {adjusted}.",
                )
        if min(resolution) < low:
            self.conflict(
                f"min_bucket_reso ({low}) is above the resolution's short side ({min(resolution)}).",
                "Lower min_bucket_reso or raise resolution.",
            )
        if max(resolution) > high:
            self.conflict(
                f"max_bucket_reso ({high}) is below the resolution's long side ({max(resolution)}).",
                "Raise max_bucket_reso or lower resolution.",
            )


def _is_float_pair(text: str) -> bool:
    """train_util.prepare_dataset_args: face_crop_aug_range is "low,high" with low <= high."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        return False
    return low <= high
