"""The `accelerate launch sdxl_train_network.py ...` command for one SageMaker job.

The validated kohya.toml carries the training settings; this module owns everything about *where* things are
(data, outputs, model, tokenizers, resume) and how the job survives a spot interruption. The keys the pipeline
decides (`kohya_contract.PIPELINE_DECIDED_KEYS`) are removed from the config copy and given on the command line,
which sd-scripts reads after the config file, so a path left in a config can never win.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from lora_pipeline.kohya_contract import PIPELINE_DECIDED_KEYS, SDXL_BASE_MODEL, flatten_config
from lora_pipeline.text_formats import loads_toml
from lora_trainer.workspace import ResumePoint

TRAIN_SCRIPT = "sdxl_train_network.py"

_PERIODIC_SAVE_KEYS = ("save_every_n_epochs", "save_every_n_steps")
_PERIODIC_SAMPLE_KEYS = ("sample_every_n_epochs", "sample_every_n_steps")


@dataclass(frozen=True)
class KohyaRun:
    """Everything about one launch that does not come from kohya.toml."""

    sd_scripts_dir: Path
    train_data_dir: Path
    output_dir: Path
    output_name: str
    logging_dir: Path
    tokenizer_cache_dir: Path
    base_model: str
    sample_prompts: Path | None
    resume: ResumePoint | None
    num_processes: int
    cpu_threads_per_process: int
    trigger_phrase: str | None = None


def read_kohya_config(path: Path) -> dict[str, Any]:
    with path.open("rb") as stream:
        return flatten_config(loads_toml(stream.read().decode("utf-8")))


def training_config(config: Mapping[str, Any], checkpoint_every_n_steps: int | None = None) -> dict[str, Any]:
    """The config sd-scripts gets: the user's settings without the keys the pipeline decides, plus spot-safe saving.

    `checkpoint_every_n_steps` (from the plan: epochs longer than the stack's checkpoint interval) adds step
    saves, or shortens the config's own when they are further apart.
    """
    settings = {key: value for key, value in config.items() if key not in PIPELINE_DECIDED_KEYS}
    if not any(settings.get(key) for key in _PERIODIC_SAVE_KEYS):
        # A state is only written when a periodic save fires; without one a spot restart starts over.
        settings["save_every_n_epochs"] = 1
    if (
        checkpoint_every_n_steps
        and not 0 < int(settings.get("save_every_n_steps") or 0) <= checkpoint_every_n_steps
    ):
        settings["save_every_n_steps"] = checkpoint_every_n_steps
    # Keep the last two states, not every one: each holds the optimiser and goes to S3.
    if settings.get("save_every_n_steps"):
        # Step saves write a LoRA too (train_network.py): keep as many of those.
        settings.setdefault("save_last_n_steps_state", 2 * int(settings["save_every_n_steps"]))
        settings.setdefault("save_last_n_steps", 2 * int(settings["save_every_n_steps"]))
    if settings.get("save_every_n_epochs") or not settings.get("save_every_n_steps"):
        settings.setdefault("save_last_n_epochs_state", 2)
    return settings


def write_training_config(
    config: Mapping[str, Any], path: Path, checkpoint_every_n_steps: int | None = None
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tomli_w.dumps(training_config(config, checkpoint_every_n_steps)).encode("utf-8"))
    return path


def base_model_for(config: Mapping[str, Any], model_file: Path | None, hyperparameter: str | None) -> str:
    """The model channel's file wins, then the job's base_model, then the config's, then SDXL 1.0 base."""
    if model_file is not None:
        return str(model_file)
    return hyperparameter or str(config.get("pretrained_model_name_or_path") or SDXL_BASE_MODEL)


def build_kohya_command(config_file: Path, config: Mapping[str, Any], run: KohyaRun) -> list[str]:
    """`config` is the flattened kohya.toml; `config_file` is where `write_training_config` put it."""
    mixed_precision = str(config.get("mixed_precision", "no"))
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_machines",
        "1",
        "--num_processes",
        str(run.num_processes),
        "--num_cpu_threads_per_process",
        str(run.cpu_threads_per_process),
        "--mixed_precision",
        mixed_precision,
        "--dynamo_backend",
        "no",
    ]
    if run.num_processes > 1:
        launcher.append("--multi_gpu")
    arguments = [
        str(run.sd_scripts_dir / TRAIN_SCRIPT),
        "--config_file",
        str(config_file),
        "--pretrained_model_name_or_path",
        run.base_model,
        "--train_data_dir",
        str(run.train_data_dir),
        "--output_dir",
        str(run.output_dir),
        "--output_name",
        run.output_name,
        "--logging_dir",
        str(run.logging_dir),
        "--tokenizer_cache_dir",
        str(run.tokenizer_cache_dir),
        "--sdpa",
        "--save_state",
        "--console_log_simple",
    ]
    if run.sample_prompts is not None:
        arguments += ["--sample_prompts", str(run.sample_prompts)]
        if not any(config.get(key) for key in _PERIODIC_SAMPLE_KEYS):
            arguments += ["--sample_every_n_epochs", "1"]
    if run.resume is not None:
        arguments += run.resume.trainer_arguments()
    if run.trigger_phrase and not config.get("metadata_trigger_phrase"):
        # library/sai_model_spec.py add_model_spec_arguments: saved as modelspec.trigger_phrase in every LoRA.
        arguments += ["--metadata_trigger_phrase", run.trigger_phrase]
    return launcher + arguments
