"""Fast unit tests of secret redaction (config.redact, config.redact_url): no services."""

from __future__ import annotations

import pytest

from skor_bridge.config import redact, redact_url

SECRET = "hunter2"


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        # libpq key/value DSNs, quoted values with spaces and escaped quotes, any case and spacing
        ("host=db password=hunter2 user=app", "host=db password=*** user=app"),
        ("host=db password='hunter2 x\\' y' user=app", "host=db password=*** user=app"),
        ("dbname=shop PASSWORD = hunter2", "dbname=shop PASSWORD = ***"),
        # URLs with userinfo: the user stays (it helps), the password goes
        (
            "postgresql://app:hunter2@db:5432/shop?sslmode=require",
            "postgresql://app:***@db:5432/shop?sslmode=require",
        ),
        ("amqp://guest:hunter2@127.0.0.1:5672/%2F", "amqp://guest:***@127.0.0.1:5672/%2F"),
        ("amqps://u:hunter2@mq.example.com/vhost", "amqps://u:***@mq.example.com/vhost"),
        # secrets in query strings
        ("kafka://b:9092?secret=hunter2&acks=all", "kafka://b:9092?secret=***&acks=all"),
        ("postgresql://db/shop?password=hunter2", "postgresql://db/shop?password=***"),
        # inside a longer message, as errors carry them
        (
            "cannot connect to amqp://u:hunter2@mq:5672/: refused",
            "cannot connect to amqp://u:***@mq:5672/: refused",
        ),
    ],
)
def test_passwords_are_hidden_wherever_they_appear(text, kept):
    assert redact(text) == kept
    assert SECRET not in redact(text, urls=False)


def test_a_sasl_password_in_kafka_options_is_hidden():
    shown = redact("kafka://b:9092?sasl.password=hunter2&acks=all")
    assert SECRET not in shown
    assert shown.startswith("kafka://b:9092?sasl.password=***")


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://app@db/shop",
        "host=db user=app dbname=shop",
        'FATAL:  password authentication failed for user "app"',
        "amqp://127.0.0.1:5672/",
        "",
    ],
)
def test_text_without_a_secret_is_left_as_it_is(text):
    assert redact(text) == text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T0/B0/hunter2", "https://hooks.slack.com/..."),
        ("https://h.example.com:8443/in?token=hunter2", "https://h.example.com:8443/..."),
        ("https://u:hunter2@h.example.com/in", "https://h.example.com/..."),
        ("http://[::1]:8080/hook?sig=hunter2", "http://[::1]:8080/..."),
        ("https://h.example.com/#hunter2", "https://h.example.com/..."),
        ("https://h.example.com", "https://h.example.com"),
        ("https://h.example.com/", "https://h.example.com"),
        ("amqp://guest:hunter2@mq:5672/%2F", "amqp://mq:5672/..."),
    ],
)
def test_redact_url_shows_only_where_a_url_points(url, shown):
    assert redact_url(url) == shown


def test_redact_url_of_something_that_is_no_url_still_hides_passwords():
    assert redact_url("host=db password=hunter2") == "host=db password=***"


def test_webhook_urls_in_messages_are_cut_to_their_origin_unless_asked():
    message = "POST https://h.example.com/in?token=hunter2 failed: HTTP 500"
    assert redact(message) == "POST https://h.example.com/... failed: HTTP 500"
    # urls=False (show_full_urls) keeps paths but never a password
    assert redact(message, urls=False) == message
    assert redact("https://u:hunter2@h/in", urls=False) == "https://u:***@h/in"
