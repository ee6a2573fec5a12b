"""Validate a dataset folder: `build_validation_report`, the one entry point used by the CLI, the validate Lambda
and the tests, returns the `report.ValidationReport` stored as validation.json."""

from __future__ import annotations

from lora_pipeline.dataset import DatasetRules, check_dataset
from lora_pipeline.dataset_source import DatasetSource, ObjectReader
from lora_pipeline.instances import InstanceTable, load_instance_table
from lora_pipeline.job_settings import SETTINGS_FILE, StackLimits, read_job_settings
from lora_pipeline.kohya_config import PipelineInputs, build_effective_config
from lora_pipeline.plan import SubsetCount, make_plan
from lora_pipeline.problems import Problem, Severity, define
from lora_pipeline.report import ValidationReport

KOHYA_CONFIG_FILE = "config.toml"
# A real config.toml or pipeline.toml is a few KB; the cap bounds the memory and parse time of a hostile one.
MAX_SETTINGS_BYTES = 1024 * 1024

SETTINGS_NOT_UTF8 = define(
    "SETTINGS_NOT_UTF8",
    Severity.ERROR,
    "a settings file is not UTF-8 text",
    "Save the file as UTF-8 (TOML requires it).",
)

SETTINGS_TOO_LARGE = define(
    "SETTINGS_TOO_LARGE",
    Severity.ERROR,
    f"A settings file is larger than {MAX_SETTINGS_BYTES // 1024} KiB.",
    "Keep only the settings you need in <file> (a real one is a few KB).",
)


def _read_settings_file(
    source: DatasetSource, names: set[str], path: str
) -> tuple[str | None, list[Problem]]:
    if path not in names:
        return None, []
    data = source.read_small(path, MAX_SETTINGS_BYTES)
    if data is None:
        return None, [
            SETTINGS_TOO_LARGE.at(
                path, f"{path} is larger than {MAX_SETTINGS_BYTES:,} bytes; it was not read."
            )
        ]
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        return None, [SETTINGS_NOT_UTF8.at(path, f"{path} is not UTF-8 (byte {exc.start}); it was not read.")]


def build_validation_report(
    source: DatasetSource,
    dataset_name: str,
    limits: StackLimits | None = None,
    instances: InstanceTable | None = None,
    models: ObjectReader | None = None,
) -> ValidationReport:
    """The full report of one dataset. `models` reads an S3 base model's header (without it, an S3 base
    model is not checked to be SDXL)."""
    limits = limits or StackLimits()
    instances = instances or load_instance_table()
    files = source.list_files()
    names = {f.path for f in files}
    problems: list[Problem] = []

    settings_text, read_problems = _read_settings_file(source, names, SETTINGS_FILE)
    problems += read_problems
    job, job_problems = read_job_settings(settings_text, limits, instances, models=models)
    problems += job_problems

    config_text, read_problems = _read_settings_file(source, names, KOHYA_CONFIG_FILE)
    problems += read_problems
    kohya = build_effective_config(
        config_text,
        PipelineInputs(
            dataset_name=dataset_name,
            output_name=job.output_name,
            base_model_hf_id=None if job.base_model_from_s3 else job.base_model,
            sample_every_n_epochs=job.sample_every_n_epochs,
        ),
        file=KOHYA_CONFIG_FILE,
    )
    problems += kohya.problems
    effective = kohya.effective or {}

    summary, dataset_problems = check_dataset(source, DatasetRules.from_kohya_config(effective), files)
    problems += dataset_problems

    job = job.model_copy(update={"output_name": effective.get("output_name", job.output_name)})
    plan = None
    if kohya.effective is not None:
        counts = [SubsetCount(s.folder, s.image_count, s.repeats) for s in summary.subsets]
        buckets = [b.image_count for b in summary.buckets]
        # Images whose size could not be read (already errors) count as one more bucket.
        buckets.append(summary.total_repeated_images - sum(buckets))
        plan, plan_problems = make_plan(
            counts,
            effective,
            job,
            instances,
            bucket_counts=buckets,
            checkpoint_interval_minutes=limits.checkpoint_interval_minutes,
        )
        problems += plan_problems

    return ValidationReport(
        dataset=dataset_name,
        source=source.location,
        problems=problems,
        job=job,
        summary=summary,
        plan=plan,
        effective_config=kohya.effective,
        kohya_toml=kohya.to_toml() if kohya.effective is not None else None,
        prompts_txt=job.prompts_txt(),
    )
