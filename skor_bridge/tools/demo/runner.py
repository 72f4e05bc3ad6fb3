"""The Demo: starts everything in order, shows what arrives, and removes it all on exit."""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import time
from collections import Counter
from typing import TYPE_CHECKING

import psycopg2

from skor_bridge.config import SourceConfig, redact
from skor_bridge.db import connect
from skor_bridge.errors import SkorError
from skor_bridge.tools.demo.bridge import BridgeThread, demo_config, target
from skor_bridge.tools.demo.database import DemoTable, EmbeddedPostgres, scalar
from skor_bridge.tools.demo.options import KAFKA_TOPIC, OUTPUT_PREFIX, SCHEMA
from skor_bridge.tools.demo.screen import Screen, percentile
from skor_bridge.tools.demo.signals import (
    interrupts_deferred,
    interrupts_held,
    terminate_as_interrupt,
)
from skor_bridge.tools.demo.taps import AmqpTap, Arrival, KafkaTap
from skor_bridge.tools.demo.workload import CommitClock, Workload, body_key
from skor_bridge.tools.receiver import Receiver

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TextIO

    from psycopg2.extensions import connection

    from skor_bridge.tools.demo.options import DemoOptions
    from skor_bridge.tools.receiver import Received

#: Seconds between the demo's changes: slow enough to watch, or just enough to be spread.
INTERACTIVE_PACE = 0.4
EXIT_PACE = 0.005


class Demo:
    """One run of `skor-bridge demo`: each step registers its own clean-up as it starts."""

    def __init__(self, options: DemoOptions, out: TextIO) -> None:
        self.options = options
        self.screen = Screen(out, max(len("table"), len(f"{SCHEMA}.{options.table}")))
        self.clock = CommitClock()
        self.arrivals: queue.Queue[Arrival] = queue.Queue()
        self.kinds = ["webhook"] + [
            k for k, on in (("amqp", options.amqp), ("kafka", options.kafka)) if on
        ]
        #: Per output: event ids received, and latency (ms) by change key of the demo's own.
        self.received: dict[str, set[str]] = {kind: set() for kind in self.kinds}
        self.latencies: dict[str, dict[str, float]] = {kind: {} for kind in self.kinds}
        self.bridge: BridgeThread | None = None
        self.writer: Workload | None = None
        self._dsn = ""
        self._lookup: connection | None = None
        self._first_pos = 1

    def run(self) -> int:
        stack = contextlib.ExitStack()
        with terminate_as_interrupt():
            try:
                return self._run(stack)
            except KeyboardInterrupt:
                counts = ", ".join(f"{kind} {len(self.received[kind])}" for kind in self.kinds)
                self.screen.note(f"stopping; events received: {counts}")
                return 130 if self.options.exit else 0
            finally:
                with interrupts_deferred(self.screen):
                    stack.close()

    def _run(self, stack: contextlib.ExitStack) -> int:
        options = self.options
        self.screen.text(
            "skor-bridge demo: PostgreSQL -> triggers -> outbox -> bridge -> "
            + ", ".join(self.kinds)
        )
        server: EmbeddedPostgres | None = None
        if options.dsn is None:
            server = EmbeddedPostgres()
            stack.callback(self._quietly, f"removed {server.root}", server.stop)
            self.screen.note(f"starting an embedded PostgreSQL in {server.root} ...")
            started = time.monotonic()
            with interrupts_held():
                dsn = server.start()
            self.screen.note(f"PostgreSQL ready in {time.monotonic() - started:.1f} s")
        else:
            dsn = options.dsn
            self.screen.note(f"using {redact(dsn)}")
        SourceConfig(dsn=dsn)  # a malformed --dsn fails here, in one line
        self._dsn = dsn
        table = DemoTable(dsn, options.table, server is None)
        stack.callback(self._quietly, None, table.cleanup)
        table.prepare()
        self._first_pos = table.first_pos
        self.screen.note(f"created table {table} and installed its durable capture triggers")

        receiver = Receiver(on_request=self._on_webhook, keep=False).start()
        stack.callback(self._quietly, None, receiver.stop)
        for tap in self._taps(table):
            stack.callback(self._quietly, None, tap.close)
            tap.start()
        stack.callback(self._quietly, None, self._close_lookup)

        from skor_bridge.bridge import Bridge

        instance = f"{OUTPUT_PREFIX}{socket.gethostname()}-{os.getpid()}"
        config = demo_config(options, dsn, receiver.url)
        self.bridge = bridge = BridgeThread(Bridge(config, instance=instance))
        self.screen.note(
            "starting the bridge: "
            + ", ".join(f"{o.kind} -> {target(o, table.name)}" for o in config.outputs)
        )
        started = time.monotonic()
        bridge.start()
        stack.callback(self._quietly, "bridge stopped", bridge.stop)
        bridge.wait_ready(dsn, [o.name for o in config.outputs], self.screen.note)
        pace = EXIT_PACE if options.exit else INTERACTIVE_PACE
        self.screen.note(
            f"bridge active after {time.monotonic() - started:.1f} s; "
            f"making {options.events} changes (inserts, updates, deletes)"
        )

        self.writer = writer = Workload(dsn, table, options.events, pace, self.clock)
        stack.callback(writer.stop)
        self.screen.header()
        writer.start()
        arrived = self._show_until(self._all_arrived, options.timeout)
        if options.exit:
            self.screen.text(self._summary(arrived))
            return 0 if arrived else 1
        if not arrived:
            self.screen.note(f"not every change arrived within {options.timeout:g} s")
        self._invite(table, server, dsn)
        self._show_until(lambda: False, None)  # until Ctrl-C
        return 0

    def _taps(self, table: DemoTable) -> list[AmqpTap | KafkaTap]:
        taps: list[AmqpTap | KafkaTap] = []
        if self.options.amqp:
            taps.append(AmqpTap(self.options.amqp, f"{SCHEMA}.{table.name}.*", self.arrivals.put))
        if self.options.kafka:
            topic = KAFKA_TOPIC.format(schema=SCHEMA, table=table.name)
            taps.append(KafkaTap(self.options.kafka, topic, self.arrivals.put))
        return taps

    def _on_webhook(self, request: Received) -> None:
        event_id = request.headers.get("webhook-id", "")
        self.arrivals.put(Arrival("webhook", request.at, event_id, request.body))

    def _show_until(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Print arrivals until `done()`; False if `timeout` passed after the writer finished."""
        assert self.bridge is not None and self.writer is not None
        deadline: float | None = None
        while True:
            if self.writer.error:
                raise SkorError(f"the demo's changes failed: {self.writer.error}")
            if done():
                return True
            if timeout is not None and self.writer.done.is_set():
                deadline = deadline or time.monotonic() + timeout
                if time.monotonic() > deadline:
                    return False
            problem = self.bridge.failure()
            if problem:
                raise SkorError(problem)
            try:
                arrival = self.arrivals.get(timeout=0.1)
            except queue.Empty:
                continue
            self._show(arrival)

    def _all_arrived(self) -> bool:
        assert self.writer is not None
        if not self.writer.done.is_set():
            return False
        keys = self.writer.keys()
        return all(all(k in self.latencies[kind] for k in keys) for kind in self.kinds)

    def _show(self, arrival: Arrival) -> None:
        received = self.received[arrival.output]
        again = bool(arrival.event_id) and arrival.event_id in received
        received.add(arrival.event_id)
        key = None if again else body_key(arrival.body)
        committed = None if key is None else self.clock.claim(arrival.output, key)
        if committed is not None and key is not None:
            latency = max(0.0, arrival.at - committed) * 1000
            self.latencies[arrival.output][key] = latency
            text = f"{latency:.1f} ms"
        else:
            captured = self._captured_at(arrival.event_id)
            text = "?" if captured is None else f"~{max(0.0, arrival.at - captured) * 1000:.1f} ms"
        self.screen.event(arrival, text, again)

    def _captured_at(self, event_id: str) -> float | None:
        """Capture time of someone else's change, from the log (bounded by position, so the
        look-up stays an index range scan in a database with a long log)."""
        if not event_id:
            return None
        try:
            if self._lookup is None or self._lookup.closed:
                self._lookup = connect(self._dsn, "demo")
            with self._lookup.cursor() as cur:
                cur.execute(
                    "SELECT extract(epoch FROM captured_at)::float8 FROM skor.log"
                    " WHERE pos >= %s AND event_id = %s::uuid",
                    (self._first_pos, event_id),
                )
                value = scalar(cur)
        except (psycopg2.Error, SkorError):
            return None
        return float(value) if value is not None else None

    def _close_lookup(self) -> None:
        if self._lookup is not None:
            self._lookup.close()

    def _summary(self, arrived: bool) -> str:
        assert self.writer is not None
        keys = self.writer.keys()
        ops = Counter(op for _, op in self.writer.made)
        parts = [
            f"summary: {len(keys)} events ({ops['INSERT']} insert, {ops['UPDATE']} update, "
            f"{ops['DELETE']} delete)"
        ]
        for kind in self.kinds:
            latencies = [self.latencies[kind][k] for k in keys if k in self.latencies[kind]]
            part = f"{kind} {len(latencies)}/{len(keys)}"
            if latencies:
                part += (
                    f" p50 {percentile(latencies, 50):.1f} ms"
                    f" p99 {percentile(latencies, 99):.1f} ms"
                )
            parts.append(part)
        if not arrived:
            parts.append(f"missing after {self.options.timeout:g} s")
        return "; ".join(parts)

    def _invite(self, table: DemoTable, server: EmbeddedPostgres | None, dsn: str) -> None:
        assert self.writer is not None
        psql = server.psql(dsn) if server is not None else f"psql '{redact(dsn)}'"
        name = table.name if server is not None else str(table)
        live = self.writer.live[0][0] if self.writer.live else 1
        self.screen.text("")
        self.screen.note("your turn: changes you make appear above as they are delivered")
        self.screen.text(f"     {psql}")
        self.screen.text(f"     INSERT INTO {name} (customer, amount) VALUES ('you', 9.99);")
        self.screen.text(f"     UPDATE {name} SET status = 'paid' WHERE id = {live};")
        self.screen.note(
            "latency is commit -> receipt; '~' marks changes the demo did not "
            "make, timed from their capture"
        )
        gone = "removes the database" if server is not None else f"drops table {table}"
        self.screen.note(f"Ctrl-C stops the bridge and {gone}")
        self.screen.text("")

    def _quietly(self, done: str | None, step: Callable[[], object]) -> None:
        """Run one clean-up step; a failure is reported and the next step still runs."""
        try:
            result = step()
        except Exception as exc:
            self.screen.note(f"clean-up step failed: {redact(str(exc)) or type(exc).__name__}")
            return
        message = result if isinstance(result, str) else done
        if message:
            self.screen.note(message)
