"""Run bookkeeping rules: run ids, execution and training job names, settling, the facts of a finished job.

Pure functions; the DynamoDB side lives in `lora_pipeline.aws.run_table`.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from lora_pipeline.instances import InstanceTable

TRAINING_JOB_NAME_MAX = 63
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
    STARTED = "started"  # first object of an idle dataset: a new run
    HEARTBEAT = "heartbeat"  # the run is still settling: the quiet period starts again
    READY = "ready"  # `_READY` while settling: stop waiting
    CHANGED_DURING_RUN = "changed_during_run"  # the run has settled already: note it, start nothing


@dataclass(frozen=True)
class ActiveRun:
    run_id: str
    settle_token: str | None


def ingest_action(active: ActiveRun, is_ready_marker: bool) -> IngestAction:
    """What an upload means for a dataset whose run is already active."""
    if active.settle_token is None:
        return IngestAction.CHANGED_DURING_RUN
    return IngestAction.READY if is_ready_marker else IngestAction.HEARTBEAT


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
