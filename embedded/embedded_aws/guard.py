"""Make sure nothing in this process can reach a real AWS account."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import botocore.httpsession

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
_REAL_ACCOUNT_SETTINGS = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)


class RealAwsRefused(RuntimeError):
    """A botocore request was about to leave this machine."""


def _is_loopback(host: str) -> bool:
    return host in {"localhost", "::1"} or host.startswith("127.")


def refuse_real_aws() -> None:
    """Fake credentials in the environment, and refuse any botocore HTTP request to a non-loopback host.

    Idempotent. After this call a forgotten mock fails loudly instead of touching a real account.
    """
    for name in _REAL_ACCOUNT_SETTINGS:
        os.environ.pop(name, None)
    os.environ.update(FAKE_CREDENTIALS)
    session_class = botocore.httpsession.URLLib3Session
    if getattr(session_class.send, "_embedded_aws_guard", False):
        return
    real_send = session_class.send

    def loopback_only_send(self: Any, request: Any) -> Any:
        host = urlsplit(request.url).hostname or ""
        if not _is_loopback(host):
            raise RealAwsRefused(f"refused a request to real AWS ({request.url}): the embedded AWS is not up")
        return real_send(self, request)

    loopback_only_send._embedded_aws_guard = True  # type: ignore[attr-defined]
    session_class.send = loopback_only_send  # type: ignore[method-assign]
