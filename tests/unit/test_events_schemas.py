"""The committed JSON Schemas are the contract: a model change without regenerating them fails here."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from lora_pipeline import events

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas" / "events"


def test_committed_schemas_match_the_models() -> None:
    rendered = events.render_schemas()
    committed = {p.name: p.read_text(encoding="utf-8") for p in SCHEMA_DIR.glob("*.json")}
    assert committed == rendered, "run: .venv/bin/python -m lora_pipeline.events schemas/events"


def test_every_detail_type_has_one_model() -> None:
    assert sorted(events.BY_DETAIL_TYPE) == [
        "Dataset Rejected",
        "Training Cancelled",
        "Training Failed",
        "Training Started",
        "Training Succeeded",
    ]


def _cancelled(**overrides: object) -> dict[str, object]:
    detail: dict[str, object] = {
        "schema_version": 1,
        "dataset": "bluebot",
        "run_id": "20261126-112430-3f9a",
        "bucket": "b",
        "time": "2026-11-26T11:24:30.123Z",
        "execution_status": "ABORTED",
        "training_job_name": None,
        "training_job_stopped": False,
    }
    detail.update(overrides)
    return detail


def test_schema_and_model_agree_on_a_valid_detail() -> None:
    schema = json.loads((SCHEMA_DIR / "training-cancelled.v1.json").read_text())
    jsonschema.validate(_cancelled(), schema)
    parsed = events.parse_detail("Training Cancelled", _cancelled())
    assert isinstance(parsed, events.TrainingCancelled)


@pytest.mark.parametrize(
    "bad",
    [{"surprise": 1}, {"schema_version": 2}, {"execution_status": "SUCCEEDED"}, {"time": "yesterday"}],
)
def test_unknown_fields_and_wrong_values_are_refused_by_both(bad: dict[str, object]) -> None:
    schema = json.loads((SCHEMA_DIR / "training-cancelled.v1.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_cancelled(**bad), schema, format_checker=jsonschema.FormatChecker())
    with pytest.raises(ValidationError):
        events.parse_detail("Training Cancelled", _cancelled(**bad))


def test_unknown_detail_type_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown detail-type"):
        events.parse_detail("Training Exploded", {})


def _registered_schemas() -> dict[str, dict[str, object]]:
    from embedded_aws.sam import load_template

    resources = load_template(SCHEMA_DIR.parents[1] / "template.yaml")["Resources"]
    registered = {}
    for resource in resources.values():
        if resource["Type"] == "AWS::EventSchemas::Schema":
            properties = resource["Properties"]
            assert properties["Type"] == "JSONSchemaDraft4"
            assert properties["RegistryName"] == {"Fn::GetAtt": ["EventSchemaRegistry", "RegistryName"]}
            registered[properties["SchemaName"]] = json.loads(properties["Content"])
    return registered


def test_the_template_registers_every_committed_schema_in_the_schema_registry() -> None:
    registered = _registered_schemas()
    expected = {
        f"{events.EVENT_SOURCE}@{model.__name__}": events.registry_schema(
            json.loads((SCHEMA_DIR / events.schema_file_name(model)).read_text())
        )
        for model in events.EVENT_MODELS
    }
    assert registered == expected, "run: .venv/bin/python -m lora_pipeline.events --template template.yaml"


def test_registered_schemas_are_draft4_and_accept_the_whole_event() -> None:
    schema = _registered_schemas()[f"{events.EVENT_SOURCE}@TrainingCancelled"]
    jsonschema.Draft4Validator.check_schema(schema)
    event = {"detail-type": "Training Cancelled", "source": events.EVENT_SOURCE, "detail": _cancelled()}
    jsonschema.Draft4Validator(schema).validate(event)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema).validate({**event, "detail": _cancelled(schema_version=2)})
    rejected = _registered_schemas()[f"{events.EVENT_SOURCE}@DatasetRejected"]
    assert "ProblemDetail" in rejected["definitions"]  # type: ignore[operator]
    jsonschema.Draft4Validator.check_schema(rejected)
