"""Lifecycle: startup -> (standby ->) active -> drain -> shutdown.

Shutdown order, and why:
1. stop capture, so no new work arrives;
2. let each output finish the batch in flight (a graceful stop waits up to
   `GRACEFUL_TIMEOUT`; events still in backoff are handed back, not waited on);
3. commit each output's progress, so a restart resumes exactly after what was delivered;
4. close the sinks;
5. close PostgreSQL last, since steps 2 and 3 still write to it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING

from skor_bridge.capture import inventory, registry
from skor_bridge.capture.retention import Pruner
from skor_bridge.capture.schema import ensure_schema
from skor_bridge.capture.triggers import capture_problems
from skor_bridge.capture.wal.slot import wal_installed
from skor_bridge.db import SchemaGone, connect
from skor_bridge.dispatch.delivery import OutputWorker
from skor_bridge.errors import DatabaseError, StartupError
from skor_bridge.health import HealthServer, Readiness, readiness
from skor_bridge.leader import Leadership, instance_tag
from skor_bridge.metrics import Metrics
from skor_bridge.migrations import SchemaMissing
from skor_bridge.routing import route
from skor_bridge.signals import handle_stop_signals
from skor_bridge.sinks import load_sink

if TYPE_CHECKING:
    from collections.abc import Callable

    from skor_bridge.capture.base import Source
    from skor_bridge.config import Config

log = logging.getLogger(__name__)

#: Seconds a graceful stop waits for in-flight deliveries before handing them back.
GRACEFUL_TIMEOUT = 30.0

#: Seconds a graceful stop waits on an output none of whose in-flight events completes.
DRAIN_STALL = 3.0

#: Seconds between heartbeats of the active instance.
HEARTBEAT = 1.0


class Bridge:
    def __init__(self, config: Config, instance: str | None = None) -> None:
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # Every session of this instance carries its tag, for fencing (see `leader`).
        self.config = replace(
            config, source=replace(config.source, instance_tag=instance_tag(self.instance))
        )
        self.metrics = Metrics()
        for output in config.outputs:
            self.metrics.add_output(output.name)
        self.stop_requested = threading.Event()
        self.workers: list[OutputWorker] = []
        self.source: Source | None = None
        #: The capture mode in effect: WAL capture, once installed, replaces the default.
        self.mode = config.source.mode
        self.pruner: Pruner | None = None
        self.active = False
        self.fatal: BaseException | None = None
        # The source whose `captured` count was last fed to metrics, and that count.
        self._counted: tuple[Source | None, int] = (None, 0)

    # -- public -----------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (exit 0) or an unrecoverable error (exit 1)."""
        restore = handle_stop_signals(self.stop_requested, self.request_stop)
        health: HealthServer | None = None
        try:
            # Before leader election, so that a standby answers probes too.
            if self.config.metrics_port is not None:
                health = HealthServer(
                    self.metrics.registry,
                    self.readiness,
                    self.config.metrics_port,
                    self.config.metrics_host,
                ).start()
            self.startup()
            leadership = Leadership(
                self.config.source.dsn, self.instance, self.config.failover_timeout
            )
            while not self.stop_requested.is_set():
                if not leadership.acquire(self.stop_requested):
                    break
                self.metrics.role.set(1)
                try:
                    self._run_active(leadership)
                finally:
                    self.metrics.role.set(0)
                    self.metrics.clear_backlog([o.name for o in self.config.outputs])
                    leadership.release()
                if self.fatal is not None:
                    return 1
            leadership.leave()
            return 0
        finally:
            if health is not None:
                health.stop()
            restore()

    def readiness(self) -> Readiness:
        """What /readyz answers; called from the health server's threads."""
        source = self.source
        head = None if source is None else source.head
        pruner = self.pruner
        ready, body = readiness(
            self.active,
            self.instance,
            source is not None and source.healthy(),
            [(w.name, w.failed is not None, w.backlog(head)) for w in list(self.workers)],
            holding=pruner.last.holding if pruner is not None else [],
        )
        slot_report = getattr(source, "slot_report", None)
        if self.active and slot_report is not None:  # WAL mode: the slot's retained WAL
            slot_ok, body["slot"] = slot_report()
            ready = body["ready"] = ready and slot_ok
        return ready, body

    def request_stop(self) -> None:
        self.stop_requested.set()

    def startup(self) -> None:
        """Fail fast on a database we cannot reach; create our schema if it is missing."""
        try:
            conn = connect(self.config.source.dsn, "startup", autocommit=False)
        except DatabaseError as exc:
            raise StartupError(str(exc)) from None
        try:
            with conn.cursor() as cur:
                try:
                    # Only notify mode may create the schema: capture needs `triggers install`
                    # first, and a database purged by `triggers uninstall --purge` must not
                    # silently start again from nothing when a supervisor restarts us.
                    ensure_schema(cur, create=self.mode == "notify")
                except SchemaMissing:
                    raise StartupError(
                        "no skor schema in this database: install the triggers first "
                        "(skor-bridge triggers install triggers.json --dsn ...); the bridge "
                        "does not create it, so that a purged database is not started "
                        "again from nothing"
                    ) from None
                if self.mode == "durable" and wal_installed(cur):
                    self.mode = "wal"
                if self.mode in ("durable", "wal"):
                    registry.register(cur, self.config, self.instance)
                if self.mode != "wal" and inventory.nothing_captured(cur):
                    log.warning(
                        "nothing is captured: this database has no capture trigger; "
                        "install them with: skor-bridge triggers install "
                        "triggers.json --dsn ..."
                    )
                for problem in capture_problems(cur):
                    log.warning("capture needs a look: %s", problem)
            conn.commit()
        finally:
            conn.close()
        outputs = ", ".join(f"{o.name} ({o.kind})" for o in self.config.outputs)
        log.info(
            "skor-bridge %s starting: %s capture on %s; outputs: %s",
            self.instance,
            self.mode,
            self.config.source.safe_dsn,
            outputs,
        )

    # -- active term ------------------------------------------------------------------------

    def _make_source(self, stopping: threading.Event, fence: Callable[[], bool]) -> Source:
        if self.mode == "notify":
            from skor_bridge.capture.notify import NotifySource

            return NotifySource(self.config, stopping, fence)
        if self.mode == "wal":
            from skor_bridge.capture.wal.source import WalSource

            return WalSource(self.config, stopping, fence)
        from skor_bridge.capture.durable import DurableSource

        return DurableSource(self.config, stopping, fence)

    def _run_active(self, leadership: Leadership) -> None:
        stopping = threading.Event()
        # Fencing: outputs send only while the lease holds (see `leader`).
        source = self.source = self._make_source(stopping, leadership.may_send)
        feeds = [source.feed(output.name, output.kind) for output in self.config.outputs]
        self.workers = [
            OutputWorker(
                output,
                route(
                    load_sink(output.kind, output.name, output.settings),
                    output,
                    self.config.source.dsn,
                ),
                feed,
                self.metrics,
                stopping,
                self.config.max_in_flight,
                self.config.source.batch_size,
            )
            for output, feed in zip(self.config.outputs, feeds, strict=True)
        ]
        # Feeds exist before capture starts, so notify mode misses nothing in between.
        source.start()
        pruner = self.pruner = Pruner(self.config).start()
        for worker in self.workers:
            worker.start()
        self.active = True
        lost = False
        gone: SchemaGone | None = None
        try:
            while not self.stop_requested.is_set() and not stopping.is_set():
                if not leadership.heartbeat():
                    lost = True
                    break
                self._update_gauges()
                self.stop_requested.wait(min(HEARTBEAT, leadership.heartbeat_interval))
            if stopping.is_set() and not lost:
                leadership.heartbeat()  # raises SchemaGone when that is why work stopped
        except SchemaGone as exc:
            gone = exc
        finally:
            self.active = False
            pruner.stop()
            self._shutdown_term(
                source, stopping, graceful=not lost and gone is None, saved=gone is None
            )
        if gone is not None:
            log.error("%s", gone)
            self.fatal = gone
            return
        for worker in self.workers:
            if worker.failed is not None:
                self.fatal = worker.failed
        if getattr(source, "failed", None) is not None:  # e.g. the WAL slot disappeared
            self.fatal = getattr(source, "failed", None)
        if lost:
            log.warning("leadership lost; standing by again")

    def _shutdown_term(
        self, source: Source, stopping: threading.Event, graceful: bool, saved: bool = True
    ) -> None:
        source.stop_capture()
        for worker in self.workers:
            worker.draining.set()
        if not graceful:
            stopping.set()
        deadline = time.monotonic() + GRACEFUL_TIMEOUT
        for worker in self.workers:
            if not _drained(worker, deadline):
                log.warning(
                    "output %s: events still in flight are handed back (delivered "
                    "again after a restart)",
                    worker.name,
                )
                stopping.set()
                worker.thread.join(timeout=10)
        stopping.set()
        source.close()
        if saved:
            log.info("stopped; progress saved for %d output(s)", len(self.workers))

    def _update_gauges(self) -> None:
        source = self.source
        captured = getattr(source, "captured", 0)
        counted_source, counted = self._counted
        if source is not counted_source:
            counted = 0  # a new active term starts a new source, counting from zero
        if captured > counted:
            self.metrics.captured_total.inc(captured - counted)
        self._counted = (source, captured)
        head = None if source is None else source.head
        if self.pruner is not None:
            found = self.pruner.last
            self.metrics.log_bytes.set(found.log_bytes)
            self.metrics.oldest_snapshot.set(found.outbox.oldest_snapshot_seconds)
            self.metrics.outbox_dead_tuples.set(found.outbox.dead_tuples)
            for output in self.config.outputs:
                self.metrics.holding_log.labels(output.name).set(output.name in found.holding)
        for worker in self.workers:
            state = worker.backlog(head)
            self.metrics.pending.labels(worker.name).set(state.pending)
            self.metrics.lag.labels(worker.name).set(state.lag_seconds)
        slot = getattr(getattr(source, "reader", None), "slot", None)
        if slot is not None:
            self.metrics.wal_slot(
                slot.retained_bytes, slot.wal_status if slot.exists else "missing"
            )


def _drained(worker: OutputWorker, deadline: float) -> bool:
    """Wait for `worker` to finish what it has in flight, until `deadline`, or until nothing
    of it completed for `DRAIN_STALL` seconds: a sink whose broker is unreachable would only
    time out, so its events are handed back rather than waited on."""
    last, since = len(worker.in_flight), time.monotonic()
    while worker.thread.is_alive():
        now = time.monotonic()
        if now >= deadline or now - since >= DRAIN_STALL:
            return False
        worker.thread.join(timeout=0.1)
        left = len(worker.in_flight)
        if left < last:
            last, since = left, time.monotonic()
    return True
