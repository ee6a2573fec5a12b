"""In-memory implementations of the ports in `lora_pipeline.ports`, for fast unit tests of the use cases.

`InMemoryRunTable` keeps the items `aws/run_table.py` documents, with the same conditions as its
UpdateExpressions; tests/unit/test_run_table_fake.py runs one script against both and compares.
Its `store_settle_token`, `mark_settled`, `join_queue` and `acquire_slot` do what the state machine's
WaitForUploadToSettle, Settled, JoinSlotQueue and AcquireSlot states do to the table, under their conditions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from lora_pipeline.aws.run_table import PHASE_RUNNING, PHASE_SETTLING
from lora_pipeline.dataset_lock import ActiveRun, DatasetState, RunStatus, parse_time
from lora_pipeline.events import EventDetail
from lora_pipeline.ports import StateChange, TrainingJobSummary


class InMemoryRunTable:
    def __init__(self) -> None:
        self.datasets: dict[str, dict[str, Any]] = {}
        self.runs: dict[tuple[str, str], dict[str, Any]] = {}
        self.holders: set[str] = set()
        self.queue: list[str] = []

    def _lock(self, dataset: str) -> dict[str, Any]:
        return self.datasets.setdefault(dataset, {})

    @staticmethod
    def _active(item: dict[str, Any]) -> ActiveRun | None:
        if "active_run" not in item:
            return None
        return ActiveRun(
            run_id=item["active_run"],
            settling=item.get("phase") == PHASE_SETTLING,
            settle_token=item.get("settle_token"),
            settled_at=parse_time(item.get("settled_at")),
            heartbeat_at=parse_time(item.get("heartbeat_at")),
        )

    def dataset_state(self, dataset: str) -> tuple[DatasetState, str | None]:
        item = self.datasets.get(dataset, {})
        finished = item.get("last_finished_at")
        state = DatasetState(self._active(item), parse_time(finished), item.get("follow_up", False))
        return state, finished

    def try_start(
        self, dataset: str, run_id: str, ready: bool, now: datetime, last_finished: str | None
    ) -> bool:
        item = self._lock(dataset)
        if "active_run" in item or item.get("last_finished_at") != last_finished:
            return False
        for name in ("changed_during_run", "settle_token", "settled_at", "follow_up"):
            item.pop(name, None)
        item.update(active_run=run_id, active_since=now.isoformat(), phase=PHASE_SETTLING, ready=ready)
        item["last_object_at"] = now.isoformat()
        item["objects"] = item.get("objects", 0) + 1
        return True

    def record_run(self, dataset: str, run_id: str, execution_name: str, now: datetime) -> None:
        self.runs[(dataset, run_id)] = {
            "execution_name": execution_name,
            "status": RunStatus.RUNNING,
            "created_at": now.isoformat(),
        }

    def abandon_start(self, dataset: str, run_id: str) -> None:
        self.runs.pop((dataset, run_id), None)
        item = self._lock(dataset)
        if item.get("active_run") == run_id:
            item.pop("active_run")
            item.pop("phase", None)

    def record_upload(self, dataset: str, ready: bool, now: datetime) -> ActiveRun | None:
        item = self._lock(dataset)
        if "active_run" not in item or item.get("phase") != PHASE_SETTLING:
            return None
        item["last_object_at"] = now.isoformat()
        item["objects"] = item.get("objects", 0) + 1
        if ready:
            item["ready"] = True
        return self._active(item)

    def claim_heartbeat(self, dataset: str, run_id: str, now: datetime, every: timedelta) -> bool:
        item = self._lock(dataset)
        last = item.get("heartbeat_at")
        if item.get("active_run") != run_id or (last is not None and last > (now - every).isoformat()):
            return False
        item["heartbeat_at"] = now.isoformat()
        return True

    def mark_changed_during_run(self, dataset: str, run_id: str) -> None:
        item = self._lock(dataset)
        if item.get("active_run") == run_id:
            item["changed_during_run"] = True

    def changed_during_run(self, dataset: str, run_id: str) -> bool:
        item = self.datasets.get(dataset, {})
        return item.get("active_run") == run_id and item.get("changed_during_run", False)

    def run_status(self, dataset: str, run_id: str) -> str | None:
        status: str | None = self.runs.get((dataset, run_id), {}).get("status")
        return status

    def finish(self, dataset: str, run_id: str, status: RunStatus, now: datetime, follow_up: bool) -> None:
        item = self._lock(dataset)
        if item.get("active_run") == run_id:
            item["last_finished_at"] = now.isoformat()
            item["follow_up"] = item.get("changed_during_run", False) if follow_up else False
            for name in ("active_run", "active_since", "phase", "settle_token", "settled_at", "ready"):
                item.pop(name, None)
            item.pop("changed_during_run", None)
        self.runs.setdefault((dataset, run_id), {}).update(status=status, finished_at=now.isoformat())

    def claim_terminal_event(self, dataset: str, run_id: str, detail_type: str) -> bool:
        run = self.runs.setdefault((dataset, run_id), {})
        if "terminal_event" in run:
            return False
        run["terminal_event"] = detail_type
        return True

    def unclaim_terminal_event(self, dataset: str, run_id: str) -> None:
        self.runs.setdefault((dataset, run_id), {}).pop("terminal_event", None)

    def release_slot(self, run_id: str) -> bool:
        held = run_id in self.holders
        self.holders.discard(run_id)
        queued = run_id in self.queue
        if queued:
            self.queue.remove(run_id)
        return held or queued

    # What the state machine does to the table.
    def store_settle_token(self, dataset: str, run_id: str, token: str) -> None:
        item = self._lock(dataset)
        assert item.get("active_run") == run_id and not item.get("ready")
        item["settle_token"] = token

    def mark_settled(self, dataset: str, run_id: str, now: datetime) -> None:
        item = self._lock(dataset)
        assert item.get("active_run") == run_id
        item.update(phase=PHASE_RUNNING, settled_at=now.isoformat())
        item.pop("settle_token", None)

    def join_queue(self, run_id: str) -> None:
        assert run_id not in self.queue
        self.queue.append(run_id)

    def acquire_slot(self, run_id: str) -> None:
        assert self.queue[0] == run_id
        self.queue.pop(0)
        self.holders.add(run_id)


@dataclass
class RecordingEventBus:
    published: list[EventDetail] = field(default_factory=list)
    refuse: bool = False

    def publish(self, detail: EventDetail) -> None:
        if self.refuse:
            raise RuntimeError(f"EventBridge refused {detail.DETAIL_TYPE}")
        self.published.append(detail)


@dataclass
class FakeExecutions:
    """Step Functions: `closed_tokens` are waits that ended already; `histories` by execution ARN."""

    started: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    settle_calls: list[tuple[str, str]] = field(default_factory=list)
    closed_tokens: set[str] = field(default_factory=set)
    histories: dict[str, list[StateChange]] = field(default_factory=dict)
    down: bool = False

    def start(self, name: str, input_json: str) -> None:
        if self.down:
            raise RuntimeError("Step Functions is down")
        self.started.append((name, json.loads(input_json)))

    def end_settling(self, token: str, output_json: str) -> bool:
        self.settle_calls.append(("success", token))
        return token not in self.closed_tokens

    def prolong_settling(self, token: str) -> bool:
        self.settle_calls.append(("heartbeat", token))
        return token not in self.closed_tokens

    def state_changes(self, execution_arn: str) -> list[StateChange]:
        return self.histories.get(execution_arn, [])


@dataclass
class FakeTrainingJobs:
    jobs: list[TrainingJobSummary] = field(default_factory=list)
    trainers: dict[str, str] = field(default_factory=dict)
    stopped: list[str] = field(default_factory=list)

    def jobs_named(self, name_contains: str) -> list[TrainingJobSummary]:
        return [job for job in self.jobs if name_contains in job.name]

    def stop(self, name: str) -> str:
        self.stopped.append(name)
        return "Stopping"

    def trainer(self, name: str) -> str | None:
        return self.trainers.get(name)
