"""The state of the embedded stack that is up: what the moto adaptations act on while they run."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .eventbridge import Deliveries
from .lambda_runtime import LambdaHost
from .sagemaker import TrainingJobRunner


@dataclass(frozen=True)
class RecordedEvent:
    """One PutEvents entry that EventBridge accepted."""

    bus: str
    source: str
    detail_type: str
    detail: dict[str, Any]
    resources: tuple[str, ...]


@dataclass(frozen=True)
class SnsMessage:
    """What SNS would have sent to every subscriber (an email: subject and body)."""

    topic_arn: str
    subject: str | None
    message: str


class Runtime:
    def __init__(self, lambdas: LambdaHost, deliveries: Deliveries, training: TrainingJobRunner) -> None:
        self.lambdas = lambdas
        self.deliveries = deliveries
        self.training = training
        self.events: list[RecordedEvent] = []
        self.event_listeners: list[Callable[[RecordedEvent], None]] = []
        self.sns_listeners: list[Callable[[SnsMessage], None]] = []
        self._lock = threading.Lock()
        self._busy = 0
        self.stopping = threading.Event()
        self.followers: list[threading.Thread] = []

    def record_event(self, bus: str, entry: dict[str, Any]) -> None:
        event = RecordedEvent(
            bus=bus,
            source=entry["Source"],
            detail_type=entry["DetailType"],
            detail=json.loads(entry["Detail"]),
            resources=tuple(entry.get("Resources", [])),
        )
        with self._lock:
            self.events.append(event)
        for listener in list(self.event_listeners):
            listener(event)

    def record_sns_message(self, topic_arn: str, subject: str | None, message: str) -> None:
        published = SnsMessage(topic_arn, subject, message)
        for listener in list(self.sns_listeners):
            listener(published)

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Marks work in flight that is neither a delivery nor a running execution (e.g. an ending one)."""
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1

    def in_flight(self) -> int:
        with self._lock:
            busy = self._busy
        return busy + self.deliveries.pending() + self.training.active()


_current: Runtime | None = None


class NoEmbeddedStack(RuntimeError):
    """An adapted moto path ran while no EmbeddedStack is up."""


def current_or_none() -> Runtime | None:
    return _current


def current() -> Runtime:
    if _current is None:
        raise NoEmbeddedStack("the embedded AWS adaptations need an EmbeddedStack that is up")
    return _current


def activate(runtime: Runtime | None) -> None:
    global _current
    _current = runtime
