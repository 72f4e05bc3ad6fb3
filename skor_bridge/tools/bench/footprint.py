"""What the bridge costs the user's PostgreSQL: CPU of its own sessions per event, at a
steady rate and flat out, the idle CPU of the bridge and of its sessions, and the log's
bytes per event.

The bridge's sessions are the backends whose application_name starts with
"skor-bridge" in the scratch database; their CPU time is read from /proc (so the server
must run on this machine, as in `make bench`; otherwise the section says so and is
skipped). Backends that come and go during a run are counted while they are seen.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import psycopg2

from skor_bridge.tools.bench.bridge_proc import cpu_seconds
from skor_bridge.tools.bench.latency import P99_TARGET_MS, SETTLE, percentile, steady_latencies
from skor_bridge.tools.bench.report import Row, count, rate, verdict
from skor_bridge.tools.bench.scratch import TABLE
from skor_bridge.tools.bench.throughput import _wait_for, prepare, start_bridge
from skor_bridge.tools.bench.writers import run_paced

if TYPE_CHECKING:
    from skor_bridge.tools.bench.bridge_proc import BridgeProcess
    from skor_bridge.tools.bench.context import Context

#: PostgreSQL CPU of the bridge's sessions per event at the steady rate, microseconds.
DB_CPU_TARGET_US = 150.0

#: Idle CPU target for the bridge and for its sessions, share of one core.
IDLE_TARGET = 0.01

#: Seconds an idle bridge runs before measuring (its poll backs off meanwhile), and the
#: length of the idle measurement.
IDLE_SETTLE = 3.0
IDLE_SECONDS = 10.0


class Backends:
    """CPU time of the bridge's PostgreSQL sessions, summed over every one seen."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._role: dict[int, str] = {}

    def sessions(self) -> list[tuple[int, str]]:
        """(pid, role): the role is the session's purpose in its application_name, or
        "walsender", so that a run can say which of the bridge's sessions cost what."""
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT pid, backend_type, application_name FROM pg_stat_activity"
                    " WHERE datname = current_database()"
                    " AND application_name LIKE 'skor-bridge%%'"
                )
                return [(int(pid), _role(kind, name)) for pid, kind, name in cur.fetchall()]
        finally:
            conn.close()

    def sample(self) -> None:
        for pid, role in self.sessions():
            try:
                used = cpu_seconds(pid)
            except OSError:
                continue  # gone meanwhile, or another machine's process
            self._first.setdefault(pid, used)
            self._last[pid] = used
            self._role[pid] = role

    def start(self) -> Backends:
        self._first.clear()
        self._last.clear()
        self._role.clear()
        self.sample()
        return self

    def used(self) -> float:
        self.sample()
        return sum(self._last[pid] - first for pid, first in self._first.items())

    def by_role(self) -> dict[str, float]:
        """CPU seconds since start() per role, as last sampled."""
        roles: dict[str, float] = {}
        for pid, first in self._first.items():
            role = self._role[pid]
            roles[role] = roles.get(role, 0.0) + self._last[pid] - first
        return roles

    def readable(self, timeout: float = 30.0) -> bool:
        """Whether the bridge's sessions can be read, once it has opened them (its outputs
        are registered before it becomes active and connects its workers)."""
        deadline = time.monotonic() + timeout
        while True:
            self.sample()
            if len(self._first) >= 2 or time.monotonic() > deadline:
                return bool(self._first)
            time.sleep(0.1)


def _role(backend_type: str, application_name: str) -> str:
    if backend_type == "walsender":
        return "walsender"
    # "skor-bridge [tag] purpose" or "skor-bridge purpose"; "output NAME" and "leader
    # INSTANCE" are summed per kind
    purpose = application_name.rpartition("]")[2] or application_name
    purpose = purpose.removeprefix("skor-bridge").strip() or "bridge"
    kind = purpose.split(" ", 1)[0]
    return {"output": "outputs", "leader": "leader"}.get(kind, purpose)


def _breakdown(roles: dict[str, float], events: int) -> str:
    """Microseconds per event by role, the costliest first; roles under 1 us left out."""
    parts = sorted(roles.items(), key=lambda item: -item[1])
    shown = [(role, used / max(events, 1) * 1e6) for role, used in parts]
    return ", ".join(f"{role} {us:.0f} us" for role, us in shown if us >= 1) or "none"


def _log_bytes_per_event(ctx: Context) -> float:
    size = ctx.db.scalar(
        "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0)"
        " FROM pg_inherits WHERE inhparent = 'skor.log'::regclass"
    )
    rows = ctx.db.scalar("SELECT count(*) FROM skor.log")
    return float(str(size or 0)) / max(int(str(rows or 0)), 1)


def _steady(ctx: Context, bridge: BridgeProcess, backends: Backends, mode: str) -> list[Row]:
    options = ctx.options
    ctx.progress(f"database cost: {options.rate:,} events/s for {options.seconds:g} s")
    backends.start()
    bridge_cpu = bridge.cpu_seconds()
    commits = run_paced(ctx.db.dsn, TABLE, options.rate, options.seconds)
    deadline = time.monotonic() + SETTLE
    while ctx.receiver.summary().distinct < len(commits) and time.monotonic() < deadline:
        backends.sample()
        time.sleep(0.05)
    db_cpu = backends.used()
    bridge_used = bridge.cpu_seconds() - bridge_cpu
    arrivals = ctx.receiver.arrivals()
    latencies = steady_latencies(commits, arrivals)
    lost = sum(1 for i in commits if i not in arrivals)
    p99 = percentile(latencies, 0.99)
    per_event = db_cpu / max(len(commits), 1) * 1e6
    ok = per_event <= DB_CPU_TARGET_US and p99 <= P99_TARGET_MS and lost == 0
    breakdown = _breakdown(backends.by_role(), len(commits))
    ctx.progress(f"database cost: {per_event:.0f} us per event, p99 {p99:.1f} ms ({breakdown})")
    return [
        Row(
            f"PostgreSQL CPU of the bridge's sessions per event, {options.rate:,} events/s "
            f"({mode})",
            f"{per_event:.0f} us ({db_cpu / options.seconds * 100:.1f} % of a core; by session: "
            f"{breakdown}; bridge process {bridge_used / max(len(commits), 1) * 1e6:.0f} us "
            f"per event); p99 "
            f"{p99:.1f} ms; {count(len(commits))} events, "
            f"{'none lost' if not lost else f'{count(lost)} LOST'}",
            f"<= {DB_CPU_TARGET_US:g} us, p99 <= {P99_TARGET_MS:g} ms",
            verdict(ok),
        ),
        Row(
            f"log bytes per event in the user's database ({mode})",
            f"{_log_bytes_per_event(ctx):.0f} bytes (skor.log with its index)",
        ),
    ]


def _flat_out(ctx: Context, bridge: BridgeProcess, backends: Backends, mode: str) -> Row:
    options = ctx.options
    ctx.progress(f"database cost: {options.flat_out_writers} writers flat out")
    before = ctx.webhook.count()
    backends.start()
    run = ctx.writers.run(options.flat_out_writers, options.seconds)
    _wait_for([ctx.webhook], ctx.db.rows(), bridge)
    db_cpu = backends.used()
    events = ctx.webhook.count() - before
    per_event = db_cpu / max(events, 1) * 1e6
    return Row(
        f"PostgreSQL CPU of the bridge's sessions per event, writers flat out ({mode})",
        f"{per_event:.0f} us ({count(events)} events; writers at {rate(run.tps, 'tps')})",
    )


def _idle(ctx: Context, bridge: BridgeProcess, backends: Backends, mode: str) -> Row:
    ctx.progress(f"database cost: idle for {IDLE_SETTLE + IDLE_SECONDS:g} s")
    time.sleep(IDLE_SETTLE)
    backends.start()
    bridge_cpu = bridge.cpu_seconds()
    time.sleep(IDLE_SECONDS)
    idle_db = backends.used() / IDLE_SECONDS
    idle_bridge = (bridge.cpu_seconds() - bridge_cpu) / IDLE_SECONDS
    return Row(
        f"idle CPU, nothing written ({mode}): bridge process / its PostgreSQL sessions",
        f"{idle_bridge * 100:.2f} % / {idle_db * 100:.2f} % of one core",
        f"<= {IDLE_TARGET:.0%} each",
        verdict(idle_bridge <= IDLE_TARGET and idle_db <= IDLE_TARGET),
    )


def measure(ctx: Context, mode: str = "trigger mode") -> list[Row]:
    """The rows, labelled with `mode` (the capture ctx.db's bridge phases use)."""
    prepare(ctx, [ctx.webhook])
    bridge = start_bridge(ctx, [ctx.webhook], "webhook-database-cost")
    try:
        bridge.wait_ready(1)
        backends = Backends(ctx.db.dsn)
        if not backends.readable():
            ctx.notes.append(
                "Database cost skipped: the bridge's PostgreSQL sessions are "
                "not processes of this machine (their CPU is read from /proc)."
            )
            return []
        rows = [_idle(ctx, bridge, backends, mode)]
        rows += _steady(ctx, bridge, backends, mode)
        rows.append(_flat_out(ctx, bridge, backends, mode))
        return rows
    finally:
        bridge.stop()
