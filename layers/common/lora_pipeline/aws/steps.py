"""What each Lambda function does, against injected boto3 clients (the handlers only wire them up)."""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, ValidationError

from lora_pipeline import salvage
from lora_pipeline.aws.errors import ClientError, error_code
from lora_pipeline.events import Stage, TrainingCancelled, TrainingFailed
from lora_pipeline.runs import (
    IngestAction,
    JobFacts,
    execution_console_url,
    execution_name,
    ingest_action,
    job_facts,
    new_run_id,
    training_job_base_name,
    validation_outcome,
)
from lora_pipeline.s3_layout import RunLayout, parse_dataset_key, parse_s3_uri, resume_request_key, s3_uri
from lora_pipeline.salvage import SalvagedLora

# Each handler imports this module; what only one step needs is imported in that step, so that a function's
# cold start loads only its own part of the domain (the validation rules alone are most of it).
if TYPE_CHECKING:
    from lora_pipeline import notifications
    from lora_pipeline.aws.event_publisher import EventPublisher
    from lora_pipeline.aws.run_table import RunTable
    from lora_pipeline.aws.s3_model_io import S3ObjectStream
    from lora_pipeline.events import TrainingSucceeded
    from lora_pipeline.instances import InstanceTable
    from lora_pipeline.job_settings import StackLimits
    from lora_pipeline.manifest import Manifest
    from lora_pipeline.model_archive import UnpackResult
    from lora_pipeline.report import ValidationReport
    from lora_pipeline.training_metrics import LossPoint

# A settle token that no longer waits: the quiet period ended (or _READY came) just before this upload.
_CLOSED_TOKEN_ERRORS = {"TaskTimedOut", "InvalidToken", "TaskDoesNotExist"}
_LOCK_ATTEMPTS = 5
# SageMaker writes output.tar.gz (the container's /opt/ml/output/data) next to model.tar.gz.
OUTPUT_ARCHIVE = "output.tar.gz"
LOSS_LOG_LIMIT = 16 * 1024 * 1024  # about 300,000 steps of loss log


class RunInput(BaseModel):
    """The state machine's execution input (also found in Step Functions status-change events)."""

    dataset: str
    run_id: str
    bucket: str


def ingest_upload(
    table: RunTable,
    sfn: Any,
    state_machine_arn: str,
    bucket: str,
    key: str,
    object_time: datetime,
    now: datetime,
    heartbeat_every: timedelta = timedelta(0),
) -> IngestAction | None:
    """Record one `Object Created` under datasets/: start a run, prolong or end its settling, or note it.

    A settling run's wait is heartbeaten at most once per `heartbeat_every` (a 1,000-image upload is 1,000
    calls here, not 1,000 Step Functions calls), so the quiet period ends between its length minus
    `heartbeat_every` and its length after the last object. Returns what was done (None for a key outside
    any dataset folder).
    """
    obj = parse_dataset_key(key)
    if obj is None:
        return None
    for _ in range(_LOCK_ATTEMPTS):
        state, last_finished = table.dataset_state(obj.dataset)
        action = ingest_action(state, obj.is_ready_marker, object_time)
        if action is IngestAction.STALE:
            return action
        if action is IngestAction.START:
            started = _start_run(
                table, sfn, state_machine_arn, bucket, obj.dataset, obj.is_ready_marker, now, last_finished
            )
            if started is None:
                continue
            return action
        if action is IngestAction.CHANGED_DURING_RUN:
            assert state.active is not None
            table.mark_changed_during_run(obj.dataset, state.active.run_id)
            return action
        active = table.record_upload(obj.dataset, obj.is_ready_marker, now)
        if active is None:
            continue  # settled or ended meanwhile: decide again
        if active.settle_token is not None:
            try:
                if action is IngestAction.READY:
                    sfn.send_task_success(taskToken=active.settle_token, output=json.dumps({"ready": True}))
                elif active.heartbeat_due(now, heartbeat_every) and table.claim_heartbeat(
                    obj.dataset, active.run_id, now, heartbeat_every
                ):
                    sfn.send_task_heartbeat(taskToken=active.settle_token)
            except ClientError as exc:
                if error_code(exc) not in _CLOSED_TOKEN_ERRORS:
                    raise
                # The quiet period ended as this object arrived: it may have missed validation.
                table.mark_changed_during_run(obj.dataset, active.run_id)
                return IngestAction.CHANGED_DURING_RUN
        return action
    raise RuntimeError(f"dataset {obj.dataset}: its run lock kept changing; the event will be retried")


def adopt_resume_request(s3: Any, run: RunInput) -> str | None:
    """Copy the checkpoints a `lora-pipeline resume` asked for into this run's checkpoints, so its training
    job resumes from them; returns the earlier run's id (None when nothing was asked). The request is used
    once. Copies drop the kept-for-resume tag: they belong to a run in progress. The earlier run's dataset
    copy (`checkpoints/dataset/`) comes with them, so the container keeps the latent caches of the images
    that did not change since."""
    key = resume_request_key(run.dataset)
    try:
        body = s3.get_object(Bucket=run.bucket, Key=key)["Body"].read()
    except ClientError as error:
        if error_code(error) in ("NoSuchKey", "404"):
            return None
        raise
    s3.delete_object(Bucket=run.bucket, Key=key)
    earlier = salvage.ResumeRequest.model_validate_json(body).run_id
    source = RunLayout(run.dataset, earlier).checkpoints_prefix
    target = RunLayout(run.dataset, run.run_id).checkpoints_prefix
    for name in _checkpoint_names(s3, run.bucket, source):
        s3.copy_object(
            Bucket=run.bucket,
            Key=target + name,
            CopySource={"Bucket": run.bucket, "Key": source + name},
            TaggingDirective="REPLACE",
            Tagging="",
        )
    return earlier


def _start_run(
    table: RunTable,
    sfn: Any,
    state_machine_arn: str,
    bucket: str,
    dataset: str,
    ready: bool,
    now: datetime,
    last_finished: str | None,
) -> str | None:
    """Take the dataset's lock and start its execution; the run id, or None when the lock was taken."""
    run_id = new_run_id(now)
    name = execution_name(dataset, run_id)
    if not table.try_start(dataset, run_id, ready, now, last_finished):
        return None
    run_input = RunInput(dataset=dataset, run_id=run_id, bucket=bucket)
    try:
        table.record_run(dataset, run_id, name, now)
        sfn.start_execution(stateMachineArn=state_machine_arn, name=name, input=run_input.model_dump_json())
    except Exception:
        table.abandon_start(dataset, run_id)
        raise
    return run_id


def validate_run(s3: Any, run: RunInput, limits: StackLimits, training_image: str) -> dict[str, Any]:
    """Validate the dataset, store the report and the job's config files, return the Choice's inputs (the job
    runs `training_image`, `<repository>@sha256:<digest>`)."""
    from lora_pipeline.aws.s3_source import S3DatasetSource, S3ObjectReader
    from lora_pipeline.validate import validate_dataset

    report = validate_dataset(
        S3DatasetSource(s3, run.bucket, run.dataset),
        run.dataset,
        replace(limits, bucket=run.bucket),
        models=S3ObjectReader(s3),
    )
    layout = RunLayout(run.dataset, run.run_id)
    files = {layout.validation_key: (report.model_dump_json(indent=2), "application/json")}
    if report.kohya_toml is not None:
        files[layout.kohya_toml_key] = (report.kohya_toml, "application/toml")
    if report.prompts_txt is not None:
        files[layout.prompts_key] = (report.prompts_txt, "text/plain")
    for key, (text, content_type) in files.items():
        s3.put_object(Bucket=run.bucket, Key=key, Body=text.encode("utf-8"), ContentType=content_type)
    outcome: dict[str, Any] = validation_outcome(
        report, run.bucket, run.run_id, training_image=training_image
    ).model_dump(mode="json")
    if outcome["valid"]:
        adopt_resume_request(s3, run)
    return outcome


class RunEndedError(RuntimeError):
    """The run was stopped while a step still worked for it."""


class UnpackInput(RunInput):
    output_name: str
    training_job: dict[str, Any]  # the DescribeTrainingJob output of `createTrainingJob.sync`


class UnpackOutcome(BaseModel):
    """The facts `Training Succeeded` needs beyond what the state machine already has."""

    model_uri: str
    manifest_uri: str
    sha256: str
    size_bytes: int
    instance_type: str
    spot: bool
    training_seconds: int
    billable_seconds: int
    estimated_cost_usd: float | None
    changed_during_run: bool


def _delete_prefix(s3: Any, bucket: str, prefix: str) -> int:
    deleted = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            deleted += len(keys)
    return deleted


def _delete_published(s3: Any, bucket: str, layout: RunLayout) -> None:
    """What the unpack step publishes for a run: model/ (LoRA, epochs, samples, manifest) and report.html."""
    _delete_prefix(s3, bucket, layout.model_prefix)
    s3.delete_object(Bucket=bucket, Key=layout.report_key)


class SalvageInput(RunInput):
    output_name: str | None = None
    training_job: dict[str, Any] | None = None  # DescribeTrainingJob output; None for a cancelled run
    trainer_name: str | None = None  # the run's trainer when `training_job` is None

    @property
    def trainer(self) -> str:
        """The trainer the job ran (runs.py puts it in the hyperparameters), not what the file claims."""
        if self.training_job is not None:
            return str(self.training_job.get("HyperParameters", {}).get("trainer", ""))
        return self.trainer_name or ""


class _HashingReader:
    def __init__(self, stream: S3ObjectStream) -> None:
        self.stream = stream
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self.stream.read(size)
        self.sha256.update(data)
        self.size += len(data)
        return data


def _checkpoint_names(s3: Any, bucket: str, prefix: str) -> list[str]:
    names = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        names += [obj["Key"][len(prefix) :] for obj in page.get("Contents", [])]
    return names


def salvage_run(s3: Any, run: SalvageInput) -> SalvagedLora | None:
    """Publish the newest finished epoch's LoRA of a run that did not finish, and keep its checkpoints.

    The LoRA is read whole (sha256) and checked like a final one (`check_lora_stream` for the run's trainer:
    structure, SDXL identity, every tensor's numbers), then copied to
    `model/<name>-<epoch:06d>.safetensors` with a manifest marked `partial`. Checkpoints holding a complete
    state or an epoch LoRA are tagged for the lifecycle rule that expires them (`lora-pipeline resume` uses
    them meanwhile); others are deleted. Returns None when no epoch finished or its LoRA is refused.
    """
    from lora_pipeline.aws.s3_model_io import S3ObjectStream, write_manifest
    from lora_pipeline.manifest import RunFacts, build_manifest
    from lora_pipeline.model_archive import UnpackResult
    from lora_pipeline.safetensors_lora import Architecture, check_lora_stream

    layout = RunLayout(run.dataset, run.run_id)
    names = _checkpoint_names(s3, run.bucket, layout.checkpoints_prefix)
    newest = salvage.newest_epoch_lora(names, run.output_name)
    resumable = salvage.has_complete_state(names)
    if newest is None and not resumable:
        _delete_prefix(s3, run.bucket, layout.checkpoints_prefix)
        return None
    for name in names:
        s3.put_object_tagging(
            Bucket=run.bucket,
            Key=layout.checkpoints_prefix + name,
            Tagging={"TagSet": [salvage.KEPT_FOR_RESUME_TAG]},
        )
    if newest is None:
        return None
    name, epoch = newest
    source_key = layout.checkpoints_prefix + name
    stream = S3ObjectStream(s3, run.bucket, source_key)
    reader = _HashingReader(stream)
    try:
        check = check_lora_stream(reader, None, Architecture.for_trainer(run.trainer))
        while reader.read(1024 * 1024):
            pass
    finally:
        stream.close()
    if not check.accepted or check.header is None or check.summary is None:
        return None
    header, summary = check.header, check.summary
    model_key = layout.model_prefix + name
    s3.copy_object(Bucket=run.bucket, Key=model_key, CopySource={"Bucket": run.bucket, "Key": source_key})
    epochs = header.metadata.get("ss_num_epochs")
    outcome = SalvagedLora(
        model_uri=s3_uri(run.bucket, model_key),
        manifest_uri=s3_uri(run.bucket, layout.manifest_key),
        sha256=reader.sha256.hexdigest(),
        size_bytes=reader.size,
        epoch=epoch,
        epochs=int(epochs) if epochs and epochs.isdigit() else None,
        stopped=salvage.how_it_stopped(run.training_job),
        resumable=resumable,
    )
    job = run.training_job or {}
    result = UnpackResult(
        name=name,
        size=reader.size,
        sha256=outcome.sha256,
        member=name,
        summary=summary,
        metadata=header.metadata,
        alphas=check.alphas,
    )
    manifest = build_manifest(
        result,
        model_uri=outcome.model_uri,
        archive_uri=s3_uri(run.bucket, source_key),
        run=RunFacts(
            dataset=run.dataset,
            run_id=run.run_id,
            training_job_name=job.get("TrainingJobName"),
            billable_seconds=job.get("BillableTimeInSeconds"),
        ),
    ).model_copy(update={"partial": outcome.summary})
    write_manifest(s3, run.bucket, layout.manifest_key, manifest)
    return outcome


def unpack_run(s3: Any, table: RunTable, run: UnpackInput, prices: InstanceTable) -> UnpackOutcome:
    """Turn the job's model.tar.gz into the LoRA and its manifest; the spot checkpoints are no longer needed."""
    from lora_pipeline.aws.run_table import RUN_RUNNING
    from lora_pipeline.aws.s3_model_io import read_output_file, unpack_model
    from lora_pipeline.manifest import RunFacts
    from lora_pipeline.safetensors_lora import Architecture
    from lora_pipeline.training_metrics import LOSS_LOG_NAME, parse_loss_log

    facts = job_facts(run.training_job, prices)
    layout = RunLayout(run.dataset, run.run_id)
    archive_uri = run.training_job.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    archive_key = (
        parse_s3_uri(archive_uri)[1] if archive_uri else layout.model_archive_key(facts.training_job_name)
    )
    manifest, unpacked = unpack_model(
        s3,
        run.bucket,
        archive_key,
        layout.model_prefix,
        run.output_name,
        RunFacts(
            dataset=run.dataset,
            run_id=run.run_id,
            training_job_name=facts.training_job_name,
            billable_seconds=facts.billable_seconds,
        ),
        # The trainer the job ran (runs.py puts it in the hyperparameters), not what the file claims.
        architecture=Architecture.for_trainer(run.training_job.get("HyperParameters", {}).get("trainer", "")),
    )
    loss_log = read_output_file(
        s3,
        run.bucket,
        posixpath.join(posixpath.dirname(archive_key), OUTPUT_ARCHIVE),
        LOSS_LOG_NAME,
        LOSS_LOG_LIMIT,
    )
    write_run_report(
        s3,
        run,
        manifest,
        unpacked,
        facts,
        parse_loss_log(loss_log.decode("utf-8", "replace") if loss_log else ""),
    )
    if table.run_status(run.dataset, run.run_id) != RUN_RUNNING:
        # Stopped while this ran: the end-of-run function may have cleaned up before these writes.
        _delete_published(s3, run.bucket, layout)
        raise RunEndedError(f"run {run.run_id} ended while its model was unpacked; the model was removed")
    _delete_prefix(s3, run.bucket, layout.checkpoints_prefix)
    return UnpackOutcome(
        model_uri=manifest.model_uri,
        manifest_uri=s3_uri(run.bucket, layout.manifest_key),
        sha256=manifest.sha256,
        size_bytes=manifest.size_bytes,
        instance_type=facts.instance_type,
        spot=facts.spot,
        training_seconds=facts.training_seconds,
        billable_seconds=facts.billable_seconds,
        estimated_cost_usd=facts.estimated_cost_usd,
        changed_during_run=table.changed_during_run(run.dataset, run.run_id),
    )


def _validation_report(s3: Any, bucket: str, key: str) -> ValidationReport | None:
    from lora_pipeline.report import ValidationReport

    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as error:
        if error_code(error) in ("NoSuchKey", "404"):
            return None
        raise
    try:
        return ValidationReport.model_validate_json(body)
    except ValidationError:
        return None  # written by another version of the pipeline: the page goes without plan and warnings


def write_run_report(
    s3: Any,
    run: RunInput,
    manifest: Manifest,
    unpacked: UnpackResult,
    facts: JobFacts,
    loss: list[LossPoint],
) -> str:
    """Write `report.html` of the run (see run_report); returns its key."""
    from lora_pipeline.run_report import RunReportInputs, render_run_report

    layout = RunLayout(run.dataset, run.run_id)
    validation = _validation_report(s3, run.bucket, layout.validation_key)
    page = render_run_report(
        RunReportInputs(
            dataset=run.dataset,
            run_id=run.run_id,
            manifest=manifest,
            job=facts,
            plan=validation.plan if validation else None,
            problems=validation.problems if validation else [],
            loss=loss,
            samples=unpacked.samples,
            samples_skipped=unpacked.samples_skipped,
            created_at=datetime.now(UTC),
        )
    )
    s3.put_object(
        Bucket=run.bucket,
        Key=layout.report_key,
        Body=page.encode("utf-8"),
        ContentType="text/html; charset=utf-8",
    )
    return layout.report_key


CREDENTIALS_NOTE = (
    "The link is signed with the notification function's temporary credentials, so it stops working when "
    "they expire, which can be well before the date above. The S3 URI below always works."
)


def _run_results(s3: Any, event: TrainingSucceeded, expiry_seconds: int) -> notifications.RunResults:
    """The trigger words from the run's manifest and a presigned link to its report."""
    from lora_pipeline import notifications
    from lora_pipeline.manifest import Manifest

    bucket, key = parse_s3_uri(event.manifest_uri)
    try:
        manifest = Manifest.model_validate_json(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except (ClientError, ValidationError):
        manifest = None  # the email still goes out; it names no trigger words
    report_key = RunLayout(event.dataset, event.run_id).report_key
    try:
        s3.head_object(Bucket=event.bucket, Key=report_key)
    except ClientError:
        report = None  # a run unpacked before reports existed
    else:
        url = s3.generate_presigned_url(
            "get_object", Params={"Bucket": event.bucket, "Key": report_key}, ExpiresIn=expiry_seconds
        )
        report = notifications.DownloadLink(url, datetime.now(UTC) + timedelta(seconds=expiry_seconds))
    return notifications.RunResults(manifest.trigger_phrase if manifest else None, report)


def notify(
    s3: Any, sns: Any, topic_arn: str, detail_type: str, detail: dict[str, Any], expiry_seconds: int
) -> str:
    """Render one pipeline event as an email and publish it to the topic; returns the subject."""
    from lora_pipeline import notifications
    from lora_pipeline.events import BY_DETAIL_TYPE, TrainingSucceeded

    event = BY_DETAIL_TYPE[detail_type].model_validate(detail)
    link = results = None
    if isinstance(event, TrainingSucceeded):
        bucket, key = parse_s3_uri(event.model_uri)
        url = s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expiry_seconds
        )
        expires_at = datetime.now(UTC) + timedelta(seconds=expiry_seconds)
        link = notifications.DownloadLink(url, expires_at, CREDENTIALS_NOTE)
        results = _run_results(s3, event, expiry_seconds)
    message = notifications.render(event, link, results)
    sns.publish(TopicArn=topic_arn, Subject=message.subject, Message=message.body)
    return message.subject


def _stop_training_job(sagemaker: Any, base_name: str) -> tuple[str | None, bool]:
    """Stop the run's newest job if it still runs. Returns its name and whether it ended stopped
    (Step Functions itself stops a `.sync` job when the execution is stopped, so it may be stopping already)."""
    # Every attempt's job, newest picked here: the run has at most ten, and the embedded AWS (moto)
    # neither sorts nor applies MaxResults after NameContains.
    jobs = [
        job
        for page in sagemaker.get_paginator("list_training_jobs").paginate(NameContains=base_name)
        for job in page.get("TrainingJobSummaries", [])
    ]
    if not jobs:
        return None, False
    newest = max(jobs, key=lambda job: job["CreationTime"])
    name, status = newest["TrainingJobName"], newest["TrainingJobStatus"]
    if status == "InProgress":
        try:
            sagemaker.stop_training_job(TrainingJobName=name)
            status = "Stopping"
        except ClientError as exc:
            if error_code(exc) != "ValidationException":  # it ended meanwhile
                raise
            status = sagemaker.describe_training_job(TrainingJobName=name)["TrainingJobStatus"]
    return name, status in ("Stopping", "Stopped")


def _job_trainer(sagemaker: Any, job: str | None) -> str | None:
    if job is None:
        return None
    hyperparameters: dict[str, str] = sagemaker.describe_training_job(TrainingJobName=job).get(
        "HyperParameters", {}
    )
    return hyperparameters.get("trainer")


# The states that put a run's last event on the bus, and the states where each stage of a run begins
# (statemachine/pipeline.asl.json; a test keeps both in step with it).
TERMINAL_EVENT_STATES = frozenset({"EmitRejected", "EmitSucceeded", "EmitFailed"})
STAGE_STARTS = {
    "Validate": Stage.VALIDATE,
    "JoinSlotQueue": Stage.SLOT,
    "NameTrainingJob": Stage.TRAINING,
    "Unpack": Stage.UNPACK,
}


class ExecutionEnd(BaseModel):
    """The `detail` of a "Step Functions Execution Status Change" event for a finished execution."""

    execution_arn: str = Field(alias="executionArn")
    status: str
    input: str
    error: str | None = None
    cause: str | None = None


def _history(sfn: Any, execution_arn: str) -> tuple[bool, Stage]:
    """Whether the execution put its own last event, and the stage it was in when it ended."""
    emitted, stage = False, Stage.SETTLE
    for page in sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn):
        for event in page["events"]:
            if name := event.get("stateEnteredEventDetails", {}).get("name"):
                stage = STAGE_STARTS.get(name, stage)
            if event.get("stateExitedEventDetails", {}).get("name") in TERMINAL_EVENT_STATES:
                emitted = True
    return emitted, stage


def _emit_once(table: RunTable, publisher: EventPublisher, event: TrainingFailed | TrainingCancelled) -> None:
    if not table.claim_terminal_event(event.dataset, event.run_id, event.DETAIL_TYPE):
        return  # this end was handled before (EventBridge delivers at least once)
    try:
        publisher.publish(event)
    except Exception:
        table.unclaim_terminal_event(event.dataset, event.run_id)
        raise


def run_ended(
    table: RunTable,
    sagemaker: Any,
    s3: Any,
    sfn: Any,
    publisher: EventPublisher,
    state_machine_arn: str,
    end: ExecutionEnd,
    now: datetime,
) -> tuple[str | None, str | None]:
    """An execution ended. Unless it succeeded, clean up what it could not (it was stopped, timed out or
    crashed): stop its training job, free its slot and dataset, salvage its newest epoch LoRA and keep its
    checkpoints for `lora-pipeline resume` (`salvage_run`; a FAILED execution that went through its own
    failure path did so in its Salvage state) and, when it put no last event itself, emit
    `Training Cancelled` or `Training Failed`, once. Then start the one follow-up run that uploads during
    the run asked for (not after a stop: the user asked for no more training).

    Returns the training job it saw (or None) and the follow-up run's id (or None).
    """
    run = RunInput.model_validate_json(end.input)
    job = None
    if end.status != "SUCCEEDED":
        layout = RunLayout(run.dataset, run.run_id)
        job, stopped = _stop_training_job(sagemaker, training_job_base_name(run.dataset, run.run_id))
        cancelled = end.status in ("ABORTED", "TIMED_OUT")
        emitted, stage = _history(sfn, end.execution_arn)
        if cancelled and not emitted:
            # Anything unpacked for a run that reports no success goes (the unpack function checks too);
            # the salvage below then publishes the newest epoch's LoRA as a partial result.
            _delete_published(s3, run.bucket, layout)
        salvaged = (
            salvage_run(
                s3,
                SalvageInput(
                    dataset=run.dataset,
                    run_id=run.run_id,
                    bucket=run.bucket,
                    trainer_name=_job_trainer(sagemaker, job),
                ),
            )
            if cancelled or not emitted
            else None
        )
        table.release_slot(run.run_id)
        table.finish(
            run.dataset, run.run_id, "CANCELLED" if cancelled else "FAILED", now, follow_up=not cancelled
        )
        if not emitted:
            common = {"dataset": run.dataset, "run_id": run.run_id, "bucket": run.bucket, "time": now}
            _emit_once(
                table,
                publisher,
                TrainingCancelled(
                    **common,
                    execution_status=end.status,
                    training_job_name=job,
                    training_job_stopped=stopped,
                    salvaged=salvaged,
                )
                if cancelled
                else TrainingFailed(
                    **common,
                    stage=stage,
                    error=end.error or "States.Runtime",
                    cause=end.cause or "The execution failed outside the pipeline's own failure path.",
                    failure_reason=None,
                    training_job_name=job,
                    console_url=execution_console_url(end.execution_arn),
                    logs_url=None,
                    salvaged=salvaged,
                ),
            )
    follow_up = start_follow_up(table, sfn, state_machine_arn, run.bucket, run.dataset, now)
    return job, follow_up


def start_follow_up(
    table: RunTable, sfn: Any, state_machine_arn: str, bucket: str, dataset: str, now: datetime
) -> str | None:
    """Start the run a change during the last run asked for (`follow_up`); its id, or None."""
    for _ in range(_LOCK_ATTEMPTS):
        state, last_finished = table.dataset_state(dataset)
        if state.active is not None or not state.follow_up:
            return None
        run_id = _start_run(table, sfn, state_machine_arn, bucket, dataset, False, now, last_finished)
        if run_id is not None:
            return run_id
    raise RuntimeError(f"dataset {dataset}: its run lock kept changing; the event will be retried")
