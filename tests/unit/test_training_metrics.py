import re

import pytest

from lora_pipeline.training_metrics import (
    METRIC_DEFINITIONS,
    TrainingProgress,
    format_metric_line,
    parse_metric_line,
)

FULL = TrainingProgress(
    step=120, total_steps=1600, epoch=2, loss=0.0831, lr=1e-4, sec_per_step=1.52, eta_seconds=2250
)


def test_line_round_trips() -> None:
    line = format_metric_line(FULL)
    assert (
        line
        == "lora-metrics step=120/1600 epoch=2 loss=0.0831 lr=1.000e-04 sec_per_step=1.520 eta_seconds=2250"
    )
    assert parse_metric_line(line) == FULL


def test_unknown_fields_are_left_out_and_parse_as_none() -> None:
    progress = TrainingProgress(step=3, total_steps=10, loss=0.5)
    line = format_metric_line(progress)
    assert "lr=" not in line and "epoch=" not in line
    assert parse_metric_line(line) == progress


def test_non_finite_numbers_are_left_out() -> None:
    line = format_metric_line(TrainingProgress(step=1, total_steps=2, loss=float("nan")))
    assert "loss" not in line


def test_parses_after_a_log_prefix() -> None:
    line = "2026-11-26T10:00:00.000Z  " + format_metric_line(FULL)
    assert parse_metric_line(line) == FULL


@pytest.mark.parametrize(
    "line",
    [
        "",
        "steps:  10%|#         | 1/10 [00:01<00:09, 1.00it/s, avr_loss=0.1]",
        "lora-metrics step=abc/10 loss=1",
        "lora-metrics loss=0.1",
    ],
)
def test_other_lines_are_not_metrics(line: str) -> None:
    assert parse_metric_line(line) is None


def test_fraction_done() -> None:
    assert TrainingProgress(step=5, total_steps=10).fraction_done == 0.5
    assert TrainingProgress(step=0, total_steps=0).fraction_done == 0.0


def test_sagemaker_regexes_read_each_number_from_the_line() -> None:
    line = format_metric_line(FULL)
    expected = {
        "train:step": 120,
        "train:loss": 0.0831,
        "train:learning_rate": 1e-4,
        "train:sec_per_step": 1.52,
        "train:eta_seconds": 2250,
    }
    found = {}
    for definition in METRIC_DEFINITIONS:
        match = re.search(definition["Regex"], line)
        assert match is not None, definition
        found[definition["Name"]] = float(match.group(1))
    assert found == pytest.approx(expected)


def test_sagemaker_regexes_ignore_sd_scripts_progress_bars() -> None:
    line = "steps:  10%|#   | 1/10 [00:01<00:09, 1.00it/s, avr_loss=0.1]"
    assert all(re.search(d["Regex"], line) is None for d in METRIC_DEFINITIONS)


def test_sagemaker_regexes_skip_fields_missing_from_the_line() -> None:
    line = format_metric_line(TrainingProgress(step=1, total_steps=2, loss=0.3))
    by_name = {d["Name"]: d["Regex"] for d in METRIC_DEFINITIONS}
    assert re.search(by_name["train:learning_rate"], line) is None
    assert re.search(by_name["train:loss"], line).group(1) == "0.3"  # type: ignore[union-attr]
