"""What every section of the benchmark shares: options, scratch database, load, outputs."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from pathlib import Path

    from skor_bridge.tools.bench.options import BenchOptions
    from skor_bridge.tools.bench.outputs import AmqpCounter, KafkaCounter, WebhookCounter
    from skor_bridge.tools.bench.receiver import FastReceiver
    from skor_bridge.tools.bench.scratch import ScratchDatabase
    from skor_bridge.tools.bench.writers import Writers


class Progress:
    """One line per step on stderr, so a user sees the benchmark working."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"bench {elapsed:6.1f}s  {message}", file=self.stream, flush=True)


@dataclass(frozen=True)
class Drain:
    events: int
    #: From the bridge being ready (outputs registered) until the last event arrived.
    seconds: float
    #: From starting the bridge's process until the last event arrived.
    from_start: float
    cpu_per_10k: float
    peak_mb: float
    received: int
    duplicates: int
    #: Share of one core the webhook receiver used meanwhile (when it was an output).
    receiver_load: float | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def lost(self) -> int:
        return max(0, self.events - self.received)


@dataclass
class Context:
    options: BenchOptions
    db: ScratchDatabase
    writers: Writers
    receiver: FastReceiver
    workdir: Path
    progress: Progress
    webhook: WebhookCounter
    amqp: AmqpCounter | None = None
    kafka: KafkaCounter | None = None
    #: Lines printed under the table: what was skipped and why, how things were counted.
    notes: list[str] = field(default_factory=list)
    #: Backlog drains already measured, by (outputs, events); the memory rows reuse them.
    drains: dict[tuple[tuple[str, ...], int], Drain] = field(default_factory=dict)
    bridges_started: int = 0

    def log_path(self, label: str) -> Path:
        self.bridges_started += 1
        return self.workdir / f"bridge-{self.bridges_started:02d}-{label}.log"
