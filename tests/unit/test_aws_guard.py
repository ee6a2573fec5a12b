import boto3
import pytest

from embedded_aws.guard import RealAwsRefused


def test_unmocked_aws_call_is_refused() -> None:
    s3 = boto3.client("s3")
    with pytest.raises(RealAwsRefused, match="real AWS"):
        s3.list_buckets()


def test_credentials_are_fake() -> None:
    creds = boto3.Session().get_credentials()
    assert creds is not None and creds.access_key == "testing"
