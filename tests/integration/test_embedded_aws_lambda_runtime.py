"""In-process Lambda handlers: per-function environment, coexisting `app.py` modules, Lambda's error shape."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from embedded_aws.lambda_runtime import LambdaHost

HANDLER = """
import os
import threading

GREETING = os.environ["GREETING"]
STARTS = []
entered = threading.Event()
release = threading.Event()


def lambda_handler(event, context):
    STARTS.append(event)
    if event.get("block"):
        entered.set()
        release.wait(5)
    if event.get("raise"):
        raise KeyError("missing thing")
    if event.get("sleep"):
        import time

        time.sleep(event["sleep"])
    if event.get("unserialisable"):
        return {"value": object()}
    return {
        "greeting": GREETING,
        "function": os.environ["AWS_LAMBDA_FUNCTION_NAME"],
        "calls_in_this_instance": len(STARTS),
        "instance": id(STARTS),
    }
"""


def _function(tmp_path: Path, name: str, greeting: str) -> tuple[Any, dict[str, Path]]:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "app.py").write_text(HANDLER)
    function = SimpleNamespace(
        function_name=name,
        version="$LATEST",
        function_arn=f"arn:aws:lambda:us-east-1:123456789012:function:{name}",
        memory_size=128,
        timeout=3,
        region="us-east-1",
        handler="app.lambda_handler",
        code={"S3Key": f"functions/{name}.zip"},
        environment_vars={"GREETING": greeting},
    )
    return function, {f"functions/{name}.zip": folder}


def test_each_function_runs_its_own_app_module_with_its_own_environment(tmp_path: Path) -> None:
    hello, hello_code = _function(tmp_path, "hello", "hi")
    bye, bye_code = _function(tmp_path, "bye", "ciao")
    host = LambdaHost({**hello_code, **bye_code}, [])

    hello_payload, hello_failed = host.invoke(hello, {})
    bye_payload, _ = host.invoke(bye, {})

    assert not hello_failed
    assert json.loads(hello_payload)["greeting"] == "hi" and json.loads(hello_payload)["function"] == "hello"
    assert json.loads(bye_payload)["greeting"] == "ciao" and json.loads(bye_payload)["function"] == "bye"
    assert "GREETING" not in os.environ and "AWS_LAMBDA_FUNCTION_NAME" not in os.environ


def test_a_running_handler_environment_is_invisible_to_other_threads(tmp_path: Path) -> None:
    hello, code = _function(tmp_path, "hello", "hi")
    host = LambdaHost(code, [])
    host.invoke(hello, {})  # warm the single instance so the test can reach its events
    module = host._warm["hello"][0].__globals__  # the warm instance's module

    running = threading.Thread(target=host.invoke, args=(hello, {"block": True}))
    running.start()
    assert module["entered"].wait(5)
    seen_elsewhere = os.environ.get("GREETING"), os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
    module["release"].set()
    running.join(5)

    assert seen_elsewhere == (None, None)


def test_warm_instances_are_reused_and_concurrent_calls_get_separate_instances(tmp_path: Path) -> None:
    hello, code = _function(tmp_path, "hello", "hi")
    host = LambdaHost(code, [])
    first = json.loads(host.invoke(hello, {})[0])
    second = json.loads(host.invoke(hello, {})[0])
    assert second["instance"] == first["instance"] and second["calls_in_this_instance"] == 2

    blocked_module = host._warm["hello"][0].__globals__
    blocked = threading.Thread(target=host.invoke, args=(hello, {"block": True}))
    blocked.start()
    assert blocked_module["entered"].wait(5)
    concurrent = json.loads(host.invoke(hello, {})[0])
    blocked_module["release"].set()
    blocked.join(5)

    assert concurrent["instance"] != first["instance"]
    assert concurrent["calls_in_this_instance"] == 1


def test_errors_come_back_as_lambda_function_errors(tmp_path: Path) -> None:
    hello, code = _function(tmp_path, "hello", "hi")
    host = LambdaHost(code, [])

    raised, raised_failed = host.invoke(hello, {"raise": True})
    unserialisable, unserialisable_failed = host.invoke(hello, {"unserialisable": True})

    assert raised_failed and unserialisable_failed
    assert json.loads(raised)["errorType"] == "KeyError"
    assert json.loads(raised)["errorMessage"] == "'missing thing'"
    assert json.loads(unserialisable)["errorType"] == "Runtime.MarshalError"
    assert [call.error is not None for call in host.invocations] == [True, True]


def test_a_handler_that_outlives_its_timeout_is_a_sandbox_timeout(tmp_path: Path) -> None:
    hello, code = _function(tmp_path, "hello", "hi")
    hello.timeout = 1
    host = LambdaHost(code, [])

    payload, failed = host.invoke(hello, {"sleep": 1.1})

    assert failed
    assert json.loads(payload)["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in json.loads(payload)["errorMessage"]


def test_closing_the_host_forgets_its_handler_modules(tmp_path: Path) -> None:
    hello, code = _function(tmp_path, "hello", "hi")
    host = LambdaHost(code, [])
    before = set(sys.modules)
    host.invoke(hello, {})
    loaded = set(sys.modules) - before
    assert loaded

    host.close()

    assert not any(name in sys.modules for name in loaded)
