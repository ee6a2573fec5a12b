"""`lora-pipeline local`: the embedded stack served on loopback, so other commands can use it with --local.

The stack (real template, handlers in this process, training jobs run by the local container executor) lives
in the `local` process; `--local` commands talk to it through moto's server on 127.0.0.1. It runs from a
checkout of the repository with the `local` extra installed (`pip install -e '.[local]'`: the embedded AWS,
the handlers' packages, the smoke trainer's); those packages are imported only when `local` runs.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

if TYPE_CHECKING:
    from embedded_aws import SnsMessage
    from lora_pipeline_cli.timeline import Timeline

CHECKOUT = Path(__file__).resolve().parents[2]
TEMPLATE = CHECKOUT / "template.yaml"
DISTRIBUTION = "sdxl-lora-pipeline"
EXTRA = "local"
INSTALL_COMMAND = f"pip install -e '.[{EXTRA}]'"
DEFAULT_PORT = 5055
REGION = "us-east-1"
STACK_NAME = "sdxl-lora-pipeline"
ENDPOINT_ENV_VAR = "LORA_PIPELINE_LOCAL_ENDPOINT"
BASE_MODELS_BUCKET = "local-base-models"
# The embedded AWS accepts any credentials; these keep a --local command away from the user's real ones.
LOCAL_CREDENTIALS = {
    "aws_access_key_id": "local",
    "aws_secret_access_key": "local",
    "aws_session_token": "local",
}


def extra_requirements() -> list[str]:
    """The distributions of the `local` extra, from the installed project's metadata (pyproject.toml)."""
    requires = importlib.metadata.requires(DISTRIBUTION) or []
    local = [r for r in requires if re.search(rf"""extra\s*==\s*["']{EXTRA}["']""", r)]
    return [re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0] for requirement in local]


def missing_setup() -> str | None:
    """Why `serve` cannot run in this installation (no checkout, or the `local` extra missing), or None."""
    if not TEMPLATE.is_file():
        return (
            f"`lora-pipeline local` runs the stack of a repository checkout, and {TEMPLATE} does not exist. "
            f"Clone the repository and run `{INSTALL_COMMAND}` in it."
        )
    missing = []
    for name in extra_requirements():
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        return (
            f"`lora-pipeline local` needs the packages of the `{EXTRA}` extra; not installed: "
            f"{', '.join(missing)}. Run `{INSTALL_COMMAND}` in the repository checkout."
        )
    return None


def running_endpoint() -> tuple[str, str]:
    """The endpoint and stack name of `lora-pipeline local` (connecting tells whether it runs)."""
    return os.environ.get(ENDPOINT_ENV_VAR, f"http://127.0.0.1:{DEFAULT_PORT}"), STACK_NAME


# The HTTP server's per-request log (werkzeug's INFO lines): one per --local call and poll, off by default.
ACCESS_LOG = logging.getLogger("werkzeug")


def print_email(timeline: Timeline, email: SnsMessage) -> None:
    """Show an email the stack sends (SNS subject and body) on the timeline, as its subscriber gets it."""
    body = "\n".join(f"    {line}" for line in email.message.splitlines())
    timeline.say("email", escape(f"{email.subject or '(no subject)'}\n{body}"))


def serve(
    port: int,
    quiet_period_seconds: int,
    sd_scripts: Path | None = None,
    base_model: Path | None = None,
    access_log: bool = False,
) -> None:
    """Bring the stack up and serve it on 127.0.0.1:`port` until Ctrl-C or SIGTERM.

    Training jobs run the training container's entrypoint on this machine with the smoke trainer; given an
    sd-scripts checkout (`sd_scripts`) they run the trainer each dataset asks for, real Kohya included, and
    `base_model` (a local SDXL .safetensors) becomes the stack's BaseModelS3Uri, so nothing is downloaded.
    Every email is printed as it is sent; `access_log` prints each HTTP request the server answers.
    """
    from moto.server import ThreadedMotoServer

    from embedded_aws import STAND_IN_TRAINING_IMAGE, EmbeddedStack
    from embedded_aws.container_executor import ContainerExecutor
    from lora_pipeline_cli.timeline import Timeline

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    timeline = Timeline()
    parameters = {
        "TrainingImageUri": STAND_IN_TRAINING_IMAGE,
        "QuietPeriodSeconds": str(quiet_period_seconds),
        "ReadyGraceSeconds": "2",
    }
    if base_model is not None:
        parameters["BaseModelS3Uri"] = f"s3://{BASE_MODELS_BUCKET}/{base_model.name}"
    executor = (
        ContainerExecutor(trainer=None, environment={"SD_SCRIPTS_DIR": str(sd_scripts.resolve())})
        if sd_scripts is not None
        else ContainerExecutor()
    )
    with EmbeddedStack.up(
        TEMPLATE,
        parameters,
        executor=executor,
        stack_name=STACK_NAME,
        region=REGION,
        on_timeline=timeline.on_entry,
    ) as stack:
        if base_model is not None:
            stack.s3.create_bucket(Bucket=BASE_MODELS_BUCKET)
            stack.s3.upload_file(str(base_model), BASE_MODELS_BUCKET, base_model.name)
            timeline.say("setup", f"base model {base_model} is {parameters['BaseModelS3Uri']}")
        stack.on_sns_message(lambda email: print_email(timeline, email))
        ACCESS_LOG.setLevel(logging.INFO if access_log else logging.WARNING)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        stack.follow_states(timeline.on_entry)
        timeline.say(
            "ready", f"stack {STACK_NAME} on http://127.0.0.1:{port}; use `lora-pipeline <command> --local`"
        )
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            timeline.say("stopping", "stopping runs and the stack")
            server.stop()
