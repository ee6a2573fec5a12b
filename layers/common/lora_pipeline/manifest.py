"""`model/manifest.json`: what was unpacked, from where, with which training facts (a versioned contract)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lora_pipeline.model_archive import UnpackResult
from lora_pipeline.safetensors_lora import LoraSummary

# Kohya stores the dataset's tag frequencies and modelspec a base64 thumbnail in the metadata; values this
# long are left out of the manifest (they stay in the .safetensors) and listed in `metadata_omitted`.
MAX_METADATA_VALUE_CHARS = 16 * 1024
_KOHYA_METADATA_PREFIXES = ("ss_", "modelspec.")


class RunFacts(BaseModel):
    """Facts about the training run that the archive cannot know."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    run_id: str
    training_job_name: str | None = None
    billable_seconds: int | None = None


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = 1
    model_uri: str
    file_name: str
    size_bytes: int
    sha256: str
    archive_uri: str
    archive_member: str
    lora: LoraSummary
    metadata: dict[str, str]
    """The file's `ss_*` and `modelspec.*` metadata (Kohya training settings)."""
    metadata_omitted: list[str]
    run: RunFacts
    partial: str | None = None
    """Set when the run did not finish and this is an epoch's LoRA: `stopped at MaxRuntime after epoch 9 of 10`."""
    unpacked_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()


def build_manifest(result: UnpackResult, *, model_uri: str, archive_uri: str, run: RunFacts) -> Manifest:
    kohya = {k: v for k, v in sorted(result.metadata.items()) if k.startswith(_KOHYA_METADATA_PREFIXES)}
    return Manifest(
        model_uri=model_uri,
        file_name=result.name,
        size_bytes=result.size,
        sha256=result.sha256,
        archive_uri=archive_uri,
        archive_member=result.member,
        lora=result.summary,
        metadata={k: v for k, v in kohya.items() if len(v) <= MAX_METADATA_VALUE_CHARS},
        metadata_omitted=[k for k, v in kohya.items() if len(v) > MAX_METADATA_VALUE_CHARS],
        run=run,
    )
