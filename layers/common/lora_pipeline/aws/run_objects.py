"""A run's objects under `runs/<dataset>/<run-id>/` in S3: its checkpoints and what the unpack step publishes."""

from __future__ import annotations

from typing import Any

from lora_pipeline.s3_layout import RunLayout


def delete_prefix(s3: Any, bucket: str, prefix: str) -> int:
    """Delete every object under `prefix`; returns how many."""
    deleted = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            deleted += len(keys)
    return deleted


def delete_published(s3: Any, bucket: str, layout: RunLayout) -> None:
    """What the unpack step publishes for a run: model/ (LoRA, epochs, samples, manifest) and report.html."""
    delete_prefix(s3, bucket, layout.model_prefix)
    s3.delete_object(Bucket=bucket, Key=layout.report_key)


def checkpoint_names(s3: Any, bucket: str, prefix: str) -> list[str]:
    """The keys under `prefix`, relative to it."""
    names = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        names += [obj["Key"][len(prefix) :] for obj in page.get("Contents", [])]
    return names
