"""Small helpers shared by end-to-end tests."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict

import psycopg2


def bodies(receiver):
    """Parsed JSON bodies of the requests a receiver answered with 2xx, in arrival order."""
    return [json.loads(r.body) for r in receiver.delivered()]


def wait_until(predicate, timeout=30.0, interval=0.05, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"{message} not reached within {timeout}s")


def ids_by_op(events):
    result = defaultdict(list)
    for event in events:
        result[event["op"]].append(event["data"]["id"])
    return result


def duplicates(receiver):
    counts = Counter(r.headers["webhook-id"] for r in receiver.delivered())
    return sum(n - 1 for n in counts.values())


def execute(dsn, *statements, params=None):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement, params)
    conn.close()


def short_retry_config(tmp_path, max_backoff=0.5, extra=""):
    """A TOML config that makes retries quick, so failure tests stay short."""
    path = tmp_path / "skor.toml"
    path.write_text(f"[retry]\ninitial_backoff = 0.05\nmax_backoff = {max_backoff}\n{extra}")
    return str(path)


def scalar(dsn, sql, params=None):
    """The first column of the first row, or None."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            row = cur.fetchone()
        return row[0] if row else None
    finally:
        conn.close()


def delivered_total(dsn, output):
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT coalesce(sum(delivered_total), 0) FROM skor.outputs WHERE name = %s",
                (output,),
            )
            return cur.fetchone()[0]
    finally:
        conn.close()


def wait_delivered(dsn, output, count, timeout=60.0):
    """Wait until the bridge recorded `count` deliveries to `output` (progress is saved after
    each batch, so this also means the output's messages exist)."""
    wait_until(
        lambda: delivered_total(dsn, output) >= count,
        timeout=timeout,
        message=f"{count} deliveries to {output}",
    )
