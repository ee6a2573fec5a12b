"""A salvaged epoch LoRA passes the same output check as a final one (`check_lora_stream`, the unpack step's),
for the trainer the job ran. sd-scripts v0.10.1 writes `<output_name>-<epoch:06d>.safetensors` per saved epoch
(library/train_util.py EPOCH_FILE_NAME) into the job's checkpoints folder."""

from __future__ import annotations

import json

import boto3
import numpy as np
import pytest
from moto import mock_aws

from lora_pipeline.s3_layout import RunLayout
from lora_pipeline.use_cases.run_input import SalvageInput
from lora_pipeline.use_cases.salvage import salvage_run
from tests.lora_files import kohya_metadata, lora_tensors, safetensors_bytes

BUCKET = "lora-bucket"
LAYOUT = RunLayout("bluebot", "r1")
STOPPED = {
    "TrainingJobName": "bluebot-r1-0",
    "TrainingJobStatus": "Stopped",
    "SecondaryStatus": "MaxRuntimeExceeded",
    "HyperParameters": {"trainer": "kohya"},
}


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def _put_epoch_lora(s3, tensors: dict[str, np.ndarray]) -> None:
    body = safetensors_bytes(tensors, kohya_metadata() | {"ss_num_epochs": "10"})
    s3.put_object(Bucket=BUCKET, Key=LAYOUT.checkpoints_prefix + "bluebot-000009.safetensors", Body=body)


def _model_keys(s3) -> list[str]:
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=LAYOUT.model_prefix).get("Contents", [])
    return sorted(obj["Key"] for obj in listed)


def _salvage(s3):
    return salvage_run(
        s3,
        SalvageInput(
            dataset="bluebot", run_id="r1", bucket=BUCKET, output_name="bluebot", training_job=STOPPED
        ),
    )


def test_a_trained_epoch_lora_is_published_as_a_partial_result(s3) -> None:
    _put_epoch_lora(s3, lora_tensors(module_limit=10))
    salvaged = _salvage(s3)
    assert salvaged is not None and salvaged.summary == "stopped at MaxRuntime after epoch 9 of 10"
    assert _model_keys(s3) == [LAYOUT.model_prefix + "bluebot-000009.safetensors", LAYOUT.manifest_key]
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=LAYOUT.manifest_key)["Body"].read())
    assert manifest["partial"] == salvaged.summary
    assert (manifest["sha256"], manifest["size_bytes"]) == (salvaged.sha256, salvaged.size_bytes)


@pytest.mark.parametrize("damage", ["nan", "untrained"])
def test_an_epoch_lora_the_output_check_refuses_is_not_published(s3, damage: str) -> None:
    tensors = lora_tensors(module_limit=10)
    for name, tensor in tensors.items():
        if damage == "nan" and name.endswith(".lora_down.weight"):
            tensor[0, 0] = np.nan
        if damage == "untrained" and name.endswith(".lora_up.weight"):
            tensor[...] = 0
    _put_epoch_lora(s3, tensors)
    assert _salvage(s3) is None
    assert _model_keys(s3) == []
