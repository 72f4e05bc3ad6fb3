"""`skor-bridge relay` end to end: real relay processes in one consumer group, a real
Kafka-protocol broker (Tansu), the bridge feeding it, and real HTTP receivers.

Tansu's consumer-group join takes about half of session.timeout.ms, so every relay here
runs with a 6 s session; and Tansu may leave a join pending when another member leaves
during it, so the rebalance timeout (max.poll.interval.ms) is short too: the join is
retried after it."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import defaultdict

import psycopg2
import pytest

from skor_bridge.config import KafkaConfig
from skor_bridge.event import ChangeEvent
from skor_bridge.sinks.kafka import KafkaSink
from skor_bridge.tools.receiver import Receiver
from tests.fixtures_bridge import BridgeProcess
from tests.fixtures_kafka import consume, free_port
from tests.helpers import wait_until

pytestmark = pytest.mark.slow

SESSION = [
    "--kafka-option",
    "session.timeout.ms=6000",
    "--kafka-option",
    "heartbeat.interval.ms=500",
    "--kafka-option",
    "max.poll.interval.ms=10000",
]


class RelayProcess(BridgeProcess):
    """A `skor-bridge relay` subprocess, logging to a file."""

    def start(self) -> RelayProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "skor_bridge", "relay", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        return self


@pytest.fixture
def relay(tmp_path, kafka_broker):
    """Factory: `relay(group, topic, webhook_url, *more_args)` starts a relay worker."""
    started: list[RelayProcess] = []

    def start(group: str, topic: str, url: str, *args: str) -> RelayProcess:
        process = RelayProcess(
            [
                "--kafka",
                kafka_broker.bootstrap,
                "--topic",
                topic,
                "--group",
                group,
                "--webhook",
                url,
                *SESSION,
                *args,
            ],
            tmp_path / f"relay-{len(started)}.log",
        )
        started.append(process.start())
        return process

    yield start
    for process in started:
        if process.proc is not None and process.proc.poll() is None:
            process.kill()


def feed(bootstrap: str, topic: str, events: list[ChangeEvent], partitions: int = 4) -> None:
    """Write events as the bridge's Kafka output does (same sink, same record shape)."""
    sink = KafkaSink("feed", KafkaConfig(bootstrap=bootstrap, topic=topic, partitions=partitions))
    with sink:
        batch: list[ChangeEvent] = []
        for event in events:
            if any(e.key == event.key for e in batch):
                assert all(r.outcome.value == "delivered" for r in sink.send(batch))
                batch = []
            batch.append(event)
        assert all(r.outcome.value == "delivered" for r in sink.send(batch))


def row_event(row: int, version: int) -> ChangeEvent:
    return ChangeEvent(
        id=str(uuid.uuid4()),
        position=0,
        schema="public",
        table="items",
        op="UPDATE",
        data=json.dumps({"id": row, "v": version}),
        key=f'{{"id":{row}}}',
    )


def versions_by_row(receiver: Receiver) -> dict[int, list[tuple[int, str]]]:
    """Per row, (version, webhook-id) of every 2xx delivery, in arrival order."""
    rows: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for request in receiver.delivered():
        data = json.loads(request.body)["data"]
        rows[data["id"]].append((data["v"], request.headers["webhook-id"]))
    return rows


def test_two_workers_share_partitions_and_a_killed_one_loses_nothing(
    dsn, capture_table, bridge, relay, kafka_broker, kafka_topic
):
    # Given a captured table, a bridge writing it to a 4-partition topic, and two relay
    # workers of one group delivering that topic to a receiver
    capture_table("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)", "items")
    rows = 40
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, %s) g", (rows,))
    conn.close()
    bridge(
        "--dsn",
        dsn,
        "--kafka",
        kafka_broker.bootstrap,
        "--kafka-topic",
        kafka_topic,
        "--kafka-partitions",
        "4",
    ).wait_active()
    # The first worker is killed (kill -9) from inside the receiver, after 150 of its
    # deliveries, while its 151st request waits for its answer: that request counts as
    # delivered here, yet the worker never learns it, so its new owner must send it again.
    killed = threading.Event()
    from_first = [0]

    def respond(request) -> int:
        time.sleep(0.003)
        if request.path.endswith("worker=first") and not killed.is_set():
            from_first[0] += 1
            if from_first[0] > 150:
                first.kill()
                killed.set()
        return 200

    receiver = Receiver(respond=respond).start()
    group = f"g-{uuid.uuid4().hex[:8]}"
    first = relay(group, kafka_topic, receiver.url + "?worker=first")
    second = relay(group, kafka_topic, receiver.url)

    # When rows are updated concurrently, and one worker is killed with kill -9 midway
    updates = 60

    def write(part: int) -> None:
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            for version in range(1, updates + 1):
                for row in range(part, rows + 1, 4):
                    cur.execute("UPDATE items SET v = %s WHERE id = %s", (version, row))
                time.sleep(0.1)
        conn.close()

    writers = [threading.Thread(target=write, args=(part,)) for part in range(1, 5)]
    for thread in writers:
        thread.start()
    try:
        first.wait_for_log("assigned skor", timeout=60)
        second.wait_for_log("assigned skor", timeout=60)
        wait_until(killed.is_set, timeout=90, message="the first worker killed")
        # (while rows are still being updated: the survivor must take over to finish)
        assert any(thread.is_alive() for thread in writers)
    finally:
        for thread in writers:
            thread.join(120)

    # Then the survivor takes the killed worker's partitions, and every row ends at its
    # last version
    def all_final() -> bool:
        got = versions_by_row(receiver)
        return len(got) == rows and all(seen[-1][0] == updates for seen in got.values())

    wait_until(
        lambda: second.log.count("assigned skor") >= 2,
        timeout=60,
        message="the survivor taking over",
    )
    takeover = second.log.split("assigned skor")[-1].splitlines()[0]
    assert all(f"[{partition}]" in takeover for partition in range(4)), takeover
    wait_until(all_final, timeout=120, message="every row's last version")
    receiver.stop()

    duplicates = 0
    for row, seen in versions_by_row(receiver).items():
        # And a redelivered version keeps its webhook-id
        ids_per_version: dict[int, set[str]] = defaultdict(set)
        for version, webhook_id in seen:
            ids_per_version[version].add(webhook_id)
        assert all(len(ids) == 1 for ids in ids_per_version.values()), row
        # And per-row order holds: deduplicated by webhook-id, versions only go forward
        first_seen: list[int] = []
        known: set[str] = set()
        for version, webhook_id in seen:
            if webhook_id in known:
                duplicates += 1
                continue
            known.add(webhook_id)
            first_seen.append(version)
        assert first_seen == sorted(set(first_seen)), (row, first_seen)
        # And nothing is lost: every version the bridge captured arrived (0 is the INSERT)
        assert set(first_seen) == set(range(0, updates + 1)), row
    # And the killed worker's uncommitted records were delivered again (at least once)
    assert duplicates > 0
    # And each event carries the bridge's log position as run sends it (unique per event,
    # unlike Kafka offsets), the same on every delivery
    positions: dict[str, set[str]] = defaultdict(set)
    for request in receiver.delivered():
        positions[request.headers["webhook-id"]].add(request.headers["webhook-position"])
    assert all(len(found) == 1 for found in positions.values())
    assert len({found.pop() for found in positions.values()}) == len(positions)


def test_a_rejected_row_goes_to_the_dead_letter_topic_and_others_flow(
    relay, kafka_broker, kafka_topic, tmp_path
):
    # Given records of 10 rows, a receiver that refuses row 7 with 422 and always answers
    # 503 for row 8, and a relay giving up after 3 attempts
    events = [row_event(row, version) for version in range(1, 6) for row in range(1, 11)]
    feed(kafka_broker.bootstrap, kafka_topic, events)
    refusals = {7: 422, 8: 503}
    receiver = Receiver(
        respond=lambda r: refusals.get(json.loads(r.body)["data"]["id"], 200)
    ).start()
    dead = f"{kafka_topic}.dead"
    config = tmp_path / "relay.toml"
    config.write_text("[retry]\ninitial_backoff = 0.05\nmax_backoff = 0.2\n")

    # When a relay with a dead-letter topic delivers them
    port = free_port()
    worker = relay(
        f"g-{uuid.uuid4().hex[:8]}",
        kafka_topic,
        receiver.url,
        "--dead-letter-topic",
        dead,
        "--metrics-port",
        str(port),
        "--max-attempts",
        "3",
        "--config",
        str(config),
    )
    assert receiver.wait_for(40, timeout=60)

    # Then every other row's versions arrive, in order
    letters = consume(kafka_broker.bootstrap, dead, 10, timeout=60)
    got = versions_by_row(receiver)
    assert sorted(got) == [r for r in range(1, 11) if r not in refusals]
    assert all([v for v, _ in seen] == [1, 2, 3, 4, 5] for seen in got.values())

    # And rows 7 and 8's five records each are in the dead-letter topic: original value,
    # key and headers, plus why (at once for the 422; after 3 attempts for the 503) and
    # where from
    assert len(letters) == 10
    source = {
        m.headers["event-id"].decode(): m
        for m in consume(kafka_broker.bootstrap, kafka_topic, len(events), timeout=30)
    }
    originals = {e.id: e for e in events}
    for letter in letters:
        event_id = letter.headers["event-id"].decode()
        row = json.loads(originals[event_id].data)["id"]
        assert letter.value == originals[event_id].body()
        assert letter.key == f'{{"id":{row}}}'.encode()
        assert letter.headers["op"] == b"UPDATE"
        expected = (b"HTTP 422", b"1") if row == 7 else (b"HTTP 503", b"3")
        assert letter.headers["dlq-error"].startswith(expected[0])
        assert letter.headers["dlq-attempts"] == expected[1]
        assert letter.headers["dlq-output"].startswith(b"webhook")  # the output's name
        assert letter.headers["dlq-original-topic"] == kafka_topic.encode()
        original = source[event_id]
        assert letter.headers["dlq-original-partition"] == str(original.partition).encode()
        assert letter.headers["dlq-original-offset"] == str(original.offset).encode()
    assert (
        sorted(json.loads(originals[m.headers["event-id"].decode()].data)["id"] for m in letters)
        == [7] * 5 + [8] * 5
    )

    # And the partitions moved on: /metrics shows no lag on any of the 4 partitions, and
    # the ten dead letters
    def metrics() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

    def caught_up() -> bool:
        lags = re.findall(
            r'^skor_relay_lag_records\{partition="(\d)",topic="([^"]+)"\} (\S+)$', metrics(), re.M
        )
        return len(lags) == 4 and all(float(v) == 0 and t == kafka_topic for _, t, v in lags)

    wait_until(caught_up, timeout=30, message="lag 0 on every partition")
    assert re.search(
        r'^skor_events_dead_lettered_total\{output="webhook[^"]*"\} 10\.0$', metrics(), re.M
    )
    assert re.search(r"^skor_relay_partitions 4\.0$", metrics(), re.M)
    ready = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz").read())
    assert ready["ready"] is True and ready["partitions"] == 4
    assert worker.stop() == 0


def test_without_a_dead_letter_topic_a_rejected_row_waits_and_others_flow(
    relay, kafka_broker, kafka_topic, tmp_path
):
    # Given a receiver that refuses row 3 until it is fixed
    events = [row_event(row, version) for version in range(1, 4) for row in range(1, 6)]
    feed(kafka_broker.bootstrap, kafka_topic, events)
    fixed = threading.Event()
    receiver = Receiver(
        respond=lambda r: 200 if fixed.is_set() or json.loads(r.body)["data"]["id"] != 3 else 422
    ).start()
    config = tmp_path / "relay.toml"
    config.write_text("[retry]\ninitial_backoff = 0.05\nmax_backoff = 0.2\n")

    # When a relay without dead-letter topic delivers them
    relay(f"g-{uuid.uuid4().hex[:8]}", kafka_topic, receiver.url, "--config", str(config))
    wait_until(lambda: len(versions_by_row(receiver)) == 4, timeout=60, message="other rows")
    wait_until(
        lambda: all(len(s) == 3 for s in versions_by_row(receiver).values()),
        timeout=30,
        message="other rows' versions",
    )
    # Then row 3 got nothing, and nothing of it was skipped: once the receiver takes it,
    # all three versions arrive, in order
    assert 3 not in versions_by_row(receiver)
    fixed.set()
    wait_until(
        lambda: len(versions_by_row(receiver).get(3, [])) == 3,
        timeout=30,
        message="row 3 delivered",
    )
    assert [v for v, _ in versions_by_row(receiver)[3]] == [1, 2, 3]


def test_sigterm_during_a_rebalance_commits_what_completed(relay, kafka_broker, kafka_topic):
    # Given 200 records of 20 rows, a slow receiver, and two workers of one group sharing
    # them. (The worker stopped below is not the group's leader: Tansu never completes a
    # rebalance whose leader left during it; Kafka does.)
    events = [row_event(row, version) for version in range(1, 11) for row in range(1, 21)]
    feed(kafka_broker.bootstrap, kafka_topic, events)
    slow = threading.Event()
    slow.set()

    def respond(request) -> int:
        if slow.is_set():
            time.sleep(1.0)
        return 200

    receiver = Receiver(respond=respond).start()
    group = f"g-{uuid.uuid4().hex[:8]}"
    leader = relay(group, kafka_topic, receiver.url)
    leader.wait_for_log("assigned skor", timeout=60)
    stopped = relay(group, kafka_topic, receiver.url, "--webhook-concurrency", "4")
    stopped.wait_for_log("assigned skor", timeout=60)
    wait_until(lambda: receiver.count >= 16, timeout=60, message="deliveries flowing")

    # When a third worker joins (a rebalance starts: each worker revokes and waits for its
    # requests in flight) and one worker gets SIGTERM during that wait
    third = relay(group, kafka_topic, receiver.url)
    stopped.wait_for_log("revoking", timeout=60)
    stopped.signal(signal.SIGTERM)
    # Then it stops cleanly, having committed
    assert stopped.proc.wait(60) == 0
    assert "committed skor" in stopped.log.split("revoking", 1)[1]
    delivered_before = {r.headers["webhook-id"] for r in receiver.delivered()}
    slow.clear()

    # And everything is delivered in the end
    wait_until(
        lambda: len({r.headers["webhook-id"] for r in receiver.delivered()}) == len(events),
        timeout=90,
        message="every record",
    )
    leader.stop()
    third.stop()

    # And what was completed before it stopped was committed: nothing of each partition's
    # contiguous delivered prefix came again
    records = consume(kafka_broker.bootstrap, kafka_topic, len(events), timeout=30)
    by_partition: dict[int, list[str]] = defaultdict(list)
    for record in sorted(records, key=lambda m: (m.partition, m.offset)):
        by_partition[record.partition].append(record.headers["event-id"].decode())
    counts: dict[str, int] = defaultdict(int)
    for request in receiver.delivered():
        counts[request.headers["webhook-id"]] += 1
    prefix_total = 0
    for ids in by_partition.values():
        prefix = 0
        while prefix < len(ids) and ids[prefix] in delivered_before:
            prefix += 1
        prefix_total += prefix
        again = [i for i in ids[:prefix] if counts[i] > 1]
        assert again == [], "a committed record was delivered again"
    assert prefix_total >= 16


def test_cloudevents_written_to_kafka_arrive_as_http_binary_mode_cloudevents(
    relay, kafka_broker, kafka_topic
):
    from cloudevents.v1.http import from_http

    from skor_bridge.formats import render

    # Given events the bridge's Kafka output wrote in the cloudevents format (binary mode)
    source = "postgresql://127.0.0.1:5432/shop"
    events = [render(row_event(row, 1), "cloudevents", "kafka", source) for row in (1, 2)]
    feed(kafka_broker.bootstrap, kafka_topic, events)
    receiver = Receiver().start()
    # When a relay delivers them to a webhook
    relay(f"g-{uuid.uuid4().hex[:8]}", kafka_topic, receiver.url)
    assert receiver.wait_for(2, timeout=60)
    # Then each request is a CloudEvent in HTTP binary mode: the SDK reads its attributes
    # from ce-* headers, and its data is the row
    by_id = {e.id: e for e in events}
    for request in receiver.delivered():
        cloudevent = from_http(request.headers, request.body)
        original = by_id[cloudevent["id"]]
        assert cloudevent["specversion"] == "1.0"
        assert cloudevent["source"] == source
        assert cloudevent["type"] == "skor.update"
        assert cloudevent["subject"] == "public.items"
        assert cloudevent.data == json.loads(original.data)
        assert request.headers["content-type"] == "application/json"
        assert request.headers["webhook-id"] == original.id
    receiver.stop()
