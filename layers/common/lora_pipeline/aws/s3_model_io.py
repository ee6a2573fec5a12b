"""S3 ends of the unpack step: the archive as a stream, the LoRA as an s3transfer upload, the manifest.

Memory in the Lambda is a few multipart parts per file being written (`S3MultipartSink`) and a few 1 MiB
chunks, so a 2 GB archive unpacks in a 1 GB function with the default 16 MiB parts.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from typing import Any

from botocore.exceptions import (  # type: ignore[import-untyped]
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from s3transfer.manager import TransferConfig, TransferManager  # type: ignore[import-untyped]
from s3transfer.subscribers import BaseSubscriber  # type: ignore[import-untyped]

from lora_pipeline.aws.errors import ClientError, error_code
from lora_pipeline.manifest import Manifest, RunFacts, build_manifest
from lora_pipeline.model_archive import (
    EPOCHS_FOLDER,
    SAMPLES_FOLDER,
    ModelArchiveError,
    UnpackLimits,
    UnpackResult,
    check_file_name,
    read_member,
    unpack_model_archive,
)
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
    """Writes `<prefix><name>` with s3transfer's managed upload: a multipart upload of `part_bytes` parts, or
    a single PUT when the file fits in one part.

    Memory per open file is about three parts: the one being sent, the next one read while it is sent
    (`max_in_memory_upload_chunks` and `max_submission_concurrency` at 1, as s3transfer's `TransferConfig`
    documents their sum), and the written bytes waiting for s3transfer to read them.
    """

    def __init__(self, client: Any, bucket: str, prefix: str, part_bytes: int = DEFAULT_PART_BYTES) -> None:
        if not MIN_PART_BYTES <= part_bytes <= MAX_PART_BYTES:
            raise ValueError(f"part size must be {MIN_PART_BYTES}..{MAX_PART_BYTES} bytes, not {part_bytes}")
        self._client = client
        self._bucket = bucket
        self._prefix = prefix
        self._config = TransferConfig(
            multipart_threshold=part_bytes,
            multipart_chunksize=part_bytes,
            max_request_concurrency=2,
            max_submission_concurrency=1,
            max_in_memory_upload_chunks=1,
        )

    def open(self, name: str) -> S3UploadWriter:
        key = self._prefix + check_file_name(name)
        return S3UploadWriter(TransferManager(self._client, self._config), self._bucket, key)


class _UploadAborted(Exception):
    """Raised to s3transfer from the stream it reads when the file is discarded: the upload fails."""


class _WrittenBytes:
    """The bytes written to an `S3UploadWriter`, as the non-seekable stream s3transfer reads.

    `write` waits while `max_bytes` are unread; `read(n)` waits for n bytes (s3transfer takes a short read
    as the end of the stream) or for `finish`.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._chunks: deque[bytes] = deque()
        self._unread = 0
        self._finished = False
        self._stopped = False
        self._changed = threading.Condition()

    def write(self, data: bytes) -> bool:
        """False when the reader stopped (the upload failed or was aborted): nothing more will be read."""
        with self._changed:
            self._changed.wait_for(lambda: self._unread < self._max_bytes or self._stopped)
            if self._stopped:
                return False
            self._chunks.append(data)
            self._unread += len(data)
            self._changed.notify_all()
            return True

    def finish(self) -> None:
        with self._changed:
            self._finished = True
            self._changed.notify_all()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._chunks.clear()
            self._changed.notify_all()

    def read(self, size: int = -1, /) -> bytes:
        with self._changed:
            self._changed.wait_for(lambda: self._stopped or self._finished or 0 <= size <= self._unread)
            if self._stopped:
                raise _UploadAborted
            wanted = self._unread if size < 0 else min(size, self._unread)
            taken: list[bytes] = []
            while wanted:
                chunk = self._chunks.popleft()
                if len(chunk) > wanted:
                    self._chunks.appendleft(chunk[wanted:])
                    chunk = chunk[:wanted]
                taken.append(chunk)
                wanted -= len(chunk)
                self._unread -= len(chunk)
            self._changed.notify_all()
        return b"".join(taken)


class _StopWhenDone(BaseSubscriber):  # type: ignore[misc]
    def __init__(self, written: _WrittenBytes) -> None:
        self._written = written

    def on_done(self, future: Any, **_: Any) -> None:
        self._written.stop()  # a failed upload reads no more: do not let the writer wait for it


class S3UploadWriter:
    """One file of an `S3MultipartSink`, uploaded by s3transfer while it is written."""

    def __init__(self, manager: Any, bucket: str, key: str) -> None:
        self.key = key
        self._manager = manager
        part_bytes = manager.config.multipart_chunksize
        self._written = _WrittenBytes(part_bytes)
        self._upload = manager.upload(
            self._written,
            bucket,
            key,
            extra_args={"ContentType": "application/octet-stream"},
            subscribers=[_StopWhenDone(self._written)],
        )

    def write(self, data: bytes) -> None:
        if not self._written.write(data):
            self.close()  # raises the upload's error

    def close(self) -> None:
        self._written.finish()
        try:
            self._upload.result()
        finally:
            self._manager.shutdown()

    def abort(self) -> None:
        self._written.stop()
        # Best effort while another error propagates (the upload's own one included): s3transfer aborts the
        # multipart upload it began, and the bucket's lifecycle rule expires any leftover.
        with contextlib.suppress(Exception):
            self._upload.result()
        self._manager.shutdown()


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
) -> tuple[Manifest, UnpackResult]:
    """Unpack `s3://bucket/archive_key` into `<model_prefix><output_name>.safetensors`, the per-epoch LoRAs
    into `<model_prefix>epochs/`, the samples into `<model_prefix>samples/`, and write `manifest.json`.

    `model_prefix` is `RunLayout.model_prefix` (ends with '/'). Every byte of the LoRA and of each epoch LoRA
    is read once and checked (`safetensors_lora.check_lora_stream`) against `architecture`. Returns the
    manifest and what was unpacked (the samples' bytes and the loss log included, for the run report). Raises
    `ModelArchiveError` (a ValueError) when the archive holds no usable LoRA; nothing is written then.
    """
    source = S3ObjectStream(s3_client, bucket, archive_key)
    sink = S3MultipartSink(s3_client, bucket, model_prefix, part_bytes)
    try:
        result = unpack_model_archive(
            source,
            sink,
            output_name=output_name,
            epoch_sink=S3MultipartSink(s3_client, bucket, f"{model_prefix}{EPOCHS_FOLDER}/", part_bytes),
            sample_sink=S3MultipartSink(s3_client, bucket, f"{model_prefix}{SAMPLES_FOLDER}/", part_bytes),
            limits=limits,
            architecture=architecture,
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
    return manifest, result


def read_output_file(
    s3_client: Any, bucket: str, archive_key: str, name: str, max_bytes: int
) -> bytes | None:
    """A small file from a job's output.tar.gz (what the container left in /opt/ml/output/data); None when
    the job wrote no output archive, the file is not in it, or the archive is broken (it holds nothing the
    LoRA depends on)."""
    try:
        body = s3_client.get_object(Bucket=bucket, Key=archive_key)["Body"]
    except ClientError as error:
        if error_code(error) in ("NoSuchKey", "404"):
            return None
        raise
    try:
        return read_member(body, name, max_bytes)
    except ModelArchiveError:
        return None
    finally:
        body.close()
