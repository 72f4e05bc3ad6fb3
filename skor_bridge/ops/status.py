"""`skor-bridge status`: each output's backlog, the instances, and the event log's size.

All figures come from one REPEATABLE READ snapshot, so they agree with each other (pending
and position are read at the same instant); only the relation sizes are outside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from skor_bridge.backfill.status import BackfillStatus, backfills
from skor_bridge.capture.outbox_upkeep import OutboxHealth, check
from skor_bridge.capture.triggers import capture_problems
from skor_bridge.capture.wal.slot import SlotStatus, slot_status

if TYPE_CHECKING:
    from psycopg2.extensions import connection, cursor

#: An instance whose heartbeat is older than this is reported as gone, whatever its role:
#: the default failover timeout, after which a standby takes over from a silent active.
GONE_AFTER = 10.0
#: Instances silent for longer are not shown at all (a running bridge also deletes them).
FORGOTTEN_AFTER = "1 day"

_OUTPUTS = """
SELECT o.name, o.kind, o.position, o.delivered_total, o.last_error, o.last_error_at,
    (SELECT coalesce(sum(s.delivered), 0) FROM skor.delivery_stats s
     WHERE s.output = o.name AND s.second > now() - interval '1 minute'),
    (SELECT count(*) FROM skor.dead_letters d WHERE d.output = o.name AND d.status = 'dead'),
    (SELECT count(*) FROM skor.dead_letters d WHERE d.output = o.name AND d.status = 'retry'),
    (SELECT count(*) FROM skor.redeliveries r
     WHERE r.output = o.name AND r.reason = 'parked' AND r.pos <= o.position),
    extract(epoch FROM now() - least(
        (SELECT l.captured_at FROM skor.log l WHERE l.pos > o.position ORDER BY l.pos LIMIT 1),
        (SELECT min(r.captured_at) FROM skor.redeliveries r
         WHERE r.output = o.name AND r.reason = 'parked'),
        (SELECT b.captured_at FROM skor.outbox b ORDER BY b.id LIMIT 1)))::float8,
    -- through to_jsonb: a database that has not run migration 030 yet has no such column
    (to_jsonb(o) ->> 'holding_log_since')::timestamptz
FROM skor.outputs o ORDER BY o.name
"""

_INSTANCES = f"""
SELECT instance, role, extract(epoch FROM now() - heartbeat)::float8, started
FROM skor.instances WHERE heartbeat > now() - interval '{FORGOTTEN_AFTER}'
ORDER BY started, instance
"""

# Positions are numbered without gaps and retention drops partitions oldest first, so the
# retained rows are exactly first..head; cheaper than count(*) over a large log.
_LOG = """
SELECT (SELECT next_pos - 1 FROM skor.sequencer),
    (SELECT min(pos) FROM skor.log),
    (SELECT count(*) FROM pg_inherits WHERE inhparent = 'skor.log'::regclass),
    (SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits
     WHERE inhparent = 'skor.log'::regclass),
    (SELECT count(*) FROM skor.outbox),
    pg_total_relation_size('skor.outbox')
"""


@dataclass(frozen=True)
class OutputStatus:
    name: str
    kind: str
    #: Every event at or before this log position is delivered or dead-lettered.
    position: int
    #: Log events after the position, parked events, and rows still in the outbox.
    pending: int
    #: Age of the oldest pending event; 0 when nothing is pending.
    lag_seconds: float
    delivered_last_minute: int
    delivered_total: int
    dead_letters: int
    #: Dead letters an operator queued for retry that are not delivered yet.
    retrying: int
    #: Events of rows that kept failing, set aside (in skor.redeliveries) so the position
    #: could move past them; still retried, and counted as pending.
    parked: int
    last_error: str | None
    last_error_at: datetime | None
    #: Since when the output has held the log over --retention-size (it has not delivered
    #: events the size limit would drop); None when it does not.
    holding_log_since: datetime | None = None


@dataclass(frozen=True)
class InstanceStatus:
    instance: str
    #: active, standby, or gone (no heartbeat for `GONE_AFTER` seconds).
    role: str
    heartbeat_age: float
    started: datetime


@dataclass(frozen=True)
class LogStatus:
    #: Newest position the sequencer assigned (0 before the first event).
    head: int
    #: Oldest retained position, None when the log is empty.
    first: int | None
    rows: int
    partitions: int
    log_bytes: int
    outbox_rows: int
    outbox_bytes: int
    #: Dead rows in the outbox, and the oldest snapshot another session holds (see
    #: capture.outbox_upkeep): long transactions keep VACUUM from cleaning the outbox.
    outbox_dead_tuples: int = 0
    oldest_snapshot_seconds: float = 0.0
    oldest_snapshot_pid: int | None = None
    oldest_snapshot_application: str = ""

    @property
    def outbox_warning(self) -> str | None:
        return OutboxHealth(
            self.oldest_snapshot_seconds,
            self.oldest_snapshot_pid,
            self.oldest_snapshot_application,
            self.outbox_dead_tuples,
        ).warning

    @property
    def total_bytes(self) -> int:
        return self.log_bytes + self.outbox_bytes


@dataclass(frozen=True)
class Status:
    taken_at: datetime
    outputs: list[OutputStatus]
    instances: list[InstanceStatus]
    log: LogStatus
    backfills: list[BackfillStatus] = field(default_factory=list)
    #: WAL capture's replication slot; None when WAL capture is not installed.
    slot: SlotStatus | None = None
    #: Captured tables whose shape no longer matches their capture config (see
    #: `capture.triggers.capture_problems`), one line each.
    capture_problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; times as ISO-8601 strings."""
        data = asdict(self)
        data["log"]["total_bytes"] = self.log.total_bytes
        result: dict[str, Any] = _isoformat(data)  # type: ignore[assignment]
        return result


def collect(conn: connection) -> Status:
    """Read every figure in one read-only snapshot."""
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    try:
        with conn.cursor() as cur:
            log = _log(cur)
            outputs = _outputs(cur, log)
            instances = _instances(cur)
            slot = slot_status(cur)
            running = backfills(cur)
            problems = capture_problems(cur)
            cur.execute("SELECT now()")
            row = cur.fetchone()
            assert row is not None
        return Status(
            taken_at=row[0],
            outputs=outputs,
            instances=instances,
            log=log,
            slot=slot,
            backfills=running,
            capture_problems=problems,
        )
    finally:
        conn.rollback()


def _log(cur: cursor) -> LogStatus:
    cur.execute(_LOG)
    row = cur.fetchone()
    assert row is not None
    head, first, partitions, log_bytes, outbox_rows, outbox_bytes = row
    rows = head - first + 1 if first is not None else 0
    health = check(cur)
    return LogStatus(
        head=int(head),
        first=first,
        rows=int(rows),
        partitions=int(partitions),
        log_bytes=int(log_bytes),
        outbox_rows=int(outbox_rows),
        outbox_bytes=int(outbox_bytes),
        outbox_dead_tuples=health.dead_tuples,
        oldest_snapshot_seconds=health.oldest_snapshot_seconds,
        oldest_snapshot_pid=health.oldest_snapshot_pid,
        oldest_snapshot_application=health.oldest_snapshot_application,
    )


def _outputs(cur: cursor, log: LogStatus) -> list[OutputStatus]:
    cur.execute(_OUTPUTS)
    result = []
    for (
        name,
        kind,
        position,
        delivered_total,
        last_error,
        last_error_at,
        last_minute,
        dead,
        retrying,
        parked,
        lag,
        holding,
    ) in cur.fetchall():
        result.append(
            OutputStatus(
                name=name,
                kind=kind,
                position=int(position),
                pending=max(0, log.head - int(position)) + int(parked) + log.outbox_rows,
                parked=int(parked),
                lag_seconds=max(0.0, float(lag or 0.0)),
                delivered_last_minute=int(last_minute),
                delivered_total=int(delivered_total),
                dead_letters=int(dead),
                retrying=int(retrying),
                last_error=last_error,
                last_error_at=last_error_at,
                holding_log_since=holding,
            )
        )
    return result


def _instances(cur: cursor) -> list[InstanceStatus]:
    cur.execute(_INSTANCES)
    return [
        InstanceStatus(
            instance=instance,
            role="gone" if age > GONE_AFTER else role,
            heartbeat_age=max(0.0, float(age)),
            started=started,
        )
        for instance, role, age, started in cur.fetchall()
    ]


def _isoformat(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _isoformat(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_isoformat(item) for item in value]
    return value
