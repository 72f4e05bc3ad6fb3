"""Give every configured output its progress row before any output starts delivering.

Done once at start-up, in one transaction, so that the choice of where new outputs start
is made for all of them together: on a database with no output yet (a first run), every
output starts at the oldest retained event, so changes captured before the first run are
delivered; an output added to a database that already has outputs starts at the newest
event (`latest`), with one log line saying what it skipped and how to replay it. An
explicit `start_from` (per output, or `--start-from`) overrides that.

Upgrades: an output that finds no row under its name adopts, once, the row the first
release gave it by position (`OutputConfig.legacy_name`), with its dead letters and parked
events: the row is renamed, so it cannot be adopted twice.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from skor_bridge.options import moment

if TYPE_CHECKING:
    from psycopg2.extensions import cursor

    from skor_bridge.config import Config, OutputConfig

log = logging.getLogger(__name__)

#: Tables whose rows belong to one output, by the column naming it.
OWNED = (
    ("skor.dead_letters", "output"),
    ("skor.redeliveries", "output"),
    ("skor.delivery_stats", "output"),
    ("skor.output_instances", "output"),
)


def register(cur: cursor, config: Config, instance: str) -> None:
    """Create the missing progress rows of `config`'s outputs, and note that `instance`
    serves them (caller commits)."""
    cur.execute("SELECT name, kind FROM skor.outputs FOR UPDATE")
    known = dict(cur.fetchall())
    history = bool(known)
    for output in config.outputs:
        if output.name in known:
            continue
        legacy = output.legacy_name
        if legacy and known.get(legacy) == output.kind:
            adopt(cur, legacy, output.name)
            known[output.name] = known.pop(legacy)
            log.info(
                "output %s: adopted the progress of %r, its name in the previous release",
                output.name,
                legacy,
            )
            continue
        spec = output.start_from or config.start_from
        position = start_position(cur, spec, history)
        cur.execute(
            "INSERT INTO skor.outputs (name, kind, position) VALUES (%s, %s, %s)"
            " ON CONFLICT (name) DO NOTHING",
            (output.name, output.kind, position),
        )
        known[output.name] = output.kind
        _announce(cur, output, spec, position, history)
    _seen(cur, config, instance)


def _seen(cur: cursor, config: Config, instance: str) -> None:
    for output in config.outputs:
        cur.execute(
            "UPDATE skor.outputs SET destination = %s WHERE name = %s",
            (output.destination, output.name),
        )
        cur.execute(
            "INSERT INTO skor.output_instances (output, instance) VALUES (%s, %s)"
            " ON CONFLICT (output, instance) DO UPDATE SET seen_at = now()",
            (output.name, instance),
        )
    # Instances gone for a day, except each output's last one ("last seen by").
    cur.execute(
        "DELETE FROM skor.output_instances o WHERE seen_at < now() - interval '1 day'"
        " AND NOT EXISTS (SELECT FROM skor.instances i WHERE i.instance = o.instance)"
        " AND EXISTS (SELECT FROM skor.output_instances n"
        "             WHERE n.output = o.output AND n.seen_at > o.seen_at)"
    )


def adopt(cur: cursor, old: str, new: str) -> None:
    cur.execute("UPDATE skor.outputs SET name = %s WHERE name = %s", (new, old))
    for table, column in OWNED:
        cur.execute(f"UPDATE {table} SET {column} = %s WHERE {column} = %s", (new, old))


def start_position(cur: cursor, spec: str, history: bool) -> int:
    """The position a new output starts after (it delivers every event above it)."""
    if spec == "auto":
        spec = "latest" if history else "earliest"
    if spec == "latest":
        cur.execute("SELECT next_pos - 1 FROM skor.sequencer")
    elif spec == "earliest":
        cur.execute(
            "SELECT coalesce((SELECT min(pos) - 1 FROM skor.log),"
            " (SELECT next_pos - 1 FROM skor.sequencer))"
        )
    elif spec.isdigit():
        return max(0, int(spec) - 1)
    else:
        cur.execute(
            "SELECT coalesce((SELECT min(pos) - 1 FROM skor.log WHERE captured_at >= %s),"
            " (SELECT next_pos - 1 FROM skor.sequencer))",
            (moment(spec),),
        )
    row = cur.fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _announce(cur: cursor, output: OutputConfig, spec: str, position: int, history: bool) -> None:
    cur.execute("SELECT count(*), min(captured_at) FROM skor.log WHERE pos <= %s", (position,))
    row = cur.fetchone()
    skipped, oldest = (int(row[0]), row[1]) if row else (0, None)
    how = (
        spec
        if spec != "auto"
        else (
            "latest: the database already has outputs"
            if history
            else "earliest: the first outputs of this database"
        )
    )
    if not skipped:
        log.info("output %s is new; starting after position %d (%s)", output.name, position, how)
        return
    since = oldest.isoformat(timespec="seconds") if oldest else "7d"
    log.info(
        "output %s is new; starting after position %d (%s); %d older event(s) still in "
        "the log are not sent: to deliver them, skor-bridge events replay --output %s "
        "--since %s",
        output.name,
        position,
        how,
        skipped,
        output.name,
        since,
    )
