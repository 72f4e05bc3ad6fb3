"""Per-output routing and format: which tables an output receives, and in what shape.

`route()` wraps an output's sink only when it has a `tables` filter or a format other than
Skor's, so the default path is untouched. An event of a table the output does not take is
completed as delivered without being sent: the output's position moves past it like past
any other, so a filtered output never holds back retention.

Patterns are shell globs of `schema.table`, or of `table` in any schema (`orders`,
`billing.*`, `public.order_*`).
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

from skor_bridge import formats
from skor_bridge.sinks.base import DELIVERED, Sink

if TYPE_CHECKING:
    from collections.abc import Sequence

    from skor_bridge.config import OutputConfig
    from skor_bridge.event import ChangeEvent
    from skor_bridge.sinks.base import Result


def matcher(patterns: Sequence[str]) -> Any:
    """A predicate on (schema, table); every table passes an empty pattern list."""
    qualified = [p for p in patterns if "." in p]
    bare = [p for p in patterns if "." not in p]

    def matches(schema: str, table: str) -> bool:
        if not patterns:
            return True
        return any(fnmatch.fnmatchcase(f"{schema}.{table}", p) for p in qualified) or any(
            fnmatch.fnmatchcase(table, p) for p in bare
        )

    return matches


class Routed(Sink):
    """An output's sink seen through its table filter and its format."""

    def __init__(self, inner: Sink, output: OutputConfig, source: str) -> None:
        super().__init__(inner.name)
        self.inner = inner
        self.output = output
        self.source = source
        self._matches = matcher(output.tables)
        self._skipped: list[tuple[int, Result]] = []
        # The engine reads these off the sink (batch size, concurrency, bounds).
        for attribute in ("kind", "max_batch", "max_in_flight", "adaptive", "completion_bound"):
            if hasattr(inner, attribute):
                setattr(self, attribute, getattr(inner, attribute))

    def _shape(self, event: ChangeEvent) -> ChangeEvent:
        return formats.render(event, self.output.format, self.output.kind, self.source)

    def open(self) -> None:
        self.inner.open()

    def close(self) -> None:
        self.inner.close()

    def send(self, batch: Sequence[ChangeEvent]) -> list[Result]:
        chosen = [i for i, e in enumerate(batch) if self._matches(e.schema, e.table)]
        results: list[Result] = [DELIVERED] * len(batch)
        if chosen:
            sent = self.inner.send([self._shape(batch[i]) for i in chosen])
            for i, result in zip(chosen, sent, strict=True):
                results[i] = result
        return results

    # The submit/poll form of the sink contract.
    def submit(self, ticket: int, event: ChangeEvent) -> None:
        if self._matches(event.schema, event.table):
            self.inner.submit(ticket, self._shape(event))
        else:
            self._skipped.append((ticket, DELIVERED))

    def poll(self, timeout: float) -> list[tuple[int, Result]]:
        done, self._skipped = self._skipped, []
        return done + self.inner.poll(0 if done else timeout)


def route(sink: Sink, output: OutputConfig, dsn: str) -> Sink:
    """`sink` as `output` wants it: filtered and formatted, or unchanged."""
    if not output.tables and output.format == "skor":
        return sink
    return Routed(sink, output, formats.source_of(dsn))
