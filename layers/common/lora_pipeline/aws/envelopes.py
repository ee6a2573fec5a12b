"""The EventBridge events the handlers receive, as small pydantic models.

Field names follow Powertools' parser models (`EventBridgeModel`, `S3EventNotificationEventBridgeModel`), whose
package imports every event model it has (about 0.2 s of each cold start) to parse these two.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class EventBridgeEvent(BaseModel):
    """One EventBridge event as a Lambda target receives it."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    source: str
    detail_type: str = Field(alias="detail-type")
    time: datetime
    account: str | None = None
    region: str | None = None
    resources: list[str] = []
    detail: dict[str, Any]


class S3Bucket(BaseModel):
    name: str


class S3Object(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    key: str
    size: int | None = None
    etag: str | None = None
    version_id: str | None = Field(None, alias="version-id")
    sequencer: str | None = None


class S3ObjectCreatedDetail(BaseModel):
    bucket: S3Bucket
    object: S3Object


class S3ObjectCreatedEvent(EventBridgeEvent):
    """`Object Created` from a bucket with EventBridge notifications on (`time` has whole seconds)."""

    detail: S3ObjectCreatedDetail  # type: ignore[assignment]
