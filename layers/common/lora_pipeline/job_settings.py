"""Job settings: `pipeline.toml` in the dataset root, checked against the limits the stack was deployed with."""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from lora_pipeline.instances import InstanceTable
from lora_pipeline.problems import Problem, Severity, define
from lora_pipeline.s3_layout import BASE_MODELS_PREFIX, parse_s3_uri

SETTINGS_FILE = "pipeline.toml"
SDXL_BASE_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
SMOKE_INSTANCE_TYPE = "ml.m5.xlarge"
SAMPLE_SIZE_PX = 1024

JOB_TOML_SYNTAX = define(
    "JOB_TOML_SYNTAX",
    Severity.ERROR,
    "pipeline.toml is not valid TOML",
    "Fix the TOML syntax at the position shown.",
)
JOB_UNKNOWN_KEY = define(
    "JOB_UNKNOWN_KEY",
    Severity.ERROR,
    "pipeline.toml has a key the pipeline does not know",
    "Remove the key or correct its spelling; the README lists every pipeline.toml key.",
)
JOB_BAD_VALUE = define(
    "JOB_BAD_VALUE",
    Severity.ERROR,
    "a pipeline.toml value has the wrong type or is out of range",
    "Use the type and range given in the message.",
)
JOB_INSTANCE_NOT_ALLOWED = define(
    "JOB_INSTANCE_NOT_ALLOWED",
    Severity.ERROR,
    "instance_type is not in the stack's AllowedInstanceTypes",
    "Pick one of the allowed types, or redeploy the stack with a longer AllowedInstanceTypes list.",
)
JOB_INSTANCE_UNPRICED = define(
    "JOB_INSTANCE_UNPRICED",
    Severity.WARNING,
    "the instance type is not in the price table, so no cost estimate is given",
    "Add the instance to a price table and pass it with --prices (or LORA_PIPELINE_PRICES).",
)
JOB_INSTANCE_NO_GPU = define(
    "JOB_INSTANCE_NO_GPU",
    Severity.ERROR,
    "the Kohya trainer needs a GPU instance",
    'Choose a GPU instance (ml.g5.2xlarge is the default) or set trainer = "smoke" for a plumbing check.',
)
JOB_SMOKE_ON_GPU = define(
    "JOB_SMOKE_ON_GPU",
    Severity.WARNING,
    "the smoke trainer runs on a GPU instance, which costs more for no benefit",
    f'Set instance_type = "{SMOKE_INSTANCE_TYPE}" for the smoke trainer.',
)
JOB_VOLUME_TOO_SMALL = define(
    "JOB_VOLUME_TOO_SMALL",
    Severity.ERROR,
    "volume_size_gb is below the minimum (SDXL weights, caches and checkpoints need room)",
    "Set volume_size_gb to at least the minimum given in the message.",
)
JOB_RUNTIME_ABOVE_CAP = define(
    "JOB_RUNTIME_ABOVE_CAP",
    Severity.ERROR,
    "max_runtime_hours is above the stack's MaxRuntimeHours",
    "Lower max_runtime_hours, or redeploy the stack with a higher MaxRuntimeHours.",
)
JOB_BAD_BASE_MODEL = define(
    "JOB_BAD_BASE_MODEL",
    Severity.ERROR,
    "base_model is neither an s3://... .safetensors URI nor a Hugging Face model id",
    'Use "s3://bucket/path/model.safetensors" or an id like "stabilityai/stable-diffusion-xl-base-1.0".',
)
JOB_BASE_MODEL_NOT_ALLOWED = define(
    "JOB_BASE_MODEL_NOT_ALLOWED",
    Severity.ERROR,
    "an s3:// base_model must be the stack's BaseModelS3Uri or one .safetensors file under the bucket's "
    f"{BASE_MODELS_PREFIX} prefix (a training job may read no other dataset's or run's files)",
    f"Copy the model to s3://<bucket>/{BASE_MODELS_PREFIX}<name>.safetensors and use that URI, or remove base_model.",
)
JOB_BAD_OUTPUT_NAME = define(
    "JOB_BAD_OUTPUT_NAME",
    Severity.ERROR,
    "output_name must be a plain file name without extension",
    "Use letters, digits, '-', '_' and '.', at most 100 characters, no extension.",
)
JOB_BAD_SAMPLE_PROMPT = define(
    "JOB_BAD_SAMPLE_PROMPT",
    Severity.ERROR,
    "a sample prompt has an option sd-scripts does not understand",
    "Use only --n (negative), --w, --h, --d (seed), --l (CFG scale), --s (steps), --ss (sampler) with values.",
)
JOB_SAMPLES_WITHOUT_PROMPTS = define(
    "JOB_SAMPLES_WITHOUT_PROMPTS",
    Severity.WARNING,
    "sample_every_n_epochs is set but there are no sample_prompts, so no samples are rendered",
    "Add sample_prompts, or remove sample_every_n_epochs.",
)

_KNOWN_KEYS = (
    "instance_type",
    "volume_size_gb",
    "max_runtime_hours",
    "spot",
    "trainer",
    "base_model",
    "output_name",
    "sample_prompts",
    "sample_every_n_epochs",
)
_HF_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_OUTPUT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
# sd-scripts' sample prompt line options (library/train_util.py, line_to_prompt_dict) and their value types.
_PROMPT_OPTIONS: dict[str, type] = {"n": str, "w": int, "h": int, "d": int, "l": float, "s": int, "ss": str}

Trainer = Literal["kohya", "smoke"]


@dataclass(frozen=True)
class StackLimits:
    """What the deployed stack allows; the validate function builds this from its environment."""

    allowed_instance_types: tuple[str, ...] = (
        "ml.g5.xlarge",
        "ml.g5.2xlarge",
        "ml.g5.4xlarge",
        "ml.g5.8xlarge",
        "ml.g6.2xlarge",
        "ml.g6e.2xlarge",
        SMOKE_INSTANCE_TYPE,
    )
    default_instance_type: str = "ml.g5.2xlarge"
    min_volume_size_gb: int = 50
    max_runtime_hours: float = 12.0
    use_spot: bool = True
    base_model_s3_uri: str | None = None
    bucket: str | None = None
    """The stack's bucket: an s3:// base_model must lie in it (None when validating without a stack)."""


class JobSettings(BaseModel):
    """The resolved job settings of one run (defaults filled in)."""

    instance_type: str
    volume_size_gb: int
    max_runtime_hours: float
    spot: bool
    trainer: Trainer
    base_model: str
    output_name: str | None = None
    sample_prompts: list[str] = []
    sample_every_n_epochs: int | None = None

    @property
    def base_model_from_s3(self) -> bool:
        """True when the base model is sent as the `model` channel rather than fetched by id."""
        return self.base_model.startswith("s3://")

    def prompts_txt(self) -> str | None:
        """The sd-scripts prompt file, one prompt per line; SDXL samples default to 1024 px."""
        if not self.sample_prompts:
            return None
        lines = []
        for prompt in self.sample_prompts:
            options = _prompt_options(prompt)
            extra = "".join(f" --{o} {SAMPLE_SIZE_PX}" for o in ("w", "h") if o not in options)
            lines.append(prompt.strip() + extra)
        return "\n".join(lines) + "\n"


@dataclass
class _Reader:
    """Collects problems while reading one settings table."""

    data: dict[str, Any]
    file: str
    problems: list[Problem] = field(default_factory=list)

    def bad(self, key: str, expected: str) -> None:
        value = self.data[key]
        self.problems.append(
            JOB_BAD_VALUE.at(self.file, f"{key} = {value!r} in {self.file}: expected {expected}.")
        )

    def get(self, key: str, kind: type | tuple[type, ...], expected: str) -> Any:
        if key not in self.data:
            return None
        value = self.data[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.bad(key, expected)
            return None
        if not isinstance(value, kind):
            self.bad(key, expected)
            return None
        return value


def _prompt_options(prompt: str) -> dict[str, str]:
    """Options of one sample prompt line; unknown options raise ValueError naming them."""
    options: dict[str, str] = {}
    for part in prompt.split(" --")[1:]:
        name, _, value = part.strip().partition(" ")
        if name not in _PROMPT_OPTIONS:
            raise ValueError(f"unknown option --{name}")
        try:
            _PROMPT_OPTIONS[name](value.strip())
        except ValueError:
            kind = _PROMPT_OPTIONS[name].__name__
            raise ValueError(f"--{name} needs a {kind} value, got {value.strip()!r}") from None
        options[name] = value.strip()
    return options


def read_job_settings(
    text: str | None, limits: StackLimits, instances: InstanceTable, file: str = SETTINGS_FILE
) -> tuple[JobSettings, list[Problem]]:
    """Parse and check `pipeline.toml` (None: absent). Invalid values fall back to defaults so that
    every other check still runs; the problems say what was wrong."""
    data: dict[str, Any] = {}
    problems: list[Problem] = []
    if text is not None:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            problems.append(JOB_TOML_SYNTAX.at(file, f"{file} is not valid TOML: {exc}."))
    for key in data:
        if key not in _KNOWN_KEYS:
            close = difflib.get_close_matches(key, _KNOWN_KEYS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(JOB_UNKNOWN_KEY.at(file, f"Unknown key {key!r} in {file}.{hint}"))
    known = {k: v for k, v in data.items() if k in _KNOWN_KEYS}
    reader = _Reader(known, file)

    trainer = reader.get("trainer", str, '"kohya" or "smoke"') or "kohya"
    if trainer not in ("kohya", "smoke"):
        reader.bad("trainer", '"kohya" or "smoke"')
        trainer = "kohya"
    fallback_instance = SMOKE_INSTANCE_TYPE if trainer == "smoke" else limits.default_instance_type
    instance_type = reader.get("instance_type", str, "a SageMaker instance type string") or fallback_instance
    volume = reader.get("volume_size_gb", int, "a whole number of GB")
    runtime = reader.get("max_runtime_hours", (int, float), "a number of hours")
    if runtime is not None and runtime <= 0:
        reader.bad("max_runtime_hours", "a positive number of hours")
        runtime = None
    spot = reader.get("spot", bool, "true or false")
    base_model = reader.get("base_model", str, "a string")
    output_name = reader.get("output_name", str, "a string")
    every = reader.get("sample_every_n_epochs", int, "a whole number of epochs, at least 1")
    if every is not None and every < 1:
        reader.bad("sample_every_n_epochs", "a whole number of epochs, at least 1")
        every = None
    prompts = reader.get(
        "sample_prompts", list, 'a list of strings, e.g. sample_prompts = ["a photo of sks dog"]'
    )
    if prompts is not None and not all(isinstance(p, str) and p.strip() for p in prompts):
        reader.bad("sample_prompts", "a list of non-empty strings")
        prompts = None
    problems.extend(reader.problems)

    if instance_type not in limits.allowed_instance_types:
        allowed = ", ".join(limits.allowed_instance_types)
        problems.append(
            JOB_INSTANCE_NOT_ALLOWED.at(
                file, f"instance_type {instance_type!r} is not allowed by this stack (allowed: {allowed})."
            )
        )
    spec = instances.get(instance_type)
    if spec is None:
        problems.append(
            JOB_INSTANCE_UNPRICED.at(file, f"{instance_type} is not in the price table ({instances.source}).")
        )
    elif trainer == "kohya" and not spec.has_gpu:
        problems.append(JOB_INSTANCE_NO_GPU.at(file, f"{instance_type} has no GPU; SDXL training needs one."))
    elif trainer == "smoke" and spec.has_gpu:
        problems.append(
            JOB_SMOKE_ON_GPU.at(file, f"The smoke trainer is set to run on {instance_type} ({spec.gpu}).")
        )

    if volume is not None and volume < limits.min_volume_size_gb:
        problems.append(
            JOB_VOLUME_TOO_SMALL.at(
                file, f"volume_size_gb = {volume} is below the minimum of {limits.min_volume_size_gb} GB."
            )
        )
    if runtime is not None and runtime > limits.max_runtime_hours:
        problems.append(
            JOB_RUNTIME_ABOVE_CAP.at(
                file,
                f"max_runtime_hours = {runtime} is above this stack's cap of {limits.max_runtime_hours} h.",
            )
        )

    resolved_base = base_model or limits.base_model_s3_uri or SDXL_BASE_MODEL
    if base_model is not None and not _valid_base_model(base_model):
        problems.append(JOB_BAD_BASE_MODEL.at(file, f"base_model = {base_model!r} is not usable."))
        resolved_base = limits.base_model_s3_uri or SDXL_BASE_MODEL
    elif base_model is not None and (refusal := _base_model_refusal(base_model, limits)) is not None:
        problems.append(JOB_BASE_MODEL_NOT_ALLOWED.at(file, f"base_model = {base_model!r} {refusal}."))
        resolved_base = limits.base_model_s3_uri or SDXL_BASE_MODEL
    if output_name is not None and not _OUTPUT_NAME.match(output_name):
        problems.append(
            JOB_BAD_OUTPUT_NAME.at(file, f"output_name = {output_name!r} is not a plain file name.")
        )
        output_name = None
    for prompt in prompts or []:
        try:
            _prompt_options(prompt)
        except ValueError as exc:
            problems.append(JOB_BAD_SAMPLE_PROMPT.at(file, f"Sample prompt {prompt!r}: {exc}."))
    if every is not None and not prompts:
        problems.append(
            JOB_SAMPLES_WITHOUT_PROMPTS.at(file, "sample_every_n_epochs is set without sample_prompts.")
        )

    settings = JobSettings(
        instance_type=instance_type,
        volume_size_gb=volume if volume is not None else limits.min_volume_size_gb,
        max_runtime_hours=float(runtime) if runtime is not None else limits.max_runtime_hours,
        spot=spot if spot is not None else limits.use_spot,
        trainer=trainer,
        base_model=resolved_base,
        output_name=output_name,
        sample_prompts=list(prompts or []),
        sample_every_n_epochs=(every or 1) if prompts else None,
    )
    return settings, problems


def _base_model_refusal(uri: str, limits: StackLimits) -> str | None:
    """Why an s3:// base_model may not be mounted as the job's `model` channel, or None when it may."""
    if not uri.startswith("s3://") or uri == limits.base_model_s3_uri:
        return None
    bucket, key = parse_s3_uri(uri)
    if limits.bucket is not None and bucket != limits.bucket:
        return f"is outside this stack's bucket {limits.bucket}"
    if not key.startswith(BASE_MODELS_PREFIX):
        return f"is not under {BASE_MODELS_PREFIX}"
    if any(segment in ("", ".", "..") for segment in key.split("/")) or any(c in key for c in "*?[\\"):
        return "is not one plain object key (empty, '.' or '..' segments, wildcards or backslashes)"
    return None


def _valid_base_model(value: str) -> bool:
    if value.startswith("s3://"):
        bucket, _, key = value.removeprefix("s3://").partition("/")
        return bool(bucket) and key.endswith(".safetensors")
    return bool(_HF_MODEL_ID.match(value))
