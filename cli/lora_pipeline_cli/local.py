"""`lora-pipeline local`: the embedded stack served on loopback, so other commands can use it with --local.

The embedded AWS is a development dependency (moto): it is imported only when `local` runs. The stack (real template, handlers in this process, training jobs run by the local container executor)
lives in the `local` process; `--local` commands talk to it through moto's server on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import threading

DEFAULT_PORT = 5055
REGION = "us-east-1"
STACK_NAME = "sdxl-lora-pipeline"
ENDPOINT_ENV_VAR = "LORA_PIPELINE_LOCAL_ENDPOINT"
# The embedded AWS accepts any credentials; these keep a --local command away from the user's real ones.
LOCAL_CREDENTIALS = {
    "aws_access_key_id": "local",
    "aws_secret_access_key": "local",
    "aws_session_token": "local",
}


def running_endpoint() -> tuple[str, str]:
    """The endpoint and stack name of `lora-pipeline local` (connecting tells whether it runs)."""
    return os.environ.get(ENDPOINT_ENV_VAR, f"http://127.0.0.1:{DEFAULT_PORT}"), STACK_NAME


def serve(port: int, quiet_period_seconds: int) -> None:
    """Bring the stack up and serve it on 127.0.0.1:`port` until Ctrl-C or SIGTERM."""
    from moto.server import ThreadedMotoServer

    from embedded_aws import EmbeddedStack
    from embedded_aws.container_executor import ContainerExecutor
    from lora_pipeline_cli.demo import TEMPLATE
    from lora_pipeline_cli.timeline import Timeline

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    timeline = Timeline()
    parameters = {"QuietPeriodSeconds": str(quiet_period_seconds)}
    with EmbeddedStack.up(
        TEMPLATE,
        parameters,
        executor=ContainerExecutor(),
        stack_name=STACK_NAME,
        region=REGION,
        on_timeline=timeline.on_entry,
    ) as stack:
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
