"""The pipeline's events: EventBridge `detail` models, one per detail-type, on the custom bus.

Consumers rely on these: every field change is a breaking change. Each model carries its schema version;
`python -m lora_pipeline.events schemas/events` writes the JSON Schemas committed in the repo, and a test
fails when a model and its committed schema differ. `python -m lora_pipeline.events --template template.yaml`
writes them into the template's EventBridge Schema Registry resources; a test fails when those differ.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from lora_pipeline.salvage import SalvagedLora

EVENT_SOURCE = "sdxl-lora-pipeline"


class Stage(StrEnum):
    SETTLE = "settle"
    VALIDATE = "validate"
    SLOT = "slot"
    TRAINING = "training"
    UNPACK = "unpack"


class EventDetail(BaseModel):
    """Fields every event carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    DETAIL_TYPE: ClassVar[str]
    SCHEMA_VERSION: ClassVar[int] = 1

    schema_version: Literal[1] = Field(
        1, description="Version of this detail's schema; bumped on any change."
    )
    dataset: str = Field(description="Dataset folder name under datasets/.")
    run_id: str = Field(description="Run id; the run's files are under runs/<dataset>/<run_id>/.")
    bucket: str = Field(description="The pipeline's bucket.")
    time: datetime = Field(description="When the state machine emitted the event (UTC).")


class ProblemDetail(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    severity: Literal["error", "warning", "info"]
    code: str
    file: str | None
    message: str
    fix: str | None


class DatasetRejected(EventDetail):
    DETAIL_TYPE: ClassVar[str] = "Dataset Rejected"

    reason: str = Field(description="Why the state machine stopped the run (one line).")
    error_count: int
    warning_count: int
    problems: list[ProblemDetail] = Field(
        description="The problems found, errors first, each with its fix; at most 50 (events and emails have size "
        "limits): problems_omitted counts the rest, and report_uri has them all."
    )
    problems_omitted: int = Field(description="How many more problems validation.json lists.")
    report_uri: str = Field(description="s3:// URI of the full validation.json.")


class TrainingStarted(EventDetail):
    DETAIL_TYPE: ClassVar[str] = "Training Started"

    training_job_name: str
    instance_type: str
    spot: bool
    volume_size_gb: int
    max_runtime_seconds: int
    trainer: str
    output_name: str
    estimated_cost_usd: float | None = Field(description="Planner's estimate before training (on-demand).")
    console_url: str


class UnpackedModel(BaseModel):
    """The part of `Training Succeeded` the state machine learns from the unpack step
    (`use_cases.unpack.unpack_run` returns it; EmitSucceeded copies its fields into the event)."""

    model_uri: str = Field(description="s3:// URI of the LoRA .safetensors.")
    manifest_uri: str
    sha256: str
    size_bytes: int
    instance_type: str
    spot: bool
    training_seconds: int
    billable_seconds: int
    estimated_cost_usd: float | None = Field(description="billable seconds x the instance's on-demand price.")
    changed_during_run: bool = Field(description="Objects arrived in the dataset after the run had settled.")


class TrainingSucceeded(EventDetail, UnpackedModel):
    DETAIL_TYPE: ClassVar[str] = "Training Succeeded"

    training_job_name: str
    output_name: str
    console_url: str


class TrainingFailed(EventDetail):
    DETAIL_TYPE: ClassVar[str] = "Training Failed"

    stage: Stage
    error: str
    cause: str
    failure_reason: str | None = Field(description="SageMaker's FailureReason when the job failed.")
    training_job_name: str | None
    console_url: str = Field(description="Where to look: the training job, or the execution.")
    logs_url: str | None
    salvaged: SalvagedLora | None = Field(
        None,
        description="The newest finished epoch's LoRA, published as a partial result; None when no epoch finished.",
    )


class TrainingCancelled(EventDetail):
    DETAIL_TYPE: ClassVar[str] = "Training Cancelled"

    execution_status: Literal["ABORTED", "TIMED_OUT"]
    training_job_name: str | None = Field(description="The job that was stopped, if one was running.")
    training_job_stopped: bool
    salvaged: SalvagedLora | None = Field(
        None,
        description="The newest finished epoch's LoRA, published as a partial result; None when no epoch finished.",
    )


EVENT_MODELS: tuple[type[EventDetail], ...] = (
    DatasetRejected,
    TrainingStarted,
    TrainingSucceeded,
    TrainingFailed,
    TrainingCancelled,
)
BY_DETAIL_TYPE: dict[str, type[EventDetail]] = {m.DETAIL_TYPE: m for m in EVENT_MODELS}


def parse_detail(detail_type: str, detail: dict[str, Any]) -> EventDetail:
    try:
        model = BY_DETAIL_TYPE[detail_type]
    except KeyError:
        raise ValueError(f"unknown detail-type {detail_type!r}") from None
    return model.model_validate(detail)


def schema_file_name(model: type[EventDetail]) -> str:
    return f"{model.DETAIL_TYPE.lower().replace(' ', '-')}.v{model.SCHEMA_VERSION}.json"


def json_schema(model: type[EventDetail]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema["$id"] = f"{EVENT_SOURCE}/{schema_file_name(model)}"
    schema["x-detail-type"] = model.DETAIL_TYPE
    schema["x-source"] = EVENT_SOURCE
    return schema


def render_schemas() -> dict[str, str]:
    """File name -> JSON Schema text, as committed under schemas/events/."""
    return {
        schema_file_name(m): json.dumps(json_schema(m), indent=2, sort_keys=True) + "\n" for m in EVENT_MODELS
    }


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_schemas().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def _draft4(node: Any) -> Any:
    """The committed (pydantic, draft 2020-12) schema keywords in their draft-4 spelling."""
    if isinstance(node, list):
        return [_draft4(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {}
    for key, value in node.items():
        if key == "const":
            converted["enum"] = [value]
        elif key == "$ref":
            converted[key] = value.replace("#/$defs/", "#/definitions/")
        elif key not in ("$defs", "$id"):
            converted[key] = _draft4(value)
    return converted


def registry_schema(detail_schema: dict[str, Any]) -> dict[str, Any]:
    """A committed detail schema as the whole event, in the EventBridge Schema Registry's JSONSchemaDraft4
    form (what template.yaml registers; code bindings are generated from it)."""
    detail = _draft4(detail_schema)
    detail_type, source = detail.pop("x-detail-type"), detail.pop("x-source")
    return {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "title": detail_type.replace(" ", ""),
        "description": f"{detail_type} from {source} (detail: {detail_schema['$id']})",
        "type": "object",
        "required": ["detail-type", "source", "detail"],
        "properties": {
            "version": {"type": "string"},
            "id": {"type": "string"},
            "account": {"type": "string"},
            "region": {"type": "string"},
            "time": {"type": "string", "format": "date-time"},
            "resources": {"type": "array", "items": {"type": "string"}},
            "detail-type": {"type": "string", "enum": [detail_type]},
            "source": {"type": "string", "enum": [source]},
            "detail": detail,
        },
        "definitions": _draft4(detail_schema.get("$defs", {})),
    }


REGISTRY_BEGIN = (
    "  # >>> event schemas: written by `python -m lora_pipeline.events --template template.yaml`\n"
)
REGISTRY_END = "  # <<< event schemas\n"


def registry_resources(directory: Path) -> str:
    """The template's AWS::EventSchemas::Schema resources, from the committed schemas in `directory`."""
    blocks = []
    for model in EVENT_MODELS:
        committed = json.loads((directory / schema_file_name(model)).read_text(encoding="utf-8"))
        content = json.dumps(registry_schema(committed), sort_keys=True, separators=(",", ":"))
        blocks.append(
            f"  {model.__name__}Schema:\n"
            "    Type: AWS::EventSchemas::Schema\n"
            "    Properties:\n"
            "      RegistryName: !GetAtt EventSchemaRegistry.RegistryName\n"
            f"      SchemaName: {EVENT_SOURCE}@{model.__name__}\n"
            "      Type: JSONSchemaDraft4\n"
            f"      Description: {model.DETAIL_TYPE} events (schemas/events/{schema_file_name(model)})\n"
            f"      Content: {json.dumps(content)}\n"
        )
    return REGISTRY_BEGIN + "\n".join(blocks) + REGISTRY_END


def write_registry_resources(template: Path, directory: Path) -> None:
    text = template.read_text(encoding="utf-8")
    begin, end = text.index(REGISTRY_BEGIN), text.index(REGISTRY_END) + len(REGISTRY_END)
    template.write_text(text[:begin] + registry_resources(directory) + text[end:], encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--template"]:
        write_registry_resources(
            Path(sys.argv[2]), Path(sys.argv[3] if len(sys.argv) > 3 else "schemas/events")
        )
    else:
        for written_path in write_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "schemas/events")):
            print(written_path)
