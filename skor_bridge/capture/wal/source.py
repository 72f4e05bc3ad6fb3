"""WAL capture: the active instance reads the slot and appends each committed transaction's
events to skor.log, in commit order.

    slot (pgoutput) --> parse --> changes (triggers.json applied) --> chunk
        --> one transaction: skor.log rows + skor.wal_state --> acknowledge the slot

The slot is acknowledged (`flush_lsn`) only up to transactions whose events are in the
log, so a crash anywhere re-reads what was not written and skips, by LSN, what was.
A transaction larger than one chunk is written in several, each recording how many of
its row messages are in; memory holds one chunk at most. Events then flow to the outputs
from the log exactly as in trigger mode, so a slow or failing output never holds WAL on
the server: the log's retention takes over.

What it costs the database, and why: a write is one prepared statement, and under load
writes start `BUSY_SPACING` poll intervals apart (as the sequencer's rounds do), each
carrying every transaction received meanwhile; while an output waits at the head, what
is written is also handed to it from memory instead of being read back from the log.

An idle publication on a busy server: the walsender's keepalives carry the server's WAL
position, and once everything received is acknowledged psycopg2 confirms those positions
too, so the slot keeps up with the server even when no captured table changes.
"""

from __future__ import annotations

import dataclasses
import logging
import select
import threading
import time
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.errors
import psycopg2.extras

from skor_bridge.backoff import backoff_delay
from skor_bridge.capture.durable import DurableSource
from skor_bridge.capture.log_rows import event_from_row
from skor_bridge.capture.sequencer import RECENT_BYTES, Pace, Sequencer
from skor_bridge.capture.trigger_config import parse_config
from skor_bridge.capture.wal import protocol
from skor_bridge.capture.wal.batch import Renderer
from skor_bridge.capture.wal.changes import Change, MessageEvent, Table, changes_of
from skor_bridge.capture.wal.render import SESSION_SETTINGS, TYPE_QUERY, TypeCatalog, renderer
from skor_bridge.capture.wal.slot import SlotError, SlotStatus, slot_lost, slot_status
from skor_bridge.capture.wal.writer import (
    COPY_FROM,
    PREPARE_WRITE,
    Chunk,
    WalState,
    copy_chunk,
    derived_id,
    id_prefix,
    load_state,
    logged_time,
    write_chunk,
)
from skor_bridge.db import CONNECT_TIMEOUT, Stopped, describe
from skor_bridge.errors import DatabaseError, StartupError

if TYPE_CHECKING:
    from collections.abc import Callable

    from psycopg2.extensions import cursor

    from skor_bridge.capture.trigger_config import TableSpec
    from skor_bridge.config import Config
    from skor_bridge.event import ChangeEvent

log = logging.getLogger(__name__)

#: Bytes of row data one chunk holds at most (besides `batch_size` events).
CHUNK_BYTES = 4 * 1024 * 1024

#: Seconds between acknowledgements psycopg2 sends on its own (and answers keepalives).
STATUS_INTERVAL = 1.0

#: Seconds between looks at the slot's retained WAL.
SLOT_CHECK = 5.0

_KEY_QUERY = """
SELECT a.attname FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.n
"""


def replication_options() -> str:
    """libpq `options` fixing the text form the walsender writes values in."""
    return " ".join(
        f"-c {name}={value.replace(' ', '')}" for name, value in SESSION_SETTINGS.items()
    )


def identify(dsn: str) -> tuple[str, int]:
    """(system identifier, timeline) of the server, over a replication connection."""
    conn = replication_connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("IDENTIFY_SYSTEM")
            row = cur.fetchone()
    finally:
        conn.close()
    assert row is not None
    return str(row[0]), int(row[1])


def replication_connect(dsn: str, purpose: str = "wal") -> Any:
    try:
        return psycopg2.connect(
            dsn,
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
            connect_timeout=CONNECT_TIMEOUT,
            application_name=f"skor-bridge {purpose}",
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
            options=replication_options(),
        )
    except psycopg2.Error as exc:
        raise DatabaseError(f"cannot open a replication connection: {describe(exc)}") from None


def proto_version(server_version: int) -> str:
    """The newest pgoutput protocol the server speaks whose messages we parse: without
    streaming or two-phase options, versions 2-4 send what version 1 sends."""
    if server_version >= 160000:
        return "4"
    if server_version >= 150000:
        return "3"
    if server_version >= 140000:
        return "2"
    return "1"


class _Transaction:
    __slots__ = ("begin", "messages", "skip_messages", "skip")

    def __init__(self, begin: protocol.Begin, skip: bool, skip_messages: int) -> None:
        self.begin = begin
        #: Row messages seen so far (the next one's number).
        self.messages = 0
        self.skip = skip
        self.skip_messages = skip_messages


class WalSource(DurableSource):
    """Capture from a logical replication slot. Log feeds, positions and waiting are the
    durable source's; only what fills the log differs: this reader instead of the outbox
    sequencer."""

    def __init__(
        self, config: Config, stop: threading.Event, fence: Callable[[], bool] = lambda: True
    ) -> None:
        super().__init__(config, stop, fence)
        self.reader = WalReader(config, stop)
        self.sequencer = self.reader

    @property
    def failed(self) -> BaseException | None:
        """Why capture stopped the bridge (the slot is gone...), or None."""
        return self.reader.failed

    def slot_report(self) -> tuple[bool, dict[str, object]]:
        """(within --max-slot-lag, figures) for /readyz and metrics."""
        slot = self.reader.slot
        if slot is None:
            return True, {}
        ok = slot.exists and slot.retained_bytes <= self.config.source.max_slot_lag
        return ok, {
            "slot": slot.slot,
            "ready": ok,
            "retained_bytes": slot.retained_bytes,
            "wal_status": slot.wal_status,
            "max_slot_lag": self.config.source.max_slot_lag,
        }


class WalReader(Sequencer):
    """Reads the slot into the log; a Sequencer to everything that waits on the log."""

    def __init__(self, config: Config, stop: threading.Event) -> None:
        super().__init__(config, stop)
        self._db.purpose = config.source.session("wal writer")
        self.failed: BaseException | None = None
        #: Called with each logical decoding message whose prefix starts with "skor", and
        #: the log position of the last event before it, once the log has that event.
        self.listeners: list[Callable[[protocol.Message, int], None]] = []
        #: Prefix -> handler turning a transactional message into events written at the
        #: message's place in the transaction (backfill's READ rows).
        self.handlers: dict[str, Callable[[protocol.Message], list[MessageEvent]]] = {}
        self._state: WalState | None = None
        self._specs: dict[tuple[str, str], TableSpec] = {}
        self._spec_oids: dict[int, TableSpec] = {}
        self._tables: dict[int, Table] = {}
        self._catalog = TypeCatalog(self._lookup_types)
        self._renderer = Renderer(self._db.run)
        self._tx: _Transaction | None = None
        self._pending: list[Change | MessageEvent] = []
        self._pending_bytes = 0
        #: Logical messages waiting for the chunk they follow: (message, changes before it).
        self._pending_messages: list[tuple[protocol.Message, int]] = []
        #: End LSN of the last whole transaction received, and how many pending changes
        #: belong to whole transactions.
        self._completed_lsn = 0
        self._completed_pending = 0
        self._acked = 0
        self._partial_recorded = False
        self._warned: set[str] = set()
        self._cursor: Any = None
        self._prepared_write: Any = None
        #: The slot's figures, refreshed every SLOT_CHECK seconds by the reader.
        self.slot: SlotStatus | None = None
        self._slot_checked = 0.0
        self._lag_warned = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Check the installation before taking over: fail at start-up, in one line."""
        state = self._db.run(load_state)
        if state is None:
            raise StartupError(
                "WAL capture is not installed in this database: run "
                "`skor-bridge triggers install CONFIG --mode wal` first"
            )
        self._check_server(state)
        self._state = state
        self._specs = {(s.schema, s.table): s for s in parse_config(state.tables)}

        def oids(cur: cursor) -> dict[int, TableSpec]:
            # The OIDs recorded at install: a table renamed since, even while the bridge
            # was down, keeps its OID and is still captured, as its triggers would.
            cur.execute(
                "SELECT r.schema_name, r.table_name, r.relid, n.nspname, c.relname"
                " FROM skor.captured_tables r JOIN pg_class c ON c.oid = r.relid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE r.mode = 'wal'"
            )
            recorded = {}
            for schema, table, relid, now_schema, now_table in cur.fetchall():
                recorded[(schema, table)] = int(relid)
                # Renamed already: the start-up's "capture needs a look" says it once.
                self._warned.add(f"renamed {schema}.{table} {now_schema}.{now_table}")
            found = {}
            for key, spec in self._specs.items():
                relid = recorded.get(key)
                if relid is None:  # installed by a release that did not record OIDs
                    cur.execute("SELECT to_regclass(%s)::oid", (spec.qualified,))
                    row = cur.fetchone()
                    relid = int(row[0]) if row and row[0] is not None else None
                if relid is not None:
                    found[relid] = spec
            return found

        self._spec_oids = self._db.run(oids)
        super().start()

    def _check_server(self, state: WalState) -> None:
        system_id, timeline = identify(self.config.source.dsn)
        if system_id != state.system_identifier:
            raise slot_lost(
                state.slot,
                f"the server's system identifier is now {system_id},"
                f" not {state.system_identifier} (a restore or another server)",
            )
        if timeline != state.timeline:
            raise slot_lost(
                state.slot,
                f"the server's timeline moved from {state.timeline}"
                f" to {timeline} (a failover or a point-in-time restore)",
            )

        def exists(cur: cursor) -> bool:
            cur.execute(
                "SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = %s)",
                (state.slot,),
            )
            row = cur.fetchone()
            return bool(row and row[0])

        if not self._db.run(exists):
            raise slot_lost(state.slot, "it does not exist on the server any more")

    # -- the reader thread -----------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        try:
            while not self.stopping.is_set() and not self._stopped.is_set():
                try:
                    self._stream()
                    return
                except SlotError:
                    raise
                except (psycopg2.OperationalError, psycopg2.InterfaceError, DatabaseError) as exc:
                    if isinstance(exc, psycopg2.errors.UndefinedObject) or (
                        "does not exist" in str(exc) and "slot" in str(exc)
                    ):
                        raise slot_lost(
                            self._slot, "it does not exist on the server any more"
                        ) from None
                    # Anything else passes: a lost connection, or the slot still held by
                    # an instance this one replaced, until the server ends its session.
                    attempt += 1
                    delay = backoff_delay(attempt, 0.2, 5.0)
                    log.warning(
                        "WAL reader: replication connection lost (%s); reconnecting in %.1fs",
                        describe(exc),
                        delay,
                    )
                    self._reset_stream()
                    if self._stopped.wait(delay):
                        return
        except Stopped:
            pass
        except DatabaseError as exc:
            log.error("%s", exc)
            self.failed = exc
            self.stopping.set()
        except Exception as exc:
            log.exception("WAL reader failed")
            self.failed = exc
            self.stopping.set()
        finally:
            self._close_stream()

    @property
    def _slot(self) -> str:
        assert self._state is not None
        return self._state.slot

    def _stream(self) -> None:
        state = self._db.run(load_state)
        if state is None or state.slot != self._slot:
            raise slot_lost(
                self._slot, "WAL capture was uninstalled or reinstalled while the bridge ran"
            )
        self._state = state
        conn = replication_connect(self.config.source.dsn, self.config.source.session("wal"))
        self._cursor = cur = conn.cursor()
        self._check_server(state)
        options = {
            "proto_version": proto_version(conn.server_version),
            "publication_names": state.publication,
        }
        if conn.server_version >= 140000:
            options["messages"] = "true"
        try:
            cur.start_replication(
                slot_name=state.slot, decode=False, options=options, status_interval=STATUS_INTERVAL
            )
        except psycopg2.errors.UndefinedObject:
            raise slot_lost(state.slot, "it does not exist on the server any more") from None
        except psycopg2.errors.ObjectInUse as exc:
            raise DatabaseError(
                f"replication slot {state.slot} is in use by another process ({describe(exc)})"
            ) from None
        self._acked = 0  # the first acknowledgement goes out, even for a re-read
        log.info("reading replication slot %s from %s", state.slot, protocol.format_lsn(state.lsn))
        pace = Pace(self.config.source.poll_interval, time.monotonic())
        next_flush = 0.0
        while not self._stopped.is_set() and not self.stopping.is_set():
            if time.monotonic() - self._slot_checked >= SLOT_CHECK:
                self._check_slot()
            message = cur.read_message()
            if message is None:
                timeout = 0.5 if not self._pending else 0.05
                if self._completed_pending or self._pending_messages:
                    # Paced as the sequencer's rounds: a write costs the database nearly
                    # the same for one transaction's events as for several, so under load
                    # writes start BUSY_SPACING poll intervals apart and each carries
                    # what came meanwhile (at 1,000 changes/s: ~500 -> ~120 us of the
                    # database's CPU per event, for at most 4 ms more latency).
                    now = time.monotonic()
                    if now >= next_flush:
                        self._flush()
                        done = time.monotonic()
                        next_flush = done + pace.after(1, now, done)
                        continue
                    timeout = next_flush - now
                select.select([conn], [], [], timeout)
                continue
            self._handle(protocol.parse(message.payload), len(message.payload))
            if len(self._pending) >= self.config.source.batch_size or (
                self._pending_bytes >= CHUNK_BYTES
            ):
                self._flush()
        if self._completed_pending:
            self._flush()

    def _reset_stream(self) -> None:
        """After a lost connection the server sends again from the last acknowledgement:
        drop what was read but not written."""
        self._close_stream()
        self._tx = None
        self._pending.clear()
        self._pending_bytes = 0
        self._pending_messages.clear()
        self._completed_pending = 0
        self._partial_recorded = False

    def _close_stream(self) -> None:
        if self._cursor is not None:
            try:
                self._cursor.connection.close()
            except psycopg2.Error:
                pass
            self._cursor = None

    # -- messages --------------------------------------------------------------------------

    def _handle(self, message: protocol.Decoded, size: int = 0) -> None:
        if message.__class__ is protocol.Insert:  # most messages: checked first
            self._row(message, size)
        elif isinstance(message, protocol.Begin):
            assert self._state is not None
            # A transaction whose commit precedes the recorded end is already in the log.
            skip = message.final_lsn < self._state.lsn
            partial = (
                self._state.partial_messages if message.final_lsn == self._state.partial_lsn else 0
            )
            self._tx = _Transaction(message, skip, partial)
        elif isinstance(message, protocol.Insert | protocol.Update | protocol.Delete):
            self._row(message, size)
        elif isinstance(message, protocol.Commit):
            self._tx = None
            self._completed_lsn = message.end_lsn
            self._completed_pending = len(self._pending)
            if not self._pending and not self._pending_messages:
                if self._partial_recorded:
                    self._flush()
                else:
                    self._ack(message.end_lsn)
        elif isinstance(message, protocol.Relation):
            self._relation(message)
        elif isinstance(message, protocol.Truncate):
            for relid in message.relids:
                table = self._tables.get(relid)
                name = str(table.spec) if table else str(relid)
                self._warn_once(
                    f"truncate {name}", "TRUNCATE of %s is not captured (as in trigger mode)", name
                )
        elif isinstance(message, protocol.Message):
            if message.prefix.startswith("skor"):
                self._pending_messages.append((message, len(self._pending)))
            handler = self.handlers.get(message.prefix)
            if handler is not None and message.transactional and self._tx is not None:
                self._message_events(handler, message, self._tx)
        # Origin and Type messages need nothing: types are looked up by OID.

    def _row(self, message: protocol.Insert | protocol.Update | protocol.Delete, size: int) -> None:
        tx = self._tx
        if tx is None:
            raise protocol.ProtocolError("row change outside a transaction")
        number = tx.messages
        tx.messages += 1
        if tx.skip or number < tx.skip_messages:
            return
        table = self._tables.get(message.relid)
        if table is None:
            return
        if not isinstance(message, protocol.Insert) and (getattr(message, "old_kind", "O") == "K"):
            self._warn_once(
                f"identity {table.spec}",
                "%s does not log whole old rows: run "
                "`skor-bridge triggers install --mode wal` again (REPLICA "
                "IDENTITY FULL; also for partitions added since)",
                table.spec,
            )
        commit = (tx.begin.final_lsn, tx.begin.commit_time)
        for change in changes_of(message, table, number):
            change.commit = commit
            self._pending.append(change)
            self._pending_bytes += size  # the message's size: about the row's

    def _message_events(
        self,
        handler: Callable[[protocol.Message], list[MessageEvent]],
        message: protocol.Message,
        tx: _Transaction,
    ) -> None:
        # Numbered with the row messages, so a re-read skips it like them.
        number = tx.messages
        tx.messages += 1
        if tx.skip or number < tx.skip_messages:
            return
        for sub, event in enumerate(handler(message)):
            event.message, event.sub = number, sub
            event.commit = (tx.begin.final_lsn, tx.begin.commit_time)
            self._pending.append(event)
            self._pending_bytes += len(event.data)

    def _relation(self, message: protocol.Relation) -> None:
        # By OID first: a renamed table keeps it (and its place in the publication).
        spec = self._spec_oids.get(message.relid)
        if spec is None:
            spec = self._specs.get((message.schema, message.table))
            if spec is not None:
                self._spec_oids[message.relid] = spec
        if spec is None:
            self._tables.pop(message.relid, None)
            return
        if (message.schema, message.table) != (spec.schema, spec.table):
            self._warn_once(
                f"renamed {spec.schema}.{spec.table} {message.schema}.{message.table}",
                "table %s was renamed to %s.%s: still captured, and its events keep the name "
                "%s as in trigger mode; update triggers.json and install again to change it",
                spec,
                message.schema,
                message.table,
                spec,
            )
        self._catalog.load(c.type_oid for c in message.columns)
        types = tuple(self._catalog.get(c.type_oid) for c in message.columns)

        def key_names(cur: cursor) -> tuple[str, ...]:
            cur.execute(_KEY_QUERY, (message.relid,))
            return tuple(row[0] for row in cur.fetchall())

        render_fns = tuple(renderer(t, self._renderer.server_value) for t in types)
        self._tables[message.relid] = Table.build(
            message, spec, types, self._db.run(key_names), render_fns
        )

    def _lookup_types(self, oids: list[int]) -> list[Any]:
        def query(cur: cursor) -> list[Any]:
            cur.execute(TYPE_QUERY, (oids,))
            return cur.fetchall()

        return self._db.run(query)

    # -- writing ---------------------------------------------------------------------------

    def _flush(self) -> None:
        assert self._state is not None
        pending, self._pending = self._pending, []
        changes = self._renderer.prepare(pending) if pending else []
        # Where each logical message falls among the changes that were kept.
        kept_before = []
        if self._pending_messages:
            order = {id(change): i for i, change in enumerate(pending)}
            kept_before = [
                sum(1 for c in changes if order[id(c)] < before)
                for _, before in self._pending_messages
            ]
        del pending
        render = self._renderer
        chunk = Chunk()
        # While an output waits at the head, the events also go to memory, as the
        # sequencer's do, so it takes them from there instead of reading the log back (a
        # query per fetch: a fifth of WAL mode's database cost per event at a steady
        # rate). Not while every output is behind: building the events would slow the
        # capture of a backlog that outputs read from the log anyway.
        kept: list[tuple[Any, ...]] | None = None
        if self.output_at_head and self._pending_bytes <= RECENT_BYTES:
            kept = []
        self.output_at_head = False
        prefix_lsn, prefix = -1, None
        for change in changes:
            commit_lsn, commit_time = change.commit
            if commit_lsn != prefix_lsn:  # (event_id, hashing the shared part once)
                prefix_lsn, prefix = commit_lsn, id_prefix(self._install_id, commit_lsn)
            derived = derived_id(prefix, change.message, change.sub)
            if isinstance(change, MessageEvent):
                fields: tuple[Any, ...] = (
                    change.event_id or derived,
                    commit_time,
                    change.schema,
                    change.table,
                    change.op,
                    change.key,
                    change.data,
                    change.outputs,
                    None,
                )
            else:
                # The configured name (a partition's root), whatever the table is called
                # now: trigger mode's triggers carry it as a constant too.
                spec = change.table.spec
                fields = (
                    derived,
                    commit_time,
                    spec.schema,
                    spec.table,
                    change.op,
                    render.key(change),
                    render.data(change),
                    None,
                    render.old(change),
                )
            chunk.add(*fields)
            if kept is not None:
                kept.append(fields)
        del changes
        # Everything read so far is in this chunk: an open transaction's row messages up
        # to here are in the log once it commits.
        tx = self._tx
        partial = (tx.begin.final_lsn, tx.messages) if tx is not None and not tx.skip else None
        lsn = self._completed_lsn
        next_pos = self._db.run(lambda cur: self._write(cur, chunk, lsn, partial))
        self.captured += chunk.count
        if kept:
            self._publish(_events(kept, next_pos - chunk.count))
        else:
            with self._moved:
                self._head = next_pos - 1
                self._moved.notify_all()
        self._partial_recorded = partial is not None
        self._state = dataclasses.replace(self._state, lsn=max(self._state.lsn, lsn))
        self._pending_bytes = 0
        self._completed_pending = 0
        messages, self._pending_messages = self._pending_messages, []
        for (message, _), before in zip(messages, kept_before, strict=True):
            for listener in self.listeners:
                listener(message, next_pos - chunk.count - 1 + before)
        self._ack(lsn)

    def _write(self, cur: cursor, chunk: Chunk, lsn: int, partial: tuple[int, int] | None) -> int:
        if chunk.count > COPY_FROM:
            return self._copy(cur, chunk, lsn, partial)
        if cur.connection is not self._prepared_write:
            cur.execute(PREPARE_WRITE)
            self._prepared_write = cur.connection
        return self._into_log(cur, chunk.count, lambda: write_chunk(cur, chunk, lsn, partial))

    def _copy(self, cur: cursor, chunk: Chunk, lsn: int, partial: tuple[int, int] | None) -> int:
        try:
            cur.execute("BEGIN; SELECT next_pos FROM skor.sequencer FOR UPDATE")
            row = cur.fetchone()
            assert row is not None
            base = int(row[0])
            if base + chunk.count > self._covered_until:
                self._ensure_partitions(cur, base, base + chunk.count)
            next_pos = copy_chunk(cur, chunk, base, lsn, partial)
            cur.execute("COMMIT")
        except BaseException:
            if not cur.connection.closed:
                cur.execute("ROLLBACK")
            raise
        return next_pos

    def _ack(self, lsn: int) -> None:
        if lsn > self._acked and self._cursor is not None:
            self._cursor.send_feedback(flush_lsn=lsn)
            self._acked = lsn

    def _check_slot(self) -> None:
        self._slot_checked = time.monotonic()
        self.slot = self._db.run(slot_status)
        limit = self.config.source.max_slot_lag
        if (
            self.slot is not None
            and self.slot.retained_bytes > limit
            and (time.monotonic() - self._lag_warned >= 60)
        ):
            self._lag_warned = time.monotonic()
            log.warning(
                "replication slot %s holds %d MB of WAL on the server, over "
                "--max-slot-lag (%d MB): is the bridge keeping up? (set "
                "max_slot_wal_keep_size so a forgotten slot cannot fill the disk)",
                self.slot.slot,
                self.slot.retained_bytes // 2**20,
                limit // 2**20,
            )

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)


def _events(kept: list[tuple[Any, ...]], base: int) -> list[ChangeEvent]:
    """The events of a chunk written at positions from `base`, as the log gives them back
    (capture time rounded to the microsecond, as it was stored)."""
    logged: dict[float, float] = {}
    events = []
    for i, (event_id, commit_time, schema, table, op, key, data, outputs, old) in enumerate(kept):
        captured_at = logged.get(commit_time)
        if captured_at is None:
            captured_at = logged[commit_time] = logged_time(commit_time)
        row = (base + i, event_id, captured_at, schema, table, op, key, data, old)
        events.append(event_from_row(row, outputs))
    return events
