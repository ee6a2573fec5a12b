"""The ingest use case's decisions, against the in-memory run table and Step Functions (tests/fakes.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lora_pipeline.dataset_lock import IngestAction
from lora_pipeline.use_cases.ingest import ingest_upload
from tests.fakes import FakeExecutions, InMemoryRunTable

BUCKET = "bkt"
T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
EVERY = timedelta(seconds=30)


def _upload(
    table: InMemoryRunTable,
    sfn: FakeExecutions,
    key: str,
    seconds: float,
    object_seconds: float | None = None,
) -> IngestAction | None:
    """An upload whose event arrives `seconds` after T0 for an object made `object_seconds` after T0."""
    object_time = T0 + timedelta(seconds=seconds if object_seconds is None else object_seconds)
    return ingest_upload(table, sfn, BUCKET, key, object_time, T0 + timedelta(seconds=seconds), EVERY)


def test_the_first_upload_starts_one_run_named_after_the_dataset() -> None:
    table, sfn, known = InMemoryRunTable(), FakeExecutions(), []
    action = ingest_upload(
        table, sfn, BUCKET, "datasets/blue bot/10_a/1.png", T0, T0, EVERY, run_known=known.append
    )
    assert action is IngestAction.START
    ((name, run_input),) = sfn.started
    assert run_input == {"dataset": "blue bot", "run_id": known[0], "bucket": BUCKET}
    assert name == f"blue-bot-{known[0]}"
    assert table.run_status("blue bot", known[0]) == "RUNNING"
    assert _upload(table, sfn, "datasets/blue bot/10_a/2.png", 1) is IngestAction.HEARTBEAT
    assert len(sfn.started) == 1


def test_a_key_outside_the_dataset_folders_is_ignored() -> None:
    table, sfn = InMemoryRunTable(), FakeExecutions()
    assert _upload(table, sfn, "runs/d/r/validation.json", 0) is None
    assert (table.datasets, sfn.started) == ({}, [])


def test_heartbeats_are_sent_at_most_once_per_interval_and_ready_ends_the_wait() -> None:
    table, sfn = InMemoryRunTable(), FakeExecutions()
    _upload(table, sfn, "datasets/d/10_a/1.png", 0)
    assert _upload(table, sfn, "datasets/d/10_a/2.png", 1) is IngestAction.HEARTBEAT
    assert sfn.settle_calls == []  # no token stored yet: nothing to prolong
    table.store_settle_token("d", table.datasets["d"]["active_run"], "token-1")
    for seconds in (2, 10, 31, 33):
        assert _upload(table, sfn, f"datasets/d/10_a/{seconds}.png", seconds) is IngestAction.HEARTBEAT
    assert sfn.settle_calls == [("heartbeat", "token-1"), ("heartbeat", "token-1")]  # at 2 s and at 33 s
    assert _upload(table, sfn, "datasets/d/_READY", 40) is IngestAction.READY
    assert sfn.settle_calls[-1] == ("success", "token-1")


def test_an_upload_as_the_quiet_period_ends_marks_the_run_changed() -> None:
    table, sfn = InMemoryRunTable(), FakeExecutions(closed_tokens={"token-1"})
    known: list[str] = []
    ingest_upload(table, sfn, BUCKET, "datasets/d/1.png", T0, T0, EVERY, run_known=known.append)
    table.store_settle_token("d", known[0], "token-1")
    assert _upload(table, sfn, "datasets/d/2.png", 5) is IngestAction.CHANGED_DURING_RUN
    assert table.changed_during_run("d", known[0])


def test_after_settling_new_data_marks_the_run_changed_and_old_or_ready_events_are_stale() -> None:
    table, sfn = InMemoryRunTable(), FakeExecutions()
    known: list[str] = []
    ingest_upload(table, sfn, BUCKET, "datasets/d/1.png", T0, T0, EVERY, run_known=known.append)
    table.mark_settled("d", known[0], T0 + timedelta(seconds=60))
    assert _upload(table, sfn, "datasets/d/late.png", 70, object_seconds=10) is IngestAction.STALE
    assert _upload(table, sfn, "datasets/d/_READY", 70) is IngestAction.STALE
    assert not table.changed_during_run("d", known[0])
    assert _upload(table, sfn, "datasets/d/new.png", 70) is IngestAction.CHANGED_DURING_RUN
    assert table.changed_during_run("d", known[0])
    assert len(sfn.started) == 1


def test_an_event_older_than_the_last_run_end_starts_nothing() -> None:
    table, sfn = InMemoryRunTable(), FakeExecutions()
    known: list[str] = []
    ingest_upload(table, sfn, BUCKET, "datasets/d/1.png", T0, T0, EVERY, run_known=known.append)
    table.finish("d", known[0], "SUCCEEDED", T0 + timedelta(minutes=5), follow_up=True)
    assert _upload(table, sfn, "datasets/d/1.png", 400, object_seconds=0) is IngestAction.STALE
    assert _upload(table, sfn, "datasets/d/2.png", 400) is IngestAction.START
    assert len(sfn.started) == 2


def test_a_start_that_fails_frees_the_dataset_for_the_retry() -> None:
    table, sfn = InMemoryRunTable(), FakeExecutions(down=True)
    with pytest.raises(RuntimeError, match="down"):
        _upload(table, sfn, "datasets/d/1.png", 0)
    assert table.dataset_state("d")[0].active is None and table.runs == {}
    sfn.down = False
    assert _upload(table, sfn, "datasets/d/1.png", 0) is IngestAction.START


class _RacedRunTable(InMemoryRunTable):
    """Another ingest call takes the dataset's lock between this call's read and its write."""

    def try_start(
        self, dataset: str, run_id: str, ready: bool, now: datetime, last_finished: str | None
    ) -> bool:
        if not self.datasets.get(dataset, {}).get("active_run"):
            super().try_start(dataset, "other-run", False, now, last_finished)
            return False
        return super().try_start(dataset, run_id, ready, now, last_finished)


def test_losing_the_lock_to_a_concurrent_upload_counts_this_one_in_that_run() -> None:
    table, sfn = _RacedRunTable(), FakeExecutions()
    known: list[str] = []
    action = ingest_upload(table, sfn, BUCKET, "datasets/d/1.png", T0, T0, EVERY, run_known=known.append)
    assert action is IngestAction.HEARTBEAT and known == ["other-run"]
    assert sfn.started == [] and table.datasets["d"]["objects"] == 2
