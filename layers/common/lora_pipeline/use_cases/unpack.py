"""unpack: the job's model.tar.gz -> model/<output_name>.safetensors, model/manifest.json and report.html."""

from __future__ import annotations

import posixpath
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from lora_pipeline.aws.errors import ClientError, error_code
from lora_pipeline.aws.run_objects import delete_prefix, delete_published
from lora_pipeline.events import UnpackedModel
from lora_pipeline.job_facts import JobFacts, job_facts
from lora_pipeline.s3_layout import RunLayout, parse_s3_uri, s3_uri
from lora_pipeline.use_cases.run_input import RunInput

if TYPE_CHECKING:
    from lora_pipeline.instances import InstanceTable
    from lora_pipeline.manifest import Manifest
    from lora_pipeline.model_archive import UnpackResult
    from lora_pipeline.ports import RunBook
    from lora_pipeline.report import ValidationReport
    from lora_pipeline.training_metrics import LossPoint

# SageMaker writes output.tar.gz (the container's /opt/ml/output/data) next to model.tar.gz.
OUTPUT_ARCHIVE = "output.tar.gz"
LOSS_LOG_LIMIT = 16 * 1024 * 1024  # about 300,000 steps of loss log


class RunEndedError(RuntimeError):
    """The run was stopped while a step still worked for it."""


class UnpackInput(RunInput):
    output_name: str
    training_job: dict[str, Any]  # the DescribeTrainingJob output of `createTrainingJob.sync`


def unpack_run(s3: Any, table: RunBook, run: UnpackInput, prices: InstanceTable) -> UnpackedModel:
    """Turn the job's model.tar.gz into the LoRA and its manifest; the spot checkpoints are no longer needed.

    Raises `RunEndedError` (after removing what it wrote) when the run was stopped meanwhile.
    """
    from lora_pipeline.aws.s3_model_io import read_output_file, unpack_model
    from lora_pipeline.dataset_lock import RunStatus
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
        # The trainer the job ran (training_job_spec puts it in the hyperparameters), not what the file claims.
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
    if table.run_status(run.dataset, run.run_id) != RunStatus.RUNNING:
        # Stopped while this ran: the end-of-run function may have cleaned up before these writes.
        delete_published(s3, run.bucket, layout)
        raise RunEndedError(f"run {run.run_id} ended while its model was unpacked; the model was removed")
    delete_prefix(s3, run.bucket, layout.checkpoints_prefix)
    return UnpackedModel(
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
