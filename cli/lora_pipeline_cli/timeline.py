"""The live timeline of the embedded stack: states entered, events emitted, training progress."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lora_pipeline.training_metrics import parse_metric_line
from lora_pipeline_cli.progress import STDERR
from lora_pipeline_cli.render import duration

if TYPE_CHECKING:
    from embedded_aws import EmbeddedStack, TimelineEntry

STATE_POLL_SECONDS = 0.25


@dataclass
class Timeline:
    """Prints what happens, with the time since the demo started; safe to call from any thread."""

    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, kind: str, text: str) -> None:
        with self.lock:
            STDERR.print(
                f"[dim]{time.monotonic() - self.started:7.1f}s[/dim]  [bold]{kind:<9}[/bold] {text}",
                highlight=False,
            )

    def on_entry(self, entry: TimelineEntry) -> None:
        if entry.kind == "training-log":
            progress = parse_metric_line(entry.text)
            if progress is None:
                return
            loss = f", loss {progress.loss:.4f}" if progress.loss is not None else ""
            eta = f", ETA {duration(progress.eta_seconds)}" if progress.eta_seconds is not None else ""
            self.say("training", f"step {progress.step}/{progress.total_steps}{loss}{eta}")
        elif entry.kind == "event":
            self.say("event", entry.text)
        else:
            self.say(entry.kind.removeprefix("training-"), entry.text)


def follow_states(stack: EmbeddedStack, timeline: Timeline, stop: threading.Event) -> None:
    """Announce every state the runs enter (the embedded Step Functions keeps the history)."""
    seen: dict[str, int] = {}
    while not stop.is_set():
        for record in stack.executions():
            states = record.states_entered()
            for state in states[seen.get(record.arn, 0) :]:
                timeline.say("state", f"{record.name}: {state}")
            seen[record.arn] = len(states)
        stop.wait(STATE_POLL_SECONDS)
