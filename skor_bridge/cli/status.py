"""`skor-bridge status`: each output's backlog, the instances, the log's size.

The command only calls `skor_bridge.ops.status` and prints: an aligned table for a
terminal, or one JSON document with `--json` for scripts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from skor_bridge.cli.common import (
    ERROR_WIDTH,
    DsnOpt,
    JsonOpt,
    database,
    duration,
    print_json,
    size,
    table,
)
from skor_bridge.cli.errors import expected_errors

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from skor_bridge.ops.outputs import OutputRow
    from skor_bridge.ops.status import Status


def register(app: typer.Typer) -> None:
    app.command()(status)


def status(dsn: DsnOpt = None, as_json: JsonOpt = False) -> None:
    """Show each output's backlog, lag and dead letters, the instances, and the log's size.

    Example: skor-bridge status --dsn postgresql://app@db/shop
    """
    from skor_bridge.ops.outputs import list_outputs
    from skor_bridge.ops.status import collect

    with expected_errors(), database(dsn, "status") as conn:
        snapshot = collect(conn)
        lifecycle = {row.name: row for row in list_outputs(conn)}
    if as_json:
        document = snapshot.to_json()
        for output in document.get("outputs", []):
            row = lifecycle.get(output.get("name"))
            output["served"] = row.served if row else None
        print_json(document)
    else:
        typer.echo(render_status(snapshot, lifecycle))


def render_status(snapshot: Status, lifecycle: Mapping[str, OutputRow] | None = None) -> str:
    lifecycle = lifecycle or {}

    def name(output: str) -> str:
        row = lifecycle.get(output)
        return f"{output} (not served)" if row is not None and not row.served else output

    outputs = (
        table(
            ["OUTPUT", "KIND", "POSITION", "PENDING", "LAG", "DELIVERED/1M", "DEAD", "LAST ERROR"],
            [
                [
                    name(o.name),
                    o.kind,
                    o.position,
                    f"{o.pending} ({o.parked} parked)" if o.parked else o.pending,
                    duration(o.lag_seconds),
                    o.delivered_last_minute,
                    f"{o.dead_letters} (+{o.retrying} retrying)" if o.retrying else o.dead_letters,
                    _last_error(o.last_error, o.last_error_at, snapshot.taken_at),
                ]
                for o in snapshot.outputs
            ],
            right={"POSITION", "PENDING", "LAG", "DELIVERED/1M", "DEAD"},
        )
        if snapshot.outputs
        else "no outputs yet: no bridge has run against this database"
    )
    instances = (
        table(
            ["INSTANCE", "ROLE", "HEARTBEAT", "STARTED"],
            [
                [
                    i.instance,
                    i.role,
                    f"{duration(i.heartbeat_age)} ago",
                    i.started.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
                ]
                for i in snapshot.instances
            ],
        )
        if snapshot.instances
        else "no instances: no bridge is running"
    )
    log = snapshot.log
    log_line = (
        f"event log: head {log.head}, {log.rows} retained event(s) in {log.partitions} "
        f"partition(s), {size(log.log_bytes)}; outbox: {log.outbox_rows} row(s), "
        f"{size(log.outbox_bytes)}, {log.outbox_dead_tuples} dead; oldest snapshot held by "
        f"another session: {duration(log.oldest_snapshot_seconds)}"
    )
    slot = snapshot.slot
    if slot is not None:
        log_line += (
            f"\nreplication slot {slot.slot}: holds {size(slot.retained_bytes)} of WAL "
            f"(wal_status {slot.wal_status}), {'read by a bridge' if slot.active else 'idle'}"
            if slot.exists
            else f"\nwarning: replication slot {slot.slot} does not exist: "
            "the bridge will not start; see README, WAL capture"
        )
    warnings = "".join(
        f"\nwarning: output {row.name} is not served by any running instance and holds back "
        f"the log's retention at position {row.position}; if it is gone for good: "
        f"skor-bridge outputs forget {row.name}"
        for row in lifecycle.values()
        if not row.served and row.holds_retention
    )
    warnings += "".join(
        f"\nwarning: output {o.name} holds the event log over --retention-size (since "
        f"{duration((snapshot.taken_at - o.holding_log_since).total_seconds())} ago): it has "
        "not delivered the events the size limit would drop"
        for o in snapshot.outputs
        if o.holding_log_since is not None
    )
    if snapshot.log.outbox_warning:
        warnings += f"\nwarning: {snapshot.log.outbox_warning}"
    text = f"{outputs}\n\n{instances}\n\n{log_line}"
    if snapshot.backfills:
        text += "\n\n" + table(
            ["BACKFILL", "OUTPUTS", "STATE", "ROWS", "UPDATED"],
            [
                [
                    b.table,
                    ", ".join(b.outputs) or "all",
                    b.state,
                    f"{b.rows_sent}/{b.rows_total}",
                    b.updated.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
                ]
                for b in snapshot.backfills
            ],
            right={"ROWS"},
        )
    problems = "".join(f"\ncapture needs a look: {p}" for p in snapshot.capture_problems)
    return text + warnings + problems


def _last_error(error: str | None, at: datetime | None, now: datetime) -> str:
    if not error:
        return "-"
    text = error if len(error) <= ERROR_WIDTH else error[: ERROR_WIDTH - 1] + "…"
    if at is None:
        return text
    return f"{text} ({duration((now - at).total_seconds())} ago)"
