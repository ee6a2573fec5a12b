"""boto3 clients shared by the handlers: made once per service, region and endpoint, reused across invocations."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5})
# Presigned links need SigV4 (SSE-KMS objects, expiry up to 7 days).
_S3_CONFIG = _CONFIG.merge(Config(signature_version="s3v4"))


@cache
def _client(service: str, region: str | None, endpoint: str | None) -> Any:
    config = _S3_CONFIG if service == "s3" else _CONFIG
    return boto3.client(service, region_name=region, endpoint_url=endpoint, config=config)


def client(service: str) -> Any:
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return _client(service, region, os.environ.get("AWS_ENDPOINT_URL"))
