"""The state machine's execution input, which every step of a run receives."""

from __future__ import annotations

from pydantic import BaseModel


class RunInput(BaseModel):
    """The state machine's execution input (also found in Step Functions status-change events)."""

    dataset: str
    run_id: str
    bucket: str
