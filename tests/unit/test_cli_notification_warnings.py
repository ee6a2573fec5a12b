"""`lora-pipeline status` warns when the emails cannot arrive, or a mail scanner could stop them."""

from __future__ import annotations

from typing import Any

import pytest

from lora_pipeline_cli.runs import notification_warnings

TOPIC = "arn:aws:sns:us-east-1:123456789012:pipeline-topic"


class FakeSns:
    def __init__(self, subscriptions: list[dict[str, str]], authenticated: dict[str, str]) -> None:
        self.subscriptions = subscriptions
        self.authenticated = authenticated

    def get_paginator(self, name: str) -> Any:
        assert name == "list_subscriptions_by_topic"
        outer = self

        class Pages:
            def paginate(self, TopicArn: str) -> list[dict[str, Any]]:
                assert TopicArn == TOPIC
                return [{"Subscriptions": outer.subscriptions}]

        return Pages()

    def get_subscription_attributes(self, SubscriptionArn: str) -> dict[str, Any]:
        return {"Attributes": {"ConfirmationWasAuthenticated": self.authenticated[SubscriptionArn]}}


class FakeStack:
    def __init__(self, sns: FakeSns) -> None:
        self.sns = sns

    def output(self, key: str) -> str:
        assert key == "TopicArn"
        return TOPIC

    def client(self, service: str) -> Any:
        assert service == "sns"
        return self.sns


def sub(endpoint: str, arn: str, protocol: str = "email") -> dict[str, str]:
    return {"Endpoint": endpoint, "SubscriptionArn": arn, "Protocol": protocol}


def warnings(subscriptions: list[dict[str, str]], authenticated: dict[str, str] | None = None) -> list[str]:
    return notification_warnings(FakeStack(FakeSns(subscriptions, authenticated or {})))  # type: ignore[arg-type]


@pytest.mark.parametrize("subscriptions", [[], [sub("me@example.com", "PendingConfirmation")]])
def test_no_confirmed_subscription_is_a_warning_with_the_authenticated_confirm_command(
    subscriptions: list[dict[str, str]],
) -> None:
    (warning,) = warnings(subscriptions)
    assert "no email will arrive" in warning
    assert f"--topic-arn {TOPIC}" in warning and "--authenticate-on-unsubscribe true" in warning
    assert ("me@example.com has not confirmed yet" in warning) == bool(subscriptions)


def test_an_email_subscription_its_link_can_end_is_a_warning() -> None:
    arn = f"{TOPIC}:1111"
    (warning,) = warnings([sub("me@example.com", arn)], {arn: "false"})
    assert warning.startswith("me@example.com can be unsubscribed by anyone who follows")


def test_authenticated_and_non_email_subscriptions_are_fine() -> None:
    email, queue = f"{TOPIC}:1111", f"{TOPIC}:2222"
    found = [sub("me@example.com", email), sub("arn:aws:sqs:us-east-1:1:q", queue, "sqs")]
    assert warnings(found, {email: "true"}) == []
