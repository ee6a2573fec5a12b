"""The one definition of the training progress line the container prints.

The training entrypoint prints one line per progress update, for example

    lora-metrics step=120/1600 epoch=2 loss=0.0831 lr=1.000e-04 sec_per_step=1.520 eta_seconds=2250

SageMaker reads the numbers with `METRIC_DEFINITIONS` (the state machine's Train state holds a copy, and a
test keeps it equal), the local executor and the CLI read them with `parse_metric_line`. Fields that are not
known (sd-scripts does not report the learning rate on its console, for example) are left out of the line
rather than printed as a placeholder.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lora_pipeline.text_formats import loads_json

METRIC_LINE_PREFIX = "lora-metrics"
# The training container's per-step loss, one JSON object a line: {"step": 12, "epoch": 1, "loss": 0.083}.
LOSS_LOG_NAME = "training_loss.jsonl"

_NUMBER = r"[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
_LINE = re.compile(rf"{METRIC_LINE_PREFIX} step=(?P<step>\d+)/(?P<total>\d+)(?P<rest>(?: \w+=\S+)*)\s*$")
_FIELD = re.compile(rf" (?P<key>\w+)=(?P<value>{_NUMBER})(?=\s|$)")


@dataclass(frozen=True)
class TrainingProgress:
    """Where a training run is. `step` counts optimiser steps from the start of the run, resumes included."""

    step: int
    total_steps: int
    epoch: int | None = None
    loss: float | None = None
    lr: float | None = None
    sec_per_step: float | None = None
    eta_seconds: int | None = None

    @property
    def fraction_done(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps > 0 else 0.0


def format_metric_line(progress: TrainingProgress) -> str:
    parts = [f"{METRIC_LINE_PREFIX} step={progress.step}/{progress.total_steps}"]
    if progress.epoch is not None:
        parts.append(f"epoch={progress.epoch}")
    if progress.loss is not None and math.isfinite(progress.loss):
        parts.append(f"loss={progress.loss:.6g}")
    if progress.lr is not None and math.isfinite(progress.lr):
        parts.append(f"lr={progress.lr:.3e}")
    if progress.sec_per_step is not None and math.isfinite(progress.sec_per_step):
        parts.append(f"sec_per_step={progress.sec_per_step:.3f}")
    if progress.eta_seconds is not None:
        parts.append(f"eta_seconds={progress.eta_seconds}")
    return " ".join(parts)


def parse_metric_line(line: str) -> TrainingProgress | None:
    """The progress in `line`, or None when the line is not a metric line.

    The metric text may be preceded by anything (a CloudWatch timestamp, a log prefix).
    """
    start = line.find(METRIC_LINE_PREFIX + " ")
    if start < 0:
        return None
    match = _LINE.match(line, start)
    if match is None:
        return None
    fields = {m["key"]: m["value"] for m in _FIELD.finditer(match["rest"])}
    return TrainingProgress(
        step=int(match["step"]),
        total_steps=int(match["total"]),
        epoch=int(fields["epoch"]) if "epoch" in fields and fields["epoch"].isdigit() else None,
        loss=float(fields["loss"]) if "loss" in fields else None,
        lr=float(fields["lr"]) if "lr" in fields else None,
        sec_per_step=float(fields["sec_per_step"]) if "sec_per_step" in fields else None,
        eta_seconds=int(float(fields["eta_seconds"])) if "eta_seconds" in fields else None,
    )


def _definition(name: str, field_regex: str) -> dict[str, str]:
    return {"Name": name, "Regex": rf"{METRIC_LINE_PREFIX} step=.* {field_regex}"}


METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": "train:step", "Regex": rf"{METRIC_LINE_PREFIX} step=([0-9]+)/"},
    _definition("train:loss", r"loss=([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)"),
    _definition("train:learning_rate", r"lr=([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)"),
    _definition("train:sec_per_step", r"sec_per_step=([0-9.]+)"),
    _definition("train:eta_seconds", r"eta_seconds=([0-9]+)"),
]


@dataclass(frozen=True)
class LossPoint:
    step: int
    epoch: int | None
    loss: float


def parse_loss_log(text: str) -> list[LossPoint]:
    """The loss log's points by step. A resumed run trains the steps after its saved state again, so a later
    line for a step replaces an earlier one; lines that are not a finite loss are skipped."""
    points: dict[int, LossPoint] = {}
    for line in text.splitlines():
        try:
            record = loads_json(line)
            if not isinstance(record, dict):
                continue
            epoch = record.get("epoch")
            point = LossPoint(
                int(record["step"]), None if epoch is None else int(epoch), float(record["loss"])
            )
        except (ValueError, KeyError, TypeError, OverflowError):
            continue
        if math.isfinite(point.loss):
            points[point.step] = point
    return [points[step] for step in sorted(points)]
