"""S3 ends of the unpack step: the archive as a stream, the LoRA as a multipart upload, the manifest.

Memory in the Lambda is one multipart part (plus its copy while it is sent) and a few 1 MiB chunks, so
a 2 GB archive unpacks in a 1 GB function with the default 16 MiB parts.
"""

from __future__ import annotations

import contextlib
from typing import Any

from botocore.exceptions import (  # type: ignore[import-untyped]
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from lora_pipeline.aws.errors import ClientError, error_code
from lora_pipeline.manifest import Manifest, RunFacts, build_manifest
from lora_pipeline.model_archive import ModelArchiveError, UnpackLimits, check_file_name, unpack_model_archive
from lora_pipeline.s3_layout import s3_uri
from lora_pipeline.safetensors_lora import Architecture

MIB = 1024 * 1024
# S3 refuses parts under 5 MiB (except the last); above 64 MiB the part buffer crowds a 1 GB Lambda.
MIN_PART_BYTES = 5 * MIB
MAX_PART_BYTES = 64 * MIB
DEFAULT_PART_BYTES = 16 * MIB
MANIFEST_NAME = "manifest.json"
_STREAM_RESUMES = 3


class S3ObjectStream:
    """A non-seekable stream over one object that resumes with a ranged GET when the connection drops.

    The resumed GET is pinned to the first response's ETag, so an object replaced meanwhile fails instead
    of splicing two versions.
    """

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._position = 0
        self._etag: str | None = None
        self._body: Any = None

    @property
    def uri(self) -> str:
        return s3_uri(self._bucket, self._key)

    def _open(self) -> None:
        request: dict[str, Any] = {"Bucket": self._bucket, "Key": self._key}
        if self._etag is not None:
            request |= {"Range": f"bytes={self._position}-", "IfMatch": self._etag}
        try:
            response = self._client.get_object(**request)
        except ClientError as error:
            code = error_code(error)
            if code in ("NoSuchKey", "404"):
                raise ModelArchiveError(
                    f"{self.uri} does not exist", "The training job uploaded no model; see its logs"
                ) from error
            if code == "PreconditionFailed":
                raise ModelArchiveError(
                    f"{self.uri} was replaced while it was read", "Run the unpack again on the new archive"
                ) from error
            raise
        self._etag = response["ETag"]
        self._body = response["Body"]

    def read(self, size: int = -1, /) -> bytes:
        for attempt in range(_STREAM_RESUMES + 1):
            if self._body is None:
                self._open()
            try:
                data: bytes = self._body.read(size if size >= 0 else None)
            except (ResponseStreamingError, ReadTimeoutError, IncompleteReadError):
                self._body = None
                if attempt == _STREAM_RESUMES:
                    raise
                continue
            self._position += len(data)
            return data
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._body is not None:
            self._body.close()


class S3MultipartSink:
    """Writes `<prefix><name>` by multipart upload (a single PUT when the file fits in one part)."""

    def __init__(self, client: Any, bucket: str, prefix: str, part_bytes: int = DEFAULT_PART_BYTES) -> None:
        if not MIN_PART_BYTES <= part_bytes <= MAX_PART_BYTES:
            raise ValueError(f"part size must be {MIN_PART_BYTES}..{MAX_PART_BYTES} bytes, not {part_bytes}")
        self._client = client
        self._bucket = bucket
        self._prefix = prefix
        self._part_bytes = part_bytes

    def open(self, name: str) -> S3MultipartWriter:
        return S3MultipartWriter(
            self._client, self._bucket, self._prefix + check_file_name(name), self._part_bytes
        )


class S3MultipartWriter:
    def __init__(self, client: Any, bucket: str, key: str, part_bytes: int) -> None:
        self._client = client
        self._bucket = bucket
        self.key = key
        self._part_bytes = part_bytes
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def write(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= self._part_bytes:
            with memoryview(self._buffer) as view:
                part = bytes(view[: self._part_bytes])  # one copy (slicing the bytearray would add another)
            del self._buffer[: self._part_bytes]
            self._upload_part(part)

    def _upload_part(self, data: bytes) -> None:
        if self._upload_id is None:
            created = self._client.create_multipart_upload(
                Bucket=self._bucket, Key=self.key, ContentType="application/octet-stream"
            )
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        response = self._client.upload_part(
            Bucket=self._bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=data
        )
        self._parts.append({"PartNumber": number, "ETag": response["ETag"]})

    def close(self) -> None:
        if self._upload_id is None:
            self._client.put_object(
                Bucket=self._bucket,
                Key=self.key,
                Body=bytes(self._buffer),
                ContentType="application/octet-stream",
            )
        else:
            if self._buffer:
                self._upload_part(bytes(self._buffer))
            self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        self._buffer = bytearray()

    def abort(self) -> None:
        self._buffer = bytearray()
        if self._upload_id is None:
            return
        # Best effort while another error propagates; the bucket's lifecycle rule expires any leftover.
        with contextlib.suppress(ClientError):
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=self.key, UploadId=self._upload_id)
        self._upload_id = None


def write_manifest(client: Any, bucket: str, key: str, manifest: Manifest) -> None:
    client.put_object(Bucket=bucket, Key=key, Body=manifest.to_json(), ContentType="application/json")


def unpack_model(
    s3_client: Any,
    bucket: str,
    archive_key: str,
    model_prefix: str,
    output_name: str,
    run_facts: RunFacts,
    *,
    limits: UnpackLimits | None = None,
    part_bytes: int = DEFAULT_PART_BYTES,
    architecture: Architecture = Architecture.SDXL,
) -> Manifest:
    """Unpack `s3://bucket/archive_key` into `<model_prefix><output_name>.safetensors` and `manifest.json`.

    `model_prefix` is `RunLayout.model_prefix` (ends with '/'). Every byte of the LoRA is read once and
    checked (`safetensors_lora.check_lora_stream`) against `architecture`. Raises `ModelArchiveError` (a
    ValueError) when the archive holds no usable LoRA; nothing is written then.
    """
    source = S3ObjectStream(s3_client, bucket, archive_key)
    sink = S3MultipartSink(s3_client, bucket, model_prefix, part_bytes)
    try:
        result = unpack_model_archive(
            source, sink, output_name=output_name, limits=limits, architecture=architecture
        )
    finally:
        source.close()
    manifest = build_manifest(
        result,
        model_uri=s3_uri(bucket, model_prefix + result.name),
        archive_uri=source.uri,
        run=run_facts,
    )
    write_manifest(s3_client, bucket, model_prefix + MANIFEST_NAME, manifest)
    return manifest
