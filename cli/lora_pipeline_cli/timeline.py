"""The live timeline of the embedded stack: states entered, events emitted, training status and progress."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lora_pipeline.training_metrics import parse_metric_line
from lora_pipeline_cli.progress import STDERR
from lora_pipeline_cli.render import duration

if TYPE_CHECKING:
    from embedded_aws import TimelineEntry


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
                soft_wrap=True,
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
