"""Fast tests of the relay's bookkeeping: offset tracker, per-key lanes, partition state,
record decoding and configuration. No broker: these are pure logic."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from skor_bridge.errors import ConfigError
from skor_bridge.event import ChangeEvent
from skor_bridge.relay.config import build_relay_config
from skor_bridge.relay.lanes import Lanes
from skor_bridge.relay.offsets import OffsetTracker
from skor_bridge.relay.partitions import Partitions, Work
from skor_bridge.relay.records import DEAD_LETTER_HEADERS, dead_letter_headers

# -- offset tracker ---------------------------------------------------------------------------


def test_nothing_is_committable_until_the_first_record_finishes():
    tracker = OffsetTracker()
    for offset in (10, 11, 12):
        tracker.add(offset)
    assert tracker.to_commit() is None
    tracker.complete(11)
    tracker.complete(12)
    # Then 11 and 12 are done but 10 is not: committing past 10 would lose it
    assert tracker.to_commit() is None
    tracker.complete(10)
    assert tracker.to_commit() == 13


def test_the_commit_offset_stops_at_the_first_unfinished_record():
    tracker = OffsetTracker()
    for offset in range(5):
        tracker.add(offset)
    for offset in (0, 1, 3, 4):
        tracker.complete(offset)
    assert tracker.to_commit() == 2
    assert tracker.unfinished == 1
    tracker.complete(2)
    assert tracker.to_commit() == 5
    assert tracker.unfinished == 0


def test_gaps_in_offsets_do_not_hold_the_commit_back():
    # Given offsets with gaps (compaction, transaction markers)
    tracker = OffsetTracker()
    for offset in (3, 7, 8, 20):
        tracker.add(offset)
    for offset in (20, 8, 3, 7):
        tracker.complete(offset)
    assert tracker.to_commit() == 21


def test_an_offset_is_handed_out_once_per_commit():
    tracker = OffsetTracker()
    tracker.add(0)
    tracker.complete(0)
    assert tracker.to_commit() == 1
    tracker.committed(1)
    assert tracker.to_commit() is None
    tracker.add(1)
    tracker.complete(1)
    assert tracker.to_commit() == 2
    # A failed commit is forgotten, so the offset is handed out again
    tracker.committed(None)  # type: ignore[arg-type]
    assert tracker.to_commit() == 2


def test_offsets_must_increase():
    tracker = OffsetTracker()
    tracker.add(5)
    with pytest.raises(ValueError):
        tracker.add(5)


# -- lanes ------------------------------------------------------------------------------------


def test_a_keys_records_go_one_at_a_time_in_order_and_other_keys_do_not_wait():
    lanes: Lanes[int] = Lanes()
    assert lanes.add(b"a", 0) is True
    assert lanes.add(b"b", 1) is True  # another key: at once
    assert lanes.add(b"a", 2) is False  # same key: behind 0
    assert lanes.add(b"a", 3) is False
    assert sorted(lanes.heads()) == [0, 1]
    assert lanes.finish(b"a") == 2
    assert lanes.finish(b"b") is None
    assert lanes.finish(b"a") == 3
    assert lanes.finish(b"a") is None
    assert len(lanes) == 0


def test_records_without_key_share_one_lane():
    lanes: Lanes[int] = Lanes()
    assert lanes.add(None, 0) is True
    assert lanes.add(None, 1) is False
    assert lanes.finish(None) == 1


# -- partition state --------------------------------------------------------------------------


def work(offset: int, key: bytes | None, partition: int = 0, topic: str = "t") -> Work:
    event = ChangeEvent(
        id=f"e{offset}", position=offset, schema="public", table="t", op="UPDATE", data="{}"
    )
    return Work(
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        event=event,
        value=b"{}",
        headers=[("event-id", f"e{offset}".encode())],
    )


def test_a_record_is_finished_only_when_every_webhook_settled_it():
    # Given two webhooks and two records of one row
    parts = Partitions(sinks=2)
    parts.assign([("t", 0)])
    first, second = work(0, b"k"), work(1, b"k")
    assert parts.add(first) and parts.add(second)
    assert parts.take(0, 10, 0) == [first]
    assert parts.take(1, 10, 0) == [first]
    # When only one webhook delivered the first
    parts.settle(first, 0, finished=True)
    # Then the row's next record waits and nothing is committable
    assert parts.take(0, 10, 0) == []
    assert parts.to_commit() == {}
    # When the other webhook delivered it too
    parts.settle(first, 1, finished=True)
    assert parts.to_commit() == {("t", 0): 1}
    assert parts.take(0, 10, 0) == [second]
    assert parts.take(1, 10, 0) == [second]


def test_a_retried_record_holds_its_row_but_not_others():
    parts = Partitions(sinks=1)
    parts.assign([("t", 0)])
    a0, b1, a2 = work(0, b"a"), work(1, b"b"), work(2, b"a")
    for w in (a0, b1, a2):
        parts.add(w)
    assert parts.take(0, 10, 0) == [a0, b1]
    parts.settle(a0, 0, finished=False)  # failed: will be retried
    parts.settle(b1, 0, finished=True)
    assert parts.take(0, 10, 0) == []  # a2 waits behind a0
    assert parts.to_commit() == {}  # offset 0 unfinished
    assert parts.begin([a0]) == [a0]
    parts.settle(a0, 0, finished=True)
    assert parts.to_commit() == {("t", 0): 2}
    assert parts.take(0, 10, 0) == [a2]


def test_revoking_drops_queued_records_and_ignores_late_reports():
    parts = Partitions(sinks=1)
    parts.assign([("t", 0), ("t", 1)])
    running, queued, other = work(0, b"a"), work(1, b"b"), work(0, b"c", partition=1)
    for w in (running, queued, other):
        parts.add(w)
    assert parts.take(0, 1, 0) == [running]
    # When partition 0 is revoked while `running` is in flight
    parts.revoke([("t", 0)])
    assert parts.wait_idle([("t", 0)], 0.05) is False
    # Then its queued record is not handed out, the other partition's still is
    assert parts.take(0, 10, 0) == [other]
    # And the running one's end is waited for, then the partition commits and is forgotten
    parts.settle(running, 0, finished=True)
    assert parts.wait_idle([("t", 0)], 0.05) is True
    assert parts.to_commit([("t", 0)]) == {("t", 0): 1}
    parts.forget([("t", 0)])
    # And a retry of a record of the revoked partition is dropped
    assert parts.begin([queued]) == []
    # And after reassignment, a late report of the old generation changes nothing
    parts.assign([("t", 0)])
    parts.settle(queued, 0, finished=True)
    assert parts.to_commit([("t", 0)]) == {}
    assert parts.add(work(1, b"b")) is True


def test_records_of_partitions_not_owned_are_refused():
    parts = Partitions(sinks=1)
    assert parts.add(work(0, b"a")) is False
    assert parts.unfinished == 0


def test_a_waiting_dispatcher_wakes_when_a_record_becomes_ready():
    parts = Partitions(sinks=1)
    parts.assign([("t", 0)])
    got: list[list[Work]] = []
    thread = threading.Thread(target=lambda: got.append(parts.take(0, 10, 5.0)))
    thread.start()
    w = work(0, b"a")
    parts.add(w)
    thread.join(5)
    assert got == [[w]]


# -- records and configuration ----------------------------------------------------------------


def test_dead_letters_keep_the_original_headers_and_say_why_and_where_from():
    w = work(42, b"k", partition=3, topic="skor.public.orders")
    headers = dead_letter_headers(w, "webhook", "HTTP 422 from http://x/hook", 1)
    assert headers[0] == ("event-id", b"e42")
    added = dict(headers[1:])
    assert [name for name, _ in headers[1:]] == list(DEAD_LETTER_HEADERS)
    assert added["dlq-error"] == b"HTTP 422 from http://x/hook"
    assert added["dlq-attempts"] == b"1"
    assert added["dlq-original-topic"] == b"skor.public.orders"
    assert added["dlq-original-partition"] == b"3"
    assert added["dlq-original-offset"] == b"42"


def relay_options(**kwargs) -> dict:
    """Command-line values by option name, as the CLI passes them."""
    base = {
        "kafka": "127.0.0.1:9092",
        "topic": ["skor.public.orders"],
        "group": "g",
        "webhook": ["http://127.0.0.1:9/hook"],
    }
    return {**base, **kwargs}


def test_relay_webhook_options_mean_what_they_mean_for_run():
    cfg = build_relay_config(
        relay_options(
            webhook_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            header=["X-Team: billing"],
            webhook_concurrency="32",
            max_attempts="5",
            kafka_option=["session.timeout.ms=6000"],
        ),
        None,
        {},
    )
    (output,) = cfg.outputs
    assert output.settings.concurrency == 32
    assert output.settings.headers == (("X-Team", "billing"),)
    assert output.retry.max_attempts == 5
    assert cfg.options == (("session.timeout.ms", "6000"),)
    assert "whsec" not in repr(cfg)


def test_relay_reads_its_settings_from_the_toml_file(tmp_path: Path):
    path = tmp_path / "relay.toml"
    path.write_text(
        "metrics_port = 9188\n[retry]\nmax_attempts = 3\n"
        '[relay]\nkafka = "k:9092"\ntopics = ["^skor\\\\..*"]\ngroup = "hooks"\n'
        'dead_letter_topic = "dead.skor"\noptions = { "session.timeout.ms" = 6000 }\n'
        '[[outputs]]\ntype = "webhook"\nname = "orders"\nurl = "http://h/x"\n'
    )
    cfg = build_relay_config({}, path, {})
    assert (cfg.bootstrap, cfg.topics, cfg.group) == ("k:9092", ("^skor\\..*",), "hooks")
    assert cfg.dead_letter_topic == "dead.skor"
    assert cfg.metrics_port == 9188
    assert [o.name for o in cfg.outputs] == ["orders"]
    assert cfg.outputs[0].retry.max_attempts == 3
    assert cfg.options == (("session.timeout.ms", "6000"),)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"topic": []}, "--topic"),
        ({"topic": ["^skor(["]}, "--topic: bad regular expression"),
        ({"group": None}, "--group"),
        ({"webhook": []}, "--webhook"),
        ({"dead_letter_topic": "skor.public.orders"}, "dead letters would be delivered again"),
        ({"topic": ["^skor\\..*"], "dead_letter_topic": "skor.dead"}, "delivered again"),
        ({"kafka": None}, "--kafka"),
        ({"webhook_concurrency": "0"}, "--webhook-concurrency"),
        ({"metrics_port": "99999"}, "--metrics-port"),
    ],
)
def test_bad_relay_settings_are_one_line_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_relay_config(relay_options(**kwargs), None, {})
    assert "\n" not in str(info.value)


def test_the_relay_refuses_auto_commit_which_would_commit_undelivered_records():
    with pytest.raises(ConfigError, match="enable.auto.commit"):
        build_relay_config(relay_options(kafka_option=["enable.auto.commit=true"]), None, {})


def test_relay_variables_and_the_run_variables_it_shares_are_read(tmp_path: Path):
    # Given only SKOR_* variables, as in a container
    env = {
        "SKOR_KAFKA": "k:9092",
        "SKOR_TOPIC": "a, ^b\\..*",
        "SKOR_GROUP": "g",
        "SKOR_WEBHOOK": "http://h/x",
        "SKOR_WEBHOOK_TIMEOUT": "3",
        "SKOR_LOG_LEVEL": "debug",
    }
    cfg = build_relay_config({}, None, env)
    # Then the relay's input and the shared webhook settings come from them, and SKOR_KAFKA
    # (the relay's input) does not add a kafka output
    assert (cfg.bootstrap, cfg.topics, cfg.group) == ("k:9092", ("a", "^b\\..*"), "g")
    assert [o.kind for o in cfg.outputs] == ["webhook"]
    assert cfg.outputs[0].settings.timeout == 3.0
    assert cfg.log_level == "DEBUG"


def test_an_unknown_relay_key_in_the_file_is_named(tmp_path: Path):
    path = tmp_path / "relay.toml"
    path.write_text('[relay]\nkafak = "k:9092"\n')
    with pytest.raises(ConfigError, match="relay.kafak"):
        build_relay_config(relay_options(), path, {})


def test_the_relay_benchmark_receiver_counts_each_webhook_id_once_after_its_delay():
    # Given the benchmark's slow receiver (a real HTTP server in its own process)
    from skor_bridge.config import WebhookConfig
    from skor_bridge.sinks.webhook import WebhookSink
    from skor_bridge.tools.bench.relay import SlowReceiver

    receiver = SlowReceiver(0.05).start()
    try:
        sink = WebhookSink("bench", WebhookConfig(url=f"http://127.0.0.1:{receiver.port}/h"))
        events = [
            ChangeEvent(id=f"e{i}", position=i, schema="public", table="t", op="INSERT", data="{}")
            for i in range(5)
        ]
        with sink:
            # When five events are sent, one of them twice
            assert all(r.outcome.value == "delivered" for r in sink.send(events))
            assert sink.send(events[:1])[0].outcome.value == "delivered"
        # Then it counts five distinct ids
        assert receiver.ask("count") == 5
    finally:
        receiver.stop()


def test_a_relay_webhook_with_its_own_format_is_refused(tmp_path: Path):
    # The relay sends the record's value as the bridge's kafka output rendered it
    path = tmp_path / "relay.toml"
    path.write_text('[[outputs]]\ntype = "webhook"\nurl = "http://h/x"\nformat = "envelope"\n')
    with pytest.raises(ConfigError, match="set format and tables on the bridge's kafka output"):
        build_relay_config(relay_options(webhook=[]), path, {})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kafka-option", "foo.bar=1"], "error: --kafka-option: unknown option 'foo.bar'"),
        (
            ["--kafka-option", "session.timeout.ms=abc"],
            "error: --kafka-option: invalid value for 'session.timeout.ms'",
        ),
        (["--topic", "^a("], "error: --topic: bad regular expression"),
    ],
)
def test_bad_relay_input_is_one_line_and_exit_code_2(args, message):
    import subprocess
    import sys

    base = ["--kafka", "127.0.0.1:9", "--topic", "t", "--group", "g", "--webhook", "http://h/x"]
    done = subprocess.run(
        [sys.executable, "-m", "skor_bridge", "relay", *base, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
