"""`make demo`: the whole product on the embedded AWS, offline, with a live timeline.

The bundled example is uploaded to the real template's bucket; the real event flow runs (trigger, settle,
validate, training slot, a SageMaker job executed locally by the training container with the smoke trainer,
unpack, events, email); the email is printed as SNS sends it, and the LoRA, its run report and its samples
are copied to ./out/<example>/.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import boto3

from embedded_aws import STAND_IN_TRAINING_IMAGE, EmbeddedStack, SnsMessage
from embedded_aws.container_executor import ContainerExecutor
from lora_pipeline.manifest import Manifest
from lora_pipeline_cli import runs
from lora_pipeline_cli.examples import write_broken_dataset, write_example_dataset
from lora_pipeline_cli.local import TEMPLATE
from lora_pipeline_cli.progress import bytes_bar
from lora_pipeline_cli.stack import Stack
from lora_pipeline_cli.timeline import Timeline
from lora_pipeline_cli.upload import plan_upload, upload_dataset

EXAMPLES: dict[str, Callable[[Path], Path]] = {
    "bluebot": write_example_dataset,
    "broken": write_broken_dataset,
}


@dataclass(frozen=True)
class DemoResult:
    emails: list[SnsMessage]
    model: Path | None
    manifest: Manifest | None
    report: Path | None = None


def run_demo(example: str, work: Path, out: Path, quiet_period_seconds: int, timeout: float) -> DemoResult:
    """Draw the example, bring the stack up, upload, let the pipeline run; returns the emails and the LoRA."""
    folder = work / example
    shutil.rmtree(folder, ignore_errors=True)
    EXAMPLES[example](folder)
    timeline = Timeline()
    timeline.say("setup", f"example dataset {example!r} drawn in {folder}")
    parameters = {
        "TrainingImageUri": STAND_IN_TRAINING_IMAGE,
        "QuietPeriodSeconds": str(quiet_period_seconds),
        "ReadyGraceSeconds": "1",
        "NotificationEmail": "you@example.com",
    }
    lambda_log = work / "lambda.log"
    timeline.say("setup", f"Lambda logs (their CloudWatch streams) go to {lambda_log}")
    executor = ContainerExecutor()
    with (
        lambda_log.open("w") as log,
        contextlib.redirect_stdout(log),
        EmbeddedStack.up(TEMPLATE, parameters, executor=executor, on_timeline=timeline.on_entry) as stack,
    ):
        timeline.say("setup", f"stack {stack.stack_name} is up on the embedded AWS (bucket {stack.bucket})")
        stack.follow_states(timeline.on_entry)
        plan = plan_upload(folder)
        with bytes_bar(f"Uploading to s3://{stack.bucket}/datasets/{example}/", plan.total_bytes) as advance:
            upload_dataset(stack.client("s3"), stack.bucket, folder, example, plan, False, advance)
        timeline.say(
            "upload", f"{len(plan.files)} files; the run starts after {quiet_period_seconds}s of quiet"
        )
        stack.wait_until_idle(timeout=timeout)
        emails = stack.sns_messages()
        cli_stack = Stack(stack.stack_name, stack.outputs, boto3.Session(region_name=stack.region))
        succeeded = [r for r in runs.list_runs(cli_stack, example) if r.status == runs.SUCCEEDED]
        if not succeeded:
            timeline.say("done", "no model: the email below says why")
            return DemoResult(emails, None, None)
        model, manifest = runs.download_model(cli_stack, succeeded[0], out / example, samples=True)
        report = runs.download_report(cli_stack, succeeded[0], out / example)
        timeline.say("done", f"LoRA copied to {model} ({manifest.size_bytes:,} bytes, sha256 verified)")
        timeline.say(
            "done",
            f"run report in {report}, {len(manifest.samples)} sample image(s) in {report.parent / 'samples'}",
        )
    return DemoResult(emails, model, manifest, report)


def print_emails(emails: list[SnsMessage]) -> None:
    for message in emails:
        sys.stdout.write(
            f"\n---- email ----\nSubject: {message.subject}\n\n{message.message}\n---------------\n"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("example", nargs="?", default="bluebot", choices=sorted(EXAMPLES))
    parser.add_argument(
        "--work", type=Path, default=Path("build/demo"), help="where the example dataset is drawn"
    )
    parser.add_argument("--out", type=Path, default=Path("out"), help="where the LoRA is copied")
    parser.add_argument(
        "--quiet-period", type=int, default=5, help="QuietPeriodSeconds of the embedded stack"
    )
    parser.add_argument("--timeout", type=float, default=900, help="give up after this many seconds")
    args = parser.parse_args()
    # moto says which template resources it only records (bucket policy, CodeBuild...): not news for a demo.
    logging.getLogger("moto").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="moto")
    result = run_demo(args.example, args.work, args.out, args.quiet_period, args.timeout)
    print_emails(result.emails)
    if result.model is not None:
        sys.stdout.write(f"\nYour LoRA: {result.model}\n")
    if result.report is not None:
        sys.stdout.write(f"Its run report: {result.report}\n")
    # The broken example is meant to be rejected: that is its success.
    sys.exit(0 if (result.model is not None) != (args.example == "broken") else 1)


if __name__ == "__main__":
    main()
