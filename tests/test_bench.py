"""`skor-bridge bench` end to end, with tiny sizes, against the machine's PostgreSQL and
RabbitMQ and the session's Kafka-protocol broker."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psycopg2
import pytest

from skor_bridge.tools.bench import report
from tests.conftest import ADMIN_DSN
from tests.fixtures_amqp import AMQP_URL

#: Figures every full run reports, in order.
EXPECTED_ROWS = [
    "INSERT throughput, 1 writer, no trigger",
    "INSERT throughput, 1 writer, durable triggers",
    "INSERT throughput, 1 writer, notify triggers",
    "INSERT throughput, 4 writers, no trigger",
    "INSERT throughput, 4 writers, durable triggers",
    "INSERT throughput, 4 writers, notify triggers",
    "webhook: events/s, 8 writers inserting flat out",
    "webhook: events/s draining a 500-event backlog",
    "RabbitMQ: events/s, 8 writers inserting flat out",
    "RabbitMQ: events/s draining a 500-event backlog",
    "Kafka: events/s, 8 writers inserting flat out",
    "Kafka: events/s draining a 500-event backlog",
    "all three at once (webhook + RabbitMQ + Kafka): events/s, 8 writers inserting flat out",
    "all three at once (webhook + RabbitMQ + Kafka): events/s draining a 500-event backlog",
    "latency, commit to receipt, webhook at 1,000 events/s",
    "bridge peak memory (VmHWM), idle, no backlog",
    "bridge CPU per 10,000 events, 500-event backlog to the webhook",
    "bridge peak memory (VmHWM), 500-event backlog to the webhook",
    "idle CPU, nothing written (trigger mode)",
    "PostgreSQL CPU of the bridge's sessions per event, 1,000 events/s (trigger mode)",
    "log bytes per event in the user's database (trigger mode)",
    "PostgreSQL CPU of the bridge's sessions per event, writers flat out (trigger mode)",
    "backfill: rows/s to the webhook, 2,000 rows, while writers insert 500 rows/s",
    "backfill: 4 paced writers at 500 rows/s, during the backfill vs without",
    "WAL-mode server: INSERT throughput, 4 writers, trigger capture installed, no bridge",
    "WAL-mode server: INSERT throughput, 4 writers, WAL capture installed, no bridge",
    "WAL mode: capture rate of a 500-change backlog into skor.log",
    "WAL mode: webhook: events/s, 8 writers inserting flat out",
    "WAL mode: webhook: events/s draining a 500-event backlog",
    "WAL mode: Kafka: events/s, 8 writers inserting flat out",
    "WAL mode: Kafka: events/s draining a 500-event backlog",
    "trigger mode on the same server: webhook, 8 writers inserting flat out",
    "WAL mode: latency, commit to receipt, webhook at 1,000 events/s",
    "idle CPU, nothing written (WAL mode, its own server)",
    "PostgreSQL CPU of the bridge's sessions per event, 1,000 events/s (WAL mode, its own",
    "log bytes per event in the user's database (WAL mode, its own server)",
    "PostgreSQL CPU of the bridge's sessions per event, writers flat out (WAL mode, its own",
    "webhook receiver's own ceiling",
]


def bench(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "skor_bridge", "bench", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SKOR_DSN": ADMIN_DSN},
        **kwargs,
    )


def scratch_name(progress: str) -> str:
    found = re.search(r"creating scratch database (skor_bench_\w+)", progress)
    assert found, progress
    return found[1]


def database_exists(name: str) -> bool:
    conn = psycopg2.connect(ADMIN_DSN)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return cur.fetchone() is not None
    finally:
        conn.close()


def table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[1:]]


@pytest.mark.slow
def test_the_benchmark_reports_every_figure_and_leaves_nothing_behind(kafka_broker, tmp_path):
    # Given a README with a benchmark section, and every output reachable
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START}\nNot measured yet.\n{report.END}\nrest\n")
    output = tmp_path / "bench.md"
    # When the benchmark runs with tiny sizes
    # (the slow-receiver section has fixed sizes, a 45 s outage among them: run on its own)
    process = bench(
        "--seconds",
        "1",
        "--backlog",
        "500",
        "--rounds",
        "1",
        "--no-big-backlog",
        "--backfill-rows",
        "2000",
        "--skip",
        "slow",
        "--amqp",
        AMQP_URL,
        "--kafka",
        kafka_broker.bootstrap,
        "--output",
        str(output),
        "--update-readme",
        str(readme),
    )
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr
    # Then the table names the machine and has every figure, each a positive number
    assert "CPUs" in stdout and "PostgreSQL" in stdout and "Python" in stdout
    assert "writers: pgbench" in stdout or "writers: Python" in stdout
    rows = table_rows(stdout)
    assert len(rows) == len(EXPECTED_ROWS), stdout
    for (figure, result, _target, verdict), expected in zip(rows, EXPECTED_ROWS, strict=True):
        assert figure.startswith(expected), (figure, expected)
        first = re.search(r"[\d,]+(?:\.\d+)?", result)
        # An idle bridge may well round to 0.00% of a core; every other figure is positive.
        least = 0 if figure.startswith("idle CPU") else 1e-12
        assert first and float(first[0].replace(",", "")) >= least, (figure, result)
        assert "LOST" not in result and "duplicates" not in result, (figure, result)
        assert verdict in ("met", "not met", ""), verdict
    targets = [row for row in rows if row[3]]
    assert len(targets) >= 8
    # And the database cost says which of the bridge's sessions it is: the sequencer in
    # trigger mode, the walsender and the WAL writer in WAL mode
    steady = [r[1] for r in rows if r[0].startswith("PostgreSQL CPU of the bridge's sessions")]
    steady = [result for result in steady if "by session:" in result]
    assert len(steady) == 2 and "sequencer" in steady[0], steady
    assert "walsender" in steady[1] and "wal writer" in steady[1], steady
    assert not re.search(r"(RabbitMQ|Kafka|All three at once) skipped", stdout)
    # And it was written to the file and into the README's section, only there
    assert output.read_text() == stdout
    text = readme.read_text()
    assert text.startswith(f"intro\n{report.START}\n") and text.endswith(f"{report.END}\nrest\n")
    assert "| figure | result | target |" in text
    # And the scratch database is gone
    assert not database_exists(scratch_name(stderr))


@pytest.mark.slow
def test_ctrl_c_stops_the_benchmark_and_drops_its_database(kafka_broker):
    # Given a benchmark in its first runs
    process = bench("--seconds", "30", "--skip", "receiver", "--kafka", kafka_broker.bootstrap)
    assert process.stderr is not None
    progress = ""
    deadline = time.monotonic() + 60
    while "creating scratch database" not in progress and time.monotonic() < deadline:
        progress += process.stderr.readline()
    name = scratch_name(progress)
    time.sleep(3)
    # When it gets Ctrl-C
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=60)
    # Then it exits 130 and its database is gone
    assert process.returncode == 130, progress + rest
    assert "interrupted" in rest
    assert not database_exists(name)


def test_an_unreachable_server_is_one_line_and_exit_1():
    process = bench("--dsn", "host=127.0.0.1 port=9 user=postgres connect_timeout=2")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert stderr.strip().splitlines()[-1].startswith("error: cannot create the scratch database")


def test_the_readme_section_is_replaced_between_the_markers_only():
    text = f"a\n{report.START}\nold\n{report.END}\nb\n"
    assert report.replace_section(text, "new\n") == f"a\n{report.START}\nnew\n{report.END}\nb\n"
    with pytest.raises(ValueError):
        report.replace_section("no markers", "new")


def test_the_bench_receiver_answers_late_as_asked_and_goes_down_and_up():
    import http.client

    from skor_bridge.tools.bench.receiver import FastReceiver

    def post(port: int) -> float:
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/hook", body=b'{"data":{"id":1}}')
        assert conn.getresponse().status == 200
        conn.close()
        return time.monotonic() - started

    with FastReceiver() as receiver:
        # Given answers delayed by 0.3 s, then a slow tail of every answer 0.5 s late
        receiver.set_delay(0.3)
        assert post(receiver.port) >= 0.3
        receiver.set_delay(0.0, 1.0, 0.5)
        assert post(receiver.port) >= 0.5
        receiver.set_delay()
        assert post(receiver.port) < 0.3
        # When it goes down, connections are refused; when it is up again, it answers
        receiver.down()
        with pytest.raises(OSError):
            post(receiver.port)
        receiver.up()
        assert post(receiver.port) < 1 and receiver.count == 4


def test_the_database_cost_is_told_by_session_role():
    from skor_bridge.tools.bench.footprint import _breakdown, _role

    assert _role("walsender", "skor-bridge [a1] wal") == "walsender"
    assert _role("client backend", "skor-bridge [a1] wal writer") == "wal writer"
    assert _role("client backend", "skor-bridge [a1] output hook-1") == "outputs"
    assert _role("client backend", "skor-bridge sequencer") == "sequencer"
    # per event, costliest first, what rounds to nothing left out
    assert _breakdown({"sequencer": 0.002, "outputs": 0.00001, "leader": 0.0}, 20) == (
        "sequencer 100 us"
    )
    assert _breakdown({}, 20) == "none"
