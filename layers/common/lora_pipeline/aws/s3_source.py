"""`DatasetSource` over S3 (lists a dataset prefix and reads byte ranges, so image headers cost one small GET),
and `ObjectReader` for objects named by URI (the base model checkpoint).

A boto3 client is thread-safe, so one source can serve the validator's worker threads.
"""

from __future__ import annotations

from typing import Any

from lora_pipeline.aws.errors import ClientError, error_code
from lora_pipeline.dataset_source import FileEntry, ObjectUnreadable
from lora_pipeline.s3_layout import READY_MARKER, dataset_prefix, parse_s3_uri, s3_uri


class S3DatasetSource:
    def __init__(self, client: Any, bucket: str, dataset: str) -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = dataset_prefix(dataset)

    @property
    def location(self) -> str:
        return s3_uri(self._bucket, self._prefix)

    @property
    def parallel_reads(self) -> int:
        """One reader thread per pooled connection: more threads would wait for, or open and discard,
        connections ("Connection pool is full"); fewer would leave round trips unoverlapped."""
        pool: int = self._client.meta.config.max_pool_connections
        return pool

    def list_files(self) -> list[FileEntry]:
        entries = []
        for page in self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=self._prefix
        ):
            for obj in page.get("Contents", []):
                path = obj["Key"][len(self._prefix) :]
                # Folder placeholders (consoles create them) and the start marker are not dataset files.
                if path and not path.endswith("/") and path != READY_MARKER:
                    entries.append(FileEntry(path, int(obj["Size"])))
        return sorted(entries, key=lambda e: e.path)

    def _get(self, path: str, byte_range: str | None) -> bytes:
        kwargs = {"Bucket": self._bucket, "Key": self._prefix + path}
        if byte_range is not None:
            kwargs["Range"] = byte_range
        try:
            body = self._client.get_object(**kwargs)["Body"]
        except ClientError as exc:
            if error_code(exc) == "InvalidRange":
                return b""
            raise
        with body:
            data: bytes = body.read()
        return data

    def read_range(self, path: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        return self._get(path, f"bytes={start}-{start + length - 1}")

    def read_small(self, path: str, limit: int) -> bytes | None:
        data = self._get(path, f"bytes=0-{limit}")
        return data if len(data) <= limit else None

    def read_all(self, path: str) -> bytes:
        return self._get(path, None)


class S3ObjectReader:
    """`ObjectReader` over S3 URIs: one ranged GET per call."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        bucket, key = parse_s3_uri(uri)
        try:
            body = self._client.get_object(
                Bucket=bucket, Key=key, Range=f"bytes={start}-{start + length - 1}"
            )["Body"]
        except ClientError as exc:
            code = error_code(exc)
            if code in ("NoSuchKey", "NoSuchBucket", "404"):
                raise ObjectUnreadable(f"there is no such object ({code})", missing=True) from None
            if code == "InvalidRange":
                return b""
            raise ObjectUnreadable(f"the object could not be read ({code})", missing=False) from None
        with body:
            data: bytes = body.read()
        return data
