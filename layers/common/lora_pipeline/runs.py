"""Run bookkeeping rules: run ids, execution and training job names, settling, the facts of a finished job.

Pure functions; the DynamoDB side lives in `lora_pipeline.aws.run_table`.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from lora_pipeline.s3_layout import RunLayout, dataset_prefix, s3_uri

if TYPE_CHECKING:  # the validation rules stay out of the functions that only keep the books (cold starts)
    from lora_pipeline.instances import InstanceTable
    from lora_pipeline.job_settings import JobSettings
    from lora_pipeline.report import ValidationReport

TRAINING_JOB_NAME_MAX = 63
# Where SageMaker writes a training job's output: one stream per instance, `<job name>/algo-1-<epoch>`.
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
EXECUTION_NAME_MAX = 80
# The state machine appends "-<attempt>" (one digit: capacity retries are capped below ten).
ATTEMPT_SUFFIX_LEN = 2

_NOT_NAME_CHARS = re.compile(r"[^a-zA-Z0-9]+")


def new_run_id(now: datetime | None = None) -> str:
    """Sortable and unique: `20261126-112430-3f9a` (UTC time of the first upload event, 16 random bits)."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def name_slug(dataset: str, max_len: int) -> str:
    """The dataset name reduced to [a-zA-Z0-9-], no leading/trailing/double hyphen, at most `max_len`."""
    slug = _NOT_NAME_CHARS.sub("-", dataset).strip("-")[:max_len].strip("-")
    return slug or "dataset"


def execution_name(dataset: str, run_id: str) -> str:
    """Step Functions execution name: the dataset (readable in the console) and the run id (unique)."""
    return f"{name_slug(dataset, EXECUTION_NAME_MAX - len(run_id) - 1)}-{run_id}"


def training_job_base_name(dataset: str, run_id: str) -> str:
    """`<dataset slug>-<run id>`; with the attempt suffix it stays within SageMaker's 63 characters."""
    room = TRAINING_JOB_NAME_MAX - ATTEMPT_SUFFIX_LEN - len(run_id) - 1
    return f"{name_slug(dataset, room)}-{run_id}"


def training_job_name(dataset: str, run_id: str, attempt: int) -> str:
    """What the state machine builds with States.Format('{}-{}', base, attempt)."""
    if not 0 <= attempt <= 9:
        raise ValueError("attempt must be a single digit")
    return f"{training_job_base_name(dataset, run_id)}-{attempt}"


class IngestAction(StrEnum):
    START = "start"  # the dataset is idle: a new run
    HEARTBEAT = "heartbeat"  # still settling: the quiet period starts again
    READY = "ready"  # `_READY` while settling: stop waiting
    CHANGED_DURING_RUN = "changed_during_run"  # created after the run settled: validate again or follow up
    STALE = "stale"  # a late or repeated event for an object older than the last settle or run end


@dataclass(frozen=True)
class ActiveRun:
    """The run that holds a dataset. `settle_token` is set while the state machine waits for quiet."""

    run_id: str
    settling: bool
    settle_token: str | None
    settled_at: datetime | None = None
    heartbeat_at: datetime | None = None
    """When ingest last told the settle wait that objects keep coming."""

    def heartbeat_due(self, now: datetime, every: timedelta) -> bool:
        return self.heartbeat_at is None or now - self.heartbeat_at >= every


@dataclass(frozen=True)
class DatasetState:
    active: ActiveRun | None
    last_finished_at: datetime | None
    follow_up: bool = False
    """The last run ended after the dataset changed under it: one more run is due."""


def parse_time(text: str | None) -> datetime | None:
    """An ISO 8601 time from S3, Step Functions or this package (`Z` or an offset; naive means UTC)."""
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _seen_before(object_time: datetime, moment: datetime | None) -> bool:
    """Whether an object created at `object_time` certainly existed before `moment`.

    S3 event times are whole seconds while `moment` has milliseconds, so the comparison is made in whole
    seconds and a tie counts as not seen: an object made in the same second may have come just after.
    """
    return moment is not None and object_time.replace(microsecond=0) < moment.replace(microsecond=0)


def ingest_action(state: DatasetState, is_ready_marker: bool, object_time: datetime) -> IngestAction:
    """What one S3 `Object Created` event means for its dataset.

    EventBridge delivers at least once and in no particular order, so an event whose object is older than
    the moment the current run settled (or the last run ended) describes something already seen.
    """
    active = state.active
    if active is None:
        if _seen_before(object_time, state.last_finished_at):
            return IngestAction.STALE
        return IngestAction.START
    if active.settling:
        return IngestAction.READY if is_ready_marker else IngestAction.HEARTBEAT
    if is_ready_marker or _seen_before(object_time, active.settled_at):
        return IngestAction.STALE  # `_READY` again is no new data
    return IngestAction.CHANGED_DURING_RUN


@dataclass(frozen=True)
class JobFacts:
    """What a finished SageMaker training job cost and how long it took."""

    training_job_name: str
    instance_type: str
    spot: bool
    training_seconds: int
    billable_seconds: int
    estimated_cost_usd: float | None


def _int(value: Any) -> int:
    return int(value) if value is not None else 0


def job_facts(description: dict[str, Any], prices: InstanceTable) -> JobFacts:
    """Facts from a DescribeTrainingJob response (the output of `createTrainingJob.sync`).

    Managed spot is billed for `BillableTimeInSeconds` at the on-demand rate, so one formula covers both.
    """
    instance_type = str(description.get("ResourceConfig", {}).get("InstanceType", ""))
    billable = _int(description.get("BillableTimeInSeconds"))
    instance = prices.get(instance_type)
    cost = round(billable * instance.on_demand_usd_per_hour / 3600, 4) if instance else None
    return JobFacts(
        training_job_name=str(description["TrainingJobName"]),
        instance_type=instance_type,
        spot=bool(description.get("EnableManagedSpotTraining", False)),
        training_seconds=_int(description.get("TrainingTimeInSeconds")),
        billable_seconds=billable,
        estimated_cost_usd=cost,
    )


def console_url(region: str, training_job_name: str) -> str:
    return f"https://{region}.console.aws.amazon.com/sagemaker/home?region={region}#/jobs/{training_job_name}"


def execution_console_url(execution_arn: str) -> str:
    """The execution's page in the Step Functions console (what the state machine's Init builds)."""
    region = execution_arn.split(":")[3]
    return (
        f"https://{region}.console.aws.amazon.com/states/home?region={region}"
        f"#/v2/executions/details/{execution_arn}"
    )


CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
HYPERPARAMETER_VALUE_LIMIT = 2500  # CreateTrainingJob's limit on one hyperparameter value


class TrainingJobSpec(BaseModel):
    """The run-specific half of CreateTrainingJob; the state machine adds role, metrics and tags."""

    name: str = Field(description="Base job name; the state machine appends '-<attempt>'.")
    training_image: str = Field(
        description="`<repository>@sha256:<digest>`, read once per run: every attempt and resume runs it."
    )
    instance_type: str
    volume_size_gb: int
    spot: bool
    trainer: str
    base_model: str
    output_name: str
    max_runtime_seconds: int
    stopping_condition: dict[str, int]
    input_data_config: list[dict[str, Any]]
    output_path: str
    checkpoint_uri: str
    hyperparameters: dict[str, str]
    estimated_cost_usd: float | None


def _channel(name: str, uri: str) -> dict[str, Any]:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": uri,
                "S3DataDistributionType": "FullyReplicated",
            }
        },
        "InputMode": "File",
    }


def training_job_spec(
    bucket: str,
    dataset: str,
    run_id: str,
    job: JobSettings,
    output_name: str,
    estimated_cost_usd: float | None,
    trigger_phrase: str | None = None,
    checkpoint_every_n_steps: int | None = None,
    *,
    training_image: str,
) -> TrainingJobSpec:
    """`trigger_phrase` (the subsets' class tokens) is written into the LoRA's metadata by the container;
    `checkpoint_every_n_steps` (from the plan's CheckpointIntervalMinutes) makes it save state that often."""
    run = RunLayout(dataset, run_id)
    channels = [
        _channel("train", s3_uri(bucket, dataset_prefix(dataset))),
        _channel("config", s3_uri(bucket, run.config_prefix)),
    ]
    if job.base_model_from_s3:
        channels.append(_channel("model", job.base_model))
    max_runtime = int(job.max_runtime_hours * 3600)
    stopping = {"MaxRuntimeInSeconds": max_runtime}
    if job.spot:
        # How long SageMaker may wait for spot capacity and resume after interruptions, training included.
        stopping["MaxWaitTimeInSeconds"] = 2 * max_runtime
    return TrainingJobSpec(
        name=training_job_base_name(dataset, run_id),
        training_image=training_image,
        instance_type=job.instance_type,
        volume_size_gb=job.volume_size_gb,
        spot=job.spot,
        trainer=job.trainer,
        base_model=job.base_model,
        output_name=output_name,
        max_runtime_seconds=max_runtime,
        stopping_condition=stopping,
        input_data_config=channels,
        output_path=s3_uri(bucket, run.output_prefix),
        checkpoint_uri=s3_uri(bucket, run.checkpoints_prefix),
        hyperparameters=_hyperparameters(
            dataset, run_id, job, output_name, trigger_phrase, checkpoint_every_n_steps
        ),
        estimated_cost_usd=estimated_cost_usd,
    )


def _hyperparameters(
    dataset: str,
    run_id: str,
    job: JobSettings,
    output_name: str,
    trigger_phrase: str | None,
    checkpoint_every_n_steps: int | None,
) -> dict[str, str]:
    """The container's hyperparameters (all strings); optional ones only when they differ from its defaults."""
    from lora_pipeline.job_settings import DEFAULT_KEEP_EPOCH_LORAS

    values = {
        "trainer": job.trainer,
        "output_name": output_name,
        "dataset": dataset,
        "run_id": run_id,
        "base_model": job.base_model,
    }
    if job.keep_epoch_loras != DEFAULT_KEEP_EPOCH_LORAS:
        values["keep_epoch_loras"] = str(job.keep_epoch_loras)
    if trigger_phrase:
        values["trigger_phrase"] = trigger_phrase[:HYPERPARAMETER_VALUE_LIMIT]
    if checkpoint_every_n_steps:
        values["checkpoint_every_n_steps"] = str(checkpoint_every_n_steps)
    return values


MAX_PROBLEMS_IN_EVENT = 50


class ValidationOutcome(BaseModel):
    """What the validate function returns to the state machine (its Choice reads these fields)."""

    valid: bool
    error_count: int
    warning_count: int
    problems: list[dict[str, Any]]
    problems_omitted: int
    report_uri: str
    job: TrainingJobSpec


def validation_outcome(
    report: ValidationReport, bucket: str, run_id: str, *, training_image: str
) -> ValidationOutcome:
    from lora_pipeline.kohya_facts import safe_output_name
    from lora_pipeline.problems import Severity

    # Step Functions, EventBridge and SNS each cap a payload at 256 KB (a few hundred problems): the state
    # machine and the rejection email get the most important ones, validation.json keeps every one.
    severity_order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
    by_severity = sorted(report.problems, key=lambda p: severity_order[p.severity])
    listed = by_severity[:MAX_PROBLEMS_IN_EVENT]
    output_name = report.job.output_name or safe_output_name(report.dataset)
    plan = report.plan
    return ValidationOutcome(
        valid=report.trainable and report.kohya_toml is not None,
        error_count=report.error_count,
        warning_count=report.warning_count,
        problems=[p.model_dump(mode="json") for p in listed],
        problems_omitted=len(report.problems) - len(listed),
        report_uri=s3_uri(bucket, RunLayout(report.dataset, run_id).validation_key),
        job=training_job_spec(
            bucket,
            report.dataset,
            run_id,
            report.job,
            output_name,
            plan.estimated_usd if plan is not None else None,
            trigger_phrase=", ".join(report.summary.trigger_words()),
            checkpoint_every_n_steps=plan.checkpoint_every_n_steps if plan is not None else None,
            training_image=training_image,
        ),
    )
