"""validate: check the dataset in S3, store validation.json and the job's config, answer the Choice."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from lora_pipeline.aws.errors import ClientError, error_code
from lora_pipeline.aws.run_objects import checkpoint_names
from lora_pipeline.s3_layout import RunLayout, resume_request_key, s3_uri
from lora_pipeline.salvage import ResumeRequest
from lora_pipeline.training_job_spec import TrainingJobSpec, training_job_spec
from lora_pipeline.use_cases.run_input import RunInput

if TYPE_CHECKING:
    from lora_pipeline.job_settings import StackLimits
    from lora_pipeline.report import ValidationReport

MAX_PROBLEMS_IN_EVENT = 50


class ValidateStepOutput(BaseModel):
    """What the validate step (`use_cases.validate.validate_run`) returns to the state machine, its Choice reads
    these fields: the `ValidationReport` shortened to fit a Step Functions payload, and the training job's spec."""

    valid: bool
    error_count: int
    warning_count: int
    problems: list[dict[str, Any]]
    problems_omitted: int
    report_uri: str
    job: TrainingJobSpec


def validate_step_output(
    report: ValidationReport, bucket: str, run_id: str, *, training_image: str
) -> ValidateStepOutput:
    from lora_pipeline.names import safe_output_name
    from lora_pipeline.problems import Severity

    # Step Functions, EventBridge and SNS each cap a payload at 256 KB (a few hundred problems): the state
    # machine and the rejection email get the most important ones, validation.json keeps every one.
    severity_order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
    by_severity = sorted(report.problems, key=lambda p: severity_order[p.severity])
    listed = by_severity[:MAX_PROBLEMS_IN_EVENT]
    output_name = report.job.output_name or safe_output_name(report.dataset)
    plan = report.plan
    return ValidateStepOutput(
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
    earlier = ResumeRequest.model_validate_json(body).run_id
    source = RunLayout(run.dataset, earlier).checkpoints_prefix
    target = RunLayout(run.dataset, run.run_id).checkpoints_prefix
    for name in checkpoint_names(s3, run.bucket, source):
        s3.copy_object(
            Bucket=run.bucket,
            Key=target + name,
            CopySource={"Bucket": run.bucket, "Key": source + name},
            TaggingDirective="REPLACE",
            Tagging="",
        )
    return earlier


def validate_run(s3: Any, run: RunInput, limits: StackLimits, training_image: str) -> dict[str, Any]:
    """Validate the dataset, store the report and the job's config files, return the Choice's inputs (the job
    runs `training_image`, `<repository>@sha256:<digest>`)."""
    from lora_pipeline.aws.s3_source import S3DatasetSource, S3ObjectReader
    from lora_pipeline.validate import build_validation_report

    report = build_validation_report(
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
    outcome: dict[str, Any] = validate_step_output(
        report, run.bucket, run.run_id, training_image=training_image
    ).model_dump(mode="json")
    if outcome["valid"]:
        adopt_resume_request(s3, run)
    return outcome
