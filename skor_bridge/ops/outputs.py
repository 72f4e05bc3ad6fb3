"""`skor-bridge outputs list|forget`: the outputs a database knows, and dropping one for good.

An output is *served* when a running instance (heartbeat younger than `GONE_AFTER`) was
started with it. One that nothing serves still holds back the log's retention (partitions
are dropped only once every output passed them) until it is forgotten.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from skor_bridge.capture.registry import OWNED
from skor_bridge.errors import ConfigError
from skor_bridge.ops import output_position
from skor_bridge.ops.status import GONE_AFTER

if TYPE_CHECKING:
    from psycopg2.extensions import connection, cursor

_LIST = """
SELECT o.name, o.kind, o.destination, o.position,
    greatest((SELECT next_pos - 1 FROM skor.sequencer) - o.position, 0)
      + (SELECT count(*) FROM skor.redeliveries r WHERE r.output = o.name),
    last.instance, last.seen_at,
    EXISTS (SELECT FROM skor.output_instances oi JOIN skor.instances i USING (instance)
            WHERE oi.output = o.name AND i.heartbeat > now() - make_interval(secs => %s)),
    o.position < (SELECT next_pos - 1 FROM skor.sequencer)
      AND o.position <= (SELECT min(position) FROM skor.outputs)
FROM skor.outputs o
LEFT JOIN LATERAL (SELECT instance, seen_at FROM skor.output_instances oi
                   WHERE oi.output = o.name ORDER BY seen_at DESC LIMIT 1) last ON true
ORDER BY o.name
"""


@dataclass(frozen=True)
class OutputRow:
    name: str
    kind: str
    #: Where it delivers, redacted (recorded when an instance last started with it).
    destination: str | None
    position: int
    #: Log events after its position, plus events waiting in skor.redeliveries.
    pending: int
    last_seen_by: str | None
    last_seen_at: datetime | None
    #: A running instance was started with this output.
    served: bool
    #: Its position is the lowest: the log's retention waits for it.
    holds_retention: bool

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["last_seen_at"] = self.last_seen_at.isoformat() if self.last_seen_at else None
        return data


def list_outputs(conn: connection) -> list[OutputRow]:
    with conn.cursor() as cur:
        rows = _rows(cur)
    conn.rollback()
    return rows


def _rows(cur: cursor) -> list[OutputRow]:
    cur.execute(_LIST, (GONE_AFTER,))
    return [OutputRow(*row) for row in cur.fetchall()]


def forget(conn: connection, name: str) -> dict[str, int]:
    """Drop an output's progress, dead letters and parked or queued events; returns the
    rows removed per table. Refused while a running instance serves it."""
    with conn.cursor() as cur:
        output_position(cur, name)
        served = [row for row in _rows(cur) if row.name == name and row.served]
        if served:
            raise ConfigError(
                f"output {name!r} is served by running instance "
                f"{served[0].last_seen_by}; remove it from that bridge's "
                "configuration and restart it first"
            )
        removed = {}
        for table, column in OWNED:
            cur.execute(f"DELETE FROM {table} WHERE {column} = %s", (name,))
            removed[table] = cur.rowcount
        cur.execute("DELETE FROM skor.outputs WHERE name = %s", (name,))
        removed["skor.outputs"] = cur.rowcount
    conn.commit()
    return removed
