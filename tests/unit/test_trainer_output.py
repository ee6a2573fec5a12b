"""The entrypoint's reading of the trainer console: sd-scripts' progress bar becomes metric lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_pipeline.training_metrics import TrainingProgress, format_metric_line, parse_metric_line
from lora_trainer.trainer_output import TrainerOutput
from lora_trainer.workspace import ResumePoint, SavedState


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _bar(n: int, total: int, remaining: str = "14:40", rate: str = "1.50s/it", loss: str = "0.0831") -> str:
    return f"steps:  12%|#         | {n}/{total} [02:00<{remaining}, {rate}, avr_loss={loss}]"


def test_progress_bar_becomes_a_metric_line_with_the_epoch() -> None:
    output = TrainerOutput(resumed_step=0, clock=_Clock())
    assert output.lines_for("epoch 2/10") == ["epoch 2/10"]
    [line] = output.lines_for(_bar(120, 1600))
    assert parse_metric_line(line) == TrainingProgress(
        step=120, total_steps=1600, epoch=2, loss=0.0831, sec_per_step=1.5, eta_seconds=880
    )


def test_rate_in_iterations_per_second_and_unknown_remaining_time() -> None:
    output = TrainerOutput(resumed_step=0, clock=_Clock())
    [line] = output.lines_for(_bar(1, 100, remaining="?", rate="4.00it/s"))
    progress = parse_metric_line(line)
    assert progress is not None and progress.sec_per_step == 0.25 and progress.eta_seconds is None


def test_bar_redraws_are_throttled_but_the_last_step_is_always_printed() -> None:
    clock = _Clock()
    output = TrainerOutput(resumed_step=0, interval=10.0, clock=clock)
    assert output.lines_for(_bar(1, 3))
    clock.now = 1.0
    assert output.lines_for(_bar(2, 3)) == []
    assert output.last_progress is not None and output.last_progress.step == 2
    clock.now = 2.0
    [last] = output.lines_for(_bar(3, 3))
    assert parse_metric_line(last).step == 3  # type: ignore[union-attr]
    clock.now = 100.0
    assert output.lines_for(_bar(3, 3)) == [], "a redraw of the same step prints nothing"


def test_after_a_resume_steps_count_from_the_start_of_the_run() -> None:
    output = TrainerOutput(resumed_step=400, clock=_Clock())
    [line] = output.lines_for(_bar(1, 1200))
    progress = parse_metric_line(line)
    assert progress is not None and (progress.step, progress.total_steps) == (401, 1600)


def test_smoke_metric_lines_and_other_lines_pass_through_and_only_log_lines_are_kept() -> None:
    output = TrainerOutput(resumed_step=0, clock=_Clock())
    metric = format_metric_line(TrainingProgress(step=1, total_steps=4, loss=0.5))
    assert output.lines_for(metric + "\n") == [metric]
    assert output.lines_for("  ") == []
    assert output.lines_for("ValueError: caption file x.caption is empty") == [
        "ValueError: caption file x.caption is empty"
    ]
    assert list(output.tail) == ["ValueError: caption file x.caption is empty"]


@pytest.mark.parametrize(
    ("resume", "bar_total"),
    [
        # epoch boundary, no skip: train_network.py's bar total is max_train_steps itself
        (
            ResumePoint(SavedState(Path("s"), epoch=3, step=300), 300, skip_batches=False, total_steps=1000),
            1000,
        ),
        # mid-epoch with --skip_until_initial_step: the bar total is max_train_steps less the batches skipped
        (ResumePoint(SavedState(Path("s"), epoch=4, step=50), 350, skip_batches=True, total_steps=1000), 950),
    ],
)
def test_after_any_resume_the_metrics_read_done_of_the_planned_total(
    resume: ResumePoint, bar_total: int
) -> None:
    output = TrainerOutput(resume.completed_steps, resume.total_steps, clock=_Clock())
    [line] = output.lines_for(_bar(1, bar_total))
    progress = parse_metric_line(line)
    assert progress is not None
    assert (progress.step, progress.total_steps) == (resume.completed_steps + 1, 1000)
