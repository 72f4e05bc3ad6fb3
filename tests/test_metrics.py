"""Observability of a running bridge: /metrics, /healthz and /readyz, and its logs."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from skor_bridge.tools.receiver import Receiver
from tests.helpers import execute, short_retry_config, wait_until

TABLE = "CREATE TABLE items (id int PRIMARY KEY, name text)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> dict[tuple[str, str], float]:
    """Samples by (name, output label); unlabelled ones under output ''."""
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return {
        (sample.name, sample.labels.get("output", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.slow
def test_metrics_follow_the_events_and_match_what_the_receiver_counted(
    dsn, capture_table, bridge, tmp_path
):
    # Given a bridge serving metrics, and a receiver that answers 503 until released
    capture_table(TABLE, "items")
    failing = threading.Event()
    failing.set()
    with Receiver(respond=lambda r: 503 if failing.is_set() else 200) as receiver:
        port = free_port()
        bridge(
            "--dsn",
            dsn,
            "--webhook",
            f"webhook={receiver.url}",
            "--metrics-port",
            str(port),
            "--config",
            short_retry_config(tmp_path),
        ).wait_active()
        assert get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
        before = scrape(port)
        assert before[("skor_active", "")] == 1
        assert before[("skor_events_captured_total", "")] == 0

        # When 20 rows are written while the receiver fails
        execute(dsn, "INSERT INTO items SELECT g, 'a' FROM generate_series(1, 20) g")

        # Then they are captured and pending, their lag grows, and retries are counted
        def stuck() -> bool:
            m = scrape(port)
            return (
                m[("skor_events_captured_total", "")] == 20
                and m[("skor_events_pending", "webhook")] == 20
                and m[("skor_lag_seconds", "webhook")] >= 1.0
                and m[("skor_events_retried_total", "webhook")] >= 20
            )

        wait_until(stuck, timeout=10, interval=0.2, message="20 pending, lagging, retried")
        status, body = get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200, body  # retrying for seconds is within bounds
        ready = json.loads(body)
        assert ready["role"] == "active" and ready["database"] is True
        assert ready["outputs"]["webhook"]["failing_seconds"] > 0

        # When the receiver recovers, and later 30 more rows are written
        failing.clear()
        assert receiver.wait_for(20)
        execute(dsn, "INSERT INTO items SELECT g, 'b' FROM generate_series(21, 50) g")
        assert receiver.wait_for(50)

        # Then delivered equals what the receiver accepted, and nothing is pending or lagging
        def settled() -> bool:
            m = scrape(port)
            return (
                m[("skor_events_delivered_total", "webhook")] == len(receiver.delivered())
                and m[("skor_events_captured_total", "")] == 50
                and m[("skor_events_pending", "webhook")] == 0
                and m[("skor_lag_seconds", "webhook")] == 0
            )

        wait_until(settled, timeout=10, interval=0.2, message="metrics settled")
        m = scrape(port)
        assert len(receiver.delivered()) == 50
        assert m[("skor_delivery_latency_seconds_count", "webhook")] == 50
        assert m.get(("skor_events_dead_lettered_total", "webhook"), 0) == 0
        assert get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        assert get(f"http://127.0.0.1:{port}/nope")[0] == 404


@pytest.mark.slow
def test_a_standby_answers_probes_and_reports_its_role(dsn, capture_table, bridge, receiver):
    # Given an active bridge
    capture_table(TABLE, "items")
    bridge("--dsn", dsn, "--webhook", f"webhook={receiver.url}").wait_active()
    # When a second one starts with a metrics port
    port = free_port()
    standby = bridge(
        "--dsn", dsn, "--webhook", f"webhook={receiver.url}", "--metrics-port", str(port)
    )
    standby.wait_for_log("is standing by")
    # Then it is alive and ready, says it stands by, and reports itself inactive
    assert get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
    status, body = get(f"http://127.0.0.1:{port}/readyz")
    assert status == 200 and json.loads(body)["role"] == "standby"
    assert scrape(port)[("skor_active", "")] == 0


@pytest.mark.slow
def test_a_metrics_port_in_use_fails_at_start_in_one_line(dsn, bridge, receiver):
    # Given a port something else listens on
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # When a bridge is asked to serve metrics there
        process = bridge(
            "--dsn", dsn, "--webhook", f"webhook={receiver.url}", "--metrics-port", str(port)
        )
        # Then it exits with 1 and one line naming the port
        assert process.proc.wait(20) == 1
    assert process.log.strip().splitlines() == [
        f"error: metrics port {port}: Address already in use"
    ]


@pytest.mark.slow
def test_json_logs_are_one_object_per_line_and_never_show_a_password(
    dsn, capture_table, bridge, tmp_path
):
    # Given a DSN and a webhook URL that both carry a password, and a receiver failing twice
    capture_table(TABLE, "items")
    answers = iter([503, 503])
    with Receiver(respond=lambda r: next(answers, 200)) as receiver:
        secret_dsn = f"{dsn} password=Sup3r-Secret"
        hook = receiver.url.replace("http://", "http://hook:Hook-Pa55@")
        # When the bridge runs with JSON logs at debug level, retries, and stops
        process = bridge(
            "--dsn",
            secret_dsn,
            "--webhook",
            hook,
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--config",
            short_retry_config(tmp_path),
        )
        process.wait_active()
        execute(dsn, "INSERT INTO items VALUES (1, 'a')")
        assert receiver.wait_for(1)
        assert process.stop() == 0
    # Then every line is one JSON object with time, level, logger and message
    lines = process.log.splitlines()
    assert len(lines) >= 4
    entries = [json.loads(line) for line in lines]
    assert all(set(e) >= {"ts", "level", "logger", "message"} for e in entries)
    assert any(e["level"] == "warning" and "HTTP 503" in e["message"] for e in entries)
    # And neither password appears, though the DSN and URL were logged
    assert any("***" in e["message"] for e in entries)
    assert "Sup3r-Secret" not in process.log and "Hook-Pa55" not in process.log
