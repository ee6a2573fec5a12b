"""Every S3 key the pipeline reads or writes, built in one place (README.md, "What a run publishes", shows the run folder).

Only `datasets/` triggers the pipeline; everything the pipeline writes lives under `runs/`, and the
image build uses `build/`, so nothing written here can start a run. `base-models/` holds the `.safetensors`
base models a dataset's `pipeline.toml` may name (the training role reads nothing else outside its run).
"""

from __future__ import annotations

from dataclasses import dataclass

DATASETS_PREFIX = "datasets/"
RUNS_PREFIX = "runs/"
BASE_MODELS_PREFIX = "base-models/"
READY_MARKER = "_READY"


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, key


def resume_request_key(dataset: str) -> str:
    """Written by `lora-pipeline resume`: the dataset's next run starts from this run's kept checkpoints."""
    return f"{RUNS_PREFIX}{dataset}/resume-request.json"


def unsafe_key_reason(path: str) -> str | None:
    """Why an object key (or a part of one) cannot be used as a file path, or None when it can.

    The training container copies the dataset prefix to disk and sd-scripts walks it, so a key must be a
    plain relative POSIX path: no `.`/`..` or empty segments, no backslash, no NUL or other control
    character (which also make the key unreadable in messages and emails).
    """
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return "contains a control character (NUL, tab, newline, ...)"
    if "\\" in path:
        return "contains a backslash"
    segments = path.split("/")
    if any(segment in (".", "..") for segment in segments):
        return "has a '.' or '..' segment"
    if any(not segment for segment in segments[:-1]) or path.startswith("/"):
        return "has an empty segment ('//' or a leading '/')"
    return None


def dataset_prefix(dataset: str) -> str:
    return f"{DATASETS_PREFIX}{dataset}/"


@dataclass(frozen=True)
class DatasetObject:
    """An object below `datasets/<dataset>/`; `path` is relative to the dataset root."""

    dataset: str
    path: str

    @property
    def is_ready_marker(self) -> bool:
        return self.path == READY_MARKER


def parse_dataset_key(key: str) -> DatasetObject | None:
    """The dataset an object key belongs to, or None when the key is not inside a dataset folder (or the
    folder's name cannot be a dataset name: see `unsafe_key_reason`)."""
    if not key.startswith(DATASETS_PREFIX):
        return None
    dataset, sep, path = key[len(DATASETS_PREFIX) :].partition("/")
    if not dataset or not sep or unsafe_key_reason(dataset) is not None:
        return None
    return DatasetObject(dataset=dataset, path=path)


@dataclass(frozen=True)
class RunLayout:
    """Keys of one run: `runs/<dataset>/<run_id>/...`."""

    dataset: str
    run_id: str

    @property
    def prefix(self) -> str:
        return f"{RUNS_PREFIX}{self.dataset}/{self.run_id}/"

    @property
    def validation_key(self) -> str:
        return f"{self.prefix}validation.json"

    @property
    def config_prefix(self) -> str:
        return f"{self.prefix}config/"

    @property
    def kohya_toml_key(self) -> str:
        return f"{self.config_prefix}kohya.toml"

    @property
    def prompts_key(self) -> str:
        return f"{self.config_prefix}prompts.txt"

    @property
    def checkpoints_prefix(self) -> str:
        return f"{self.prefix}checkpoints/"

    @property
    def output_prefix(self) -> str:
        return f"{self.prefix}output/"

    def model_archive_key(self, training_job_name: str) -> str:
        return f"{self.output_prefix}{training_job_name}/output/model.tar.gz"

    @property
    def model_prefix(self) -> str:
        return f"{self.prefix}model/"

    def model_key(self, output_name: str) -> str:
        return f"{self.model_prefix}{output_name}.safetensors"

    @property
    def manifest_key(self) -> str:
        return f"{self.model_prefix}manifest.json"

    @property
    def epochs_prefix(self) -> str:
        """The per-epoch LoRAs, `<output_name>-<NNNNNN>.safetensors`."""
        return f"{self.model_prefix}epochs/"

    @property
    def samples_prefix(self) -> str:
        return f"{self.model_prefix}samples/"

    @property
    def report_key(self) -> str:
        """The run report: one self-contained HTML page."""
        return f"{self.prefix}report.html"
