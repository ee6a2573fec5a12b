"""Run a deployed function's handler in this process, the way the Lambda Python runtime would."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

LOG = logging.getLogger(__name__)

# os.environ is process-wide, so invocations (each with its function's Environment) run one at a time.
# Re-entrant: a handler may synchronously invoke another function.
_INVOCATION_LOCK = threading.RLock()


@dataclass
class LambdaContext:
    """The context object handlers receive (the fields Powertools and typical handlers read)."""

    function_name: str
    function_version: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    timeout_seconds: int
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    identity: Any = None
    client_context: Any = None
    _started: float = field(default_factory=time.monotonic)

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return f"embedded/[{self.function_version}]{self.aws_request_id}"

    def get_remaining_time_in_millis(self) -> int:
        elapsed = time.monotonic() - self._started
        return max(0, int((self.timeout_seconds - elapsed) * 1000))


@dataclass(frozen=True)
class Invocation:
    """One handler call: what went in, what came out (payload JSON text), and the traceback on error."""

    function_name: str
    event: Any
    payload: str
    error: str | None


@contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    previous = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _error_payload(error: BaseException, request_id: str, error_type: str | None = None) -> str:
    return json.dumps(
        {
            "errorMessage": str(error),
            "errorType": error_type or type(error).__name__,
            "requestId": request_id,
            "stackTrace": traceback.format_tb(error.__traceback__),
        }
    )


class LambdaHost:
    """Loads each function's handler module fresh (its own module name, so every `app.py` coexists)."""

    def __init__(self, code_dirs: dict[str, Path], layer_dirs: list[Path]) -> None:
        self._code_dirs = code_dirs
        self._handlers: dict[str, Callable[..., Any]] = {}
        self.invocations: list[Invocation] = []
        for layer in layer_dirs:
            # A Python layer's packages sit under python/ once built; a source folder holds them directly.
            folder = layer / "python" if (layer / "python").is_dir() else layer
            if str(folder) not in sys.path:
                sys.path.append(str(folder))

    def _code_dir(self, code: dict[str, Any], function_name: str) -> Path:
        folder = self._code_dirs.get(code.get("S3Key", ""))
        if folder is None:
            raise LookupError(
                f"function {function_name} has no local code folder (only template functions run)"
            )
        return folder

    def _load_handler(self, function_name: str, handler: str, folder: Path) -> Callable[..., Any]:
        module_path, _, attribute = handler.rpartition(".")
        source = folder / (module_path.replace(".", "/") + ".py")
        module_name = "_embedded_lambda_" + re.sub(r"\W", "_", f"{function_name}_{module_path}")
        spec = importlib.util.spec_from_file_location(module_name, source)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load handler module {source}")
        module: ModuleType = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        sys.path.insert(0, str(folder))
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        finally:
            sys.path.remove(str(folder))
        return getattr(module, attribute)  # type: ignore[no-any-return]

    def invoke(self, function: Any, event: Any) -> tuple[str, bool]:
        """Run `function` (moto's LambdaFunction) on `event`; return (payload JSON, errored) like Lambda."""
        context = LambdaContext(
            function_name=function.function_name,
            function_version=str(function.version),
            invoked_function_arn=function.function_arn,
            memory_limit_in_mb=int(function.memory_size),
            timeout_seconds=int(function.timeout),
        )
        variables = {
            "AWS_LAMBDA_FUNCTION_NAME": function.function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": str(function.version),
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_size),
            "AWS_LAMBDA_LOG_GROUP_NAME": context.log_group_name,
            "AWS_REGION": function.region,
            "AWS_DEFAULT_REGION": function.region,
            "AWS_SAM_LOCAL": "true",
            **{name: str(value) for name, value in function.environment_vars.items()},
        }
        error: str | None = None
        with _INVOCATION_LOCK, _environment(variables):
            try:
                handler = self._handler(function)
                result = handler(event, context)
                try:
                    payload = json.dumps(result)
                except (TypeError, ValueError) as unserialisable:
                    payload = _error_payload(unserialisable, context.aws_request_id, "Runtime.MarshalError")
                    error = traceback.format_exc()
            except Exception as failure:  # the handler's error becomes the function error, as on Lambda
                payload = _error_payload(failure, context.aws_request_id)
                error = traceback.format_exc()
        if error:
            LOG.warning("function %s failed:\n%s", function.function_name, error)
        self.invocations.append(Invocation(function.function_name, event, payload, error))
        return payload, error is not None

    def _handler(self, function: Any) -> Callable[..., Any]:
        """The handler, loaded on first use (a cold start) and kept (warm starts); call under the lock."""
        handler = self._handlers.get(function.function_name)
        if handler is None:
            folder = self._code_dir(function.code, function.function_name)
            handler = self._load_handler(function.function_name, function.handler, folder)
            self._handlers[function.function_name] = handler
        return handler
