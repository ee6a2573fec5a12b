"""boto3 clients for the embedded AWS: fake credentials, created once per (service, region) and shared.

A boto3 client is thread-safe and costly to create (SageMaker's service model alone takes a fraction of a
second to load), and moto intercepts every client, whenever it was made. No client-side retries: a throttled
call must reach the caller (Step Functions Retry, a test) as it would from the service.
"""

from __future__ import annotations

import functools
from typing import Any

import boto3
from botocore.config import Config

_NO_RETRIES = Config(retries={"total_max_attempts": 1})


@functools.cache
def client(service: str, region: str) -> Any:
    return boto3.client(
        service,
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=_NO_RETRIES,
    )
