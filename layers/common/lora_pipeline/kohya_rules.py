"""The registered rules of a Kohya `config.toml`, in three rule sets that run in this order:

- `NORMALISE` (KN...): on the flattened user config, before keys are checked against the argument table:
  Kohya GUI spellings become what sd-scripts reads, or are dropped.
- `KEYS` (KK...): keys sd-scripts does not know, and keys the pipeline sets itself or refuses (the argument
  table's `policy` column); each is reported and removed.
- `VALUES` (KV...): single-key rules on the type-checked user config; a key that breaks one is reported and
  left out, so the SDXL default (or nothing) takes its place.
- `PIPELINE_INPUTS` (KP...): on the effective config: output name, base model and sampling, which
  pipeline.toml decides.
- `COMBINATIONS` (KC...): rules over the effective config (defaults filled in).

Each rule cites the sd-scripts v0.10.1 file and function it mirrors (see `lora_pipeline.rules`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lora_pipeline.evaluated_args import CONFIG_KEY, ArgsKind, check_entry, parse_entry, receiver_for
from lora_pipeline.kohya_args import SD_SCRIPTS_VERSION, KeyPolicy, argument_specs
from lora_pipeline.kohya_contract import (
    CONTAINER_OWNED_KEYS,
    REFUSED_KEYS,
    dotted_caption_extension,
    is_caption_extension,
    parse_resolution,
)
from lora_pipeline.kohya_facts import (
    ALLOWED_NETWORK_MODULES,
    BLOG_OUTPUT_NAME,
    BUILTIN_OPTIMIZERS,
    CAPTION_CHANGING_KEYS,
    CONFIG_ARGS_UNKNOWN_KEY,
    CONFIG_BAD_CHOICE,
    CONFIG_BAD_VALUE,
    CONFIG_CONFLICT,
    CONFIG_DIVERGES,
    CONFIG_EMPTY_KEY_DROPPED,
    CONFIG_GUI_KEY_NORMALISED,
    CONFIG_NO_EFFECT,
    CONFIG_NOT_ALLOWED,
    CONFIG_NOTHING_TRAINS,
    CONFIG_OUTPUT_NAME,
    CONFIG_OUTSIDE_SERVICE,
    CONFIG_PIPELINE_OWNED,
    CONFIG_PRECISION_RISK,
    CONFIG_RATE_SUSPECT,
    CONFIG_SECRET,
    CONFIG_UNKNOWN_KEY,
    CONFIG_UNSUPPORTED,
    CONFIG_WRONG_TYPE,
    DEFAULT_SAMPLE_SAMPLER,
    GUI_ATTENTION_VALUES,
    GUI_ONLY_KEYS,
    LR_SCHEDULERS,
    NETWORK_MODULES_REFUSED,
    OUTSIDE_LOGGERS,
    TORCH_LR_SCHEDULERS,
    TORCH_OPTIMIZERS,
    UNKNOWN_KEY_HINTS,
    is_empty,
    is_number,
    toml_text,
)
from lora_pipeline.names import is_output_name, safe_output_name
from lora_pipeline.problems import Problem, ProblemCode
from lora_pipeline.rules import MAX_UNKNOWN_KEYS_REPORTED, RuleSet
from lora_pipeline.trained_parameters import PartRate, part_rates


@dataclass(frozen=True)
class PipelineInputs:
    dataset_name: str
    output_name: str | None  # from pipeline.toml; wins over config.toml's output_name (warn if both differ)
    base_model_hf_id: str | None  # a Hugging Face id; None when an S3 `model` channel supplies the base model
    sample_every_n_epochs: int | None  # None = no sample prompts


@dataclass
class ConfigContext:
    """What a rule sees: `config` is the config of the rule set's stage (the user's keys for NORMALISE and
    VALUES, which rules may change; the effective config for COMBINATIONS) and `user` the user's checked keys."""

    file: str
    config: dict[str, Any]
    tables: dict[str, str | None]
    inputs: PipelineInputs
    user: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def where(self, key: str, value: Any) -> str:
        table = self.tables.get(key)
        place = f" in [{table}]" if table else ""
        return f"`{key} = {toml_text(value)}`{place}"

    def report(self, code: ProblemCode, message: str, fix: str | None = None) -> None:
        self.problems.append(code.at(self.file, message, fix))

    def drop(self, key: str, code: ProblemCode, why: str, fix: str | None = None) -> None:
        """Remove `key` from the config and report it as `<where>: <why>`."""
        self.report(code, f"{self.where(key, self.config.pop(key))}: {why}", fix)

    def bad_value(self, key: str, problem: str, fix: str | None = None) -> None:
        """Report `key` as unusable and leave it out."""
        self.drop(key, CONFIG_BAD_VALUE, f"{problem}.", fix)

    def conflict(self, message: str, fix: str) -> None:
        self.report(CONFIG_CONFLICT, message, fix)

    def refuse(self, key: str, reason: str, allowed: Iterable[str]) -> None:
        value = self.config.pop(key)
        close = difflib.get_close_matches(str(value), list(allowed), n=1)
        suggestion = f" Did you mean {close[0]}?" if close else ""
        self.report(
            CONFIG_NOT_ALLOWED,
            f"{self.where(key, value)}: {reason}; only known names are allowed.{suggestion}",
            f"Use one of: {', '.join(allowed)}.",
        )


NORMALISE: RuleSet[ConfigContext] = RuleSet("KN", "Kohya GUI spellings")
KEYS: RuleSet[ConfigContext] = RuleSet("KK", "keys")
VALUES: RuleSet[ConfigContext] = RuleSet("KV", "single values")
PIPELINE_INPUTS: RuleSet[ConfigContext] = RuleSet("KP", "what pipeline.toml decides")
COMBINATIONS: RuleSet[ConfigContext] = RuleSet("KC", "combinations of settings")


# --- NORMALISE ------------------------------------------------------------------------------------------------


@NORMALISE.rule(
    "KN101", "gui-only-keys", "library/train_util.py:read_config_from_file (Kohya GUI keys no argument reads)"
)
def gui_only_keys(ctx: ConfigContext) -> None:
    """Drop Kohya GUI keys sd-scripts never reads."""
    for key in sorted(GUI_ONLY_KEYS & ctx.config.keys()):
        ctx.drop(
            key,
            CONFIG_GUI_KEY_NORMALISED,
            "a Kohya GUI setting that sd-scripts ignores; dropped.",
            f"Remove {key}.",
        )


@NORMALISE.rule(
    "KN102", "attention", "library/train_util.py:replace_unet_modules (xformers / sdpa / mem_eff_attn)"
)
def attention(ctx: ConfigContext) -> None:
    """The image has no xformers and always runs SDPA attention (container/Dockerfile; kohya_command passes --sdpa)."""
    config = ctx.config
    if "xformers" in config:
        value = config.pop("xformers")
        if isinstance(value, str) and value.lower() in GUI_ATTENTION_VALUES:
            ctx.report(
                CONFIG_GUI_KEY_NORMALISED,
                f"{ctx.where('xformers', value)}: the Kohya GUI's attention choice; sd-scripts would read "
                "any non-empty string as xformers = true. The training image has no xformers and uses "
                "PyTorch SDPA attention: written as sdpa = true.",
                "Remove xformers; sdpa = true is the default.",
            )
        elif value is True:
            ctx.report(
                CONFIG_GUI_KEY_NORMALISED,
                f"{ctx.where('xformers', value)}: the training image has no xformers (sd-scripts would stop "
                "with 'No xformers'); PyTorch SDPA attention gives the same memory saving: written as "
                "sdpa = true.",
                "Remove xformers; sdpa = true is the default.",
            )
        elif value is not False:
            ctx.report(
                CONFIG_BAD_CHOICE,
                f"{ctx.where('xformers', value)}: xformers must be true/false or one of the Kohya GUI "
                f"values {', '.join(map(toml_text, GUI_ATTENTION_VALUES))}.",
                "Remove xformers; the image uses sdpa = true.",
            )
    for key, overriding in (("mem_eff_attn", True), ("sdpa", False)):
        if config.get(key) is overriding:
            ctx.drop(
                key,
                CONFIG_NO_EFFECT,
                "the training image always uses PyTorch SDPA attention (sdpa = true); dropped.",
                f"Remove {key}.",
            )


@NORMALISE.rule("KN103", "gui-conv-args", "networks/lora.py:create_network (conv_dim / conv_alpha kwargs)")
def gui_conv_args(ctx: ConfigContext) -> None:
    """The GUI's conv_dim / conv_alpha become networks.lora's network_args (LoRA for 3x3 convolutions)."""
    config = ctx.config
    conv = {key: config.pop(key) for key in ("conv_dim", "conv_alpha") if key in config}
    if not conv:
        return
    shown = ", ".join(ctx.where(key, value) for key, value in conv.items())
    if not all(is_number(value) for value in conv.values()):
        ctx.report(CONFIG_WRONG_TYPE, f"{shown}: conv_dim and conv_alpha must be numbers.")
        return
    if conv.get("conv_dim", 0) <= 0:
        ctx.report(
            CONFIG_GUI_KEY_NORMALISED,
            f"{shown}: a Kohya GUI setting; without a positive conv_dim no convolution layers are trained; "
            "dropped.",
        )
        return
    network_args = config.get("network_args", [])
    if not isinstance(network_args, list):
        return  # the type check reports network_args itself
    named = {str(entry).split("=", 1)[0].strip() for entry in network_args}
    added = [f"{key}={value:g}" for key, value in conv.items() if key not in named]
    config["network_args"] = [*network_args, *added]
    ctx.tables.setdefault("network_args", ctx.tables.get("conv_dim"))
    ctx.report(
        CONFIG_GUI_KEY_NORMALISED,
        f"{shown}: a Kohya GUI setting sd-scripts ignores as a key; written as network_args "
        f"{toml_text(config['network_args'])}, which also trains LoRA on the U-Net's 3x3 convolutions "
        "(a larger file).",
        "Write the network_args shown, or remove conv_dim/conv_alpha for a plain LoRA.",
    )


@NORMALISE.rule("KN104", "gui-unset-values", "library/train_util.py:cache_batch_latents (vae_batch_size)")
def gui_unset_values(ctx: ConfigContext) -> None:
    """Drop the Kohya GUI's "unset" values that sd-scripts would take literally."""
    unset_values = {
        "vae_batch_size": (0, "sd-scripts v0.10.1 crashes caching latents with it (its default is 1)"),
        "max_token_length": (75, "75 tokens is what sd-scripts uses without the key"),
    }
    for key, (unset, why) in unset_values.items():
        value = ctx.config.get(key)
        if key in ctx.config and value == unset and not isinstance(value, bool):
            ctx.drop(
                key,
                CONFIG_GUI_KEY_NORMALISED,
                f"the Kohya GUI's default; {why}; dropped.",
                f"Remove {key}.",
            )
    if ctx.config.get("dynamo_backend") == "no" and not ctx.config.get("torch_compile"):
        ctx.drop(
            "dynamo_backend",
            CONFIG_GUI_KEY_NORMALISED,
            "the Kohya GUI's 'off' value; "
            "sd-scripts only uses dynamo_backend with torch_compile = true; dropped.",
            "Remove dynamo_backend.",
        )


@NORMALISE.rule("KN105", "clip-skip", "library/sdxl_train_util.py:verify_sdxl_training_args")
def clip_skip(ctx: ConfigContext) -> None:
    """sd-scripts warns about clip_skip for SDXL; the SDXL text encoding never reads it."""
    if "clip_skip" in ctx.config:
        ctx.drop(
            "clip_skip",
            CONFIG_NO_EFFECT,
            "SDXL training does not use clip_skip; dropped.",
            "Remove clip_skip.",
        )


@NORMALISE.rule("KN106", "caption-extention", "library/train_util.py:prepare_dataset_args")
def caption_extention(ctx: ConfigContext) -> None:
    """The misspelt caption_extention wins over caption_extension, as in sd-scripts."""
    if "caption_extention" in ctx.config:
        value = ctx.config.pop("caption_extention")
        ctx.report(
            CONFIG_GUI_KEY_NORMALISED,
            f"{ctx.where('caption_extention', value)}: sd-scripts' old misspelling; used as "
            "caption_extension (it wins over caption_extension, as in sd-scripts).",
            f"Write caption_extension = {toml_text(value)}.",
        )
        ctx.config["caption_extension"] = value
        ctx.tables["caption_extension"] = ctx.tables.get("caption_extention")


# --- KEYS -----------------------------------------------------------------------------------------------------


@KEYS.rule("KK101", "unknown-key", "library/train_util.py:read_config_from_file (unknown keys are ignored)")
def unknown_key(ctx: ConfigContext) -> None:
    """Keys sdxl_train_network.py has no argument for: sd-scripts would silently ignore them."""
    specs = argument_specs()
    unknown = [key for key in ctx.config if key not in specs]
    for key in unknown[MAX_UNKNOWN_KEYS_REPORTED:]:
        del ctx.config[key]
    for key in unknown[:MAX_UNKNOWN_KEYS_REPORTED]:
        value = ctx.config.pop(key)
        hint = UNKNOWN_KEY_HINTS.get(key)
        if hint is None:
            close = difflib.get_close_matches(key, specs.keys(), n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else "it is not an argument of sd-scripts"
        ctx.report(
            CONFIG_UNKNOWN_KEY,
            f"{ctx.where(key, value)}: sdxl_train_network.py {SD_SCRIPTS_VERSION} has no argument `{key}` "
            f"and would silently ignore it; {hint}",
            "Fix the name or remove the key (`python sdxl_train_network.py --help` in sd-scripts v0.10.1 lists "
            "every argument).",
        )
    if len(unknown) > MAX_UNKNOWN_KEYS_REPORTED:
        ctx.report(
            CONFIG_UNKNOWN_KEY,
            f"{len(unknown) - MAX_UNKNOWN_KEYS_REPORTED:,} more keys that sdxl_train_network.py "
            f"{SD_SCRIPTS_VERSION} does not know are not listed one by one.",
        )


def _pop_unless_empty(ctx: ConfigContext, key: str, empty_why: str) -> Any:
    """Remove `key` from the config. An empty or false value (what a Kohya GUI export writes for a field left
    unset) is reported here, as harmless, and None returned; any other value is returned for the caller to
    report."""
    value = ctx.config.pop(key)
    if not is_empty(value):
        return value
    ctx.report(CONFIG_EMPTY_KEY_DROPPED, f"{ctx.where(key, value)}: {empty_why}")
    return None


@KEYS.rule("KK102", "pipeline-owned", "the training container's command line (read after --config_file)")
def pipeline_owned(ctx: ConfigContext) -> None:
    """Keys the training container sets on the command line: a value here could only mislead."""
    for key in [key for key in ctx.config if key in CONTAINER_OWNED_KEYS]:
        value = _pop_unless_empty(ctx, key, "set by the pipeline; dropped.")
        if value is not None:
            ctx.report(
                CONFIG_PIPELINE_OWNED,
                f"{ctx.where(key, value)}: the training container sets {key} "
                f"({argument_specs()[key].policy_reason}); removed.",
                f"Remove {key} from {ctx.file}.",
            )


@KEYS.rule("KK103", "refused-key", "library/train_util.py:add_training_arguments (secrets, uploads, sources)")
def refused_key(ctx: ConfigContext) -> None:
    """Secrets, Hugging Face uploads and arguments the pipeline cannot honour (empty values are harmless)."""
    for key in [key for key in ctx.config if key in REFUSED_KEYS]:
        value = _pop_unless_empty(ctx, key, "empty or false, so harmless; dropped.")
        spec = argument_specs()[key]
        if value is None:
            continue
        if spec.policy is KeyPolicy.SECRET:
            ctx.report(
                CONFIG_SECRET,
                f"{ctx.where(key, '***')}: a secret in {ctx.file} would be copied into the run's files and the "
                "job's settings, and the pipeline has no use for it (nothing is sent to W&B or the Hugging Face "
                "hub).",
            )
        elif spec.policy is KeyPolicy.UPLOAD:
            ctx.report(
                CONFIG_OUTSIDE_SERVICE,
                f"{ctx.where(key, value)}: uploads to the Hugging Face hub are not supported; the LoRA is written "
                "to runs/<dataset>/<run-id>/model/ in the bucket.",
            )
        else:
            ctx.report(
                CONFIG_UNSUPPORTED, f"{ctx.where(key, value)}: not supported here: {spec.policy_reason}."
            )


@KEYS.rule("KK104", "outside-logger", "library/train_util.py:add_training_arguments (log_with)")
def outside_logger(ctx: ConfigContext) -> None:
    """log_with = "wandb" / "all" needs an API key and an outside connection."""
    if ctx.config.get("log_with") in OUTSIDE_LOGGERS:
        ctx.drop(
            "log_with",
            CONFIG_OUTSIDE_SERVICE,
            "Weights & Biases needs an API key and an "
            "outside connection, which the pipeline does not give the job.",
            'Remove log_with, or write log_with = "tensorboard" (written under the run\'s logs).',
        )


# --- VALUES ---------------------------------------------------------------------------------------------------


@VALUES.rule("KV101", "value-range", "data/sdxl_train_network_args.tsv `range` column")
def value_range(ctx: ConfigContext) -> None:
    """Numbers outside the range sd-scripts can use (the argument table's `range` column)."""
    for key, spec in argument_specs().items():
        if spec.range is None or key not in ctx.config:
            continue
        value = ctx.config[key]
        values = value if isinstance(value, list) else [value]
        if any(item not in spec.range for item in values):
            ctx.bad_value(key, f"{key} {spec.range.describe()}")


@VALUES.rule(
    "KV102", "step-or-ratio", "library/train_util.py:get_scheduler_fix (lr_warmup_steps, lr_decay_steps)"
)
def step_or_ratio(ctx: ConfigContext) -> None:
    """A float is multiplied by the run's steps: 1.5 would mean 150 % of the run."""
    for key in ("lr_warmup_steps", "lr_decay_steps"):
        value = ctx.config.get(key)
        if (isinstance(value, float) and not 0 <= value < 1) or (isinstance(value, int) and value < 0):
            ctx.bad_value(key, f"{key} is a step count (integer) or a ratio of the run (a number below 1)")


@VALUES.rule("KV103", "resolution", "library/train_util.py:prepare_dataset_args")
def resolution(ctx: ConfigContext) -> None:
    """resolution is "W,H" or "S"."""
    if "resolution" not in ctx.config:
        return
    try:
        parse_resolution(ctx.config["resolution"])
    except ValueError:
        ctx.bad_value(
            "resolution",
            'resolution must be "W,H" or "S" with positive whole numbers',
            'Write resolution = "1024,1024" or "1024".',
        )


@VALUES.rule("KV104", "face-crop-range", "library/train_util.py:prepare_dataset_args")
def face_crop_range(ctx: ConfigContext) -> None:
    """face_crop_aug_range is "low,high" with low <= high."""
    text = ctx.config.get("face_crop_aug_range")
    if text is None:
        return
    try:
        low, high = (float(part) for part in text.split(","))
        ordered = low <= high
    except ValueError:
        ordered = False
    if not ordered:
        ctx.bad_value("face_crop_aug_range", 'face_crop_aug_range must be "low,high", e.g. "2.0,4.0"')


@VALUES.rule("KV105", "thumbnail-file", "library/sai_model_spec.py:build_metadata")
def thumbnail_file(ctx: ConfigContext) -> None:
    """Any metadata_thumbnail but a data: URL is read as a file and embedded in the published LoRA."""
    thumbnail = ctx.config.get("metadata_thumbnail")
    if thumbnail and not thumbnail.startswith("data:"):
        ctx.drop(
            "metadata_thumbnail",
            CONFIG_UNSUPPORTED,
            "not a data: URL, so "
            "sd-scripts would read that file on the training machine and embed it in the published LoRA.",
            'Give the thumbnail as a data URL ("data:image/png;base64,...") or remove metadata_thumbnail.',
        )


@VALUES.rule("KV106", "caption-extension-dot", "library/train_util.py:DreamBoothSubset.__init__")
def caption_extension_dot(ctx: ConfigContext) -> None:
    """sd-scripts appends caption_extension to the image's base name, adding a missing leading dot itself."""
    extension = ctx.config.get("caption_extension")
    if extension is None:
        return
    dotted = dotted_caption_extension(extension)
    if not is_caption_extension(dotted):
        ctx.bad_value(
            "caption_extension",
            "sd-scripts appends caption_extension to the image's base name, so it must be a file extension",
            f'Write caption_extension = ".{extension.lstrip(".") or "caption"}".',
        )
    elif dotted != extension:
        ctx.report(
            CONFIG_GUI_KEY_NORMALISED,
            f"{ctx.where('caption_extension', extension)}: sd-scripts adds the missing dot and reads "
            f"{dotted} files.",
            f'Write caption_extension = "{dotted}".',
        )
        ctx.config["caption_extension"] = dotted


@VALUES.rule("KV107", "safetensors-only", "train_network.py:NetworkTrainer.train (save_model_as)")
def safetensors_only(ctx: ConfigContext) -> None:
    """The pipeline publishes .safetensors files only."""
    if "save_model_as" in ctx.config and ctx.config["save_model_as"] != "safetensors":
        ctx.bad_value(
            "save_model_as",
            "the pipeline publishes .safetensors files only",
            'Remove save_model_as or write "safetensors".',
        )


@VALUES.rule(
    "KV108",
    "args-entry-form",
    "library/train_util.py:get_optimizer / get_scheduler_fix; train_network.py (network_args)",
)
def args_entry_form(ctx: ConfigContext) -> None:
    """Entries sd-scripts cannot split into name=value, or whose value ast.literal_eval refuses."""
    for kind, key in CONFIG_KEY.items():
        broken = []
        for entry in ctx.config.get(key, []):
            try:
                parse_entry(kind, entry)
            except ValueError as error:
                broken.append(str(error))
        if broken:
            ctx.bad_value(key, f"sd-scripts cannot read {'; '.join(broken)}")


@VALUES.rule("KV109", "network-module", "train_network.py:NetworkTrainer.train (importlib.import_module)")
def network_module(ctx: ConfigContext) -> None:
    """network_module is imported as code; only modules whose output the unpack step accepts are allowed."""
    module = ctx.config.get("network_module")
    if module is None or module in ALLOWED_NETWORK_MODULES:
        return
    if module in NETWORK_MODULES_REFUSED:
        ctx.drop(
            "network_module",
            CONFIG_NOT_ALLOWED,
            f"{NETWORK_MODULES_REFUSED[module]}.",
            f"Use one of: {', '.join(ALLOWED_NETWORK_MODULES)} (networks.lora is the default).",
        )
        return
    reason = (
        "LyCORIS is not installed in the training image"
        if module.startswith("lycoris")
        else "sd-scripts imports network_module as Python code"
    )
    ctx.refuse("network_module", reason, ALLOWED_NETWORK_MODULES)


@VALUES.rule("KV110", "optimizer-type", "library/train_util.py:get_optimizer")
def optimizer_type(ctx: ConfigContext) -> None:
    """sd-scripts matches its own optimizer names case-insensitively and looks others up in torch.optim."""
    if ctx.config.get("optimizer_type") == "":
        ctx.config.pop("optimizer_type")  # sd-scripts reads "" as "not chosen"; so do the defaults
    optimizer = ctx.config.get("optimizer_type")
    builtin = {name.lower() for name in BUILTIN_OPTIMIZERS}
    if optimizer is None or optimizer.lower() in builtin or optimizer in TORCH_OPTIMIZERS:
        return
    if optimizer.lower().startswith("dadapt"):
        reason = "the dadaptation package is not installed in the training image (try Prodigy)"
    elif "." in optimizer:
        reason = "sd-scripts imports a dotted optimizer_type as Python code"
    else:
        reason = "sd-scripts would not find it (torch.optim names are case-sensitive)"
    ctx.refuse("optimizer_type", reason, BUILTIN_OPTIMIZERS + TORCH_OPTIMIZERS)


@VALUES.rule("KV111", "lr-scheduler", "library/train_util.py:get_scheduler_fix")
def lr_scheduler(ctx: ConfigContext) -> None:
    """lr_scheduler_type is imported by name; lr_scheduler must be a name get_scheduler_fix knows."""
    scheduler_type = ctx.config.get("lr_scheduler_type")
    if scheduler_type == "":
        ctx.config.pop("lr_scheduler_type")
    elif scheduler_type is not None and scheduler_type not in TORCH_LR_SCHEDULERS:
        ctx.refuse("lr_scheduler_type", "sd-scripts imports lr_scheduler_type by name", TORCH_LR_SCHEDULERS)
    scheduler = ctx.config.get("lr_scheduler")
    if scheduler is not None and scheduler not in LR_SCHEDULERS:
        ctx.drop(
            "lr_scheduler",
            CONFIG_BAD_CHOICE,
            "get_scheduler_fix does not know this scheduler.",
            f"Use one of {', '.join(LR_SCHEDULERS)}.",
        )


@VALUES.rule("KV112", "legacy-optimizer-flags", "library/train_util.py:get_optimizer")
def legacy_optimizer_flags(ctx: ConfigContext) -> None:
    """use_8bit_adam / use_lion_optimizer are old spellings of optimizer_type."""
    config = ctx.config
    flags = {
        key: name
        for key, name in (("use_8bit_adam", "AdamW8bit"), ("use_lion_optimizer", "Lion"))
        if config.pop(key, False)
    }
    if not flags:
        return
    if len(flags) > 1 or "optimizer_type" in config:
        set_keys = [*flags, *(["optimizer_type"] if "optimizer_type" in config else [])]
        ctx.conflict(
            f"{' and '.join(f'`{k}`' for k in set_keys)} both choose the optimizer; sd-scripts stops with "
            "an assertion (train_util.get_optimizer).",
            "Keep only optimizer_type.",
        )
        return
    (key, name), *_ = flags.items()
    config["optimizer_type"] = name
    ctx.report(
        CONFIG_GUI_KEY_NORMALISED,
        f'`{key} = true`: the old spelling of optimizer_type = "{name}"; written that way.',
        f'Write optimizer_type = "{name}".',
    )


# --- PIPELINE_INPUTS ----------------------------------------------------------------------------------------


@PIPELINE_INPUTS.rule(
    "KP101", "output-name", "train_network.py (output_name becomes <output_name>.safetensors)"
)
def output_name(ctx: ConfigContext) -> None:
    """pipeline.toml's output_name wins; config.toml's must be a plain file name; else the dataset's name."""
    ctx.config["output_name"] = _output_name(ctx, ctx.user.get("output_name"))


def _output_name(ctx: ConfigContext, configured: str | None) -> str:
    fallback = safe_output_name(ctx.inputs.dataset_name)
    if ctx.inputs.output_name is not None:
        if configured is not None and configured != ctx.inputs.output_name:
            ctx.report(
                CONFIG_OUTPUT_NAME,
                f"{ctx.where('output_name', configured)}: pipeline.toml's output_name "
                f'"{ctx.inputs.output_name}" wins.',
            )
        return ctx.inputs.output_name
    if configured is None:
        return fallback
    name = configured.removesuffix(".safetensors")
    if name == BLOG_OUTPUT_NAME:
        ctx.report(
            CONFIG_OUTPUT_NAME,
            f"{ctx.where('output_name', configured)}: the blog sample's name would give every LoRA the "
            f'same file name; using the dataset\'s name "{fallback}".',
            "Set output_name to a name for this LoRA, in pipeline.toml or config.toml.",
        )
        return fallback
    if not is_output_name(name):
        ctx.report(
            CONFIG_BAD_VALUE,
            f"{ctx.where('output_name', configured)}: output_name becomes a file name and an S3 key; use "
            "letters, digits, '.', '_' and '-' only.",
            f'Write output_name = "{safe_output_name(name)}".',
        )
        return fallback
    if name != configured:
        ctx.report(
            CONFIG_OUTPUT_NAME,
            f"{ctx.where('output_name', configured)}: sd-scripts adds the extension itself (it would write "
            f'"{configured}.safetensors"); using "{name}".',
            f'Write output_name = "{name}".',
        )
    return name


@PIPELINE_INPUTS.rule(
    "KP102", "base-model", "library/sdxl_train_util.py:load_target_model (pretrained_model_name_or_path)"
)
def base_model(ctx: ConfigContext) -> None:
    """The base model comes from pipeline.toml (a Hugging Face id, or the S3 `model` channel)."""
    effective, configured = ctx.config, ctx.user.get("pretrained_model_name_or_path")
    hf_id = ctx.inputs.base_model_hf_id
    if hf_id is not None:
        effective["pretrained_model_name_or_path"] = hf_id
    else:
        effective.pop("pretrained_model_name_or_path", None)
    if configured is None or configured == hf_id:
        return
    if is_empty(configured):
        ctx.report(
            CONFIG_EMPTY_KEY_DROPPED,
            f"{ctx.where('pretrained_model_name_or_path', configured)}: set by the pipeline; dropped.",
        )
        return
    source = f'"{hf_id}"' if hf_id else "the S3 model channel"
    ctx.report(
        CONFIG_PIPELINE_OWNED,
        f"{ctx.where('pretrained_model_name_or_path', configured)}: the base model comes from pipeline.toml's "
        f"base_model ({source}); removed.",
        "Set base_model in pipeline.toml instead.",
    )


@PIPELINE_INPUTS.rule("KP103", "sampling", "train_network.py:NetworkTrainer.sample_images")
def sampling(ctx: ConfigContext) -> None:
    """Sample prompts come from pipeline.toml; the container writes them to the sample_prompts file."""
    effective, config = ctx.config, ctx.user
    every = ctx.inputs.sample_every_n_epochs
    # sample_sampler alone is harmless and stays.
    sample_keys = ("sample_every_n_epochs", "sample_every_n_steps", "sample_at_first")
    if every is None:
        for key in sample_keys:
            if key in effective:
                ctx.drop(
                    key,
                    CONFIG_PIPELINE_OWNED,
                    "samples are only rendered when pipeline.toml has sample_prompts; removed.",
                    "Give sample_prompts (and sample_every_n_epochs) in pipeline.toml.",
                )
        return
    configured = config.get("sample_every_n_epochs")
    if configured is not None and configured != every:
        ctx.report(
            CONFIG_PIPELINE_OWNED,
            f"{ctx.where('sample_every_n_epochs', configured)}: pipeline.toml's sample_every_n_epochs = "
            f"{every} wins.",
            "Set sample_every_n_epochs in pipeline.toml only.",
        )
    effective["sample_every_n_epochs"] = every
    effective.setdefault("sample_sampler", DEFAULT_SAMPLE_SAMPLER)


# --- COMBINATIONS ---------------------------------------------------------------------------------------------


@COMBINATIONS.rule(
    "KC101",
    "nothing-trains",
    "train_network.py:NetworkTrainer.train; networks/lora.py:LoRANetwork.prepare_optimizer_params",
)
def nothing_trains(ctx: ConfigContext) -> None:
    """No part of the model trains: torch stops with "optimizer got an empty parameter list" (or, with
    networks.lora_fa, the run learns nothing)."""
    on = ctx.config.get
    if on("network_train_unet_only") and on("network_train_text_encoder_only"):
        ctx.conflict(
            "network_train_unet_only and network_train_text_encoder_only are both true: nothing would be "
            "trained.",
            "Keep at most one of them.",
        )
        return
    rates = part_rates(ctx.config)
    if any(rate.trains for rate in rates):
        return
    only = ""
    if on("network_train_unet_only"):
        only = "network_train_unet_only = true leaves only the U-Net, and "
    elif on("network_train_text_encoder_only"):
        only = "network_train_text_encoder_only = true leaves only the text encoders, and "
    reasons = "; ".join(f"the {rate.part} would train at rate 0 ({rate.rate_from})" for rate in rates)
    keys = " / ".join(rate.rate_from.split(" = ")[0] for rate in rates)
    ctx.report(
        CONFIG_NOTHING_TRAINS,
        f"Nothing would be trained: {only}{reasons}. sd-scripts drops every parameter group whose learning "
        "rate is 0, and torch stops with 'optimizer got an empty parameter list' after the model has loaded.",
        f"Set {keys} above 0 (e.g. 1e-4), or remove it so that learning_rate applies.",
    )


@COMBINATIONS.rule("KC102", "part-at-rate-zero", "networks/lora.py:LoRANetwork.prepare_optimizer_params")
def part_at_rate_zero(ctx: ConfigContext) -> None:
    """One part of the model trains at rate 0 while another trains: sd-scripts silently skips it."""
    rates = part_rates(ctx.config)
    if not any(rate.trains for rate in rates):
        return  # nothing-trains reports it
    for rate in rates:
        if not rate.trains:
            key = rate.rate_from.split(" = ")[0]
            flag = (
                "network_train_unet_only"
                if rate.part == "text encoders"
                else "network_train_text_encoder_only"
            )
            ctx.report(
                CONFIG_NO_EFFECT,
                f"The {rate.part} would train at rate 0 ({rate.rate_from}): sd-scripts skips that part ('NO LR "
                f"skipping!'), so only the other part learns.",
                f"Set {key} above 0, or set {flag} = true to say so.",
            )


# Adam-family rates above this diverge on SDXL LoRAs (NaN loss within a few hundred steps); below the
# low mark the LoRA barely moves in a usual run. Adaptive optimizers (Prodigy) expect about 1.0.
_HIGH_RATE = 1e-2
_LOW_RATE = 1e-6
_ADAPTIVE_LOW_RATE = 0.1  # library/train_util.py:get_optimizer warns "learning rate is too low" at or below


@COMBINATIONS.rule(
    "KC103", "learning-rate-scale", "library/train_util.py:get_optimizer (DAdapt/Prodigy lr checks)"
)
def learning_rate_scale(ctx: ConfigContext) -> None:
    """Rates far off the optimizer's convention: diverging, barely moving, or ignored by Prodigy."""
    optimizer = str(ctx.config["optimizer_type"]).lower()
    trained = [rate for rate in part_rates(ctx.config) if rate.trains]
    if not trained:
        return
    if optimizer == "prodigy":
        first = trained[0]
        if first.rate <= _ADAPTIVE_LOW_RATE:
            ctx.report(
                CONFIG_RATE_SUSPECT,
                f"Prodigy with {first.rate_from}: Prodigy estimates the step size itself and the learning rate "
                "scales it, so a rate this low makes the LoRA barely move (sd-scripts warns 'learning rate is "
                "too low', recommending 1.0).",
                "Set learning_rate = 1.0 and remove unet_lr / text_encoder_lr.",
            )
        if len({rate.rate for rate in trained}) > 1:
            ctx.report(
                CONFIG_NO_EFFECT,
                "Prodigy with different rates for the U-Net and the text encoders: only the first one "
                f"({first.rate_from}) takes effect (train_util.get_optimizer).",
                "Use one learning_rate and remove unet_lr / text_encoder_lr.",
            )
        return
    if optimizer == "adafactor" and not _fixed_rate_adafactor(ctx.config):
        return  # relative_step: Adafactor runs its own schedule
    high = [rate for rate in trained if rate.rate > _HIGH_RATE]
    low = [rate for rate in trained if rate.rate < _LOW_RATE]
    if high:
        ctx.report(
            CONFIG_RATE_SUSPECT,
            f"{_rates_text(high)} with {ctx.config['optimizer_type']}: rates above {_HIGH_RATE:g} make SDXL LoRA "
            "training diverge (NaN loss, a broken LoRA).",
            'Use a rate around 1e-4 (U-Net) / 5e-5 (text encoders), or optimizer_type = "Prodigy" with '
            "learning_rate = 1.0.",
        )
    if low:
        ctx.report(
            CONFIG_RATE_SUSPECT,
            f"{_rates_text(low)}: below {_LOW_RATE:g} the LoRA barely moves from its initial (zero) effect in a "
            "usual run.",
            "Use a rate around 1e-4.",
        )


def _rates_text(rates: list[PartRate]) -> str:
    """ "learning_rate = 0.05 (text encoders, U-Net)": each setting once, with the parts it drives."""
    parts: dict[str, list[str]] = {}
    for rate in rates:
        parts.setdefault(rate.rate_from, []).append(rate.part)
    return "; ".join(f"{source} ({', '.join(names)})" for source, names in parts.items())


def _fixed_rate_adafactor(config: dict[str, Any]) -> bool:
    """library/train_util.py:get_optimizer: Adafactor's relative_step defaults to True."""
    return "relative_step=False" in {entry.replace(" ", "") for entry in config.get("optimizer_args", [])}


@COMBINATIONS.rule(
    "KC104", "fp16-sdxl-vae", "sdxl_train_network.py / train_network.py (vae_dtype, no_half_vae)"
)
def fp16_sdxl_vae(ctx: ConfigContext) -> None:
    """The SDXL VAE overflows in fp16: latents become NaN, and so does the LoRA."""
    if ctx.config["mixed_precision"] == "fp16" and not ctx.config.get("no_half_vae"):
        ctx.report(
            CONFIG_DIVERGES,
            'mixed_precision = "fp16" without no_half_vae: sd-scripts runs the VAE in fp16, where the SDXL 1.0 '
            "VAE overflows and gives NaN latents, so the LoRA trains on NaN.",
            'Set no_half_vae = true (the default here), or use mixed_precision = "bf16".',
        )


@COMBINATIONS.rule(
    "KC105", "cache-text-encoder-outputs", "sdxl_train_network.py:SdxlNetworkTrainer.assert_extra_args"
)
def cache_text_encoder_outputs(ctx: ConfigContext) -> None:
    """Cached text encoder outputs need U-Net-only training and captions that never change."""
    on = ctx.config.get
    if not (on("cache_text_encoder_outputs") or on("cache_text_encoder_outputs_to_disk")):
        return
    if not on("network_train_unet_only"):
        ctx.conflict(
            "cache_text_encoder_outputs needs network_train_unet_only = true: sd-scripts cannot train the "
            "text encoders from cached outputs.",
            "Add network_train_unet_only = true, or remove cache_text_encoder_outputs.",
        )
    changers = [key for key in CAPTION_CHANGING_KEYS if on(key)]
    if changers:
        ctx.conflict(
            f"cache_text_encoder_outputs cannot be used with {', '.join(changers)}: cached outputs "
            "cannot change from step to step.",
            f"Remove {' / '.join(changers)} or cache_text_encoder_outputs.",
        )


@COMBINATIONS.rule(
    "KC106", "cache-latents-augmentation", "train_network.py:NetworkTrainer.train (is_latent_cacheable)"
)
def cache_latents_augmentation(ctx: ConfigContext) -> None:
    """color_aug / random_crop change every epoch, so latents cannot be cached."""
    augmenting = [key for key in ("color_aug", "random_crop") if ctx.config.get(key)]
    if (ctx.config.get("cache_latents") or ctx.config.get("cache_latents_to_disk")) and augmenting:
        ctx.conflict(
            f"cache_latents cannot be used with {' / '.join(augmenting)}: cached latents cannot change.",
            f"Remove {' / '.join(augmenting)}, or set cache_latents = false (slower, more memory).",
        )


@COMBINATIONS.rule(
    "KC107", "precision", "train_network.py:NetworkTrainer.train (full_fp16 / full_bf16 / fp8_base)"
)
def precision(ctx: ConfigContext) -> None:
    """full_fp16 / full_bf16 / fp8_base need the matching mixed_precision."""
    mixed = ctx.config["mixed_precision"]
    for key, needed in (("full_fp16", "fp16"), ("full_bf16", "bf16")):
        if ctx.config.get(key) and mixed != needed:
            ctx.conflict(
                f'{key} needs mixed_precision = "{needed}" (it is "{mixed}").',
                f'Set mixed_precision = "{needed}" or remove {key}.',
            )
    for key in ("fp8_base", "fp8_base_unet"):
        if ctx.config.get(key) and mixed == "no":
            ctx.conflict(f'{key} needs mixed_precision = "fp16" or "bf16".', 'Set mixed_precision = "bf16".')


@COMBINATIONS.rule("KC108", "scheduler-optimizer", "library/train_util.py:get_optimizer / get_scheduler_fix")
def scheduler_optimizer(ctx: ConfigContext) -> None:
    """Schedules that refuse warmup steps, and Adafactor's own schedule."""
    config = ctx.config
    optimizer = str(config["optimizer_type"]).lower()
    scheduler = config.get("lr_scheduler")
    if scheduler == "adafactor" and optimizer != "adafactor":
        ctx.conflict(
            'lr_scheduler = "adafactor" only works with optimizer_type = "Adafactor".',
            'Use another lr_scheduler, e.g. "constant_with_warmup".',
        )
    relative_step = optimizer == "adafactor" and not _fixed_rate_adafactor(config)
    # These schedules raise "does not require num_warmup_steps" when given warmup steps.
    if relative_step:
        refuses_warmup = "Adafactor with relative_step (its default) runs its own schedule"
    elif config.get("lr_scheduler_type"):
        refuses_warmup = f"lr_scheduler_type {config['lr_scheduler_type']}"
    elif scheduler in ("constant", "adafactor"):
        refuses_warmup = f'lr_scheduler = "{scheduler}"'
    else:
        refuses_warmup = ""
    if refuses_warmup and config.get("lr_warmup_steps", 0) != 0:
        ctx.conflict(
            f"lr_warmup_steps = {config['lr_warmup_steps']} with {refuses_warmup}: sd-scripts stops with "
            "'does not require num_warmup_steps'.",
            'Remove lr_warmup_steps, or use lr_scheduler = "constant_with_warmup".',
        )
    if relative_step and "learning_rate" in ctx.user:
        ctx.report(
            CONFIG_NO_EFFECT,
            "Adafactor with relative_step (its default) uses learning_rate only as the initial rate of its "
            "own schedule.",
            'Add "relative_step=False" (and "scale_parameter=False", "warmup_init=False") to optimizer_args '
            "for a fixed learning rate.",
        )


@COMBINATIONS.rule(
    "KC109",
    "evaluated-args",
    "library/train_util.py:get_optimizer / get_scheduler_fix; networks/*.py:create_network",
)
def evaluated_args(ctx: ConfigContext) -> None:
    """Each *_args entry, parsed as sd-scripts parses it, against the keywords its receiver accepts."""
    config = ctx.config
    scheduler = config.get("lr_scheduler_type") or config.get("lr_scheduler", "")
    names = {
        ArgsKind.OPTIMIZER: str(config["optimizer_type"]),
        ArgsKind.SCHEDULER: str(scheduler),
        ArgsKind.NETWORK: str(config["network_module"]),
    }
    for kind, key in CONFIG_KEY.items():
        receiver = receiver_for(kind, names[kind])
        if receiver is None:
            continue
        for entry in config.get(key, []):
            try:
                parsed = parse_entry(kind, entry)
            except ValueError:
                continue  # args-entry-form reports it
            finding = check_entry(receiver, parsed)
            if finding is not None:
                code = CONFIG_BAD_VALUE if finding.error else CONFIG_ARGS_UNKNOWN_KEY
                ctx.report(code, finding.message, finding.fix)


@COMBINATIONS.rule(
    "KC110", "bucket-resolution", "library/train_util.py:BaseDataset.adjust_min_max_bucket_reso_by_steps"
)
def bucket_resolution(ctx: ConfigContext) -> None:
    """SDXL's bucket steps are multiples of 32; the bucket range must contain the resolution."""
    config = ctx.config
    steps = config["bucket_reso_steps"]
    if steps % 32:  # sdxl_train_network.py: verify_bucket_reso_steps(32)
        ctx.conflict(
            f"bucket_reso_steps = {steps}: SDXL needs a multiple of 32 (sdxl_train_network.py).",
            "Use bucket_reso_steps = 64.",
        )
        return
    if not config["enable_bucket"]:
        return
    try:
        size = parse_resolution(config["resolution"])
    except ValueError:
        return
    low = config["min_bucket_reso"] - config["min_bucket_reso"] % steps
    high = config["max_bucket_reso"] + (-config["max_bucket_reso"]) % steps
    for key, adjusted in (("min_bucket_reso", low), ("max_bucket_reso", high)):
        if adjusted != config[key]:
            ctx.report(
                CONFIG_NO_EFFECT,
                f"{key} = {config[key]} is not a multiple of bucket_reso_steps = {steps}; sd-scripts uses "
                f"{adjusted}.",
                f"Write {key} = {adjusted}.",
            )
    if min(size) < low:
        ctx.conflict(
            f"min_bucket_reso ({low}) is above the resolution's short side ({min(size)}).",
            "Lower min_bucket_reso or raise resolution.",
        )
    if max(size) > high:
        ctx.conflict(
            f"max_bucket_reso ({high}) is below the resolution's long side ({max(size)}).",
            "Raise max_bucket_reso or lower resolution.",
        )


@COMBINATIONS.rule("KC111", "noise-and-v-prediction", "library/train_util.py:verify_training_args")
def noise_and_v_prediction(ctx: ConfigContext) -> None:
    """Noise and v-prediction settings that only work together, or not at all."""
    on = ctx.config.get
    if on("adaptive_noise_scale") is not None and on("noise_offset") is None:
        ctx.conflict("adaptive_noise_scale needs noise_offset.", "Set noise_offset, e.g. 0.0357.")
    if on("scale_v_pred_loss_like_noise_pred") and not on("v_parameterization"):
        ctx.conflict(
            "scale_v_pred_loss_like_noise_pred only works with v_parameterization.",
            "Remove scale_v_pred_loss_like_noise_pred.",
        )
    if on("v_pred_like_loss") and on("v_parameterization"):
        ctx.conflict(
            "v_pred_like_loss cannot be used with v_parameterization.", "Remove one of the two settings."
        )
    if on("zero_terminal_snr") and not on("v_parameterization"):
        ctx.report(
            CONFIG_NO_EFFECT,
            "zero_terminal_snr without v_parameterization: sd-scripts warns the result will be unexpected.",
            "Remove zero_terminal_snr unless the base model is a v-prediction model.",
        )


@COMBINATIONS.rule("KC112", "persistent-workers", "torch.utils.data.DataLoader (persistent_workers)")
def persistent_workers(ctx: ConfigContext) -> None:
    """Persistent DataLoader workers need worker processes."""
    if ctx.config.get("persistent_data_loader_workers") and ctx.config.get("max_data_loader_n_workers") == 0:
        ctx.conflict(
            "persistent_data_loader_workers needs max_data_loader_n_workers of at least 1 (PyTorch's "
            "DataLoader refuses persistent workers without workers).",
            "Remove max_data_loader_n_workers = 0 or persistent_data_loader_workers.",
        )


@COMBINATIONS.rule("KC113", "timestep-order", "library/train_util.py:get_timesteps")
def timestep_order(ctx: ConfigContext) -> None:
    """min_timestep above max_timestep trains every step at max_timestep."""
    low, high = ctx.config.get("min_timestep", 0), ctx.config.get("max_timestep", 1000)
    if low > high:
        ctx.conflict(
            f"min_timestep ({low}) is above max_timestep ({high}): sd-scripts would silently train every step "
            "at max_timestep (train_util.get_timesteps).",
            "Make min_timestep at most max_timestep.",
        )


@COMBINATIONS.rule("KC114", "epochs-override-steps", "train_network.py:NetworkTrainer.train (override steps)")
def epochs_override_steps(ctx: ConfigContext) -> None:
    """max_train_epochs wins over max_train_steps."""
    if "max_train_epochs" in ctx.user and "max_train_steps" in ctx.user:
        ctx.report(
            CONFIG_NO_EFFECT,
            f"max_train_epochs = {ctx.user['max_train_epochs']} and max_train_steps = "
            f"{ctx.user['max_train_steps']} are both set: sd-scripts trains for max_train_epochs and ignores "
            "max_train_steps.",
            "Remove max_train_steps.",
        )


@COMBINATIONS.rule(
    "KC115", "fused-backward-pass", "library/train_util.py:get_optimizer (fused_backward_pass)"
)
def fused_backward_pass(ctx: ConfigContext) -> None:
    """Only sdxl_train.py fuses the backward pass; LoRA training ignores it."""
    if ctx.config.get("fused_backward_pass"):
        ctx.config.pop("fused_backward_pass")
        ctx.report(
            CONFIG_NO_EFFECT,
            "fused_backward_pass has no effect in LoRA training (only sdxl_train.py uses it); dropped.",
            "Remove fused_backward_pass.",
        )


@COMBINATIONS.rule("KC116", "no-metadata", "train_network.py:NetworkTrainer.train (no_metadata)")
def no_metadata(ctx: ConfigContext) -> None:
    """Without ss_* metadata, manifest.json and other tools find no training facts."""
    if ctx.config.get("no_metadata"):
        ctx.report(
            CONFIG_NO_EFFECT,
            "no_metadata = true: the LoRA will carry no ss_* training metadata, so manifest.json and the "
            "tools that read it (base model, dim, alpha) will not find them.",
            "Remove no_metadata unless the metadata must not be shared.",
        )


# bf16 keeps 8 significant bits: an update below about 1/256 of a weight is rounded away.
_BF16_LOW_RATE = 5e-5


@COMBINATIONS.rule(
    "KC117", "full-half-precision-weights", "train_network.py:NetworkTrainer.train (full_fp16 / full_bf16)"
)
def full_half_precision_weights(ctx: ConfigContext) -> None:
    """full_fp16 / full_bf16 keep the LoRA weights and optimizer state in half precision."""
    optimizer = str(ctx.config["optimizer_type"])
    if (
        ctx.config.get("full_fp16")
        and ctx.config["mixed_precision"] == "fp16"
        and not optimizer.lower().endswith("8bit")
    ):
        ctx.report(
            CONFIG_PRECISION_RISK,
            f"full_fp16 with {optimizer}: the optimizer state is kept in fp16, where eps (1e-8) and small second "
            "moments round to 0, so updates overflow to inf and the LoRA becomes NaN; sd-scripts pairs full_fp16 "
            "with an 8-bit optimizer.",
            'Remove full_fp16, or use optimizer_type = "AdamW8bit".',
        )
    if ctx.config.get("full_bf16") and optimizer.lower() != "prodigy":
        slow = [rate for rate in part_rates(ctx.config) if rate.trains and rate.rate < _BF16_LOW_RATE]
        if slow:
            ctx.report(
                CONFIG_PRECISION_RISK,
                f"full_bf16 with {_rates_text(slow)}: bf16 weights keep 8 significant bits, so updates this small "
                "are mostly rounded away and the LoRA barely moves.",
                "Remove full_bf16 (mixed precision keeps the LoRA in fp32), or raise the rate.",
            )


@COMBINATIONS.rule(
    "KC118",
    "text-encoder-lr-list",
    "train_network.py:NetworkTrainer.train (text_encoder_lr backward compatibility)",
)
def text_encoder_lr_list(ctx: ConfigContext) -> None:
    """Modules without per-encoder rates (all allowed ones) use only a text_encoder_lr list's first entry."""
    rates = ctx.config.get("text_encoder_lr")
    if isinstance(rates, list) and len(rates) > 1:
        ctx.report(
            CONFIG_NO_EFFECT,
            f"{ctx.where('text_encoder_lr', rates)}: {ctx.config['network_module']} has one rate for both text "
            f"encoders, so sd-scripts uses only the first ({rates[0]:g}).",
            f"Write text_encoder_lr = {rates[0]:g}.",
        )
