"""The validation report: every problem found, the plan and the effective config. Stored as validation.json."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

from lora_pipeline.dataset import DatasetSummary
from lora_pipeline.job_settings import JobSettings
from lora_pipeline.plan import Plan
from lora_pipeline.problems import Problem, Severity


class ValidationReport(BaseModel):
    schema_version: Literal[1] = 1
    dataset: str
    source: str
    problems: list[Problem]
    job: JobSettings
    summary: DatasetSummary
    plan: Plan | None
    effective_config: dict[str, Any] | None
    # The files the training job receives in its `config` channel; stored next to validation.json, not in it.
    kohya_toml: str | None = Field(default=None, exclude=True)
    prompts_txt: str | None = Field(default=None, exclude=True)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def trainable(self) -> bool:
        return self.error_count == 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def error_count(self) -> int:
        return sum(p.severity is Severity.ERROR for p in self.problems)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def warning_count(self) -> int:
        return sum(p.severity is Severity.WARNING for p in self.problems)
