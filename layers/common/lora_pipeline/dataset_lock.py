"""The dataset lock's rules: what one S3 `Object Created` means while a run settles, trains or is done.

Pure functions; the DynamoDB side lives in `lora_pipeline.aws.run_table`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum


class IngestAction(StrEnum):
    START = "start"  # the dataset is idle: a new run
    HEARTBEAT = "heartbeat"  # still settling: the quiet period starts again
    READY = "ready"  # `_READY` while settling: stop waiting
    CHANGED_DURING_RUN = "changed_during_run"  # created after the run settled: validate again or follow up
    STALE = "stale"  # a late or repeated event for an object older than the last settle or run end


class RunStatus(StrEnum):
    """A run item's `status`: RUNNING from the start until the state machine (or the end-of-run function)
    records how the run ended."""

    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    REJECTED = "REJECTED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class ActiveRun:
    """The run that holds a dataset. `settle_token` is set while the state machine waits for quiet."""

    run_id: str
    settling: bool
    settle_token: str | None
    settled_at: datetime | None = None
    heartbeat_at: datetime | None = None
    """When ingest last told the settle wait that objects keep coming."""

    def heartbeat_due(self, now: datetime, every: timedelta) -> bool:
        return self.heartbeat_at is None or now - self.heartbeat_at >= every


@dataclass(frozen=True)
class DatasetState:
    active: ActiveRun | None
    last_finished_at: datetime | None
    follow_up: bool = False
    """The last run ended after the dataset changed under it: one more run is due."""


def parse_time(text: str | None) -> datetime | None:
    """An ISO 8601 time from S3, Step Functions or this package (`Z` or an offset; naive means UTC)."""
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _seen_before(object_time: datetime, moment: datetime | None) -> bool:
    """Whether an object created at `object_time` certainly existed before `moment`.

    S3 event times are whole seconds while `moment` has milliseconds, so the comparison is made in whole
    seconds and a tie counts as not seen: an object made in the same second may have come just after.
    """
    return moment is not None and object_time.replace(microsecond=0) < moment.replace(microsecond=0)


def ingest_action(state: DatasetState, is_ready_marker: bool, object_time: datetime) -> IngestAction:
    """What one S3 `Object Created` event means for its dataset.

    EventBridge delivers at least once and in no particular order, so an event whose object is older than
    the moment the current run settled (or the last run ended) describes something already seen.
    """
    active = state.active
    if active is None:
        if _seen_before(object_time, state.last_finished_at):
            return IngestAction.STALE
        return IngestAction.START
    if active.settling:
        return IngestAction.READY if is_ready_marker else IngestAction.HEARTBEAT
    if is_ready_marker or _seen_before(object_time, active.settled_at):
        return IngestAction.STALE  # `_READY` again is no new data
    return IngestAction.CHANGED_DURING_RUN
