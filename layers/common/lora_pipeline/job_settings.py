"""Job settings: `pipeline.toml` in the dataset root, checked against the limits the stack was deployed with.

The file is read into `PipelineToml` (pydantic, unknown keys forbidden); its validation errors become
JOB_UNKNOWN_KEY / JOB_BAD_VALUE problems, and the registered rules of `JOB_RULES` check the rest.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from lora_pipeline.base_model import check_hugging_face_id, check_s3_checkpoint
from lora_pipeline.dataset_source import ObjectReader
from lora_pipeline.instances import InstanceTable
from lora_pipeline.kohya_contract import SDXL_BASE_MODEL
from lora_pipeline.names import OUTPUT_NAME_MAX, is_hugging_face_model_id, is_output_name
from lora_pipeline.problems import Problem, Severity, define
from lora_pipeline.rules import MAX_UNKNOWN_KEYS_REPORTED, RuleSet
from lora_pipeline.s3_layout import BASE_MODELS_PREFIX, parse_s3_uri
from lora_pipeline.sample_prompts import KNOWN_SAMPLERS, OPTION_HELP, read_prompt_line, with_sdxl_size
from lora_pipeline.text_formats import loads_toml

SETTINGS_FILE = "pipeline.toml"
SMOKE_INSTANCE_TYPE = "ml.m5.xlarge"
# How many per-epoch LoRAs (the newest, besides the final one) a run publishes in model/.
DEFAULT_KEEP_EPOCH_LORAS = 3

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
    f'Use "s3://bucket/path/model.safetensors" or an id like "{SDXL_BASE_MODEL}".',
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
    f"Use letters, digits, '-', '_' and '.', at most {OUTPUT_NAME_MAX} characters, no extension.",
)
JOB_BAD_SAMPLE_PROMPT = define(
    "JOB_BAD_SAMPLE_PROMPT",
    Severity.ERROR,
    "a sample prompt has an option sd-scripts would silently ignore (unknown, or a value that does not fit)",
    f"Use only {OPTION_HELP}, each with a value.",
)
JOB_UNKNOWN_SAMPLER = define(
    "JOB_UNKNOWN_SAMPLER",
    Severity.WARNING,
    "a sample prompt names a sampler sd-scripts does not know, so it silently samples with DDIM",
    f"Use one of: {', '.join(KNOWN_SAMPLERS)} (as written, lower case).",
)
JOB_SAMPLES_WITHOUT_PROMPTS = define(
    "JOB_SAMPLES_WITHOUT_PROMPTS",
    Severity.WARNING,
    "sample_every_n_epochs is set but there are no sample_prompts, so no samples are rendered",
    "Add sample_prompts, or remove sample_every_n_epochs.",
)


Trainer = Literal["kohya", "smoke"]
_Prompt = Annotated[str, StringConstraints(pattern=r"\S")]


class PipelineToml(BaseModel):
    """`pipeline.toml` as written: every key optional, unknown keys forbidden, TOML types taken as they are.
    Each field's description is the "expected ..." of its JOB_BAD_VALUE message."""

    model_config = ConfigDict(extra="forbid", strict=True)

    instance_type: str | None = Field(None, description="a SageMaker instance type string")
    volume_size_gb: int | None = Field(None, description="a whole number of GB")
    max_runtime_hours: Annotated[int | float, Field(gt=0)] | None = Field(
        None, description="a positive number of hours"
    )
    spot: bool | None = Field(None, description="true or false")
    trainer: Trainer | None = Field(None, description='"kohya" or "smoke"')
    base_model: str | None = Field(None, description="a string")
    output_name: str | None = Field(None, description="a string")
    sample_prompts: list[_Prompt] | None = Field(
        None, description='a list of non-empty strings, e.g. sample_prompts = ["a photo of sks dog"]'
    )
    sample_every_n_epochs: Annotated[int, Field(ge=1)] | None = Field(
        None, description="a whole number of epochs, at least 1"
    )
    keep_epoch_loras: Annotated[int, Field(ge=0)] | None = Field(
        None, description="a whole number of LoRAs, 0 or more"
    )


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
    checkpoint_interval_minutes: float = 30.0
    base_model_s3_uri: str | None = None
    bucket: str | None = None
    """The stack's bucket: an s3:// base_model must lie in it (None when validating without a stack)."""

    @property
    def default_base_model(self) -> str:
        """The base model of a job whose pipeline.toml names none (or an unusable one)."""
        return self.base_model_s3_uri or SDXL_BASE_MODEL


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
    keep_epoch_loras: int = DEFAULT_KEEP_EPOCH_LORAS

    @property
    def base_model_from_s3(self) -> bool:
        """True when the base model is sent as the `model` channel rather than fetched by id."""
        return self.base_model.startswith("s3://")

    def prompts_txt(self) -> str | None:
        """The sd-scripts prompt file, one prompt per line, each at 1024 px unless it gives a size."""
        if not self.sample_prompts:
            return None
        lines = [with_sdxl_size(prompt) for prompt in self.sample_prompts]
        return "\n".join(lines) + "\n"


@dataclass
class JobContext:
    """What a job rule sees: the file as written, the settings resolved so far (a rule that finds a value
    unusable puts the fallback in their place) and the stack's limits."""

    file: str
    written: PipelineToml
    settings: JobSettings
    limits: StackLimits
    instances: InstanceTable
    models: ObjectReader | None
    problems: list[Problem] = field(default_factory=list)

    def report(self, problem: Problem) -> None:
        self.problems.append(problem)

    def reject(self, problem: Problem, **fallback: Any) -> None:
        """Report a value the job cannot use and put `fallback` in its place."""
        self.report(problem)
        self.settings = self.settings.model_copy(update=fallback)


JOB_RULES: RuleSet[JobContext] = RuleSet("JS", "pipeline.toml")


def _parse(data: dict[str, Any], file: str) -> tuple[PipelineToml, list[Problem]]:
    """`data` as a PipelineToml; a key that fails validation is reported and left out (unknown keys: the
    first MAX_UNKNOWN_KEYS_REPORTED one by one, the rest counted)."""
    problems: list[Problem] = []
    known = list(PipelineToml.model_fields)
    unknown = [key for key in data if key not in PipelineToml.model_fields]
    for key in unknown[:MAX_UNKNOWN_KEYS_REPORTED]:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        problems.append(JOB_UNKNOWN_KEY.at(file, f"Unknown key {key!r} in {file}.{hint}"))
    if len(unknown) > MAX_UNKNOWN_KEYS_REPORTED:
        more = len(unknown) - MAX_UNKNOWN_KEYS_REPORTED
        problems.append(
            JOB_UNKNOWN_KEY.at(file, f"{more:,} more unknown keys in {file} are not listed one by one.")
        )
    usable = {key: value for key, value in data.items() if key in PipelineToml.model_fields}
    try:
        return PipelineToml.model_validate(usable), problems
    except ValidationError as exc:
        errors = exc.errors()
    for key in dict.fromkeys(str(error["loc"][0]) for error in errors):
        value = usable.pop(key)
        expected = PipelineToml.model_fields[key].description
        problems.append(JOB_BAD_VALUE.at(file, f"{key} = {value!r} in {file}: expected {expected}."))
    return PipelineToml.model_validate(usable), problems


def _resolve(written: PipelineToml, limits: StackLimits) -> JobSettings:
    trainer = written.trainer or "kohya"
    fallback_instance = SMOKE_INSTANCE_TYPE if trainer == "smoke" else limits.default_instance_type
    prompts = written.sample_prompts or []
    return JobSettings(
        instance_type=written.instance_type or fallback_instance,
        volume_size_gb=written.volume_size_gb
        if written.volume_size_gb is not None
        else limits.min_volume_size_gb,
        max_runtime_hours=float(written.max_runtime_hours or limits.max_runtime_hours),
        spot=written.spot if written.spot is not None else limits.use_spot,
        trainer=trainer,
        base_model=written.base_model or limits.default_base_model,
        output_name=written.output_name,
        sample_prompts=list(prompts),
        sample_every_n_epochs=(written.sample_every_n_epochs or 1) if prompts else None,
        keep_epoch_loras=written.keep_epoch_loras
        if written.keep_epoch_loras is not None
        else DEFAULT_KEEP_EPOCH_LORAS,
    )


def read_job_settings(
    text: str | None,
    limits: StackLimits,
    instances: InstanceTable,
    file: str = SETTINGS_FILE,
    models: ObjectReader | None = None,
) -> tuple[JobSettings, list[Problem]]:
    """Parse and check `pipeline.toml` (None: absent). Invalid values fall back to defaults so that every
    other check still runs; the problems say what was wrong. `models` reads an S3 base model's header."""
    data: dict[str, Any] = {}
    problems: list[Problem] = []
    if text is not None:
        try:
            data = loads_toml(text)
        except tomllib.TOMLDecodeError as exc:
            problems.append(JOB_TOML_SYNTAX.at(file, f"{file} is not valid TOML: {exc}."))
    written, parse_problems = _parse(data, file)
    context = JobContext(file, written, _resolve(written, limits), limits, instances, models, problems)
    context.problems.extend(parse_problems)
    JOB_RULES.run(context)
    return context.settings, context.problems


@JOB_RULES.rule("JS101", "instance-allowed", "template.yaml AllowedInstanceTypes (the stack's choice)")
def instance_allowed(ctx: JobContext) -> None:
    """instance_type must be one the stack allows."""
    instance_type = ctx.settings.instance_type
    if instance_type not in ctx.limits.allowed_instance_types:
        allowed = ", ".join(ctx.limits.allowed_instance_types)
        ctx.report(
            JOB_INSTANCE_NOT_ALLOWED.at(
                ctx.file,
                f"instance_type {instance_type!r} is not allowed by this stack (allowed: {allowed}).",
            )
        )


@JOB_RULES.rule("JS102", "instance-hardware", "library/train_util.py (sd-scripts trains SDXL on a GPU)")
def instance_hardware(ctx: JobContext) -> None:
    """The Kohya trainer needs a GPU; the smoke trainer does not; unpriced instances give no estimate."""
    instance_type, trainer = ctx.settings.instance_type, ctx.settings.trainer
    spec = ctx.instances.get(instance_type)
    if spec is None:
        ctx.report(
            JOB_INSTANCE_UNPRICED.at(
                ctx.file, f"{instance_type} is not in the price table ({ctx.instances.source})."
            )
        )
    elif trainer == "kohya" and not spec.has_gpu:
        ctx.report(JOB_INSTANCE_NO_GPU.at(ctx.file, f"{instance_type} has no GPU; SDXL training needs one."))
    elif trainer == "smoke" and spec.has_gpu:
        ctx.report(
            JOB_SMOKE_ON_GPU.at(ctx.file, f"The smoke trainer is set to run on {instance_type} ({spec.gpu}).")
        )


@JOB_RULES.rule(
    "JS103", "volume-minimum", "template.yaml MinVolumeSizeGB (SDXL weights, caches, checkpoints)"
)
def volume_minimum(ctx: JobContext) -> None:
    """volume_size_gb must be at least the stack's minimum."""
    volume = ctx.written.volume_size_gb
    if volume is not None and volume < ctx.limits.min_volume_size_gb:
        ctx.report(
            JOB_VOLUME_TOO_SMALL.at(
                ctx.file,
                f"volume_size_gb = {volume} is below the minimum of {ctx.limits.min_volume_size_gb} GB.",
            )
        )


@JOB_RULES.rule("JS104", "runtime-cap", "template.yaml MaxRuntimeHours (SageMaker StoppingCondition)")
def runtime_cap(ctx: JobContext) -> None:
    """max_runtime_hours must not exceed the stack's cap."""
    runtime = ctx.written.max_runtime_hours
    if runtime is not None and runtime > ctx.limits.max_runtime_hours:
        ctx.report(
            JOB_RUNTIME_ABOVE_CAP.at(
                ctx.file,
                f"max_runtime_hours = {runtime} is above this stack's cap of {ctx.limits.max_runtime_hours} h.",
            )
        )


@JOB_RULES.rule("JS105", "base-model-form", "library/sdxl_train_util.py:load_target_model")
def base_model_form(ctx: JobContext) -> None:
    """base_model is an s3://...safetensors URI or a Hugging Face id."""
    base_model = ctx.written.base_model
    if base_model is not None and not _valid_base_model(base_model):
        ctx.reject(
            JOB_BAD_BASE_MODEL.at(ctx.file, f"base_model = {base_model!r} is not usable."),
            base_model=ctx.limits.default_base_model,
        )


@JOB_RULES.rule(
    "JS110",
    "base-model-allowed",
    "template.yaml SageMakerExecutionRole (reads the bucket's base-models/* and BaseModelS3Uri only)",
)
def base_model_allowed(ctx: JobContext) -> None:
    """An s3:// base_model is the stack's BaseModelS3Uri or one object under the bucket's base-models/.

    It runs before base-model-sdxl, so a refused URI is never read."""
    base_model = ctx.written.base_model
    if base_model is None or base_model != ctx.settings.base_model:
        return  # the stack's default, or refused by base-model-form
    refusal = _base_model_refusal(base_model, ctx.limits)
    if refusal is not None:
        ctx.reject(
            JOB_BASE_MODEL_NOT_ALLOWED.at(ctx.file, f"base_model = {base_model!r} {refusal}."),
            base_model=ctx.limits.default_base_model,
        )


@JOB_RULES.rule(
    "JS106",
    "base-model-sdxl",
    "library/sdxl_model_util.py:load_models_from_sdxl_checkpoint; sdxl_train_util.py",
)
def base_model_sdxl(ctx: JobContext) -> None:
    """The base model the user named must be an SDXL base (an S3 checkpoint is read when a reader is given:
    the validate Lambda gives one)."""
    base_model = ctx.written.base_model
    if base_model is None or base_model != ctx.settings.base_model:
        return  # the stack's default, or refused by base-model-form or base-model-allowed
    if base_model.startswith("s3://"):
        problem = None if ctx.models is None else check_s3_checkpoint(base_model, ctx.models, ctx.file)
    else:
        problem = check_hugging_face_id(base_model, ctx.file)
    if problem is not None:
        ctx.report(problem)


@JOB_RULES.rule("JS107", "output-name", "train_network.py (output_name becomes the file name)")
def output_name(ctx: JobContext) -> None:
    """output_name is a plain file name without extension."""
    name = ctx.written.output_name
    if name is not None and not is_output_name(name):
        ctx.reject(
            JOB_BAD_OUTPUT_NAME.at(ctx.file, f"output_name = {name!r} is not a plain file name."),
            output_name=None,
        )


@JOB_RULES.rule(
    "JS108", "sample-prompt-options", "library/train_util.py:line_to_prompt_dict / get_my_scheduler"
)
def sample_prompt_options(ctx: JobContext) -> None:
    """Options sd-scripts would ignore, and sampler names it replaces with DDIM."""
    for prompt in ctx.settings.sample_prompts:
        line = read_prompt_line(prompt)
        for reason in line.ignored:
            ctx.report(JOB_BAD_SAMPLE_PROMPT.at(ctx.file, f"Sample prompt {prompt!r}: {reason}."))
        if line.unknown_sampler is not None:
            ctx.report(
                JOB_UNKNOWN_SAMPLER.at(
                    ctx.file,
                    f"Sample prompt {prompt!r}: --ss {line.unknown_sampler!r} is not a sampler sd-scripts knows "
                    "(names are matched exactly); it silently samples with DDIM.",
                )
            )


@JOB_RULES.rule("JS109", "samples-without-prompts", "train_network.py:NetworkTrainer.sample_images")
def samples_without_prompts(ctx: JobContext) -> None:
    """sample_every_n_epochs renders nothing without sample_prompts."""
    if ctx.written.sample_every_n_epochs is not None and not ctx.settings.sample_prompts:
        ctx.report(
            JOB_SAMPLES_WITHOUT_PROMPTS.at(ctx.file, "sample_every_n_epochs is set without sample_prompts.")
        )


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
    return is_hugging_face_model_id(value)
