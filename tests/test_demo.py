"""`skor-bridge demo` as a user runs it: a subprocess, read from its stdout."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pika
import pika.exceptions
import psutil
import psycopg2
import pytest
from confluent_kafka.admin import AdminClient

from skor_bridge.capture import triggers
from skor_bridge.tools import demo as demo_module
from tests.fixtures_amqp import amqp_channel

#: A demo run must stay well inside this; the embedded server starts in about a second.
RUN_TIMEOUT = 60

SUMMARY = re.compile(
    r"^summary: (?P<events>\d+) events .*; webhook (?P<got>\d+)/(?P<made>\d+) "
    r"p50 [\d.]+ ms p99 [\d.]+ ms(;|$)",
    re.M,
)


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "skor_bridge", "demo", *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def embedded_dir(output: str) -> Path:
    match = re.search(r"starting an embedded PostgreSQL in (\S+) \.\.\.", output)
    assert match, output
    return Path(match[1])


def servers_in(directory: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        if str(directory) in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def catalog(dsn: str) -> dict[str, list]:
    """What a user would notice changed: schemas, relations, functions, triggers, data."""
    queries = {
        "schemas": "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%'"
        " AND nspname <> 'information_schema' ORDER BY 1",
        "relations": "SELECT c.oid::regclass::text, c.relkind FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'"
        " ORDER BY 1",
        "functions": "SELECT p.oid::regprocedure::text FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'"
        " ORDER BY 1",
        "triggers": "SELECT tgrelid::regclass::text, tgname FROM pg_trigger"
        " WHERE NOT tgisinternal ORDER BY 1, 2",
        "extensions": "SELECT extname FROM pg_extension ORDER BY 1",
        "customers": "SELECT * FROM customers ORDER BY id",
    }
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            result = {}
            for name, sql in queries.items():
                cur.execute(sql)
                result[name] = cur.fetchall()
            return result
    finally:
        conn.close()


@pytest.mark.slow
def test_the_demo_delivers_every_change_on_an_embedded_postgres_and_removes_it():
    # When the demo runs on its own embedded PostgreSQL and makes 20 changes
    result = demo("--events", "20", "--exit")
    # Then it exits 0 with a summary of 20 events, all delivered to the webhook
    assert result.returncode == 0, result.stdout + result.stderr
    summary = SUMMARY.search(result.stdout)
    assert summary, result.stdout
    assert (summary["events"], summary["got"], summary["made"]) == ("20", "20", "20")
    # And every change was printed as it arrived, with its latency
    lines = re.findall(r"^\d\d:\d\d:\d\d\.\d{3}  webhook .*$", result.stdout, re.M)
    assert len(lines) == 20
    assert {line.split()[3] for line in lines} == {"INSERT", "UPDATE", "DELETE"}
    assert all(re.search(r"\d+\.\d ms$", line) for line in lines), lines
    # And the server and its directory are gone
    directory = embedded_dir(result.stdout)
    assert not directory.exists()
    assert servers_in(directory) == []


@pytest.mark.slow
def test_the_demo_also_publishes_to_rabbitmq_and_kafka_and_reads_both_back(amqp_url, kafka_broker):
    # When the demo runs with RabbitMQ and Kafka outputs too
    result = demo("--events", "6", "--exit", "--amqp", amqp_url, "--kafka", kafka_broker.bootstrap)
    # Then every change arrived at all three outputs
    assert result.returncode == 0, result.stdout + result.stderr
    summary = SUMMARY.search(result.stdout)
    assert summary and summary["got"] == "6", result.stdout
    assert re.search(r"; amqp 6/6 p50 [\d.]+ ms p99 [\d.]+ ms; kafka 6/6 p50", result.stdout)
    # And the demo's exchange and topic are gone
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        with amqp_channel(amqp_url) as channel:
            channel.exchange_declare(demo_module.AMQP_EXCHANGE, passive=True)
    topics = AdminClient({"bootstrap.servers": kafka_broker.bootstrap}).list_topics(timeout=10)
    assert "skor-demo.public.orders" not in topics.topics


@pytest.mark.slow
def test_the_demo_on_a_given_database_drops_its_table_and_touches_nothing_else(dsn, db):
    # Given a database with a table of its own
    with db.cursor() as cur:
        cur.execute("CREATE TABLE customers (id int PRIMARY KEY, name text)")
        cur.execute("INSERT INTO customers VALUES (1, 'Ada'), (2, 'Grace')")
    before = catalog(dsn)
    # When the demo runs there with 10 changes
    result = demo("--dsn", dsn, "--events", "10", "--exit")
    # Then all 10 arrived
    assert result.returncode == 0, result.stdout + result.stderr
    summary = SUMMARY.search(result.stdout)
    assert summary and summary["events"] == summary["got"] == "10", result.stdout
    assert "public.skor_demo_orders" in result.stdout
    # And its table, triggers and schema skor are gone, and everything else is as it was
    after = catalog(dsn)
    assert not any("skor_demo_orders" in name for name, _ in after["relations"])
    assert after == before


@pytest.mark.slow
def test_the_demo_refuses_a_database_whose_capture_triggers_it_would_replace(dsn, capture_table):
    # Given a database whose table `items` is captured already
    capture_table("CREATE TABLE items (id int PRIMARY KEY, name text)", "items")
    before = catalog_triggers(dsn)
    # When the demo is pointed at it
    result = demo("--dsn", dsn, "--events", "3", "--exit")
    # Then it exits 1 naming the reason, and leaves the capture triggers and table alone
    assert result.returncode == 1
    assert "capture triggers" in result.stderr and "replace" in result.stderr
    assert catalog_triggers(dsn) == before
    assert len(before) == len(triggers.OPS)


def catalog_triggers(dsn: str) -> list[tuple[str, str]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT tgrelid::regclass::text, tgname FROM pg_trigger"
                " WHERE NOT tgisinternal ORDER BY 1, 2"
            )
            rows = cur.fetchall()
            cur.execute("SELECT to_regclass('public.skor_demo_orders')")
            assert cur.fetchone() == (None,)
            return rows
    finally:
        conn.close()


@pytest.mark.slow
def test_ctrl_c_stops_the_interactive_demo_after_showing_the_users_own_change():
    # Given the interactive demo, waiting for the user's changes. Python keeps ignoring
    # SIGINT if it started ignored (a CI job in the background), so the handler is set.
    start = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
        " sys.argv = ['skor-bridge', 'demo', '--events', '2'];"
        " runpy.run_module('skor_bridge', run_name='__main__')"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", start],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()

    def forward() -> None:
        for line in process.stdout or ():
            lines.put(line)

    reader = threading.Thread(target=forward, daemon=True)
    reader.start()
    seen: list[str] = []

    def read_until(pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                assert process.poll() is None, "".join(seen)
                continue
            seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"{pattern!r} not printed:\n{''.join(seen)}")

    try:
        directory = Path(read_until(r"embedded PostgreSQL in (\S+) \.\.\.")[1])
        uri = read_until(r"psql '(postgresql://[^']+)'")[1]
        read_until(r"Ctrl-C stops")
        # When the user inserts a row through the printed connection string
        conn = psycopg2.connect(uri)
        with conn, conn.cursor() as cur:
            cur.execute("INSERT INTO orders (customer, amount) VALUES ('tester', 1.50)")
        conn.close()
        # Then it is printed, timed from its capture ("~")
        line = read_until(r"customer=tester").string
        assert " INSERT " in line and re.search(r"~\d+\.\d ms$", line.rstrip()), line
        # And Ctrl-C stops the demo, which removes the server and its directory
        process.send_signal(signal.SIGINT)
        assert process.wait(RUN_TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(5)
        assert process.stdout is not None
        process.stdout.close()
    assert not directory.exists()
    assert servers_in(directory) == []
