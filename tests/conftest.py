"""Test-wide safety: fake credentials, and no request may leave this machine.

Every AWS call in the tests goes to the embedded AWS (moto). The credentials below are fake, and the
guard refuses any HTTP request from botocore to a host that is not loopback, so a test that forgot
to start the embedded AWS fails loudly instead of reaching a real account.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import botocore.httpsession
import pytest

_FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
for _name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
    os.environ.pop(_name, None)
os.environ.update(_FAKE_ENV)

_LOOPBACK = {"localhost", "127.0.0.1", "::1"}
_real_send = botocore.httpsession.URLLib3Session.send


def _loopback_only_send(self, request):  # type: ignore[no-untyped-def]
    host = urlsplit(request.url).hostname or ""
    if host not in _LOOPBACK and not host.startswith("127."):
        raise RuntimeError(f"test tried to reach real AWS ({request.url}); use the embedded AWS")
    return _real_send(self, request)


botocore.httpsession.URLLib3Session.send = _loopback_only_send


@pytest.fixture(autouse=True)
def _fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in _FAKE_ENV.items():
        monkeypatch.setenv(name, value)
