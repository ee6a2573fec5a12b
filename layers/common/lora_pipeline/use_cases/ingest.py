"""ingest: an S3 `Object Created` under datasets/ starts the dataset's run, or prolongs or ends its settling."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from lora_pipeline.dataset_lock import IngestAction, ingest_action
from lora_pipeline.s3_layout import parse_dataset_key
from lora_pipeline.use_cases.start_run import LOCK_ATTEMPTS, start_run

if TYPE_CHECKING:
    from lora_pipeline.ports import Executions, RunBook


def _ignore(run_id: str) -> None:
    pass


def ingest_upload(
    table: RunBook,
    executions: Executions,
    bucket: str,
    key: str,
    object_time: datetime,
    now: datetime,
    heartbeat_every: timedelta = timedelta(0),
    run_known: Callable[[str], None] = _ignore,
) -> IngestAction | None:
    """Record one `Object Created` under datasets/: start a run, prolong or end its settling, or note it.

    A settling run's wait is heartbeaten at most once per `heartbeat_every` (a 1,000-image upload is 1,000
    calls here, not 1,000 Step Functions calls), so the quiet period ends between its length minus
    `heartbeat_every` and its length after the last object. `run_known` is told the id of the run the
    upload concerns, once known (for the log). Returns what was done (None for a key outside any dataset
    folder).
    """
    obj = parse_dataset_key(key)
    if obj is None:
        return None
    for _ in range(LOCK_ATTEMPTS):
        state, last_finished = table.dataset_state(obj.dataset)
        if state.active is not None:
            run_known(state.active.run_id)
        action = ingest_action(state, obj.is_ready_marker, object_time)
        if action is IngestAction.STALE:
            return action
        if action is IngestAction.START:
            started = start_run(
                table, executions, bucket, obj.dataset, obj.is_ready_marker, now, last_finished
            )
            if started is None:
                continue
            run_known(started)
            return action
        if action is IngestAction.CHANGED_DURING_RUN:
            assert state.active is not None
            table.mark_changed_during_run(obj.dataset, state.active.run_id)
            return action
        active = table.record_upload(obj.dataset, obj.is_ready_marker, now)
        if active is None:
            continue  # settled or ended meanwhile: decide again
        if active.settle_token is not None:
            if action is IngestAction.READY:
                waiting = executions.end_settling(active.settle_token, json.dumps({"ready": True}))
            elif active.heartbeat_due(now, heartbeat_every) and table.claim_heartbeat(
                obj.dataset, active.run_id, now, heartbeat_every
            ):
                waiting = executions.prolong_settling(active.settle_token)
            else:
                waiting = True
            if not waiting:
                # The quiet period ended as this object arrived: it may have missed validation.
                table.mark_changed_during_run(obj.dataset, active.run_id)
                return IngestAction.CHANGED_DURING_RUN
        return action
    raise RuntimeError(f"dataset {obj.dataset}: its run lock kept changing; the event will be retried")
