from __future__ import annotations

import hashlib
import tarfile

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError, ResponseStreamingError
from moto import mock_aws

from lora_pipeline.aws.s3_model_io import MIN_PART_BYTES, S3MultipartSink, unpack_model
from lora_pipeline.manifest import Manifest, RunFacts
from lora_pipeline.model_archive import ModelArchiveError
from lora_pipeline.s3_layout import RunLayout
from lora_pipeline.safetensors_lora import Architecture
from tests.lora_files import Member, kohya_metadata, safetensors_bytes, sdxl_lora_bytes, tar_bytes

BUCKET = "lora-bucket"
LAYOUT = RunLayout("bluebot", "20261126-1100-ab12")
JOB = "bluebot-20261126-1100-ab12-1"
ARCHIVE_KEY = LAYOUT.model_archive_key(JOB)
FACTS = RunFacts(dataset="bluebot", run_id=LAYOUT.run_id, training_job_name=JOB, billable_seconds=612)
# Real SDXL shapes at rank 4: 986 modules, about 29 MB, six parts of 5 MiB.
BIG_LORA = sdxl_lora_bytes(rank=4)


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def put_archive(s3, members: list[Member]) -> None:
    s3.put_object(
        Bucket=BUCKET, Key=ARCHIVE_KEY, Body=tar_bytes([Member("model.tar.gz", tar_bytes(members))])
    )


def model_keys(s3) -> list[str]:
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=LAYOUT.model_prefix)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def run_unpack(s3, client=None, part_bytes=MIN_PART_BYTES) -> Manifest:
    manifest, _ = unpack_model(
        client or s3, BUCKET, ARCHIVE_KEY, LAYOUT.model_prefix, "bluebot", FACTS, part_bytes=part_bytes
    )
    return manifest


def test_archive_in_s3_becomes_the_lora_and_its_manifest_by_multipart_upload(s3):
    put_archive(
        s3,
        [
            Member("bluebot-000001.safetensors", sdxl_lora_bytes(rank=2)),
            Member("bluebot.safetensors", BIG_LORA),
        ],
    )

    manifest = run_unpack(s3)

    assert model_keys(s3) == [LAYOUT.model_key("bluebot"), LAYOUT.manifest_key]
    model = s3.get_object(Bucket=BUCKET, Key=LAYOUT.model_key("bluebot"))
    assert model["Body"].read() == BIG_LORA
    assert model["ETag"].endswith('-6"'), "uploaded in six 5 MiB parts"
    stored = Manifest.model_validate_json(
        s3.get_object(Bucket=BUCKET, Key=LAYOUT.manifest_key)["Body"].read()
    )
    assert stored == manifest
    assert stored.sha256 == hashlib.sha256(BIG_LORA).hexdigest() and stored.size_bytes == len(BIG_LORA)
    assert stored.model_uri == f"s3://{BUCKET}/{LAYOUT.model_key('bluebot')}"
    assert stored.archive_uri == f"s3://{BUCKET}/{ARCHIVE_KEY}"
    assert stored.archive_member == "model.tar.gz!/bluebot.safetensors"
    assert (stored.lora.unet_modules, stored.lora.text_encoder_modules, stored.lora.network_dim) == (
        722,
        264,
        4,
    )
    assert stored.metadata["ss_network_dim"] == "4" and stored.metadata_omitted == []
    assert stored.run == FACTS


def test_a_lora_smaller_than_a_part_is_one_put(s3):
    put_archive(s3, [Member("bluebot.safetensors", sdxl_lora_bytes(module_limit=10))])
    run_unpack(s3)
    assert "-" not in s3.head_object(Bucket=BUCKET, Key=LAYOUT.model_key("bluebot"))["ETag"]


def test_a_refused_archive_leaves_no_model_and_no_open_upload(s3):
    # The first LoRA is uploaded in parts before the second shows that the choice is ambiguous.
    put_archive(s3, [Member("first.safetensors", BIG_LORA), Member("second.safetensors", BIG_LORA)])
    with pytest.raises(ModelArchiveError, match=r"2 \.safetensors files"):
        run_unpack(s3)
    assert model_keys(s3) == []
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_a_link_in_the_archive_writes_nothing(s3):
    put_archive(
        s3, [Member("bluebot.safetensors", BIG_LORA), Member("x", kind=tarfile.SYMTYPE, linkname="/etc")]
    )
    with pytest.raises(ModelArchiveError, match="symbolic link"):
        run_unpack(s3)
    assert model_keys(s3) == []
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_a_missing_archive_says_the_job_uploaded_nothing(s3):
    with pytest.raises(ModelArchiveError, match="does not exist"):
        run_unpack(s3)


class DroppingClient:
    """The S3 client, except that the first GET body breaks after 1 MiB like a reset connection."""

    def __init__(self, client, before_resume=lambda: None) -> None:
        self._client = client
        self._before_resume = before_resume
        self.get_requests: list[dict] = []

    def __getattr__(self, name):
        return getattr(self._client, name)

    def get_object(self, **request):
        self.get_requests.append(request)
        if len(self.get_requests) == 2:
            self._before_resume()
        response = self._client.get_object(**request)
        if len(self.get_requests) == 1:
            response["Body"] = BreakingBody(response["Body"], 1024 * 1024)
        return response


class BreakingBody:
    def __init__(self, body, limit: int) -> None:
        self._body = body
        self._left = limit

    def read(self, size=None):
        if self._left <= 0:
            raise ResponseStreamingError(error="connection reset by peer")
        data = self._body.read(min(size or self._left, self._left))
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._body.close()


def test_a_dropped_download_resumes_where_it_stopped_on_the_same_object_version(s3):
    put_archive(s3, [Member("bluebot.safetensors", BIG_LORA)])
    client = DroppingClient(s3)

    manifest = run_unpack(s3, client=client)

    assert manifest.sha256 == hashlib.sha256(BIG_LORA).hexdigest()
    first, resumed = client.get_requests
    assert "Range" not in first
    assert resumed["Range"] == "bytes=1048576-"
    assert resumed["IfMatch"] == s3.head_object(Bucket=BUCKET, Key=ARCHIVE_KEY)["ETag"]


def test_an_archive_replaced_during_the_download_is_not_spliced(s3):
    put_archive(s3, [Member("bluebot.safetensors", BIG_LORA)])
    second_version = [Member("bluebot.safetensors", BIG_LORA), Member("note.txt", b"second version")]
    client = DroppingClient(s3, before_resume=lambda: put_archive(s3, second_version))
    with pytest.raises(ModelArchiveError, match="replaced while it was read"):
        run_unpack(s3, client=client)
    assert model_keys(s3) == []


class FailingPartsClient:
    """The S3 client, except that every UploadPart is refused as S3 refuses an expired session's."""

    def __init__(self, client) -> None:
        self._client = client

    def __getattr__(self, name):
        return getattr(self._client, name)

    def upload_part(self, **request):
        raise ClientError({"Error": {"Code": "ExpiredToken", "Message": "expired"}}, "UploadPart")


def test_a_failed_part_upload_stops_the_unpack_and_leaves_nothing(s3):
    put_archive(s3, [Member("bluebot.safetensors", BIG_LORA)])
    with pytest.raises(ClientError, match="ExpiredToken"):
        run_unpack(s3, client=FailingPartsClient(s3))
    assert model_keys(s3) == []
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_part_size_outside_s3_and_lambda_limits_is_refused(s3):
    with pytest.raises(ValueError, match="part size"):
        S3MultipartSink(s3, BUCKET, LAYOUT.model_prefix, part_bytes=1024 * 1024)


def test_the_architecture_of_the_runs_trainer_decides_the_widths(s3):
    small = {}
    for name in ("lora_unet_input_blocks_4_1_proj_in", "lora_te2_text_model_encoder_layers_0_mlp_fc2"):
        small[f"{name}.lora_down.weight"] = np.full((4, 32), 0.01, np.float32)
        small[f"{name}.lora_up.weight"] = np.full((64, 4), 0.01, np.float32)
        small[f"{name}.alpha"] = np.array(2.0, np.float32)
    put_archive(s3, [Member("bluebot.safetensors", safetensors_bytes(small, kohya_metadata()))])
    with pytest.raises(ModelArchiveError, match="do not fit SDXL's layer"):
        run_unpack(s3)
    assert model_keys(s3) == []
    manifest, _ = unpack_model(
        s3, BUCKET, ARCHIVE_KEY, LAYOUT.model_prefix, "bluebot", FACTS, architecture=Architecture.SMOKE
    )
    assert manifest.lora.unet_modules == 1 and manifest.lora.te2_modules == 1
