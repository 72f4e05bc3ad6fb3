"""`python -m skor_bridge.tools.bench.relay`: does a second relay worker double delivery?

The scenario of issue 14: a topic of 4 partitions holds `--records` records written by the
bridge's Kafka sink (keyed by row, several versions per row); a receiver answers every
request after `--delay` seconds (50 ms: a real service's latency, so that the relay, not
the receiver, is the limit). One relay process delivers the whole topic, then two
processes of a fresh group do the same; each run counts distinct webhook-ids, so nothing
lost is checked too. The rate is distinct records over the time from the first to the last
arrival. Everything (broker, receiver, relays) shares this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skor_bridge.tools.bench.bridge_proc import stop_process
from skor_bridge.tools.bench.outputs import Tansu

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

_ID = re.compile(rb"\r\nwebhook-id:\s*([^\r]+)", re.IGNORECASE)
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class _Slow(asyncio.Protocol):
    """Answers each request `delay` seconds after it arrived, in order (HTTP/1.1)."""

    def __init__(self, delay: float, seen: dict[bytes, float]) -> None:
        self.delay = delay
        self.seen = seen
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        loop = asyncio.get_running_loop()
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = _LENGTH.search(self.buffer, 0, end + 2)
            total = end + 4 + (int(length[1]) if length else 0)
            if len(self.buffer) < total:
                return
            found = _ID.search(self.buffer, 0, end + 2)
            # Read the id before the buffer changes: a match reads its subject lazily.
            webhook_id = bytes(found[1]) if found else b""
            del self.buffer[:total]
            loop.call_later(self.delay, self._answer, webhook_id)

    def _answer(self, webhook_id: bytes) -> None:
        self.seen.setdefault(webhook_id, time.time())
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(RESPONSE)


def _serve(delay: float, pipe: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop = asyncio.new_event_loop()
    seen: dict[bytes, float] = {}
    server = loop.run_until_complete(
        loop.create_server(lambda: _Slow(delay, seen), "127.0.0.1", 0, backlog=1024)
    )
    pipe.send(server.sockets[0].getsockname()[1])

    def on_command() -> None:
        command = pipe.recv() if pipe.poll() else "stop"
        if command == "count":
            pipe.send(len(seen))
        elif command == "times":
            pipe.send((min(seen.values(), default=0.0), max(seen.values(), default=0.0)))
        elif command == "reset":
            seen.clear()
            pipe.send(True)
        else:
            loop.stop()

    loop.add_reader(pipe.fileno(), on_command)
    loop.run_forever()


class SlowReceiver:
    def __init__(self, delay: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(delay, child), daemon=True)
        self.port = 0

    def start(self) -> SlowReceiver:
        self._process.start()
        self.port = int(self._pipe.recv())
        return self

    def ask(self, command: str) -> Any:
        self._pipe.send(command)
        return self._pipe.recv()

    def stop(self) -> None:
        self._pipe.send("stop")
        self._process.join(3)
        if self._process.is_alive():
            self._process.terminate()


def fill(bootstrap: str, topic: str, records: int, rows: int, partitions: int) -> None:
    """Write `records` events over `rows` rows, as the bridge's Kafka output does."""
    from skor_bridge.config import KafkaConfig
    from skor_bridge.event import ChangeEvent
    from skor_bridge.sinks.kafka import KafkaSink

    sink = KafkaSink("bench", KafkaConfig(bootstrap=bootstrap, topic=topic, partitions=partitions))
    with sink:
        for start in range(0, records, rows):
            batch = [
                ChangeEvent(
                    id=str(uuid.uuid4()),
                    position=0,
                    schema="public",
                    table="bench",
                    op="UPDATE",
                    data=json.dumps({"id": i % rows, "v": i // rows}),
                    key=f'{{"id":{i % rows}}}',
                )
                for i in range(start, min(records, start + rows))
            ]
            results = sink.send(batch)
            if any(r.outcome.value != "delivered" for r in results):
                raise RuntimeError("could not fill the topic")


def measure(
    workers: int,
    bootstrap: str,
    topic: str,
    receiver: SlowReceiver,
    records: int,
    concurrency: int,
    logs: Path,
    timeout: float,
) -> tuple[float, int, float]:
    """(records/s, distinct records delivered, seconds) for `workers` relay processes."""
    receiver.ask("reset")
    group = f"bench-{uuid.uuid4().hex[:8]}"
    processes = []
    for index in range(workers):
        log = (logs / f"relay-{workers}-{index}.log").open("wb")
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "skor_bridge",
                    "relay",
                    "--kafka",
                    bootstrap,
                    "--topic",
                    topic,
                    "--group",
                    group,
                    "--webhook",
                    f"http://127.0.0.1:{receiver.port}/hook",
                    "--webhook-concurrency",
                    str(concurrency),
                    "--kafka-option",
                    "session.timeout.ms=6000",
                    "--kafka-option",
                    "max.poll.interval.ms=10000",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    deadline = time.monotonic() + timeout
    try:
        while receiver.ask("count") < records and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for process in processes:
            stop_process(process, 20)
    count = receiver.ask("count")
    first, last = receiver.ask("times")
    seconds = max(last - first, 1e-9)
    return count / seconds, count, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m skor_bridge.tools.bench.relay", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--kafka", help="bootstrap servers [default: a Tansu of our own]")
    parser.add_argument("--records", type=int, default=6000)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--delay", type=float, default=0.05, help="receiver latency, s")
    parser.add_argument("--concurrency", type=int, default=16, help="--webhook-concurrency")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="skor-bench-relay-"))
    tansu = None if args.kafka else Tansu(logs).start()
    bootstrap = args.kafka or tansu.bootstrap  # type: ignore[union-attr]
    receiver = SlowReceiver(args.delay).start()
    try:
        topic = f"skor.bench.relay-{uuid.uuid4().hex[:8]}"
        fill(bootstrap, topic, args.records, args.rows, partitions=4)
        load = os.getloadavg()[0]
        one = measure(
            1, bootstrap, topic, receiver, args.records, args.concurrency, logs, args.timeout
        )
        two = measure(
            2, bootstrap, topic, receiver, args.records, args.concurrency, logs, args.timeout
        )
        ratio = two[0] / one[0] if one[0] else 0.0
        print(
            f"relay scale-out: {args.records} records, 4 partitions, receiver answers after "
            f"{args.delay * 1000:.0f} ms, --webhook-concurrency {args.concurrency}, "
            f"{os.cpu_count()} cores (load {load:.1f} at start)"
        )
        print("| relay processes | delivered (distinct) | seconds | records/s |")
        print("|---|---|---|---|")
        for workers, (rate, count, seconds) in ((1, one), (2, two)):
            print(f"| {workers} | {count} of {args.records} | {seconds:.1f} | {rate:,.0f} |")
        lost = args.records - min(one[1], two[1])
        print(f"two vs one: {ratio:.2f}x (target >= 1.8x); lost: {lost}")
        return 0 if lost == 0 else 1
    finally:
        receiver.stop()
        if tansu is not None:
            tansu.stop()


if __name__ == "__main__":
    sys.exit(main())
