"""The validate step against moto S3: the base model checkpoint's header read by ranged GETs, and sample
prompts that sd-scripts reads differently from what a strict parser would (the step must report, not fail)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from embedded_aws.training import STAND_IN_TRAINING_IMAGE
from lora_pipeline.aws.s3_source import S3ObjectReader
from lora_pipeline.base_model import check_s3_checkpoint
from lora_pipeline.dataset_source import ObjectUnreadable
from lora_pipeline.job_settings import StackLimits
from lora_pipeline.use_cases.run_input import RunInput
from lora_pipeline.use_cases.validate import validate_run
from tests.corpus import make_good_dataset

BUCKET = "pipeline-bucket"
MODELS = "models-bucket"
RUN = RunInput(dataset="bluebot", run_id="20261130-0400-ab12", bucket=BUCKET)

# Tensor names as the single-file checkpoints hold them (a few per part; shapes do not matter here).
SDXL_NAMES = (
    "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
    "conditioner.embedders.1.model.positional_embedding",
    "model.diffusion_model.label_emb.0.0.weight",
    "model.diffusion_model.input_blocks.0.0.weight",
    "first_stage_model.decoder.conv_in.weight",
)
SD15_NAMES = (
    "cond_stage_model.transformer.text_model.embeddings.position_ids",
    "model.diffusion_model.input_blocks.0.0.weight",
    "first_stage_model.decoder.conv_in.weight",
)
REFINER_NAMES = (
    "conditioner.embedders.0.model.positional_embedding",
    "model.diffusion_model.label_emb.0.0.weight",
)


def checkpoint(names: tuple[str, ...], padding: int = 4096) -> bytes:
    """A safetensors file: 8-byte little-endian header length, the JSON header, then the data."""
    header = {
        name: {"dtype": "F16", "shape": [1], "data_offsets": [2 * i, 2 * i + 2]}
        for i, name in enumerate(names)
    }
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * (2 * len(names) + padding)


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        client.create_bucket(Bucket=MODELS)
        yield client


def upload_dataset(s3: Any, root: Path, pipeline_toml: str) -> None:
    make_good_dataset(root)
    (root / "pipeline.toml").write_text(pipeline_toml)
    for path in root.rglob("*"):
        if path.is_file():
            key = f"datasets/{RUN.dataset}/{path.relative_to(root).as_posix()}"
            s3.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())


def problem_codes(outcome: dict[str, Any]) -> list[str]:
    return [p["code"] for p in outcome["problems"]]


@pytest.mark.parametrize(
    ("names", "valid"), [(SDXL_NAMES, True), (SD15_NAMES, False), (REFINER_NAMES, False)]
)
def test_an_s3_base_model_is_checked_by_its_header(
    s3: Any, tmp_path: Path, names: tuple[str, ...], valid: bool
) -> None:
    # Where a dataset may name its own base model: one object under the stack bucket's base-models/.
    s3.put_object(Bucket=BUCKET, Key="base-models/base.safetensors", Body=checkpoint(names))
    upload_dataset(s3, tmp_path, f'base_model = "s3://{BUCKET}/base-models/base.safetensors"\n')
    outcome = validate_run(s3, RUN, StackLimits(), STAND_IN_TRAINING_IMAGE)
    assert outcome["valid"] is valid
    assert ("JOB_BASE_MODEL_NOT_SDXL" in problem_codes(outcome)) is not valid


def test_an_s3_base_model_elsewhere_is_refused_unread(s3: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket=MODELS, Key="base.safetensors", Body=checkpoint(SD15_NAMES))
    upload_dataset(s3, tmp_path, f'base_model = "s3://{MODELS}/base.safetensors"\n')
    outcome = validate_run(s3, RUN, StackLimits(), STAND_IN_TRAINING_IMAGE)
    assert outcome["valid"] is False
    assert problem_codes(outcome).count("JOB_BASE_MODEL_NOT_ALLOWED") == 1
    assert "JOB_BASE_MODEL_NOT_SDXL" not in problem_codes(outcome)


def test_only_the_header_is_read(s3: Any) -> None:
    s3.put_object(Bucket=MODELS, Key="big.safetensors", Body=checkpoint(SDXL_NAMES, padding=8 * 1024 * 1024))
    reads: list[tuple[int, int]] = []

    class Counting(S3ObjectReader):
        def read_range(self, uri: str, start: int, length: int) -> bytes:
            reads.append((start, length))
            return super().read_range(uri, start, length)

    assert check_s3_checkpoint(f"s3://{MODELS}/big.safetensors", Counting(s3), "pipeline.toml") is None
    assert sum(length for _, length in reads) < 4096


def test_a_missing_checkpoint_is_an_error_and_other_read_failures_raise_unreadable(s3: Any) -> None:
    problem = check_s3_checkpoint(f"s3://{MODELS}/none.safetensors", S3ObjectReader(s3), "pipeline.toml")
    assert problem is not None and problem.code == "JOB_BASE_MODEL_NOT_SDXL"
    with pytest.raises(ObjectUnreadable) as caught:
        S3ObjectReader(s3).read_range("s3://no-such-bucket-here/x.safetensors", 0, 8)
    assert caught.value.missing


def test_a_file_that_is_not_safetensors_is_refused(s3: Any) -> None:
    s3.put_object(Bucket=MODELS, Key="fake.safetensors", Body=b"PK\x03\x04 not a checkpoint at all")
    problem = check_s3_checkpoint(f"s3://{MODELS}/fake.safetensors", S3ObjectReader(s3), "pipeline.toml")
    assert problem is not None and "not a safetensors checkpoint" in problem.message


def test_prompts_sd_scripts_reads_leniently_are_reported_and_the_step_still_answers(
    s3: Any, tmp_path: Path
) -> None:
    upload_dataset(
        s3, tmp_path, 'sample_prompts = ["bluebot --W 832 --H 1216", "bluebot --steps 20 --ss Euler"]\n'
    )
    outcome = validate_run(s3, RUN, StackLimits(), STAND_IN_TRAINING_IMAGE)
    assert sorted(problem_codes(outcome)) == ["JOB_BAD_SAMPLE_PROMPT", "JOB_UNKNOWN_SAMPLER"]
    prompts = s3.get_object(Bucket=BUCKET, Key=f"runs/{RUN.dataset}/{RUN.run_id}/config/prompts.txt")
    assert prompts["Body"].read().decode().splitlines()[0] == "bluebot --W 832 --H 1216"
