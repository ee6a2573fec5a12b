from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from lora_pipeline import events, notifications
from lora_pipeline.salvage import SalvagedLora, has_complete_state, how_it_stopped, newest_epoch_lora

COMMON: dict[str, Any] = {
    "dataset": "bluebot",
    "run_id": "20261126-112430-3f9a",
    "bucket": "lora-bucket",
    "time": "2026-11-26T11:24:30Z",
}


def _problem(code: str, severity: str = "error", file: str | None = "10_blue/a.png") -> dict[str, Any]:
    return {
        "severity": severity,
        "code": code,
        "file": file,
        "message": f"{code} happened",
        "fix": f"undo {code}",
    }


def rejected(problems: list[dict[str, Any]], errors: int, omitted: int = 0) -> events.DatasetRejected:
    return events.DatasetRejected(
        **COMMON,
        reason="the dataset has errors",
        error_count=errors,
        warning_count=len(problems) + omitted - errors,
        problems=problems,
        problems_omitted=omitted,
        report_uri="s3://lora-bucket/runs/bluebot/r/validation.json",
    )


def succeeded(**overrides: Any) -> events.TrainingSucceeded:
    fields = {
        **COMMON,
        "training_job_name": "bluebot-20261126-112430-3f9a-0",
        "output_name": "bluebot_v1",
        "model_uri": "s3://lora-bucket/runs/bluebot/r/model/bluebot_v1.safetensors",
        "manifest_uri": "s3://lora-bucket/runs/bluebot/r/model/manifest.json",
        "sha256": "ab" * 32,
        "size_bytes": 228_000_000,
        "instance_type": "ml.g5.2xlarge",
        "spot": True,
        "training_seconds": 3725,
        "billable_seconds": 1300,
        "estimated_cost_usd": 0.547,
        "changed_during_run": False,
        "console_url": "https://console/job",
    }
    fields.update(overrides)
    return events.TrainingSucceeded(**fields)


def test_rejection_lists_every_problem_with_its_fix_and_the_next_step() -> None:
    problems = [
        _problem("IMG_TOO_SMALL"),
        _problem("NO_CAPTION"),
        _problem("CFG_X"),
        _problem("W", "warning", None),
    ]
    message = notifications.render(rejected(problems, errors=3))
    assert message.subject == "Dataset rejected: bluebot (3 problems)"
    for p in problems:
        assert f"{p['code']}]" in message.body and f"Fix: undo {p['code']}" in message.body
    assert "1. [ERROR IMG_TOO_SMALL] 10_blue/a.png: IMG_TOO_SMALL happened" in message.body
    assert "4. [WARNING W] W happened" in message.body
    assert "nothing was spent on GPUs" in message.body
    assert "lora-pipeline validate" in message.body
    assert "s3://lora-bucket/runs/bluebot/r/validation.json" in message.body


def test_rejection_counts_the_problems_left_to_the_report() -> None:
    body = notifications.render(rejected([_problem("X")], errors=1, omitted=70)).body
    assert "... and 70 more problems in the full report below." in body
    assert "more problem" not in notifications.render(rejected([_problem("X")], errors=1)).body


def test_one_problem_is_singular() -> None:
    assert (
        notifications.render(rejected([_problem("X")], errors=1)).subject
        == "Dataset rejected: bluebot (1 problem)"
    )


def test_success_says_where_the_model_is_what_it_cost_and_when_the_link_dies() -> None:
    link = notifications.DownloadLink(
        "https://signed.example/x", datetime(2026, 11, 27, 11, 0, tzinfo=UTC), "May stop working earlier."
    )
    message = notifications.render(succeeded(), link)
    assert message.subject == "LoRA ready: bluebot"
    body = message.body
    assert "Model: s3://lora-bucket/runs/bluebot/r/model/bluebot_v1.safetensors" in body
    assert "Download (expires 2026-11-27 11:00 UTC): https://signed.example/x" in body
    assert "May stop working earlier." in body
    assert "Training time: 1 h 02 min" in body
    assert "Billable: 1300 s (managed spot, ml.g5.2xlarge)" in body
    assert "Estimated cost: $0.55" in body
    assert "changed while this run" not in body
    assert "<lora:bluebot_v1:1>" in body


def test_success_mentions_a_dataset_that_changed_mid_run() -> None:
    body = notifications.render(succeeded(changed_during_run=True, estimated_cost_usd=None)).body
    assert "the dataset changed while this run was in progress" in body
    assert "unknown (instance type not in the price table)" in body
    assert "Download" not in body


def test_failure_shows_stage_reason_and_where_to_look() -> None:
    failed = events.TrainingFailed(
        **COMMON,
        stage="training",
        error="States.TaskFailed",
        cause="job failed",
        failure_reason="AlgorithmError: CUDA out of memory",
        training_job_name="bluebot-x-0",
        console_url="https://console/job",
        logs_url="https://console/logs",
    )
    message = notifications.render(failed)
    assert message.subject == "Training failed: bluebot (training)"
    assert "SageMaker says: AlgorithmError: CUDA out of memory" in message.body
    assert "Logs: https://console/logs" in message.body


@pytest.mark.parametrize(("job", "text"), [(None, "place in the queue"), ("job-0", "job-0 was stopped")])
def test_cancellation(job: str | None, text: str) -> None:
    detail = events.TrainingCancelled(
        **COMMON, execution_status="ABORTED", training_job_name=job, training_job_stopped=job is not None
    )
    message = notifications.render(detail)
    assert message.subject == "Training cancelled: bluebot"
    assert text in message.body


def test_subjects_are_ascii_single_line_and_short() -> None:
    detail = rejected([_problem("X")], errors=1).model_copy(update={"dataset": "名前\n" + "d" * 200})
    subject = notifications.render(detail).subject
    assert subject.isascii() and "\n" not in subject and len(subject) < 100


def test_durations() -> None:
    assert notifications.duration(59) == "59 s"
    assert notifications.duration(61) == "1 min 01 s"
    assert notifications.duration(7200) == "2 h 00 min"


def _salvaged(**overrides: Any) -> SalvagedLora:
    values: dict[str, Any] = {
        "model_uri": "s3://lora-bucket/runs/bluebot/r/model/bluebot-000009.safetensors",
        "manifest_uri": "s3://lora-bucket/runs/bluebot/r/model/manifest.json",
        "sha256": "ab" * 32,
        "size_bytes": 228_000_000,
        "epoch": 9,
        "epochs": 10,
        "stopped": how_it_stopped({"TrainingJobStatus": "Stopped", "SecondaryStatus": "MaxRuntimeExceeded"}),
        "resumable": True,
    }
    return SalvagedLora(**(values | overrides))


def test_a_run_stopped_at_max_runtime_names_the_saved_epoch_and_how_to_resume() -> None:
    failed = events.TrainingFailed(
        **COMMON,
        stage="training",
        error="SageMaker.AmazonSageMakerException",
        cause="Training job stopped",
        failure_reason=None,
        training_job_name="bluebot-x-0",
        console_url="https://console/job",
        logs_url=None,
        salvaged=_salvaged(),
    )
    body = notifications.render(failed).body
    assert "Stopped at MaxRuntime after epoch 9 of 10: that epoch's LoRA is kept as a partial result." in body
    assert "bluebot-000009.safetensors" in body and "lora-pipeline resume bluebot" in body


def test_a_cancelled_run_without_a_state_to_resume_from_does_not_offer_resume() -> None:
    detail = events.TrainingCancelled(
        **COMMON,
        execution_status="ABORTED",
        training_job_name="job-0",
        training_job_stopped=True,
        salvaged=_salvaged(stopped=how_it_stopped(None), epochs=None, resumable=False),
    )
    body = notifications.render(detail).body
    assert "Cancelled after epoch 9: that epoch's LoRA" in body and "lora-pipeline resume" not in body


@pytest.mark.parametrize(
    ("names", "newest", "resumable"),
    [
        (
            ["b-000001.safetensors", "b-000010.safetensors", "b-000002.safetensors"],
            ("b-000010.safetensors", 10),
            False,
        ),
        (["b.safetensors", "b-step00000050.safetensors", "b-state/train_state.json"], None, False),
        (["b-000003-state/train_state.json", "b-000003-state/random_states_0.pkl"], None, True),
        (["b-step00000050-state/random_states_0.pkl"], None, False),
    ],
)
def test_what_a_stopped_run_leaves_is_read_from_sd_scripts_names(
    names: list[str], newest: tuple[str, int] | None, resumable: bool
) -> None:
    assert newest_epoch_lora(names, "b") == newest
    assert has_complete_state(names) is resumable


def test_rejection_subject_counts_problems_as_the_body_does() -> None:
    problems = [_problem("A"), _problem("W1", "warning"), _problem("B"), _problem("W2", "warning", None)]
    message = notifications.render(rejected(problems, errors=2))
    count = message.subject.rsplit("(", 1)[1].rstrip(")")
    assert count == "2 problems"
    error_block = message.body.split(f"{count} to fix (errors):\n", 1)[1].split("\n\n", 1)[0]
    assert [line.split("]")[0] for line in error_block.splitlines() if not line.startswith(" ")] == [
        "1. [ERROR A",
        "2. [ERROR B",
    ]
    assert "2 warnings (these do not block training):\n3. [WARNING W1]" in message.body


def test_rejection_without_errors_puts_no_count_in_the_subject() -> None:
    message = notifications.render(rejected([_problem("W", "warning")], errors=0))
    assert message.subject == "Dataset rejected: bluebot"
    assert "to fix (errors)" not in message.body


def test_rejection_advice_is_an_upload_that_replaces_the_dataset() -> None:
    body = notifications.render(rejected([_problem("X")], errors=1)).body
    assert "  lora-pipeline upload <folder> --dataset bluebot --start\n" in body
    assert "aws s3 sync <folder> s3://lora-bucket/datasets/bluebot/ --delete" in body
    assert "removing the files you\ndeleted or renamed" in body
