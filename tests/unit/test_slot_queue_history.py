"""A run waiting for a training slot polls; each poll adds events to its execution's history, which Step Functions
caps at 25,000. Counted here from the ASL and the template (measured on the embedded AWS in
tests/integration/test_pipeline_hardening.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from embedded_aws.sam import load_template

REPO = Path(__file__).resolve().parents[2]
STATES: dict[str, dict[str, Any]] = json.loads((REPO / "statemachine" / "pipeline.asl.json").read_text())[
    "States"
]
PARAMETERS: dict[str, Any] = load_template(REPO / "template.yaml")["Parameters"]
HISTORY_LIMIT = 25_000
# Events a Standard execution records per state, from the Step Functions history event types: a Task that fails
# into its Catch (StateEntered, Scheduled, Started, Failed, StateExited); a Wait (StateEntered, StateExited).
EVENTS = {"Task": 5, "Wait": 2, "Choice": 2, "Pass": 2}
SLOT_POLL_EVENTS = EVENTS["Task"] + EVENTS["Wait"]


def _slot_loop() -> list[str]:
    """The states one unsuccessful poll passes through, from AcquireSlot back to it."""
    loop, name = [], "AcquireSlot"
    while True:
        loop.append(name)
        state = STATES[name]
        if name == "AcquireSlot":
            (busy,) = [
                c for c in state["Catch"] if c["ErrorEquals"] == ["DynamoDb.ConditionalCheckFailedException"]
            ]
            name = busy["Next"]
        else:
            name = state["Next"]
        if name == "AcquireSlot":
            return loop


def test_one_poll_is_a_failed_conditional_write_and_a_wait_of_slot_poll_seconds() -> None:
    assert _slot_loop() == ["AcquireSlot", "WaitForSlot"]
    assert STATES["WaitForSlot"]["SecondsPath"] == "$.limits.slot_poll_seconds"
    assert sum(EVENTS[STATES[name]["Type"]] for name in _slot_loop()) == SLOT_POLL_EVENTS == 7


def test_forty_eight_hours_in_the_queue_stay_far_below_the_history_limit() -> None:
    # Every other state of the longest run, each entered at most a few times (capacity retries included).
    rest_of_run = sum(EVENTS.get(state["Type"], 2) for state in STATES.values()) * 6
    for seconds in (PARAMETERS["SlotPollSeconds"]["MinValue"], PARAMETERS["SlotPollSeconds"]["Default"]):
        polls = math.ceil(48 * 3600 / seconds)
        events = polls * SLOT_POLL_EVENTS + rest_of_run
        assert events <= 0.3 * HISTORY_LIMIT, (seconds, events)
