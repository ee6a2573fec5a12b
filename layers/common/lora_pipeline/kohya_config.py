"""Kohya config rules: a user's `config.toml` in, the effective `kohya.toml` the job runs with out.

sd-scripts v0.10.1 reads `--config_file` leniently: top-level tables are flattened one level, unknown keys
are ignored and values are neither type- nor choice-checked, so a typo or a GUI-only key silently changes
nothing and `xformers = "none"` turns xformers on. Here every key is checked against the v0.10.1 argument
table (`kohya_args`), GUI-only keys from Kohya GUI / AWS blog configs are normalised with a warning, keys
that import code, carry secrets or talk to outside services are refused, paths the container owns are
removed, the combinations sd-scripts refuses at run time (after the GPU is paid for) are refused here, and
SDXL defaults fill in what the user left out.

This module reads: TOML, flattening, types against the argument table, SDXL defaults. The rules are
registered functions in `kohya_rules`, each naming the sd-scripts function it mirrors.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any

import tomli_w

from lora_pipeline.kohya_args import SD_SCRIPTS_VERSION, ArgKind, ArgSpec, argument_specs
from lora_pipeline.kohya_contract import config_entries
from lora_pipeline.kohya_facts import (
    ADAFACTOR_ARGS,
    CAPTION_CHANGING_KEYS,
    CONFIG_BAD_CHOICE,
    CONFIG_DATASET_CONFIG_FORMAT,
    CONFIG_DUPLICATE_KEY,
    CONFIG_NESTED_TABLE,
    CONFIG_NO_EFFECT,
    CONFIG_PARSE_ERROR,
    CONFIG_WRONG_TYPE,
    DEFAULT_MAX_TRAIN_EPOCHS,
    DEFAULTS,
    TEXT_ENCODER_KEYS,
    TEXT_ENCODER_LR_RATIO,
    is_number,
    toml_text,
)
from lora_pipeline.kohya_rules import (
    COMBINATIONS,
    KEYS,
    NORMALISE,
    PIPELINE_INPUTS,
    VALUES,
    ConfigContext,
    PipelineInputs,
)
from lora_pipeline.problems import Problem, ProblemCode
from lora_pipeline.text_formats import loads_toml

__all__ = ["KohyaConfigResult", "PipelineInputs", "build_effective_config"]


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


def build_effective_config(
    text: str | None, inputs: PipelineInputs, file: str = "config.toml"
) -> KohyaConfigResult:
    """Check `text` (config.toml's content; None when the dataset has none) and build the effective config."""
    builder = _EffectiveConfigBuilder(file, inputs)
    if text is None:
        return builder.finish({})
    try:
        document = loads_toml(text)
    except tomllib.TOMLDecodeError as error:
        problem = CONFIG_PARSE_ERROR.at(file, f"{file} is not valid TOML: {error}.")
        return KohyaConfigResult(effective=None, problems=[problem])
    return builder.finish(builder.flatten(document))


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
        return is_number(value)
    if spec.kind is ArgKind.FLAG:
        return isinstance(value, bool)
    if spec.kind is ArgKind.STR_LIST:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    # train_network.py accepts a single number for text_encoder_lr ("toml backward compatibility").
    if spec.name == "text_encoder_lr" and is_number(value):
        return True
    return isinstance(value, list) and all(is_number(item) for item in value)


class _EffectiveConfigBuilder:
    """Reads one config.toml through the stages of `finish`, collecting problems in one ConfigContext."""

    def __init__(self, file: str, inputs: PipelineInputs) -> None:
        self.file = file
        self.inputs = inputs
        self.specs = argument_specs()
        self.ctx = ConfigContext(file, {}, {}, inputs)
        self.tables = self.ctx.tables
        self.problems = self.ctx.problems

    # -- reporting --

    def where(self, key: str, value: Any) -> str:
        return self.ctx.where(key, value)

    def report(self, code: ProblemCode, message: str, fix: str | None = None) -> None:
        self.ctx.report(code, message, fix)

    # -- reading --

    def flatten(self, document: dict[str, Any]) -> dict[str, Any]:
        """`kohya_contract.config_entries` as one dict, reporting what sd-scripts would silently misread: the
        --dataset_config format, tables nested two levels deep, and a key set twice (sd-scripts keeps the last)."""
        sections = {}
        for name, value in document.items():
            if name == "datasets" or (isinstance(value, dict) and "subsets" in value):
                self.report(
                    CONFIG_DATASET_CONFIG_FORMAT,
                    f"[[{name}]] belongs to sd-scripts' --dataset_config format, which this pipeline does not "
                    "read.",
                )
            else:
                sections[name] = value
        flat: dict[str, Any] = {}
        for table, key, item in config_entries(sections):
            if isinstance(item, dict):
                self.report(
                    CONFIG_NESTED_TABLE,
                    f"[{table}.{key}] is nested two levels deep; sd-scripts only flattens top-level tables.",
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
        """The rule sets of `kohya_rules` around the reader's own stages: NORMALISE, KEYS, types, VALUES,
        defaults, PIPELINE_INPUTS, COMBINATIONS."""
        self.ctx.config = dict(user)
        NORMALISE.run(self.ctx)
        KEYS.run(self.ctx)
        self.ctx.config = self.check_types(self.ctx.config)
        VALUES.run(self.ctx)
        config = self.ctx.config
        effective = self.with_defaults(config)
        context = ConfigContext(
            self.file, effective, self.tables, self.inputs, user=config, problems=self.problems
        )
        PIPELINE_INPUTS.run(context)
        COMBINATIONS.run(context)
        return KohyaConfigResult(effective=effective, problems=self.problems)

    def check_types(self, config: dict[str, Any]) -> dict[str, Any]:
        checked: dict[str, Any] = {}
        for key, value in config.items():
            spec = self.specs.get(key)
            if spec is None:
                continue  # unknown keys are the unknown-key rule's
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
                    f"{self.where(key, value)}: {key} must be one of {', '.join(map(toml_text, spec.choices))}.",
                )
            else:
                checked[key] = float(value) if spec.kind is ArgKind.FLOAT else value
        return checked

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
        _set_text_encoder_training(effective, config)
        return effective


def _set_text_encoder_training(effective: dict[str, Any], config: dict[str, Any]) -> None:
    """GPU time per step: sd-scripts' README recommends training only the U-Net for SDXL LoRAs; then the text
    encoders' outputs can be computed once and cached (docs/sdxl_train_network.md) instead of running both
    encoders every step. `network_train_unet_only = false` trains the text encoders again, at a tenth of the
    U-Net's learning rate (the ratio docs/sdxl_train_network.md uses) unless text_encoder_lr is set. A config
    that sets any TEXT_ENCODER_KEYS itself is taken as written."""
    if not any(key in config for key in TEXT_ENCODER_KEYS):
        effective["network_train_unet_only"] = True
        # sdxl_train_network.py SdxlNetworkTrainer.assert_extra_args: cached outputs need fixed captions.
        if not any(config.get(key) for key in CAPTION_CHANGING_KEYS):
            effective["cache_text_encoder_outputs"] = True
        return
    trains_both = not (config.get("network_train_unet_only") or config.get("network_train_text_encoder_only"))
    unet_lr = config.get("unet_lr", effective.get("learning_rate"))
    prodigy = str(effective.get("optimizer_type", "")).lower() == "prodigy"  # adapts every rate itself
    # A U-Net rate of 0 switches the U-Net off; a tenth of it would switch the text encoders off too.
    if trains_both and "text_encoder_lr" not in config and is_number(unet_lr) and unet_lr > 0 and not prodigy:
        effective["text_encoder_lr"] = float(unet_lr) * TEXT_ENCODER_LR_RATIO
