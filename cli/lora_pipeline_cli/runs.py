"""Runs as the CLI shows them: status, stage, progress and cost, logs, download, cancel, retrain, resume."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lora_pipeline import dataset_lock
from lora_pipeline.aws.errors import ClientError, error_code
from lora_pipeline.dataset_lock import parse_time
from lora_pipeline.instances import InstanceTable
from lora_pipeline.job_facts import job_facts
from lora_pipeline.manifest import Manifest
from lora_pipeline.run_names import TRAINING_LOG_GROUP, training_job_base_name
from lora_pipeline.s3_layout import (
    READY_MARKER,
    RunLayout,
    dataset_prefix,
    parse_s3_uri,
    resume_request_key,
    s3_uri,
)
from lora_pipeline.salvage import ResumeRequest, has_complete_state
from lora_pipeline.training_metrics import TrainingProgress, parse_metric_line
from lora_pipeline_cli.stack import Stack, StackError

RUNNING, SUCCEEDED, REJECTED = (
    dataset_lock.RunStatus.RUNNING,
    dataset_lock.RunStatus.SUCCEEDED,
    dataset_lock.RunStatus.REJECTED,
)
REJECTION_ERRORS_SHOWN = 5
_JOB_ENDED = {"Completed", "Failed", "Stopped"}
LOG_POLL_SECONDS = 5.0


@dataclass(frozen=True)
class RunRecord:
    dataset: str
    run_id: str
    status: str
    execution_name: str
    created_at: str
    finished_at: str | None


@dataclass(frozen=True)
class RunStatus:
    run: RunRecord
    stage: str | None
    training_job: str | None
    job_status: str | None
    progress: TrainingProgress | None
    cost_so_far_usd: float | None


def _record(item: dict[str, Any]) -> RunRecord:
    return RunRecord(
        dataset=item["dataset"]["S"],
        run_id=item["run_id"]["S"],
        status=item.get("status", {}).get("S", "UNKNOWN"),
        execution_name=item.get("execution_name", {}).get("S", ""),
        created_at=item.get("created_at", {}).get("S", ""),
        finished_at=item.get("finished_at", {}).get("S"),
    )


def list_runs(stack: Stack, dataset: str | None = None) -> list[RunRecord]:
    """Runs, newest first: one dataset's (a query) or every dataset's (a scan of run items)."""
    dynamodb = stack.client("dynamodb")
    if dataset:
        pages = dynamodb.get_paginator("query").paginate(
            TableName=stack.table_name,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :run)",
            ExpressionAttributeValues={":pk": {"S": f"DATASET#{dataset}"}, ":run": {"S": "RUN#"}},
        )
    else:
        pages = dynamodb.get_paginator("scan").paginate(
            TableName=stack.table_name,
            FilterExpression="begins_with(sk, :run)",
            ExpressionAttributeValues={":run": {"S": "RUN#"}},
        )
    runs = [_record(item) for page in pages for item in page.get("Items", [])]
    return sorted(runs, key=lambda r: r.created_at, reverse=True)


def find_run(stack: Stack, reference: str, succeeded_only: bool = False) -> RunRecord:
    """A run by `<dataset>/<run-id>`, by run id alone, or a dataset name (its newest run, or newest success)."""
    dataset, _, run_id = reference.rpartition("/") if "/" in reference else ("", "", reference)
    for run in list_runs(stack, dataset or None):
        if succeeded_only and run.status != SUCCEEDED and run.run_id != run_id:
            continue
        if run.run_id == run_id or (not dataset and run.dataset == reference):
            return run
    which = "successful run" if succeeded_only else "run"
    raise StackError(
        f"No {which} {reference!r} in stack {stack.name}: `lora-pipeline status` lists the runs."
    )


def _execution_arn(stack: Stack, execution_name: str) -> str:
    machine = stack.output("StateMachineArn")
    return machine.replace(":stateMachine:", ":execution:") + f":{execution_name}"


def _current_stage(stack: Stack, run: RunRecord) -> str | None:
    """The newest state still in progress (a Parallel runs two: Train waits while its other branch announces
    the job and ends), else the newest state entered."""
    events = stack.client("stepfunctions").get_execution_history(
        executionArn=_execution_arn(stack, run.execution_name), reverseOrder=True, maxResults=50
    )["events"]
    exits: Counter[str] = Counter()
    newest = None
    for event in events:
        if exited := event.get("stateExitedEventDetails"):
            exits[exited["name"]] += 1
        elif entered := event.get("stateEnteredEventDetails"):
            name = str(entered["name"])
            newest = newest or name
            if exits[name] == 0:
                return name
            exits[name] -= 1
    return newest


def latest_training_job(stack: Stack, run: RunRecord) -> dict[str, Any] | None:
    sagemaker = stack.client("sagemaker")
    jobs = sagemaker.list_training_jobs(
        NameContains=training_job_base_name(run.dataset, run.run_id),
        SortBy="CreationTime",
        SortOrder="Descending",
    )["TrainingJobSummaries"]
    if not jobs:
        return None
    description: dict[str, Any] = sagemaker.describe_training_job(TrainingJobName=jobs[0]["TrainingJobName"])
    return description


def training_log_lines(stack: Stack, job_name: str, start_time: int | None = None) -> list[tuple[int, str]]:
    """(timestamp ms, message) of every log line of the job, oldest first."""
    logs = stack.client("logs")
    kwargs: dict[str, Any] = {"logGroupName": TRAINING_LOG_GROUP, "logStreamNamePrefix": f"{job_name}/"}
    if start_time is not None:
        kwargs["startTime"] = start_time
    lines = []
    try:
        for page in logs.get_paginator("filter_log_events").paginate(**kwargs):
            lines += [(e["timestamp"], e["message"]) for e in page.get("events", [])]
    except logs.exceptions.ResourceNotFoundException:
        return []
    return sorted(lines, key=lambda line: line[0])  # stable: lines of one millisecond keep their order


def rejection_summary(stack: Stack, run: RunRecord) -> str:
    """Why a REJECTED run never trained, from its execution's output: the reason, the first errors (code and
    file) and where the full report is."""
    described = stack.client("stepfunctions").describe_execution(
        executionArn=_execution_arn(stack, run.execution_name)
    )
    state = json.loads(described.get("output") or "{}")
    lines = [
        f"Run {run.dataset}/{run.run_id} was rejected before training: no training job ran, so it has no log.",
        f"Why: {state.get('rejection', {}).get('reason', 'see the rejection email')}",
    ]
    validation = state.get("validation", {})
    errors = [p for p in validation.get("problems", []) if p.get("severity") == "error"]
    lines += [
        f"  {p['code']}" + (f" {p['file']}" if p.get("file") else "") for p in errors[:REJECTION_ERRORS_SHOWN]
    ]
    if validation.get("error_count", 0) > REJECTION_ERRORS_SHOWN:
        lines.append(f"  ... {validation['error_count'] - REJECTION_ERRORS_SHOWN} more")
    if validation.get("report_uri"):
        lines.append(f"Full report: {validation['report_uri']}")
    lines.append("Fix the dataset (`lora-pipeline validate <folder>` shows each fix), then upload it again.")
    return "\n".join(lines)


def follow_logs(
    stack: Stack, run: RunRecord, follow: bool, poll_seconds: float = LOG_POLL_SECONDS
) -> Iterator[str]:
    """The training job's log lines; with `follow`, keeps polling until the job has ended."""
    job = latest_training_job(stack, run)
    if job is None:
        raise StackError(f"Run {run.dataset}/{run.run_id} has not started a training job (yet).")
    name = job["TrainingJobName"]
    since: int | None = None
    while True:
        ended = (
            stack.client("sagemaker").describe_training_job(TrainingJobName=name)["TrainingJobStatus"]
            in _JOB_ENDED
        )
        lines = training_log_lines(stack, name, start_time=since)
        yield from (message for _, message in lines)
        if lines:
            since = lines[-1][0] + 1
        if ended or not follow:
            return
        time.sleep(poll_seconds)


def _latest_progress(lines: list[tuple[int, str]]) -> TrainingProgress | None:
    for _, message in reversed(lines):
        progress = parse_metric_line(message)
        if progress is not None:
            return progress
    return None


def _cost_so_far(job: dict[str, Any], prices: InstanceTable) -> float | None:
    """Billable time once SageMaker reports it (spot savings included), else the elapsed time at the plan's rate."""
    if job.get("BillableTimeInSeconds") is not None:
        return job_facts(job, prices).estimated_cost_usd
    instance = prices.get(job.get("ResourceConfig", {}).get("InstanceType", ""))
    started = job.get("TrainingStartTime")
    if instance is None or started is None:
        return None
    hours = (datetime.now(UTC) - started.astimezone(UTC)).total_seconds() / 3600
    discount = prices.spot_discount if job.get("EnableManagedSpotTraining") else 0.0
    return round(hours * instance.on_demand_usd_per_hour * (1 - discount), 2)


def run_status(stack: Stack, run: RunRecord, prices: InstanceTable) -> RunStatus:
    job = latest_training_job(stack, run)
    progress = None
    if job is not None:
        progress = _latest_progress(training_log_lines(stack, job["TrainingJobName"]))
    return RunStatus(
        run=run,
        stage=_current_stage(stack, run) if run.execution_name else None,
        training_job=job["TrainingJobName"] if job else None,
        job_status=job.get("TrainingJobStatus") if job else None,
        progress=progress,
        cost_so_far_usd=_cost_so_far(job, prices) if job else None,
    )


def _download_checked(s3: Any, uri: str, path: Path, sha256: str) -> None:
    bucket, key = parse_s3_uri(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    s3.download_file(bucket, key, str(path))
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != sha256:
        path.unlink()
        raise StackError(f"{path.name} does not match the sha256 in manifest.json; download it again.")


def download_model(
    stack: Stack, run: RunRecord, target: Path, *, epochs: bool = False, samples: bool = False
) -> tuple[Path, Manifest]:
    """Fetch the run's LoRA and manifest into `target`, checking the sha256 the manifest records; with
    `epochs` the per-epoch LoRAs into `target/epochs/` (checked too), with `samples` the sample images into
    `target/samples/` (the layout the run report's links expect)."""
    if run.status != SUCCEEDED:
        raise StackError(f"Run {run.dataset}/{run.run_id} is {run.status}: only a succeeded run has a model.")
    s3 = stack.client("s3")
    layout = RunLayout(run.dataset, run.run_id)
    manifest = Manifest.model_validate_json(
        s3.get_object(Bucket=stack.bucket, Key=layout.manifest_key)["Body"].read()
    )
    target.mkdir(parents=True, exist_ok=True)
    model_path = target / manifest.file_name
    _download_checked(s3, manifest.model_uri, model_path, manifest.sha256)
    if epochs:
        for epoch in manifest.epochs:
            uri = s3_uri(stack.bucket, layout.epochs_prefix + epoch.name)
            _download_checked(s3, uri, target / "epochs" / epoch.name, epoch.sha256)
    if samples and manifest.samples:
        (target / "samples").mkdir(exist_ok=True)
        for name in manifest.samples:
            s3.download_file(stack.bucket, layout.samples_prefix + name, str(target / "samples" / name))
    (target / "manifest.json").write_bytes(manifest.to_json())
    return model_path, manifest


def download_report(stack: Stack, run: RunRecord, target: Path) -> Path:
    """Save the run's report.html into `target`."""
    key = RunLayout(run.dataset, run.run_id).report_key
    try:
        page = stack.client("s3").get_object(Bucket=stack.bucket, Key=key)["Body"].read()
    except ClientError as error:
        if error_code(error) in ("NoSuchKey", "404"):
            raise StackError(
                f"Run {run.dataset}/{run.run_id} has no report ({key}): the unpack step writes it when a run "
                "succeeds; runs from before the report existed have none."
            ) from None
        raise
    target.mkdir(parents=True, exist_ok=True)
    path = target / "report.html"
    path.write_bytes(page)
    return path


CONFIRM_COMMAND = (
    "aws sns confirm-subscription --topic-arn {topic} --token <Token from the confirmation link> "
    "--authenticate-on-unsubscribe true"
)


def notification_warnings(stack: Stack) -> list[str]:
    """What could keep the emails from arriving: no confirmed subscription on the stack's topic, or an email
    subscription that its unsubscribe link alone can end (a mail scanner that follows links does)."""
    topic = stack.output("TopicArn")
    sns = stack.client("sns")
    subscriptions = [
        sub
        for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic)
        for sub in page.get("Subscriptions", [])
    ]
    confirmed = [s for s in subscriptions if s["SubscriptionArn"].startswith("arn:")]
    how = CONFIRM_COMMAND.format(topic=topic)
    if not confirmed:
        pending = [s["Endpoint"] for s in subscriptions if s["SubscriptionArn"] == "PendingConfirmation"]
        waiting = f" ({', '.join(pending)} has not confirmed yet)" if pending else ""
        return [
            f"No confirmed subscription on the notification topic{waiting}: no email will arrive. "
            f"Confirm with authentication: {how}"
        ]
    warnings = []
    for sub in confirmed:
        if sub["Protocol"] not in ("email", "email-json"):
            continue
        attributes = sns.get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"])["Attributes"]
        if attributes.get("ConfirmationWasAuthenticated") != "true":
            warnings.append(
                f"{sub['Endpoint']} can be unsubscribed by anyone who follows the email's unsubscribe link. "
                f"Unsubscribe it, subscribe again and confirm with authentication: {how}"
            )
    return warnings


def cancel_run(stack: Stack, run: RunRecord) -> None:
    """Stop the run's execution; the pipeline then stops the training job, frees the slot and emails."""
    if run.status != RUNNING:
        raise StackError(f"Run {run.dataset}/{run.run_id} is {run.status}; there is nothing to cancel.")
    stack.client("stepfunctions").stop_execution(
        executionArn=_execution_arn(stack, run.execution_name),
        error="Cancelled",
        cause="lora-pipeline cancel",
    )


def resumable_run(stack: Stack, dataset: str) -> RunRecord:
    """The newest run of `dataset` that did not succeed and kept a complete state in its checkpoints."""
    s3 = stack.client("s3")
    for run in list_runs(stack, dataset):
        if run.status in (RUNNING, SUCCEEDED):
            continue
        prefix = RunLayout(dataset, run.run_id).checkpoints_prefix
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket, Prefix=prefix)
        names = [obj["Key"][len(prefix) :] for page in pages for obj in page.get("Contents", [])]
        if has_complete_state(names):
            return run
    raise StackError(
        f"No stopped, cancelled or failed run of {dataset} has checkpoints to resume from (a run keeps them "
        f"for the stack's ResumeCheckpointDays after it stops). Start over with `lora-pipeline retrain {dataset}`."
    )


def resume(stack: Stack, dataset: str) -> RunRecord:
    """Start a new run that continues from the newest resumable run's checkpoints; returns that run."""
    earlier = resumable_run(stack, dataset)
    s3 = stack.client("s3")
    key = resume_request_key(dataset)
    s3.put_object(
        Bucket=stack.bucket, Key=key, Body=ResumeRequest(run_id=earlier.run_id).model_dump_json().encode()
    )
    try:
        retrain(stack, dataset)
    except BaseException:
        s3.delete_object(Bucket=stack.bucket, Key=key)
        raise
    return earlier


def retrain(stack: Stack, dataset: str) -> None:
    """Start a new run on the dataset as it is in S3: writing `_READY` starts it without a quiet period."""
    s3 = stack.client("s3")
    listing = s3.list_objects_v2(Bucket=stack.bucket, Prefix=dataset_prefix(dataset), MaxKeys=1)
    if not listing.get("KeyCount"):
        raise StackError(f"No dataset {dataset!r} in s3://{stack.bucket}/datasets/: upload it first.")
    runs = list_runs(stack, dataset)
    active = [r for r in runs if r.status == RUNNING]
    if active:
        raise StackError(f"{dataset} has a run in progress ({active[0].run_id}); cancel it or wait for it.")
    # S3 event times are whole seconds and ingest ignores objects no newer than the last run's end, so a
    # marker written in the same second as that end would be taken for a late event of the old run.
    finished = max((parse_time(r.finished_at) for r in runs if r.finished_at), default=None)
    if finished is not None:
        wait = (finished.replace(microsecond=0) + timedelta(seconds=1) - datetime.now(UTC)).total_seconds()
        time.sleep(max(0.0, wait))
    s3.put_object(Bucket=stack.bucket, Key=dataset_prefix(dataset) + READY_MARKER, Body=b"")
