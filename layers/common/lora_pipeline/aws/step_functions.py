"""The `Executions` port on Step Functions: the pipeline's state machine and its settle wait's task token."""

from __future__ import annotations

from typing import Any

from lora_pipeline.aws.errors import ClientError, error_code
from lora_pipeline.ports import StateChange

# A settle token that no longer waits: the quiet period ended (or _READY came) just before this upload.
_CLOSED_TOKEN_ERRORS = {"TaskTimedOut", "InvalidToken", "TaskDoesNotExist"}


class StepFunctionsExecutions:
    def __init__(self, client: Any, state_machine_arn: str) -> None:
        self._client = client
        self._state_machine_arn = state_machine_arn

    def start(self, name: str, input_json: str) -> None:
        self._client.start_execution(stateMachineArn=self._state_machine_arn, name=name, input=input_json)

    def end_settling(self, token: str, output_json: str) -> bool:
        return self._still_waiting(self._client.send_task_success, taskToken=token, output=output_json)

    def prolong_settling(self, token: str) -> bool:
        return self._still_waiting(self._client.send_task_heartbeat, taskToken=token)

    @staticmethod
    def _still_waiting(call: Any, **kwargs: Any) -> bool:
        try:
            call(**kwargs)
        except ClientError as exc:
            if error_code(exc) not in _CLOSED_TOKEN_ERRORS:
                raise
            return False
        return True

    def state_changes(self, execution_arn: str) -> list[StateChange]:
        changes = []
        for page in self._client.get_paginator("get_execution_history").paginate(executionArn=execution_arn):
            for event in page["events"]:
                if name := event.get("stateEnteredEventDetails", {}).get("name"):
                    changes.append(StateChange(name, entered=True))
                if name := event.get("stateExitedEventDetails", {}).get("name"):
                    changes.append(StateChange(name, entered=False))
        return changes
