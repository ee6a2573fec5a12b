"""Put pipeline events on the custom bus (the state machine emits most; functions use this)."""

from __future__ import annotations

from typing import Any

from lora_pipeline.events import EVENT_SOURCE, EventDetail


class EventPublishError(RuntimeError):
    pass


class EventPublisher:
    def __init__(self, client: Any, bus_name: str) -> None:
        self._client = client
        self._bus_name = bus_name

    def publish(self, detail: EventDetail) -> None:
        response = self._client.put_events(
            Entries=[
                {
                    "Source": EVENT_SOURCE,
                    "DetailType": detail.DETAIL_TYPE,
                    "Detail": detail.model_dump_json(),
                    "EventBusName": self._bus_name,
                }
            ]
        )
        if response.get("FailedEntryCount"):
            raise EventPublishError(f"EventBridge refused {detail.DETAIL_TYPE}: {response['Entries']}")
