"""Run a deployed function's handler in this process, the way the Lambda Python runtime would."""

from __future__ import annotations

import importlib.util
import itertools
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

_thread_state = threading.local()
_COLD_STARTS = itertools.count(1)  # numbers every loaded handler module, process-wide, so names never collide
_UNSET = object()


class _PerThreadEnviron(os._Environ):  # type: ignore[type-arg]
    """os.environ with a per-thread layer: while a handler runs in a thread, that thread sees its function's
    Environment and nothing else changes, so invocations of different functions run concurrently."""

    def _layer(self) -> dict[str, Any] | None:
        return getattr(_thread_state, "environment", None)

    def __getitem__(self, key: str) -> str:
        layer = self._layer()
        if layer is not None and key in layer:
            if layer[key] is _UNSET:
                raise KeyError(key)
            return str(layer[key])
        return super().__getitem__(key)  # type: ignore[no-any-return]

    def __setitem__(self, key: str, value: str) -> None:
        layer = self._layer()
        if layer is None:
            super().__setitem__(key, value)
        else:
            layer[key] = value

    def __delitem__(self, key: str) -> None:
        layer = self._layer()
        if layer is None:
            super().__delitem__(key)
        elif key in self:
            layer[key] = _UNSET
        else:
            raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        layer = self._layer()
        if layer is None:
            yield from super().__iter__()
            return
        yield from (key for key in list(super().__iter__()) if key not in layer)
        yield from (key for key, value in list(layer.items()) if value is not _UNSET)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _install_per_thread_environ() -> None:
    if not isinstance(os.environ, _PerThreadEnviron):
        # Changing the class keeps the object, so every existing reference to os.environ sees the layer.
        os.environ.__class__ = _PerThreadEnviron


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
    """This thread sees `variables` over the process environment until the block ends."""
    previous = getattr(_thread_state, "environment", None)
    _thread_state.environment = dict(variables)
    try:
        yield
    finally:
        _thread_state.environment = previous


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
    """Runs handlers like Lambda's execution environments: each concurrent invocation of a function gets its
    own instance of the handler module (a cold start loads a fresh one, under its own module name, so every
    `app.py` coexists); a finished instance is kept warm for the next invocation of that function."""

    def __init__(self, code_dirs: dict[str, Path], layer_dirs: list[Path]) -> None:
        _install_per_thread_environ()
        self._code_dirs = code_dirs
        self._warm: dict[str, list[Callable[..., Any]]] = {}
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._module_names: list[str] = []
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
        module_name = "_embedded_lambda_" + re.sub(
            r"\W", "_", f"{function_name}_{module_path}_{next(_COLD_STARTS)}"
        )
        spec = importlib.util.spec_from_file_location(module_name, source)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load handler module {source}")
        module: ModuleType = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        self._module_names.append(module_name)
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
        handler = None
        with _environment(variables):
            try:
                handler = self._acquire(function)
                result = handler(event, context)
                try:
                    payload = json.dumps(result)
                except (TypeError, ValueError) as unserialisable:
                    payload = _error_payload(unserialisable, context.aws_request_id, "Runtime.MarshalError")
                    error = traceback.format_exc()
            except Exception as failure:  # the handler's error becomes the function error, as on Lambda
                payload = _error_payload(failure, context.aws_request_id)
                error = traceback.format_exc()
            finally:
                if handler is not None:
                    with self._lock:
                        self._warm[function.function_name].append(handler)
        if context.get_remaining_time_in_millis() == 0:
            # A thread cannot be killed; the result of a handler that ran past its Timeout is discarded instead.
            message = (
                f"RequestId: {context.aws_request_id} "
                f"Error: Task timed out after {context.timeout_seconds:.2f} seconds"
            )
            payload = json.dumps({"errorType": "Sandbox.Timedout", "errorMessage": message})
            error = message
        if error:
            LOG.warning("function %s failed:\n%s", function.function_name, error)
        self.invocations.append(Invocation(function.function_name, event, payload, error))
        return payload, error is not None

    def close(self) -> None:
        """Forget every loaded handler module (a later stack loads its own)."""
        with self._lock:
            self._warm.clear()
        for module_name in self._module_names:
            sys.modules.pop(module_name, None)

    def _acquire(self, function: Any) -> Callable[..., Any]:
        """A warm handler instance of `function`, or a cold start (run in the invoking thread's environment)."""
        with self._lock:
            warm = self._warm.setdefault(function.function_name, [])
            if warm:
                return warm.pop()
        folder = self._code_dir(function.code, function.function_name)
        # Loading touches sys.path and sys.modules, which are process-wide.
        with self._load_lock:
            return self._load_handler(function.function_name, function.handler, folder)
