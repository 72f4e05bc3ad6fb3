"""End to end: triggers -> outbox -> bridge process -> a real HTTP receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import psycopg2
import pytest

from skor_bridge.tools.receiver import Receiver
from tests.fixtures_bridge import active_and_standby
from tests.helpers import bodies, duplicates, execute, short_retry_config, wait_until

TABLE = "CREATE TABLE items (id int PRIMARY KEY, name text, qty int DEFAULT 0)"


@pytest.mark.slow
def test_rows_written_while_the_bridge_is_down_are_delivered_when_it_starts(
    dsn, capture_table, bridge, receiver
):
    # Given triggers installed and 300 inserts, updates and deletes with no bridge running
    capture_table(TABLE, "items")
    execute(
        dsn,
        "INSERT INTO items (id, name) SELECT g, 'n' || g FROM generate_series(1, 300) g",
        "UPDATE items SET qty = 1 WHERE id <= 100",
        "DELETE FROM items WHERE id > 250",
    )
    # When the bridge starts
    bridge("--dsn", dsn, "--webhook", receiver.url)
    # Then every change arrives, in order per row, with Skor's body
    assert receiver.wait_for(300 + 100 + 50)
    events = bodies(receiver)
    assert len(events) == 450
    assert {(e["op"], e["table"], e["schema"]) for e in events} == {
        ("INSERT", "items", "public"),
        ("UPDATE", "items", "public"),
        ("DELETE", "items", "public"),
    }
    assert {
        "data": {"id": 1, "name": "n1", "qty": 0},
        "table": "items",
        "schema": "public",
        "op": "INSERT",
    } in events
    per_row: dict[int, list[str]] = {}
    for e in events:
        per_row.setdefault(e["data"]["id"], []).append(e["op"])
    assert per_row[1] == ["INSERT", "UPDATE"]
    assert per_row[260] == ["INSERT", "DELETE"]
    assert per_row[200] == ["INSERT"]


@pytest.mark.slow
def test_headers_carry_a_stable_event_id_signature_and_custom_headers(
    dsn, capture_table, bridge, tmp_path
):
    # Given a receiver that fails each event's first attempt with 503
    seen: set[str] = set()

    def first_attempt_fails(request):
        event_id = request.headers["webhook-id"]
        if event_id in seen:
            return 200
        seen.add(event_id)
        return 503

    key = b"0123456789abcdef0123456789abcdef"
    secret = "whsec_" + base64.b64encode(key).decode()
    capture_table(TABLE, "items")
    with Receiver(respond=first_attempt_fails) as receiver:
        bridge(
            "--dsn",
            dsn,
            "--webhook",
            receiver.url,
            "--webhook-secret",
            secret,
            "--header",
            "Authorization: Bearer t0ken",
            "--header",
            "X-Team:orders",
            "--config",
            short_retry_config(tmp_path),
        )
        # When 5 rows are inserted
        execute(dsn, "INSERT INTO items (id, name) SELECT g, 'x' FROM generate_series(1, 5) g")
        assert receiver.wait_for(5)
        # Then each event was tried twice with the same webhook-id, and signed correctly
        assert len(receiver.requests) == 10
        ids = [r.headers["webhook-id"] for r in receiver.requests]
        assert sorted(set(ids)) == sorted(seen) and all(ids.count(i) == 2 for i in seen)
        for request in receiver.requests:
            h = request.headers
            assert h["content-type"] == "application/json"
            assert h["authorization"] == "Bearer t0ken" and h["x-team"] == "orders"
            signed = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + request.body
            expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
            assert h["webhook-signature"] == f"v1,{expected}"
            assert abs(int(h["webhook-timestamp"]) - time.time()) < 60
    # And ids are UUIDs, unique per event
    assert all(len(i) == 36 for i in seen)


@pytest.mark.slow
def test_a_webhook_answering_503_then_refusing_connections_loses_nothing(
    dsn, capture_table, bridge, tmp_path
):
    # Given a receiver that answers 503 for the first 1.5 s
    capture_table(TABLE, "items")
    started = time.monotonic()
    receiver = Receiver(respond=lambda r: 503 if time.monotonic() - started < 1.5 else 200)
    receiver.start()
    port = receiver.port
    process = bridge(
        "--dsn", dsn, "--webhook", receiver.url, "--config", short_retry_config(tmp_path)
    ).wait_active()
    execute(dsn, "INSERT INTO items (id, name) SELECT g, 'a' FROM generate_series(1, 200) g")
    assert receiver.wait_for(200, timeout=30)
    # When the receiver goes away (connections refused) while 200 more rows are written
    receiver.stop()
    execute(dsn, "INSERT INTO items (id, name) SELECT g, 'b' FROM generate_series(201, 400) g")
    # (said once when the output starts failing, not once per event)
    process.wait_for_log("Connection refused", timeout=20)
    # Then when it comes back on the same port, every row arrives
    with Receiver(port=port) as back:
        assert back.wait_for(200, timeout=30)
        got = {json.loads(r.body)["data"]["id"] for r in back.delivered()}
    first = {json.loads(r.body)["data"]["id"] for r in receiver.delivered()}
    assert first | got == set(range(1, 401))
    assert got >= set(range(201, 401))


@pytest.mark.slow
def test_sigkill_mid_stream_then_restart_delivers_every_committed_row(
    dsn, capture_table, bridge, receiver, record_property
):
    # Given a bridge delivering while a writer inserts 3000 rows
    capture_table(TABLE, "items")
    first = bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    writer = threading.Thread(
        target=execute,
        args=(
            dsn,
            *[
                f"INSERT INTO items (id, name) SELECT g, 'k' FROM generate_series({i}, {i + 99}) g"
                for i in range(1, 3001, 100)
            ],
        ),
    )
    writer.start()
    # When the bridge is killed with SIGKILL part-way through
    wait_until(lambda: receiver.count >= 500, message="500 deliveries")
    first.kill()
    writer.join()
    # And started again
    bridge("--dsn", dsn, "--webhook", receiver.url)
    # Then every committed row arrives
    wait_until(
        lambda: len({json.loads(r.body)["data"]["id"] for r in receiver.delivered()}) >= 3000,
        message="all 3000 rows",
    )
    ids = {json.loads(r.body)["data"]["id"] for r in receiver.delivered()}
    assert ids == set(range(1, 3001))
    dup = duplicates(receiver)
    record_property("duplicates_after_sigkill", dup)
    print(f"duplicates after SIGKILL: {dup}")
    # Duplicates are bounded by what was in flight when the process died.
    assert dup <= 2000 + 16 * 8


@pytest.mark.slow
def test_concurrent_writers_with_open_transactions_and_rollbacks(
    dsn, capture_table, bridge, receiver
):
    # Given 8 writers that hold transactions open and roll back 20% of them
    capture_table("CREATE TABLE items (id bigint PRIMARY KEY, writer int)", "items")
    bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    committed: list[int] = []
    rolled_back: list[int] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        rng = random.Random(n)
        conn = psycopg2.connect(dsn)
        with conn.cursor() as cur:
            for t in range(40):
                ids = [n * 100_000 + t * 10 + k for k in range(rng.randint(1, 5))]
                for i in ids:
                    cur.execute("INSERT INTO items VALUES (%s, %s)", (i, n))
                    time.sleep(rng.random() * 0.003)
                time.sleep(rng.random() * 0.02)  # hold the transaction open
                if rng.random() < 0.2:
                    conn.rollback()
                    with lock:
                        rolled_back.extend(ids)
                else:
                    conn.commit()
                    with lock:
                        committed.extend(ids)
        conn.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then exactly the committed rows arrive, and none of the rolled-back ones
    assert rolled_back, "the test must roll some transactions back"
    assert receiver.wait_for(len(committed), timeout=60)
    time.sleep(0.5)
    ids = [json.loads(r.body)["data"]["id"] for r in receiver.delivered()]
    assert sorted(ids) == sorted(committed)
    assert not set(ids) & set(rolled_back)


@pytest.mark.slow
def test_changes_to_one_row_arrive_in_commit_order_under_concurrent_updates(
    dsn, capture_table, bridge, tmp_path
):
    # Given a receiver that fails 10% of requests at random (so retries happen)
    capture_table("CREATE TABLE counters (id int PRIMARY KEY, v int NOT NULL)", "counters")
    execute(dsn, "INSERT INTO counters SELECT g, 0 FROM generate_series(1, 10) g")
    rng = random.Random(7)
    with Receiver(respond=lambda r: 503 if rng.random() < 0.1 else 200) as receiver:
        bridge(
            "--dsn",
            dsn,
            "--webhook",
            receiver.url,
            "--config",
            short_retry_config(tmp_path, max_backoff=0.2),
        ).wait_active()
        assert receiver.wait_for(10)

        # When 4 writers increment the same 10 rows 50 times each
        def writer(seed: int) -> None:
            r = random.Random(seed)
            conn = psycopg2.connect(dsn)
            conn.autocommit = True
            with conn.cursor() as cur:
                for _ in range(50):
                    cur.execute("UPDATE counters SET v = v + 1 WHERE id = %s", (r.randint(1, 10),))
            conn.close()

        threads = [threading.Thread(target=writer, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert receiver.wait_for(10 + 200, timeout=60)
        # Then each row's values arrive as 1, 2, 3, ... with no gap and no reordering
        per_row: dict[int, list[int]] = {}
        for e in bodies(receiver):
            if e["op"] == "UPDATE":
                per_row.setdefault(e["data"]["id"], []).append(e["data"]["v"])
        assert sum(len(v) for v in per_row.values()) == 200
        for values in per_row.values():
            assert values == list(range(1, len(values) + 1))


@pytest.mark.slow
def test_a_300_kb_row_is_delivered_whole(dsn, capture_table, bridge, receiver):
    capture_table("CREATE TABLE docs (id int PRIMARY KEY, body text)", "docs")
    bridge("--dsn", dsn, "--webhook", receiver.url)
    big = "é" * 150_000 + "x" * 10  # 300 kB of UTF-8
    execute(dsn, "INSERT INTO docs VALUES (1, %s)", params=(big,))
    assert receiver.wait_for(1)
    assert json.loads(receiver.delivered()[0].body)["data"]["body"] == big


@pytest.mark.slow
def test_many_huge_rows_arrive_while_the_bridge_memory_stays_bounded(
    dsn, capture_table, bridge, receiver
):
    # Given 80 rows of 2 MB each written while the bridge is down (160 MB of events)
    capture_table("CREATE TABLE docs (id int PRIMARY KEY, body text)", "docs")
    execute(
        dsn, "INSERT INTO docs SELECT g, repeat(md5(g::text), 65536) FROM generate_series(1, 80) g"
    )
    # When the bridge delivers them
    process = bridge("--dsn", dsn, "--webhook", receiver.url)
    assert receiver.wait_for(80, timeout=120)
    # Then all arrived whole, and the bridge never held them all in memory at once
    assert all(len(r.body) > 2_000_000 for r in receiver.delivered())
    status = Path(f"/proc/{process.proc.pid}/status").read_text()
    peak_kb = int(status.split("VmHWM:")[1].split()[0])
    assert peak_kb < 150 * 1024, f"peak memory {peak_kb} kB"


@pytest.mark.slow
def test_max_attempts_dead_letters_and_later_changes_of_the_row_still_flow(
    dsn, capture_table, bridge, tmp_path, db
):
    # Given a receiver that rejects name='poison' with 503 forever and 'bad' with 400
    def respond(request):
        name = json.loads(request.body)["data"]["name"]
        return {"poison": 503, "bad": 400}.get(name, 200)

    capture_table(TABLE, "items")
    with Receiver(respond=respond) as receiver:
        bridge(
            "--dsn",
            dsn,
            "--webhook",
            receiver.url,
            "--max-attempts",
            "3",
            "--config",
            short_retry_config(tmp_path, max_backoff=0.1),
        )
        # When rows are written, one poisonous, one bad, then both rows change again
        execute(
            dsn,
            "INSERT INTO items (id, name) VALUES (1, 'poison'), (2, 'bad'), (3, 'ok')",
            "UPDATE items SET name = 'fine' WHERE id IN (1, 2)",
        )
        assert receiver.wait_for(3, timeout=30)
        # Then both bad events are dead letters, kept in the database with their error
        with db.cursor() as cur:
            wait_until(
                lambda: (
                    cur.execute("SELECT count(*) FROM skor.dead_letters") or cur.fetchone()[0] == 2
                ),
                message="two dead letters",
            )
            cur.execute(
                "SELECT data::json->>'name', attempts, last_error, status"
                " FROM skor.dead_letters ORDER BY data::json->>'name'"
            )
            rows = cur.fetchall()
        assert rows[0][:2] == ("bad", 1) and "HTTP 400" in rows[0][2]
        assert rows[1][:2] == ("poison", 3) and "HTTP 503" in rows[1][2]
        assert {r[3] for r in rows} == {"dead"}
        # And the later changes of those rows were delivered after them
        names = [(e["data"]["id"], e["data"]["name"]) for e in bodies(receiver)]
        assert (1, "fine") in names and (2, "fine") in names and (3, "ok") in names


def test_a_bad_dsn_fails_fast_with_one_line_and_no_password(bridge):
    # Given a DSN pointing at a closed port, with a password in it
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    started = time.monotonic()
    process = bridge(
        "--dsn", f"postgresql://app:hunter2@127.0.0.1:{port}/db", "--webhook", "http://127.0.0.1:9/"
    )
    code = process.proc.wait(30)
    # Then it exits non-zero within 30 s, with one line that hides the password
    assert code == 1 and time.monotonic() - started < 30
    assert "hunter2" not in process.log
    lines = process.log.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot connect to PostgreSQL")


def test_a_malformed_dsn_is_a_config_error(bridge):
    process = bridge(
        "--dsn", "host=localhost password=s3cret dbname", "--webhook", "http://127.0.0.1:9/"
    )
    assert process.proc.wait(30) == 2
    assert "s3cret" not in process.log and process.log.startswith("error: --dsn:")


@pytest.mark.slow
def test_skor_positional_form_and_docker_variables_work(dsn, capture_table, bridge, receiver):
    capture_table(TABLE, "items")
    # Skor's positional form: skor-bridge run DSN URL
    first = bridge(dsn, receiver.url).wait_active()
    execute(dsn, "INSERT INTO items (id, name) VALUES (1, 'a')")
    assert receiver.wait_for(1)
    assert first.stop() == 0
    # Skor's Docker variables, with PGPASS="''" meaning no password
    params = psycopg2.extensions.parse_dsn(dsn)
    env = {
        "DBNAME": params["dbname"],
        "PGUSER": "postgres",
        "PGPASS": "''",
        "PGHOST": "127.0.0.1",
        "PGPORT": "5432",
        "WEBHOOKURL": receiver.url,
    }
    bridge(env=env).wait_active()
    execute(dsn, "INSERT INTO items (id, name) VALUES (2, 'b')")
    assert receiver.wait_for(2)


@pytest.mark.slow
def test_sigterm_stops_cleanly_with_exit_0_and_saves_progress(
    dsn, capture_table, bridge, receiver, db
):
    capture_table(TABLE, "items")
    process = bridge("--dsn", dsn, "--webhook", f"webhook={receiver.url}").wait_active()
    execute(dsn, "INSERT INTO items (id, name) SELECT g, 'a' FROM generate_series(1, 50) g")
    assert receiver.wait_for(50)
    process.signal(signal.SIGTERM)
    assert process.proc.wait(30) == 0
    with db.cursor() as cur:
        cur.execute("SELECT position FROM skor.outputs WHERE name = 'webhook'")
        assert cur.fetchone()[0] == 50
    # Restarting does not deliver anything twice
    bridge("--dsn", dsn, "--webhook", f"webhook={receiver.url}").wait_active()
    time.sleep(1)
    assert receiver.count == 50


@pytest.mark.slow
def test_two_bridges_deliver_once_and_the_standby_takes_over_after_sigkill(
    dsn, capture_table, bridge, receiver
):
    # Given two bridges on one database
    capture_table(TABLE, "items")
    first, second = active_and_standby(bridge, "--dsn", dsn, "--webhook", receiver.url)
    execute(dsn, "INSERT INTO items (id, name) SELECT g, 'a' FROM generate_series(1, 300) g")
    assert receiver.wait_for(300)
    time.sleep(0.5)
    # Then nothing was delivered twice in normal operation
    assert duplicates(receiver) == 0 and receiver.count == 300
    # When the active one is killed, the standby takes over and delivers what follows
    first.kill()
    killed = time.monotonic()
    execute(dsn, "INSERT INTO items (id, name) SELECT g, 'b' FROM generate_series(301, 400) g")
    second.wait_active(timeout=15)
    assert receiver.wait_for(400, timeout=15)
    assert time.monotonic() - killed < 10
    ids = {json.loads(r.body)["data"]["id"] for r in receiver.delivered()}
    assert ids == set(range(1, 401))


@pytest.mark.slow
@pytest.mark.parametrize("columns", ["*", ["id", "name"]])
def test_notify_mode_delivers_skor_payloads_while_listening(
    dsn, capture_table, bridge, receiver, columns
):
    capture_table(TABLE, "items", columns=columns, mode="notify")
    bridge("--dsn", dsn, "--webhook", receiver.url, "--mode", "notify").wait_for_log(
        "listening on channel"
    )
    execute(
        dsn,
        "INSERT INTO items (id, name) VALUES (1, 'a')",
        "UPDATE items SET name = 'b' WHERE id = 1",
        "DELETE FROM items WHERE id = 1",
    )
    assert receiver.wait_for(3)
    data = {"id": 1, "name": "a", "qty": 0} if columns == "*" else {"id": 1, "name": "a"}
    assert bodies(receiver)[0] == {
        "table": "items",
        "schema": "public",
        "op": "INSERT",
        "data": data,
    }
    assert [e["op"] for e in bodies(receiver)] == ["INSERT", "UPDATE", "DELETE"]


class StuckRow:
    """A receiver's answer: 503 for one row until `clear()`, 200 for every other row."""

    def __init__(self, row_id: int) -> None:
        self.row_id = row_id
        self._stuck = threading.Event()
        self._stuck.set()

    def clear(self) -> None:
        self._stuck.clear()

    def respond(self, request) -> int:
        event = json.loads(request.body)
        return 503 if self._stuck.is_set() and event["data"]["id"] == self.row_id else 200


@pytest.mark.slow
def test_a_row_that_keeps_failing_is_parked_so_other_rows_keep_flowing(
    dsn, capture_table, bridge, tmp_path, db
):
    # Given a receiver that answers 503 for row 1 until told otherwise, and a small window
    stuck = StuckRow(1)
    capture_table(TABLE, "items")
    with Receiver(respond=stuck.respond) as receiver:
        process = bridge(
            "--dsn",
            dsn,
            "--webhook",
            f"webhook={receiver.url}",
            "--max-in-flight",
            "50",
            "--config",
            short_retry_config(tmp_path, max_backoff=0.2),
        )
        # When row 1 fails and 500 other rows (and more changes of row 1) are written
        execute(dsn, "INSERT INTO items (id, name) VALUES (1, 'first')")
        wait_until(lambda: receiver.count >= 2, message="row 1 tried twice")
        execute(
            dsn,
            "INSERT INTO items (id, name) SELECT g, 'x' FROM generate_series(2, 501) g",
            "UPDATE items SET qty = 1 WHERE id = 1",
            "UPDATE items SET qty = 2 WHERE id = 1",
        )
        # Then all other rows arrive although the window holds only 50 events
        assert receiver.wait_for(500, timeout=30), process.log
        assert "parked" in process.log

        # And the output's position moved past the stuck row (saved on a short timer)
        def position():
            with db.cursor() as cur:
                cur.execute("SELECT position FROM skor.outputs WHERE name = 'webhook'")
                return cur.fetchone()[0]

        wait_until(lambda: position() >= 500, timeout=30, message="position past row 1")
        # When row 1 recovers, its three changes arrive in order
        stuck.clear()
        assert receiver.wait_for(503, timeout=30)
        row1 = [
            json.loads(r.body)["data"]["qty"]
            for r in receiver.delivered()
            if json.loads(r.body)["data"]["id"] == 1
        ]
        assert row1 == [0, 1, 2]
        with db.cursor() as cur:
            cur.execute("SELECT count(*) FROM skor.redeliveries")
            assert cur.fetchone()[0] == 0


@pytest.mark.slow
def test_parked_events_survive_a_restart_and_keep_their_order(dsn, capture_table, bridge, tmp_path):
    # Given row 1 parked behind a failing receiver
    stuck = StuckRow(1)
    capture_table(TABLE, "items")
    with Receiver(respond=stuck.respond) as receiver:
        args = (
            "--dsn",
            dsn,
            "--webhook",
            receiver.url,
            "--max-in-flight",
            "20",
            "--config",
            short_retry_config(tmp_path, max_backoff=0.2),
        )
        first = bridge(*args)
        execute(
            dsn,
            "INSERT INTO items (id, name) VALUES (1, 'first')",
            "UPDATE items SET qty = 1 WHERE id = 1",
        )
        wait_until(lambda: receiver.count >= 2, message="row 1 tried")
        execute(
            dsn,
            "INSERT INTO items (id, name) SELECT g, 'x' FROM generate_series(2, 100) g",
            "UPDATE items SET qty = 2 WHERE id = 1",
        )
        assert receiver.wait_for(99, timeout=30)
        first.wait_for_log("parked")
        # When the bridge restarts and the receiver recovers
        assert first.stop() == 0
        stuck.clear()
        bridge(*args)
        # Then row 1's changes arrive in commit order, once each
        assert receiver.wait_for(102, timeout=30)
        time.sleep(0.5)
        row1 = [
            json.loads(r.body)["data"]["qty"]
            for r in receiver.delivered()
            if json.loads(r.body)["data"]["id"] == 1
        ]
        assert row1 == [0, 1, 2]


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1: (cert.pem, key.pem)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.slow
def test_an_https_webhook_is_verified_against_the_given_ca_file(
    dsn, capture_table, bridge, certificate, tmp_path
):
    # Given a receiver on https with a certificate of a private CA
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    capture_table(TABLE, "items")
    with Receiver(tls=context) as receiver:
        # When one bridge trusts that CA and another only the public bundle
        trusting = bridge("--dsn", dsn, "--webhook", receiver.url, "--webhook-ca-file", str(cert))
        execute(dsn, "INSERT INTO items (id, name) VALUES (1, 'a')")
        # Then the trusting bridge delivers over TLS
        assert receiver.wait_for(1)
        assert trusting.stop() == 0
        execute(dsn, "INSERT INTO items (id, name) VALUES (2, 'b')")
        doubting = bridge(
            "--dsn", dsn, "--webhook", receiver.url, "--config", short_retry_config(tmp_path)
        )
        # And the other refuses the unknown certificate, retrying, never delivering
        doubting.wait_for_log("self-signed certificate (for a private CA, give --webhook-ca-file)")
        assert receiver.wait_for(2, timeout=1) is False
