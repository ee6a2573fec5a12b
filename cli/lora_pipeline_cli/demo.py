"""`make demo`: the whole product on the embedded AWS, offline, with a live timeline.

The bundled example is uploaded to the real template's bucket; the real event flow runs (trigger, settle,
validate, training slot, a SageMaker job executed locally by the training container with the smoke trainer,
unpack, events, email); the email is printed as SNS sends it and the LoRA is copied to ./out/.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import boto3

from embedded_aws import EmbeddedStack
from embedded_aws.container_executor import ContainerExecutor
from lora_pipeline_cli import runs
from lora_pipeline_cli.examples import write_broken_dataset, write_example_dataset
from lora_pipeline_cli.progress import bytes_bar
from lora_pipeline_cli.stack import Stack
from lora_pipeline_cli.timeline import Timeline, follow_states
from lora_pipeline_cli.upload import plan_upload, upload_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "template.yaml"
EXAMPLES: dict[str, Callable[[Path], Path]] = {
    "bluebot": write_example_dataset,
    "broken": write_broken_dataset,
}


def run_demo(example: str, work: Path, out: Path, quiet_period_seconds: int, timeout: float) -> int:
    folder = work / example
    shutil.rmtree(folder, ignore_errors=True)
    EXAMPLES[example](folder)
    timeline = Timeline()
    timeline.say("setup", f"example dataset {example!r} drawn in {folder}")
    parameters = {"QuietPeriodSeconds": str(quiet_period_seconds), "NotificationEmail": "you@example.com"}
    with EmbeddedStack.up(
        TEMPLATE, parameters, executor=ContainerExecutor(), on_timeline=timeline.on_entry
    ) as stack:
        timeline.say("setup", f"stack {stack.stack_name} is up on the embedded AWS (bucket {stack.bucket})")
        stop = threading.Event()
        follower = threading.Thread(target=follow_states, args=(stack, timeline, stop), daemon=True)
        follower.start()
        plan = plan_upload(folder)
        with bytes_bar(f"Uploading to s3://{stack.bucket}/datasets/{example}/", plan.total_bytes) as advance:
            upload_dataset(stack.client("s3"), stack.bucket, folder, example, plan, False, advance)
        timeline.say(
            "upload", f"{len(plan.files)} files; the run starts after {quiet_period_seconds}s of quiet"
        )
        try:
            stack.wait_until_idle(timeout=timeout)
        finally:
            stop.set()
            follower.join()
        for message in stack.sns_messages():
            sys.stdout.write(
                f"\n---- email ----\nSubject: {message.subject}\n\n{message.message}\n---------------\n"
            )
        cli_stack = Stack(stack.stack_name, stack.outputs, boto3.Session(region_name=stack.region))
        succeeded = [r for r in runs.list_runs(cli_stack, example) if r.status == runs.SUCCEEDED]
        if not succeeded:
            timeline.say("done", "no model: the email above says why")
            return 1
        model, manifest = runs.download_model(cli_stack, succeeded[0], out / example)
        timeline.say("done", f"LoRA {model} ({manifest.size_bytes:,} bytes, sha256 {manifest.sha256[:12]}…)")
    return 0


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
    code = run_demo(args.example, args.work, args.out, args.quiet_period, args.timeout)
    # The broken example is meant to be rejected: that is its success.
    sys.exit(0 if (code == 0) != (args.example == "broken") else 1)


if __name__ == "__main__":
    main()
