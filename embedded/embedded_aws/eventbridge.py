"""EventBridge target delivery to Lambda, SNS and Step Functions: asynchronous, like the real service."""

from __future__ import annotations

import datetime
import json
import logging
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .clients import client

LOG = logging.getLogger(__name__)

DELIVERED_SERVICES = frozenset({"lambda", "sns", "states"})
_PLACEHOLDER = re.compile(r"<([A-Za-z0-9_.\-]+)>")
_PATH_STEP = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]")


def target_service(target: dict[str, Any]) -> str:
    return str(target["Arn"]).split(":")[2]


def as_delivered_event(event: dict[str, Any]) -> dict[str, Any]:
    """The event as targets receive it: ISO-8601 `time` (moto keeps epoch seconds), no moto-internal keys."""
    delivered = {name: value for name, value in event.items() if name != "ingestion-time"}
    if isinstance(delivered.get("time"), int | float):
        moment = datetime.datetime.fromtimestamp(delivered["time"], tz=datetime.UTC)
        delivered["time"] = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return delivered


def resolve_path(path: str, document: Any) -> Any:
    """A JSONPath of the simple form EventBridge uses ($, $.a.b, $.a[0].b); None when absent."""
    if not path.startswith("$"):
        raise ValueError(f"not a JSONPath: {path}")
    value = document
    for name, index in _PATH_STEP.findall(path[1:]):
        if name and isinstance(value, dict):
            value = value.get(name)
        elif index and isinstance(value, list) and int(index) < len(value):
            value = value[int(index)]
        else:
            return None
    return value


def _inside_string_literal(text: str, position: int) -> bool:
    inside, escaped = False, False
    for character in text[:position]:
        if escaped:
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == '"':
            inside = not inside
    return inside


def render_input_template(template: str, values: dict[str, Any]) -> str:
    """Fill an InputTransformer template: a value inside a JSON string is inserted as text, elsewhere as JSON."""

    def replace(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            return match.group(0)
        value = values[match.group(1)]
        if _inside_string_literal(template, match.start()):
            text = value if isinstance(value, str) else json.dumps(value)
            return json.dumps(text)[1:-1]
        return json.dumps(value)

    return _PLACEHOLDER.sub(replace, template)


def target_input(target: dict[str, Any], event: dict[str, Any], rule_arn: str, rule_name: str) -> str:
    """The text a target receives: Input, InputPath or InputTransformer applied to the event."""
    if "Input" in target:
        return str(target["Input"])
    if "InputPath" in target:
        return json.dumps(resolve_path(target["InputPath"], event))
    transformer = target.get("InputTransformer")
    if transformer:
        values = {
            name: resolve_path(path, event) for name, path in transformer.get("InputPathsMap", {}).items()
        }
        values.update(
            {
                "aws.events.rule-arn": rule_arn,
                "aws.events.rule-name": rule_name,
                "aws.events.event": event,
                "aws.events.event.json": event,
            }
        )
        return render_input_template(transformer["InputTemplate"], values)
    return json.dumps(event)


@dataclass(frozen=True)
class FailedDelivery:
    target_arn: str
    payload: str
    error: str


class Deliveries:
    """A small worker pool that delivers matched events to their targets, and knows when it is idle."""

    def __init__(self, region: str, workers: int = 4) -> None:
        self._region = region
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="embedded-eventbridge")
        self._lock = threading.Lock()
        self._pending = 0
        self._closed = False
        self.failures: list[FailedDelivery] = []

    def pending(self) -> int:
        with self._lock:
            return self._pending

    def submit(self, target: dict[str, Any], payload: str) -> None:
        with self._lock:
            if self._closed:
                LOG.info("stack going down: not delivering to %s", target["Arn"])
                return
            self._pending += 1
        self._pool.submit(self._deliver, target, payload)

    def close(self) -> None:
        """Refuse new deliveries, finish the ones in flight."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True)

    def _deliver(self, target: dict[str, Any], payload: str) -> None:
        arn = str(target["Arn"])
        try:
            service = target_service(target)
            if service == "lambda":
                response = client("lambda", self._region).invoke(FunctionName=arn, Payload=payload.encode())
                if response.get("FunctionError"):
                    raise RuntimeError(response["Payload"].read().decode())
            elif service == "sns":
                client("sns", self._region).publish(TopicArn=arn, Message=payload)
            elif service == "states":
                client("stepfunctions", self._region).start_execution(
                    stateMachineArn=arn, name=str(uuid.uuid4()), input=payload
                )
            else:
                raise NotImplementedError(f"no delivery to {arn}")
        except Exception as failure:  # a failed async delivery is recorded; the sender never sees it
            LOG.warning("EventBridge delivery to %s failed: %s", arn, failure)
            with self._lock:
                self.failures.append(FailedDelivery(arn, payload, str(failure)))
        finally:
            with self._lock:
                self._pending -= 1
