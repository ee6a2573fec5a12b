"""The DynamoDB table of datasets, runs and training slots (the state machine uses the same items).

Items (partition key `pk`, sort key `sk`):
- `DATASET#<name>` / `DATASET`: the dataset's lock. `active_run` is set while a run holds it, `phase` is
  `settling` until the upload is settled (`settled_at`), `settle_token` is the task token the state machine
  waits on, `ready` is set by `_READY`, `changed_during_run` by uploads after settling; `last_finished_at`
  is when the last run let go of the dataset, and `follow_up` that it changed during that run, so one more
  run is due (started by the function that sees the execution end).
- `DATASET#<name>` / `RUN#<run_id>`: one run (status, execution, times) for people and the CLI;
  `terminal_event` is the detail-type the end-of-run function emitted for it (at most one).
- `SLOTS` / `SLOTS`: `holders` (string set) are runs that hold a training slot, `queue` (list) the runs
  waiting for one, in order. The state machine acquires with one conditional update: it must be first in
  `queue` and `holders` must be below the cap.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from lora_pipeline.aws.errors import ClientError, error_code
from lora_pipeline.dataset_lock import ActiveRun, DatasetState, RunStatus, parse_time

SLOTS_KEY = {"pk": {"S": "SLOTS"}, "sk": {"S": "SLOTS"}}
PHASE_SETTLING = "settling"
# Written by the state machine (Settled, ConfirmSettled) once the upload has settled; the Python side only tells
# settling from not settling.
PHASE_RUNNING = "running"


# The updates the state machine makes too (its ReleaseSlot, FreeDataset and RecordOutcome states hold the same
# expressions; tests/unit/test_statemachine_definition.py keeps them equal). `:me` is the run id as a string set.
RELEASE_SLOT_UPDATE = "DELETE holders :me"
RELEASE_SLOT_CONDITION = "contains(holders, :run)"
FREE_DATASET_CONDITION = "active_run = :run"
RECORD_OUTCOME_UPDATE = "SET #status = :status, finished_at = :now"


def free_dataset_update(follow_up: bool) -> str:
    """Let go of the dataset. With `follow_up`, a change during the run leaves `follow_up` set (the state
    machine's FreeDataset); without, no follow-up run is due."""
    return (
        "SET last_finished_at = :now, follow_up = "
        + ("if_not_exists(changed_during_run, :no)" if follow_up else ":no")
        + " REMOVE active_run, active_since, phase, settle_token, settled_at, #ready, changed_during_run"
    )


def dataset_key(dataset: str) -> dict[str, Any]:
    return {"pk": {"S": f"DATASET#{dataset}"}, "sk": {"S": "DATASET"}}


def run_key(dataset: str, run_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"DATASET#{dataset}"}, "sk": {"S": f"RUN#{run_id}"}}


def _active_run(item: dict[str, Any]) -> ActiveRun | None:
    if "active_run" not in item:
        return None
    return ActiveRun(
        run_id=item["active_run"]["S"],
        settling=item.get("phase", {}).get("S") == PHASE_SETTLING,
        settle_token=item.get("settle_token", {}).get("S"),
        settled_at=parse_time(item.get("settled_at", {}).get("S")),
        heartbeat_at=parse_time(item.get("heartbeat_at", {}).get("S")),
    )


def _conditional_failed(exc: ClientError) -> bool:
    return error_code(exc) == "ConditionalCheckFailedException"


class RunTable:
    def __init__(self, client: Any, table_name: str) -> None:
        self._client = client
        self._table = table_name

    def _update(
        self, key: dict[str, Any], expression: str, values: dict[str, Any], **extra: Any
    ) -> dict[str, Any]:
        response: dict[str, Any] = self._client.update_item(
            TableName=self._table,
            Key=key,
            UpdateExpression=expression,
            ExpressionAttributeValues=values,
            **extra,
        )
        return response

    def dataset_state(self, dataset: str) -> tuple[DatasetState, str | None]:
        """The dataset's lock as it is now, and `last_finished_at` as stored (for `try_start`)."""
        item = self._client.get_item(
            TableName=self._table, Key=dataset_key(dataset), ConsistentRead=True
        ).get("Item", {})
        finished = item.get("last_finished_at", {}).get("S")
        state = DatasetState(
            active=_active_run(item),
            last_finished_at=parse_time(finished),
            follow_up=item.get("follow_up", {}).get("BOOL", False),
        )
        return state, finished

    def try_start(
        self, dataset: str, run_id: str, ready: bool, now: datetime, last_finished: str | None
    ) -> bool:
        """Take the dataset's lock for a new run; False when the lock changed since `dataset_state`."""
        values: dict[str, Any] = {
            ":run": {"S": run_id},
            ":now": {"S": now.isoformat()},
            ":phase": {"S": PHASE_SETTLING},
            ":ready": {"BOOL": ready},
            ":one": {"N": "1"},
        }
        if last_finished is None:
            unchanged = "attribute_not_exists(last_finished_at)"
        else:
            unchanged = "last_finished_at = :finished"
            values[":finished"] = {"S": last_finished}
        try:
            self._update(
                dataset_key(dataset),
                "SET active_run = :run, active_since = :now, phase = :phase, last_object_at = :now, "
                "#ready = :ready REMOVE changed_during_run, settle_token, settled_at, follow_up ADD objects :one",
                values,
                ConditionExpression=f"attribute_not_exists(active_run) AND {unchanged}",
                ExpressionAttributeNames={"#ready": "ready"},
            )
        except ClientError as exc:
            if _conditional_failed(exc):
                return False
            raise
        return True

    def record_run(self, dataset: str, run_id: str, execution_name: str, now: datetime) -> None:
        """The run's own item, for people and the CLI (the state machine records how it ended)."""
        self._client.put_item(
            TableName=self._table,
            Item={
                **run_key(dataset, run_id),
                "run_id": {"S": run_id},
                "dataset": {"S": dataset},
                "execution_name": {"S": execution_name},
                "status": {"S": RunStatus.RUNNING},
                "created_at": {"S": now.isoformat()},
            },
        )

    def abandon_start(self, dataset: str, run_id: str) -> None:
        """Undo `try_start` when the execution could not be started, so a retry can start it."""
        try:
            self._client.delete_item(TableName=self._table, Key=run_key(dataset, run_id))
            self._update(
                dataset_key(dataset),
                "REMOVE active_run, phase",
                {":run": {"S": run_id}},
                ConditionExpression="active_run = :run",
            )
        except ClientError as exc:
            if not _conditional_failed(exc):
                raise

    def record_upload(self, dataset: str, ready: bool, now: datetime) -> ActiveRun | None:
        """Count an upload to a dataset whose run is settling; None when it is not settling (any more)."""
        names = {"#ready": "ready"} if ready else {}
        try:
            item = self._update(
                dataset_key(dataset),
                f"SET last_object_at = :now{', #ready = :yes' if ready else ''} ADD objects :one",
                {
                    ":now": {"S": now.isoformat()},
                    ":one": {"N": "1"},
                    ":settling": {"S": PHASE_SETTLING},
                    **({":yes": {"BOOL": True}} if ready else {}),
                },
                ConditionExpression="attribute_exists(active_run) AND phase = :settling",
                ReturnValues="ALL_NEW",
                **({"ExpressionAttributeNames": names} if names else {}),
            )["Attributes"]
        except ClientError as exc:
            if _conditional_failed(exc):
                return None
            raise
        return _active_run(item)

    def claim_heartbeat(self, dataset: str, run_id: str, now: datetime, every: timedelta) -> bool:
        """Whether this caller sends the settle wait's next heartbeat: at most one per `every` among
        concurrent ingest calls (the others skip theirs)."""
        try:
            self._update(
                dataset_key(dataset),
                "SET heartbeat_at = :now",
                {
                    ":now": {"S": now.isoformat()},
                    ":due": {"S": (now - every).isoformat()},
                    ":run": {"S": run_id},
                },
                ConditionExpression="active_run = :run AND (attribute_not_exists(heartbeat_at) OR heartbeat_at <= :due)",
            )
        except ClientError as exc:
            if _conditional_failed(exc):
                return False
            raise
        return True

    def mark_changed_during_run(self, dataset: str, run_id: str) -> None:
        try:
            self._update(
                dataset_key(dataset),
                "SET changed_during_run = :yes",
                {":yes": {"BOOL": True}, ":run": {"S": run_id}},
                ConditionExpression="active_run = :run",
            )
        except ClientError as exc:
            if not _conditional_failed(exc):
                raise

    def changed_during_run(self, dataset: str, run_id: str) -> bool:
        item = self._client.get_item(
            TableName=self._table, Key=dataset_key(dataset), ConsistentRead=True
        ).get("Item", {})
        return bool(
            item.get("active_run", {}).get("S") == run_id
            and item.get("changed_during_run", {}).get("BOOL", False)
        )

    def run_status(self, dataset: str, run_id: str) -> str | None:
        """The run item's status (`RunStatus.RUNNING` until the run ends); None when there is no such run."""
        item = self._client.get_item(
            TableName=self._table, Key=run_key(dataset, run_id), ConsistentRead=True
        ).get("Item", {})
        status: str | None = item.get("status", {}).get("S")
        return status

    def finish(self, dataset: str, run_id: str, status: RunStatus, now: datetime, follow_up: bool) -> None:
        """Free the dataset for the next upload and record how the run ended (idempotent); `follow_up` as in
        `free_dataset_update`."""
        try:
            self._update(
                dataset_key(dataset),
                free_dataset_update(follow_up),
                {":run": {"S": run_id}, ":now": {"S": now.isoformat()}, ":no": {"BOOL": False}},
                ConditionExpression=FREE_DATASET_CONDITION,
                ExpressionAttributeNames={"#ready": "ready"},
            )
        except ClientError as exc:
            if not _conditional_failed(exc):
                raise
        self._update(
            run_key(dataset, run_id),
            RECORD_OUTCOME_UPDATE,
            {":status": {"S": status}, ":now": {"S": now.isoformat()}},
            ExpressionAttributeNames={"#status": "status"},
        )

    def claim_terminal_event(self, dataset: str, run_id: str, detail_type: str) -> bool:
        """Record that `detail_type` is emitted for the run; False when one was already (a redelivery)."""
        try:
            self._update(
                run_key(dataset, run_id),
                "SET terminal_event = :type",
                {":type": {"S": detail_type}},
                ConditionExpression="attribute_not_exists(terminal_event)",
            )
        except ClientError as exc:
            if _conditional_failed(exc):
                return False
            raise
        return True

    def unclaim_terminal_event(self, dataset: str, run_id: str) -> None:
        """Undo `claim_terminal_event` when the event could not be put, so a retry emits it."""
        self._client.update_item(
            TableName=self._table, Key=run_key(dataset, run_id), UpdateExpression="REMOVE terminal_event"
        )

    def release_slot(self, run_id: str) -> bool:
        """Drop the run from the slot holders and from the queue; True when it held or awaited a slot."""
        released = False
        try:
            self._update(
                SLOTS_KEY,
                RELEASE_SLOT_UPDATE,
                {":me": {"SS": [run_id]}, ":run": {"S": run_id}},
                ConditionExpression=RELEASE_SLOT_CONDITION,
            )
            released = True
        except ClientError as exc:
            if not _conditional_failed(exc):
                raise
        return self._leave_queue(run_id) or released

    def _leave_queue(self, run_id: str) -> bool:
        # The queue can move between the read and the write, so the removal checks the index it read.
        for _ in range(10):
            item = self._client.get_item(TableName=self._table, Key=SLOTS_KEY, ConsistentRead=True).get(
                "Item", {}
            )
            queue = [entry["S"] for entry in item.get("queue", {}).get("L", [])]
            if run_id not in queue:
                return False
            index = queue.index(run_id)
            try:
                self._update(
                    SLOTS_KEY,
                    f"REMOVE #queue[{index}]",
                    {":run": {"S": run_id}},
                    ConditionExpression=f"#queue[{index}] = :run",
                    ExpressionAttributeNames={"#queue": "queue"},
                )
                return True
            except ClientError as exc:
                if not _conditional_failed(exc):
                    raise
        raise RuntimeError(f"could not remove {run_id} from the slot queue (it kept moving)")

    def slots(self) -> tuple[set[str], list[str]]:
        """(holders, queue) as they are now."""
        item = self._client.get_item(TableName=self._table, Key=SLOTS_KEY, ConsistentRead=True).get(
            "Item", {}
        )
        return set(item.get("holders", {}).get("SS", [])), [
            e["S"] for e in item.get("queue", {}).get("L", [])
        ]
