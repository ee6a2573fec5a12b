"""Uploading a dataset folder to `datasets/<name>/` with progress, multipart for large files, `_READY` last.

An upload replaces the dataset, as `aws s3 sync --delete` would: what S3 holds under `datasets/<name>/` and
the folder lacks is removed first (`stale_keys`, `remove_keys`), so a fixed re-upload is what gets validated.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from lora_pipeline.dataset_source import FileEntry, LocalFolder
from lora_pipeline.s3_layout import READY_MARKER, dataset_prefix
from lora_pipeline_cli.stack import StackError

# Files a desktop or an earlier Kohya run leaves behind that must never reach the training job.
_JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}
_JUNK_SUFFIXES = (".npz",)
_DELETE_BATCH = 1000  # DeleteObjects' limit per request
TRANSFER = TransferConfig(multipart_threshold=16 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024)

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class UploadPlan:
    files: list[FileEntry]
    skipped: list[str]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def plan_upload(folder: Path) -> UploadPlan:
    files, skipped = [], []
    for entry in LocalFolder(folder).list_files():
        name = entry.path.rsplit("/", 1)[-1]
        parts = entry.path.split("/")
        if name in _JUNK_NAMES or name.endswith(_JUNK_SUFFIXES) or any(p.startswith(".") for p in parts):
            skipped.append(entry.path)
        elif entry.path != READY_MARKER:
            files.append(entry)
    return UploadPlan(files, skipped)


def upload_dataset(
    s3: Any,
    bucket: str,
    folder: Path,
    dataset: str,
    plan: UploadPlan,
    start: bool,
    on_bytes: ProgressCallback,
    workers: int = 8,
) -> list[str]:
    """Upload every planned file (in parallel), then `_READY` when `start`; returns the keys written."""
    prefix = dataset_prefix(dataset)
    lock = threading.Lock()

    def report(sent: int) -> None:
        with lock:
            on_bytes(sent)

    def put(entry: FileEntry) -> str:
        key = prefix + entry.path
        s3.upload_file(str(folder / entry.path), bucket, key, Config=TRANSFER, Callback=report)
        return key

    with ThreadPoolExecutor(max_workers=workers) as pool:
        keys = list(pool.map(put, plan.files))
    if start:
        s3.put_object(Bucket=bucket, Key=prefix + READY_MARKER, Body=b"")
        keys.append(prefix + READY_MARKER)
    return keys


def stale_keys(s3: Any, bucket: str, dataset: str, plan: UploadPlan) -> list[str]:
    """Keys under `datasets/<dataset>/` that the upload would not write (`_READY` aside), sorted."""
    prefix = dataset_prefix(dataset)
    kept = {prefix + entry.path for entry in plan.files} | {prefix + READY_MARKER}
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []) if o["Key"] not in kept)


def remove_keys(s3: Any, bucket: str, keys: list[str]) -> None:
    """Delete `keys` (DeleteObjects, 1000 a request); raises StackError naming the keys S3 kept."""
    failed: list[str] = []
    for start in range(0, len(keys), _DELETE_BATCH):
        batch = [{"Key": key} for key in keys[start : start + _DELETE_BATCH]]
        response = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        failed += [f"{e['Key']} ({e.get('Message', e.get('Code'))})" for e in response.get("Errors", [])]
    if failed:
        raise StackError(
            f"S3 did not remove {', '.join(failed)}; nothing was uploaded. "
            "Check that you may delete objects in the bucket (s3:DeleteObject) and upload again."
        )
