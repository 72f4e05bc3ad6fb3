"""The change event: what capture produces and every sink consumes."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

#: READ is a row that existed before capture began, sent by `skor-bridge backfill`.
#: Anything else is refused where events are built (see `known_op`).
OPS = ("INSERT", "UPDATE", "DELETE", "READ")


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One committed row change.

    `data` is the row exactly as PostgreSQL's `row_to_json` rendered it, kept as text so
    that numerics, 64-bit integers and key order reach the outputs unchanged.
    `position` orders events of one log; `key` is the row's primary key as compact JSON
    (`{"id":42}`), or None for a table without one.
    """

    id: str
    position: int
    schema: str
    table: str
    op: str
    data: str
    key: str | None = None
    captured_at: float = 0.0
    #: Skor's notify payload, passed through byte for byte in notify mode; or the body an
    #: output's format rendered (`skor_bridge.formats`).
    raw_body: bytes | None = field(default=None, compare=False)
    #: Headers the output's format adds (content-type, CloudEvents ce_* attributes).
    headers: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    #: The outputs this event is for (a backfill limited to some); None for every output.
    outputs: tuple[str, ...] | None = None
    #: An UPDATE's row before the change, rendered like `data` (same columns); None when
    #: not known, and for INSERT, DELETE and READ. Only the envelope format sends it.
    old: str | None = None

    def is_for(self, output: str) -> bool:
        return self.outputs is None or output in self.outputs

    @property
    def ordering_key(self) -> str:
        """Events with the same ordering key are delivered one after the other, in order.

        Without a primary key the whole table is one ordering key, as promised in the README.
        """
        if self.key is not None:
            return f"{self.schema}.{self.table}:{self.key}"
        return f"{self.schema}.{self.table}"

    @staticmethod
    def known_op(op: object) -> bool:
        """Whether `op` is one the bridge emits; a source drops (and logs) any other."""
        return op in OPS

    @property
    def qualified_table(self) -> str:
        return f"{self.schema}.{self.table}"

    def body(self) -> bytes:
        """Skor's webhook body: {"data": ..., "table": ..., "schema": ..., "op": ...}."""
        if self.raw_body is not None:
            return self.raw_body
        # Spliced rather than json.dumps'ed so `data` keeps PostgreSQL's exact rendering.
        return b"".join(
            (b'{"data": ', self.data.encode("utf-8"), _body_tail(self.table, self.schema, self.op))
        )


@functools.lru_cache(maxsize=1024)
def _body_tail(table: str, schema: str, op: str) -> bytes:
    """What follows `data` in a body; shared by every event of one table and op (a few
    microseconds of json.dumps each, at thousands of events a second)."""
    return (
        ', "table": '
        + json.dumps(table, ensure_ascii=False)
        + ', "schema": '
        + json.dumps(schema, ensure_ascii=False)
        + ', "op": '
        + json.dumps(op, ensure_ascii=False)
        + "}"
    ).encode("utf-8")
