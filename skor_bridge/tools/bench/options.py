"""What `skor-bridge bench` was asked to do."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: The libpq DSN used when neither --dsn nor SKOR_DSN gives one.
DEFAULT_DSN = "host=127.0.0.1 user=postgres dbname=postgres"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"

#: Parts of the benchmark, in the order they run; each can be left out with --skip.
SECTIONS = (
    "write",
    "receiver",
    "webhook",
    "amqp",
    "kafka",
    "all",
    "latency",
    "slow",
    "memory",
    "database",
    "backfill",
    "wal",
)

#: The backlog of the --big-backlog run.
BIG_BACKLOG = 1_000_000

#: Rows of the table the backfill section sends: the issue's million with --big-backlog.
BACKFILL_ROWS, BIG_BACKFILL_ROWS = 100_000, 1_000_000

WRITER_KINDS = ("auto", "pgbench", "python")


@dataclass(frozen=True)
class BenchOptions:
    dsn: str = DEFAULT_DSN
    #: Length of every timed run: each write-cost run, each flat-out run, the latency run.
    seconds: float = 10.0
    backlog: int = 100_000
    big_backlog: bool = False
    #: Writers of the multi-writer write-cost figures (the others use one).
    writers: int = 4
    #: Writers of the end-to-end figures: enough to keep PostgreSQL's commits busy, since
    #: with few writers each one waits for its own WAL flush and the writers, not the
    #: bridge, set the pace.
    flat_out_writers: int = 8
    #: Interleaved rounds of the write-cost runs.
    rounds: int = 3
    #: Events per second of the latency run.
    rate: int = 1000
    amqp: str = DEFAULT_AMQP
    kafka: str | None = None
    #: A server with wal_level=logical for the WAL-mode rows; None starts an embedded one.
    wal_dsn: str | None = None
    skip: frozenset[str] = field(default_factory=frozenset)
    writer: str = "auto"
    output: Path | None = None
    update_readme: Path | None = None
    #: Rows the backfill section sends; None: BIG_BACKFILL_ROWS with big_backlog, else
    #: BACKFILL_ROWS.
    backfill_rows: int | None = None

    @property
    def backfill_table_rows(self) -> int:
        if self.backfill_rows is not None:
            return self.backfill_rows
        return BIG_BACKFILL_ROWS if self.big_backlog else BACKFILL_ROWS

    def runs(self, section: str) -> bool:
        return section not in self.skip
