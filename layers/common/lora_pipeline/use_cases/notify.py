"""notify: a pipeline event on the custom bus -> a short email through the SNS topic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from lora_pipeline.aws.errors import ClientError
from lora_pipeline.s3_layout import RunLayout, parse_s3_uri

if TYPE_CHECKING:
    from lora_pipeline import notifications
    from lora_pipeline.events import TrainingSucceeded

CREDENTIALS_NOTE = (
    "The link is signed with the notification function's temporary credentials, so it stops working when "
    "they expire, which can be well before the date above. The S3 URI below always works."
)


def _run_results(s3: Any, event: TrainingSucceeded, expiry_seconds: int) -> notifications.RunResults:
    """The trigger words from the run's manifest and a presigned link to its report."""
    from lora_pipeline import notifications
    from lora_pipeline.manifest import Manifest

    bucket, key = parse_s3_uri(event.manifest_uri)
    try:
        manifest = Manifest.model_validate_json(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except (ClientError, ValidationError):
        manifest = None  # the email still goes out; it names no trigger words
    report_key = RunLayout(event.dataset, event.run_id).report_key
    try:
        s3.head_object(Bucket=event.bucket, Key=report_key)
    except ClientError:
        report = None  # a run unpacked before reports existed
    else:
        url = s3.generate_presigned_url(
            "get_object", Params={"Bucket": event.bucket, "Key": report_key}, ExpiresIn=expiry_seconds
        )
        report = notifications.DownloadLink(url, datetime.now(UTC) + timedelta(seconds=expiry_seconds))
    return notifications.RunResults(manifest.trigger_phrase if manifest else None, report)


def notify(
    s3: Any, sns: Any, topic_arn: str, detail_type: str, detail: dict[str, Any], expiry_seconds: int
) -> str:
    """Render one pipeline event as an email and publish it to the topic; returns the subject."""
    from lora_pipeline import notifications
    from lora_pipeline.events import BY_DETAIL_TYPE, TrainingSucceeded

    event = BY_DETAIL_TYPE[detail_type].model_validate(detail)
    link = results = None
    if isinstance(event, TrainingSucceeded):
        bucket, key = parse_s3_uri(event.model_uri)
        url = s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expiry_seconds
        )
        expires_at = datetime.now(UTC) + timedelta(seconds=expiry_seconds)
        link = notifications.DownloadLink(url, expires_at, CREDENTIALS_NOTE)
        results = _run_results(s3, event, expiry_seconds)
    message = notifications.render(event, link, results)
    sns.publish(TopicArn=topic_arn, Subject=message.subject, Message=message.body)
    return message.subject
