"""How uploads become runs and runs share training slots, on the embedded AWS (real template, ASL, handlers)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from embedded_aws.stack import EmbeddedStack
from embedded_aws.training import (
    ArchiveExecutor,
    HeldExecutor,
    TrainingExecutor,
    TrainingProgress,
    TrainingResult,
)
from lora_pipeline.s3_layout import RunLayout
from tests.integration.pipeline_support import (
    dataset,
    emails,
    lora_archive,
    pipeline,
    pipeline_events,
    redeliver_upload,
    table_item,
    upload,
)
from tests.lora_files import kohya_metadata, lora_tensors, safetensors_bytes

pytestmark = pytest.mark.slow


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def held_jobs(executor: HeldExecutor, count: int) -> Callable[[], bool]:
    return lambda: len(executor.running()) == count


def running_job_datasets(stack: EmbeddedStack) -> set[str]:
    return {
        job["HyperParameters"]["dataset"]
        for job in stack.training_jobs()
        if job["TrainingJobStatus"] == "InProgress"
    }


def test_slow_upload_spanning_the_quiet_period_is_one_run_with_every_file(tmp_path: Path) -> None:
    folder = dataset(tmp_path, ready=False, images=5)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with pipeline(ArchiveExecutor(lora_archive()), QuietPeriodSeconds="3") as stack:
        for path in files:  # about 11 files, 0.8 s apart: the upload takes longer than the quiet period
            stack.s3.put_object(
                Bucket=stack.bucket,
                Key=f"datasets/bluebot/{path.relative_to(folder).as_posix()}",
                Body=path.read_bytes(),
            )
            time.sleep(0.8)
        stack.wait_until_idle(timeout=90)

        (execution,) = stack.executions()
        assert execution.status == "SUCCEEDED"
        layout = RunLayout("bluebot", execution.input["run_id"])
        report = json.loads(
            stack.s3.get_object(Bucket=stack.bucket, Key=layout.validation_key)["Body"].read()
        )
        assert report["summary"]["total_images"] == 5
        assert "LoRA ready: bluebot" in emails(stack)


def test_duplicate_late_and_mid_run_events(tmp_path: Path) -> None:
    held = HeldExecutor(ArchiveExecutor(lora_archive()))
    with pipeline(held) as stack:
        # S3 event times have whole seconds: `_READY` comes a second after the files, so that their
        # events are certainly older than the settle (an event in the settle's own second counts as a change).
        keys = upload(stack, dataset(tmp_path, ready=False))
        time.sleep(1.1)
        stack.s3.put_object(Bucket=stack.bucket, Key="datasets/bluebot/_READY", Body=b"")
        wait_for(held_jobs(held, 1))

        # Repeated and late deliveries of objects from before the settle are not changes.
        for key in [*keys, "datasets/bluebot/_READY"]:
            assert redeliver_upload(stack, key)["action"] == "stale"
        # A new object after the settle is a change: noted, and trained by one follow-up run.
        time.sleep(1.1)
        stack.s3.put_object(
            Bucket=stack.bucket, Key="datasets/bluebot/10_bluebot/late.caption", Body=b"bluebot"
        )
        wait_for(
            lambda: table_item(stack, "DATASET#bluebot", "DATASET").get("changed_during_run") is not None
        )
        held.release()
        stack.wait_until_idle(timeout=60)

        first, follow_up = stack.executions()
        assert first.status == follow_up.status == "SUCCEEDED"
        succeeded = {e["run_id"]: e for e in pipeline_events(stack, "Training Succeeded")}
        assert succeeded[first.input["run_id"]]["changed_during_run"] is True
        assert succeeded[follow_up.input["run_id"]]["changed_during_run"] is False
        layout = RunLayout("bluebot", follow_up.input["run_id"])
        report = json.loads(
            stack.s3.get_object(Bucket=stack.bucket, Key=layout.validation_key)["Body"].read()
        )
        assert "10_bluebot/late.caption" in json.dumps(report)
        first_email, follow_up_email = (
            m.message
            for m in stack.sns_messages(stack.outputs["TopicArn"])
            if m.subject == "LoRA ready: bluebot"
        )
        assert "the dataset changed while this run was in progress" in first_email
        assert "A follow-up run" in first_email and "changed" not in follow_up_email

        # After the runs: old events still start nothing, a new upload starts the next run.
        for key in keys[:3]:
            assert redeliver_upload(stack, key)["action"] == "stale"
        time.sleep(1.1)
        stack.s3.put_object(Bucket=stack.bucket, Key="datasets/bluebot/_READY", Body=b"")
        stack.wait_until_idle(timeout=60)
        executions = stack.executions()
        assert len(executions) == 3 and executions[2].status == "SUCCEEDED"
        assert len({e.input["run_id"] for e in executions}) == 3


class ConcurrencyProbe:
    """Completes jobs like `then`, slowly enough to overlap, and records how many ran at once."""

    def __init__(self, then: TrainingExecutor, seconds: float) -> None:
        self._then = then
        self._seconds = seconds
        self._lock = threading.Lock()
        self._running = 0
        self.most = 0
        self.started: list[str] = []

    def admit(self, request: dict[str, Any]) -> None:
        self._then.admit(request)

    def run(self, request: dict[str, Any], s3_client: Any, progress: TrainingProgress) -> TrainingResult:
        with self._lock:
            self._running += 1
            self.most = max(self.most, self._running)
            self.started.append(request["HyperParameters"]["dataset"])
        try:
            time.sleep(self._seconds)
            return self._then.run(request, s3_client, progress)
        finally:
            with self._lock:
                self._running -= 1

    def stop(self, job_name: str) -> None:
        self._then.stop(job_name)


def test_twenty_datasets_with_a_cap_of_two_all_finish_once(tmp_path: Path) -> None:
    probe = ConcurrencyProbe(
        ArchiveExecutor(lambda request: lora_archive(request["HyperParameters"]["output_name"])), 0.5
    )
    names = [f"set{i:02d}" for i in range(20)]
    with pipeline(probe, MaxConcurrentTrainingJobs="2") as stack:
        for name in names:
            upload(stack, dataset(tmp_path, name, images=1))
        stack.wait_until_idle(timeout=400)

        executions = stack.executions()
        assert sorted(e.input["dataset"] for e in executions) == names
        assert {e.status for e in executions} == {"SUCCEEDED"}
        assert sorted(probe.started) == names  # each trained exactly once
        assert probe.most == 2
        assert sorted(e["dataset"] for e in pipeline_events(stack, "Training Succeeded")) == names
        assert {f"LoRA ready: {name}" for name in names} <= set(emails(stack))
        slots = table_item(stack, "SLOTS", "SLOTS")
        assert "holders" not in slots and slots["queue"]["L"] == []


def test_cancel_stops_the_job_and_frees_the_slot_and_the_queue(tmp_path: Path) -> None:
    held = HeldExecutor(
        ArchiveExecutor(lambda request: lora_archive(request["HyperParameters"]["output_name"]))
    )
    with pipeline(held, MaxConcurrentTrainingJobs="1") as stack:
        sfn = stack.client("stepfunctions")
        upload(stack, dataset(tmp_path, "first"))
        wait_for(held_jobs(held, 1))
        upload(stack, dataset(tmp_path, "second"))
        upload(stack, dataset(tmp_path, "third"))
        wait_for(lambda: len(table_item(stack, "SLOTS", "SLOTS").get("queue", {}).get("L", [])) == 2)
        by_dataset = {e.input["dataset"]: e for e in stack.executions()}
        checkpoint = (
            f"runs/first/{by_dataset['first'].input['run_id']}/checkpoints/bluebot-1-state/train_state.json"
        )
        stack.s3.put_object(Bucket=stack.bucket, Key=checkpoint, Body=b"{}")  # what a spot save leaves

        sfn.stop_execution(executionArn=by_dataset["second"].arn)  # waiting in the queue
        sfn.stop_execution(executionArn=by_dataset["first"].arn)  # training
        wait_for(lambda: running_job_datasets(stack) == {"third"}, timeout=60)
        held.release()
        stack.wait_until_idle(timeout=60)

        cancelled = {e["dataset"]: e for e in pipeline_events(stack, "Training Cancelled")}
        assert cancelled["first"]["training_job_stopped"] is True
        assert cancelled["first"]["training_job_name"].startswith("first-")
        assert cancelled["second"]["training_job_name"] is None
        statuses = {j["HyperParameters"]["dataset"]: j["TrainingJobStatus"] for j in stack.training_jobs()}
        assert statuses == {"first": "Stopped", "third": "Completed"}
        assert [e["dataset"] for e in pipeline_events(stack, "Training Succeeded")] == ["third"]
        assert {"Training cancelled: first", "Training cancelled: second", "LoRA ready: third"} <= set(
            emails(stack)
        )
        for name in ("first", "second", "third"):
            assert "active_run" not in table_item(stack, f"DATASET#{name}", "DATASET")
        assert not any(
            "/checkpoints/" in o["Key"] for o in stack.s3.list_objects_v2(Bucket=stack.bucket)["Contents"]
        )
        slots = table_item(stack, "SLOTS", "SLOTS")
        assert "holders" not in slots and slots["queue"]["L"] == []


def test_a_cancelled_run_publishes_its_newest_epoch_and_keeps_what_resume_needs(tmp_path: Path) -> None:
    held = HeldExecutor(ArchiveExecutor(lora_archive()))
    with pipeline(held) as stack:
        upload(stack, dataset(tmp_path))
        wait_for(held_jobs(held, 1))
        (execution,) = stack.executions()
        checkpoints = RunLayout("bluebot", execution.input["run_id"]).checkpoints_prefix
        saved = {
            "bluebot-000002.safetensors": safetensors_bytes(
                lora_tensors(), kohya_metadata() | {"ss_num_epochs": "4"}
            ),
            "bluebot-000002-state/train_state.json": b'{"current_epoch": 2, "current_step": 20}',
            "bluebot-000002-state/random_states_0.pkl": b"rng",
        }
        for name, body in saved.items():
            stack.s3.put_object(Bucket=stack.bucket, Key=checkpoints + name, Body=body)

        stack.client("stepfunctions").stop_execution(executionArn=execution.arn)
        stack.wait_until_idle(timeout=60)

        (cancelled,) = pipeline_events(stack, "Training Cancelled")
        assert cancelled["salvaged"]["stopped"] == "cancelled" and cancelled["salvaged"]["epoch"] == 2
        assert "Cancelled after epoch 2 of 4" in emails(stack)["Training cancelled: bluebot"]
        kept = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=checkpoints)["Contents"]
        assert sorted(o["Key"].removeprefix(checkpoints) for o in kept) == sorted(saved)


def test_waiting_runs_train_in_the_order_they_arrived(tmp_path: Path) -> None:
    held = HeldExecutor(
        ArchiveExecutor(lambda request: lora_archive(request["HyperParameters"]["output_name"]))
    )
    order = ["d3", "d1", "d4", "d2"]
    with pipeline(held, MaxConcurrentTrainingJobs="1") as stack:
        upload(stack, dataset(tmp_path, "first"))
        wait_for(held_jobs(held, 1))
        for count, name in enumerate(order, start=1):
            upload(stack, dataset(tmp_path, name))
            wait_for(
                lambda n=count: len(table_item(stack, "SLOTS", "SLOTS").get("queue", {}).get("L", [])) == n
            )
        held.release()
        stack.wait_until_idle(timeout=120)

        jobs = sorted(stack.training_jobs(), key=lambda job: job["CreationTime"])
        assert [job["HyperParameters"]["dataset"] for job in jobs] == ["first", *order]
