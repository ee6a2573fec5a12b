"""Turn a pipeline event into the short email a person reads (SNS subject + body).

SNS subjects must be ASCII, one line, under 100 characters; bodies are plain text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from lora_pipeline.events import (
    DatasetRejected,
    EventDetail,
    ProblemDetail,
    TrainingCancelled,
    TrainingFailed,
    TrainingStarted,
    TrainingSucceeded,
)
from lora_pipeline.salvage import SalvagedLora

SUBJECT_MAX = 99


@dataclass(frozen=True)
class Message:
    subject: str
    body: str


@dataclass(frozen=True)
class DownloadLink:
    """A presigned GET. `expires_at` is the signature's expiry; `credentials_note` says when it dies earlier."""

    url: str
    expires_at: datetime
    credentials_note: str | None = None


def _subject(text: str) -> str:
    ascii_only = text.encode("ascii", "replace").decode("ascii").replace("\n", " ").replace("\r", " ")
    return ascii_only if len(ascii_only) <= SUBJECT_MAX else ascii_only[: SUBJECT_MAX - 3] + "..."


def duration(seconds: int) -> str:
    hours, rest = divmod(max(0, seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _cost(value: float | None) -> str:
    if value is None:
        return "unknown (instance type not in the price table)"
    return f"${value:.2f}" if value >= 0.01 else "less than $0.01"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _footer(detail: EventDetail) -> str:
    return f"\nDataset: s3://{detail.bucket}/datasets/{detail.dataset}/\nRun: {detail.run_id}\n"


def _problem_lines(number: int, problem: ProblemDetail) -> list[str]:
    where = f" {problem.file}:" if problem.file else ""
    lines = [f"{number}. [{problem.severity.upper()} {problem.code}]{where} {problem.message}"]
    if problem.fix:
        lines.append(f"   Fix: {problem.fix}")
    return lines


def _rejected(d: DatasetRejected) -> Message:
    """The subject counts the errors as "problems" (what blocks training); the body lists them under the
    same count, then the warnings under theirs, numbered on."""
    lines = [
        f"The dataset '{d.dataset}' was not trained: {d.reason}",
        "No training job was started, so nothing was spent on GPUs.",
    ]
    headings = {
        "error": f"{_plural(d.error_count, 'problem')} to fix (errors):",
        "warning": f"{_plural(d.warning_count, 'warning')} (these do not block training):",
        "info": "Notes:",
    }
    number = 1
    for severity, heading in headings.items():
        listed = [p for p in d.problems if p.severity == severity]
        if not listed:
            continue
        lines += ["", heading]
        for problem in listed:
            lines += _problem_lines(number, problem)
            number += 1
    if d.problems_omitted:
        lines.append(f"... and {_plural(d.problems_omitted, 'more problem')} in the full report below.")
    lines += [
        "",
        "Next step: fix the problems above in your local copy, check it with `lora-pipeline validate <folder>`,",
        f"then upload it again; this replaces datasets/{d.dataset}/ with your folder (removing the files you",
        "deleted or renamed there too) and starts a new run:",
        f"  lora-pipeline upload <folder> --dataset {d.dataset} --start",
        f"or with the AWS CLI: aws s3 sync <folder> s3://{d.bucket}/datasets/{d.dataset}/ --delete",
        "and then add an empty _READY file to start at once.",
        f"Full report: {d.report_uri}",
    ]
    subject = f"Dataset rejected: {d.dataset}"
    if d.error_count:
        subject += f" ({_plural(d.error_count, 'problem')})"
    return Message(_subject(subject), "\n".join(lines) + _footer(d))


def _started(d: TrainingStarted) -> Message:
    body = "\n".join(
        [
            f"Training of '{d.dataset}' has started.",
            f"Job: {d.training_job_name} ({d.trainer} trainer)",
            f"Instance: {d.instance_type}, {'managed spot' if d.spot else 'on-demand'}, {d.volume_size_gb} GB volume",
            f"Hard stop after: {duration(d.max_runtime_seconds)}",
            f"Estimated cost: {_cost(d.estimated_cost_usd)}",
            f"Output: {d.output_name}.safetensors",
            f"Follow it: {d.console_url}",
        ]
    )
    return Message(_subject(f"Training started: {d.dataset}"), body + "\n" + _footer(d))


def _succeeded(d: TrainingSucceeded, link: DownloadLink | None) -> Message:
    lines = [
        f"Your LoRA for '{d.dataset}' is ready.",
        "",
        f"Model: {d.model_uri}",
        f"Size: {d.size_bytes / 1_000_000:.1f} MB, sha256 {d.sha256}",
        f"Manifest: {d.manifest_uri}",
    ]
    if link is not None:
        lines.append(f"Download (expires {link.expires_at:%Y-%m-%d %H:%M} UTC): {link.url}")
        if link.credentials_note:
            lines.append(f"  {link.credentials_note}")
    lines += [
        f"Lasting copy: aws s3 cp {d.model_uri} .",
        "",
        f"Training time: {duration(d.training_seconds)}",
        f"Billable: {d.billable_seconds} s ({'managed spot' if d.spot else 'on-demand'}, {d.instance_type})",
        f"Estimated cost: {_cost(d.estimated_cost_usd)}",
        f"Job: {d.training_job_name} {d.console_url}",
    ]
    if d.changed_during_run:
        lines += [
            "",
            "Note: the dataset changed while this run was in progress; this model was trained on the files",
            "present when the upload settled. A follow-up run that trains the new files starts now; its own",
            "emails follow.",
        ]
    lines += ["", f"Use it: A1111/ComfyUI: copy {d.output_name}.safetensors to models/Lora and prompt with"]
    lines.append(f"<lora:{d.output_name}:1> plus your trigger word.")
    return Message(_subject(f"LoRA ready: {d.dataset}"), "\n".join(lines) + "\n" + _footer(d))


def _salvaged(dataset: str, salvaged: SalvagedLora | None) -> list[str]:
    if salvaged is None:
        return []
    summary = salvaged.summary
    lines = [
        "",
        f"{summary[0].upper()}{summary[1:]}: that epoch's LoRA is kept as a partial result.",
        f"  {salvaged.model_uri}",
        f"  {salvaged.size_bytes / 1e6:.1f} MB, sha256 {salvaged.sha256}",
    ]
    if salvaged.resumable:
        lines.append(
            f"To train the rest instead of starting over: lora-pipeline resume {dataset} "
            "(the checkpoints are kept for a limited time: the stack's ResumeCheckpointDays)."
        )
    return lines


def _failed(d: TrainingFailed) -> Message:
    lines = [f"The run for '{d.dataset}' failed during {d.stage.value}.", "", f"Error: {d.error}"]
    if d.failure_reason:
        lines.append(f"SageMaker says: {d.failure_reason}")
    if d.cause and d.cause != d.failure_reason:
        lines.append(f"Details: {d.cause}")
    if d.training_job_name:
        lines.append(f"Job: {d.training_job_name}")
    lines.append(f"Look here: {d.console_url}")
    if d.logs_url:
        lines.append(f"Logs: {d.logs_url}")
    lines += _salvaged(d.dataset, d.salvaged)
    lines += ["", "The training slot was released. Upload the dataset again (or add _READY) to retry."]
    return Message(
        _subject(f"Training failed: {d.dataset} ({d.stage.value})"), "\n".join(lines) + "\n" + _footer(d)
    )


def _cancelled(d: TrainingCancelled) -> Message:
    how = "was stopped" if d.execution_status == "ABORTED" else "timed out"
    lines = [f"The run for '{d.dataset}' {how} ({d.execution_status})."]
    if d.training_job_name:
        state = "was stopped" if d.training_job_stopped else "was not running"
        lines.append(f"Training job {d.training_job_name} {state}; its training slot was released.")
    else:
        lines.append("No training job had started; its place in the queue was released.")
    lines += _salvaged(d.dataset, d.salvaged)
    return Message(_subject(f"Training cancelled: {d.dataset}"), "\n".join(lines) + "\n" + _footer(d))


def render(detail: EventDetail, link: DownloadLink | None = None) -> Message:
    match detail:
        case DatasetRejected():
            return _rejected(detail)
        case TrainingStarted():
            return _started(detail)
        case TrainingSucceeded():
            return _succeeded(detail, link)
        case TrainingFailed():
            return _failed(detail)
        case TrainingCancelled():
            return _cancelled(detail)
    raise TypeError(f"no message for {type(detail).__name__}")
