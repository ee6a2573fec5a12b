"""The SageMaker training contract as this container reads it.

Everything lives below one root, `/opt/ml` on SageMaker; the environment variable `OPT_ML` moves it (tests,
the local executor). Inputs: `input/config/hyperparameters.json` (every value a string),
`input/config/resourceconfig.json`, `input/config/inputdataconfig.json`, channels under
`input/data/<channel>/`. Outputs: `model/` (tarred into
model.tar.gz), `checkpoints/` (synced to S3 and restored on a spot restart), `output/failure` and
`output/data/` (tarred into output.tar.gz).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lora_pipeline.job_settings import DEFAULT_KEEP_EPOCH_LORAS
from lora_pipeline.names import OUTPUT_NAME_MAX, is_output_name
from lora_pipeline.text_formats import loads_json
from lora_pipeline.training_job_spec import CONFIG_CHANNEL, MODEL_CHANNEL, TRAIN_CHANNEL

# The one host of a single-instance job, as SageMaker names it in resourceconfig.json.
SINGLE_HOST = "algo-1"

TrainerName = Literal["kohya", "smoke"]
TRAINERS: tuple[TrainerName, ...] = ("kohya", "smoke")


class ContractError(Exception):
    """The job's inputs do not fit the contract. The message says which file, what is wrong and the fix."""


@dataclass(frozen=True)
class OptMl:
    root: Path

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> OptMl:
        return cls(Path(environ.get("OPT_ML", "/opt/ml")))

    @property
    def hyperparameters_file(self) -> Path:
        return self.root / "input" / "config" / "hyperparameters.json"

    @property
    def resource_config_file(self) -> Path:
        return self.root / "input" / "config" / "resourceconfig.json"

    @property
    def input_data_config_file(self) -> Path:
        return self.root / "input" / "config" / "inputdataconfig.json"

    def write_job_config(
        self,
        hyperparameters: Mapping[str, str],
        channels: Iterable[str],
        resource_config: Mapping[str, Any] | None = None,
    ) -> None:
        """What SageMaker writes before it starts the image (for the embedded AWS, `make kohya-check` and tests):
        `hyperparameters` (every value a string), `resource_config` (default: the single host), and every
        channel in File mode in inputdataconfig.json, with its empty folder."""
        self.hyperparameters_file.parent.mkdir(parents=True, exist_ok=True)
        self.hyperparameters_file.write_text(json.dumps(dict(hyperparameters)))
        resources = resource_config or {"current_host": SINGLE_HOST, "hosts": [SINGLE_HOST]}
        self.resource_config_file.write_text(json.dumps(dict(resources)))
        names = list(channels)
        self.input_data_config_file.write_text(
            json.dumps({name: {"TrainingInputMode": "File"} for name in names})
        )
        for name in names:
            self.channel(name).mkdir(parents=True, exist_ok=True)

    def make_output_dirs(self) -> None:
        """The empty folders SageMaker gives the job for its results: model/, output/data/ and checkpoints/."""
        for folder in (self.model_dir, self.output_data_dir, self.checkpoints_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def channel(self, name: str) -> Path:
        return self.root / "input" / "data" / name

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def failure_file(self) -> Path:
        return self.root / "output" / "failure"

    @property
    def output_data_dir(self) -> Path:
        return self.root / "output" / "data"

    @property
    def samples_dir(self) -> Path:
        """Sample images are published with the LoRA (model.tar.gz -> runs/<dataset>/<run>/model/samples/)."""
        return self.model_dir / "samples"

    @property
    def logs_dir(self) -> Path:
        return self.output_data_dir / "logs"

    @property
    def scratch_dir(self) -> Path:
        """Local working space on the training volume: the files the trainer reads besides the dataset."""
        return self.root / "scratch"

    @property
    def dataset_copy_dir(self) -> Path:
        """The dataset the trainer reads, inside `checkpoints/` so that the latent caches sd-scripts writes
        next to the images are restored after a spot restart instead of being encoded again."""
        return self.checkpoints_dir / "dataset"


@dataclass(frozen=True)
class Hyperparameters:
    trainer: TrainerName
    output_name: str
    dataset: str
    run_id: str
    base_model: str | None = None
    max_steps: int | None = None
    trigger_phrase: str | None = None
    """The subsets' class tokens, written into the LoRA as `modelspec.trigger_phrase`."""
    keep_epoch_loras: int = DEFAULT_KEEP_EPOCH_LORAS
    checkpoint_every_n_steps: int | None = None


@dataclass(frozen=True)
class ResourceConfig:
    current_host: str
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class JobInputs:
    hyperparameters: Hyperparameters
    resources: ResourceConfig
    dataset_dir: Path
    kohya_config_file: Path
    sample_prompts_file: Path | None
    base_model_file: Path | None


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = loads_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ContractError(
            f"{path} is missing. SageMaker writes it for every training job; when running the container "
            "yourself, create it (the README's 'training image' section shows the layout) or set OPT_ML to "
            "a prepared tree."
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ContractError(f"{path} is not readable JSON ({error}). Write it as a JSON object.") from None
    if not isinstance(data, dict):
        raise ContractError(f"{path} holds {type(data).__name__}, not a JSON object. Write it as an object.")
    return data


def read_hyperparameters(path: Path) -> Hyperparameters:
    raw = {key: str(value) for key, value in _read_json_object(path).items()}
    missing = [key for key in ("output_name", "dataset", "run_id") if not raw.get(key)]
    if missing:
        raise ContractError(
            f"{path} lacks the hyperparameter(s) {', '.join(missing)}. The pipeline sets them on "
            "CreateTrainingJob; add them to HyperParameters when starting a job by hand."
        )
    trainer = raw.get("trainer", "kohya")
    if trainer not in TRAINERS:
        raise ContractError(
            f"{path}: trainer = {trainer!r} is not a trainer of this image. Use one of {', '.join(TRAINERS)}."
        )
    output_name = raw["output_name"]
    if not is_output_name(output_name):
        raise ContractError(
            f"{path}: output_name = {output_name!r} is not a plain file name. Use letters, digits, '_', '.' and "
            f"'-', not starting with '.' or '-', at most {OUTPUT_NAME_MAX} characters (the LoRA is written as "
            "<output_name>.safetensors)."
        )
    counts = {key: raw.get(key) for key in ("max_steps", "checkpoint_every_n_steps")}
    for key, value in counts.items():
        if value is not None and not (value.isdigit() and int(value) > 0):
            raise ContractError(
                f"{path}: {key} = {value!r} is not a positive whole number. Fix or remove it."
            )
    max_steps, checkpoint_every_n_steps = counts.values()
    keep_epoch_loras = raw.get("keep_epoch_loras", str(DEFAULT_KEEP_EPOCH_LORAS))
    if not keep_epoch_loras.isdigit():
        raise ContractError(
            f"{path}: keep_epoch_loras = {keep_epoch_loras!r} is not a whole number (0 or more). Fix or remove it."
        )
    return Hyperparameters(
        trainer=trainer,
        output_name=output_name,
        dataset=raw["dataset"],
        run_id=raw["run_id"],
        base_model=raw.get("base_model") or None,
        max_steps=int(max_steps) if max_steps else None,
        trigger_phrase=raw.get("trigger_phrase") or None,
        keep_epoch_loras=int(keep_epoch_loras),
        checkpoint_every_n_steps=int(checkpoint_every_n_steps) if checkpoint_every_n_steps else None,
    )


def read_resource_config(path: Path) -> ResourceConfig:
    """SageMaker always writes this file; a local tree without it is one host."""
    if not path.exists():
        return ResourceConfig(current_host=SINGLE_HOST, hosts=(SINGLE_HOST,))
    data = _read_json_object(path)
    hosts = data.get("hosts") or [data.get("current_host", SINGLE_HOST)]
    return ResourceConfig(current_host=str(data.get("current_host", hosts[0])), hosts=tuple(map(str, hosts)))


def _single_base_model(model_channel: Path) -> Path:
    candidates = sorted(p for p in model_channel.rglob("*") if p.is_file() and p.suffix == ".safetensors")
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "no .safetensors file"
        raise ContractError(
            f"The model channel ({model_channel}) must hold exactly one base model .safetensors file; "
            f"it holds {found}. Point base_model in pipeline.toml at a single SDXL checkpoint file."
        )
    return candidates[0]


def read_job_inputs(opt_ml: OptMl) -> JobInputs:
    hyperparameters = read_hyperparameters(opt_ml.hyperparameters_file)
    resources = read_resource_config(opt_ml.resource_config_file)
    if len(resources.hosts) > 1:
        raise ContractError(
            f"{opt_ml.resource_config_file} lists {len(resources.hosts)} hosts; this image trains on one "
            "instance (it uses every GPU of it). Start the training job with InstanceCount = 1."
        )
    dataset_dir = opt_ml.channel(TRAIN_CHANNEL)
    if not dataset_dir.is_dir():
        raise ContractError(
            f"The {TRAIN_CHANNEL} channel ({dataset_dir}) is missing. Give the job an input channel named "
            f"'{TRAIN_CHANNEL}' pointing at the dataset folder (s3://<bucket>/datasets/<dataset>/)."
        )
    config_dir = opt_ml.channel(CONFIG_CHANNEL)
    kohya_config_file = config_dir / "kohya.toml"
    if not kohya_config_file.is_file():
        raise ContractError(
            f"{kohya_config_file} is missing. Give the job an input channel named '{CONFIG_CHANNEL}' pointing "
            "at the run's config/ folder, which holds the validated kohya.toml."
        )
    prompts = config_dir / "prompts.txt"
    model_channel = opt_ml.channel(MODEL_CHANNEL)
    base_model_file = _single_base_model(model_channel) if model_channel.is_dir() else None
    if base_model_file is None and (hyperparameters.base_model or "").startswith("s3://"):
        raise ContractError(
            f"base_model = {hyperparameters.base_model} is an S3 file but the job has no '{MODEL_CHANNEL}' "
            f"channel. Send the file as an input channel named '{MODEL_CHANNEL}'."
        )
    return JobInputs(
        hyperparameters=hyperparameters,
        resources=resources,
        dataset_dir=dataset_dir,
        kohya_config_file=kohya_config_file,
        sample_prompts_file=prompts
        if prompts.is_file() and prompts.read_text(encoding="utf-8").strip()
        else None,
        base_model_file=base_model_file,
    )
