"""What the entrypoint prints of the trainer's console: plain lines, with progress bars turned into metric lines.

sd-scripts draws a tqdm bar (`steps:  12%|#   | 120/1000 [02:00<14:40, 1.00s/it, avr_loss=0.0831]`) redrawn with
carriage returns; CloudWatch would keep every redraw. The bar becomes a `lora-metrics` line at most every
`interval` seconds (and at the last step). The smoke trainer prints metric lines itself; they pass through.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable

from lora_pipeline.training_metrics import TrainingProgress, format_metric_line, parse_metric_line

_BAR = re.compile(
    r"^steps:\s*\d+%\|.*?\|\s*(?P<n>\d+)/(?P<total>\d+)\s*\[(?P<elapsed>[\d:]+)<(?P<remaining>[\d:?]+)"
    r"(?:,\s*(?P<rate>[\d.]+)(?P<unit>s/it|it/s))?"
)
_LOSS = re.compile(r"avr_loss=(?P<loss>[-+]?[\d.]+(?:[eE][-+]?\d+)?)")
_EPOCH = re.compile(r"^\s*epoch (?P<epoch>\d+)/(?P<epochs>\d+)\s*$")
TAIL_LINES = 60


def _seconds(clock_text: str) -> int | None:
    if "?" in clock_text:
        return None
    seconds = 0
    for part in clock_text.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds


class TrainerOutput:
    """Feed it the trainer's console split at line ends and carriage returns; print what it returns."""

    def __init__(
        self,
        resumed_step: int = 0,
        total_steps: int | None = None,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        """`resumed_step`: optimizer steps done before this launch; `total_steps`: the run's planned total, or
        None to take the bar's own total (right for a run that did not resume)."""
        self.resumed_step = resumed_step
        self.total_steps = total_steps
        self.interval = interval
        self.clock = clock
        self.epoch: int | None = None
        self.last_progress: TrainingProgress | None = None
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._last_emitted_at: float | None = None

    def lines_for(self, segment: str) -> list[str]:
        text = segment.rstrip()
        if not text:
            return []
        if (progress := parse_metric_line(text)) is not None:
            self.last_progress = progress
            return [text]
        if (bar := _BAR.search(text)) is not None:
            return self._from_bar(bar, text)
        if (epoch := _EPOCH.match(text)) is not None:
            self.epoch = int(epoch["epoch"])
        self.tail.append(text)
        return [text]

    def _from_bar(self, bar: re.Match[str], text: str) -> list[str]:
        # After a resume the bar counts this launch's steps from 0, and its total depends on how sd-scripts
        # resumed (train_network.py: max_train_steps less the batches still to skip in the resumed epoch).
        step = self.resumed_step + int(bar["n"])
        total = self.total_steps if self.total_steps is not None else self.resumed_step + int(bar["total"])
        if step == 0 or (self.last_progress is not None and step == self.last_progress.step):
            return []
        now = self.clock()
        due = self._last_emitted_at is None or now - self._last_emitted_at >= self.interval or step >= total
        rate = float(bar["rate"]) if bar["rate"] else None
        sec_per_step = None if not rate else rate if bar["unit"] == "s/it" else 1.0 / rate
        loss = _LOSS.search(text)
        self.last_progress = TrainingProgress(
            step=step,
            total_steps=total,
            epoch=self.epoch,
            loss=float(loss["loss"]) if loss else None,
            sec_per_step=sec_per_step,
            eta_seconds=_seconds(bar["remaining"]),
        )
        if not due:
            return []
        self._last_emitted_at = now
        return [format_metric_line(self.last_progress)]
