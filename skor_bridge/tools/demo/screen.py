"""What the demo prints: progress notes, and one aligned line per arrival."""

from __future__ import annotations

import decimal
import json
import math
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import TextIO

    from skor_bridge.tools.demo.taps import Arrival

#: Columns left out of the printed row summary, to keep lines short.
_QUIET_COLUMNS = frozenset({"created_at", "updated_at"})
_ROW_WIDTH = 48


class Screen:
    """Progress notes and aligned event lines on stdout, flushed so a pipe sees them live."""

    def __init__(self, out: TextIO, table_width: int) -> None:
        self.out = out
        self.table_width = table_width

    def note(self, text: str) -> None:
        self.text(f"-- {text}")

    def text(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def header(self) -> None:
        self.text("")
        self.text(self._columns("time", "output", "table", "op", "row", "latency"))

    def event(self, arrival: Arrival, latency: str, again: bool) -> None:
        table, op, row = summarize(arrival.body)
        stamp = time.strftime("%H:%M:%S", time.localtime(arrival.at))
        stamp += f".{int(arrival.at % 1 * 1000):03d}"
        line = self._columns(stamp, arrival.output, table, op, row, latency)
        self.text(line + ("  (again)" if again else ""))

    def _columns(self, *cells: str) -> str:
        stamp, output, table, op, row, latency = cells
        return (
            f"{stamp:<12}  {output:<7}  {table:<{self.table_width}}  {op:<6}  "
            f"{row:<{_ROW_WIDTH}}  {latency:>9}"
        )


def summarize(body: bytes) -> tuple[str, str, str]:
    """(schema.table, op, "key=value ...") of a Skor body, the row cut to fit one line."""
    try:
        event = json.loads(body, parse_float=decimal.Decimal)
    except ValueError:
        return "?", "?", body[:_ROW_WIDTH].decode("utf-8", "replace")
    data = event.get("data") if isinstance(event, dict) else None
    if not isinstance(data, dict):
        return "?", "?", ""
    row = " ".join(
        f"{key}={_cell(value)}" for key, value in data.items() if key not in _QUIET_COLUMNS
    )
    if len(row) > _ROW_WIDTH:
        row = row[: _ROW_WIDTH - 3] + "..."
    return f"{event.get('schema', '?')}.{event.get('table', '?')}", str(event.get("op")), row


def _cell(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str, separators=(",", ":"))
    return str(value)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value at or above p% of them."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]
