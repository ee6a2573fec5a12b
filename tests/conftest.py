"""Test-wide safety: fake credentials, and no request may leave this machine.

Every AWS call in the tests goes to the embedded AWS (moto). `refuse_real_aws` puts fake credentials in the
environment and makes botocore refuse any request to a host that is not loopback, so a test that forgot to
start the embedded AWS fails loudly instead of reaching a real account.
"""

from __future__ import annotations

import pytest

from embedded_aws.guard import FAKE_CREDENTIALS, refuse_real_aws

refuse_real_aws()


@pytest.fixture(autouse=True)
def _fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that change the environment cannot leave real credentials behind for the next test."""
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
