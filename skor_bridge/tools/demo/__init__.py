"""`skor-bridge demo`: the whole pipeline in one process, one printed line per delivery.

    demo writer --INSERT/UPDATE/DELETE--> PostgreSQL --trigger--> skor.outbox
      (embedded in a temporary directory, or --dsn)                    |
                                                                       v
    printed lines <-- built-in webhook Receiver <-------------- Bridge (a thread)
                  <-- taps reading back RabbitMQ / Kafka <------------'  (--amqp, --kafka)

Latency runs from commit to receipt. For the demo's own changes the commit time is the
demo's clock when COMMIT returned. Each change returns its row with `row_to_json`, rendered
exactly as the trigger renders it, so an arrival is matched to its commit by table, op and
row, with nothing taken from the bridge's internals. Changes made by someone else (psql)
fall back to the event's capture time in skor.log, the trigger's clock_timestamp() on the
database server, a little before its commit; those latencies are marked "~".

What the demo touches. Without --dsn, only a server it creates in a temporary directory and
removes on exit. With --dsn: table public.skor_demo_orders, its capture function, rows of
its own outputs (named skor-demo-*) and of its table in skor's log, and schema skor if it
was not there before; all of it is removed on exit (the sequencer's counter and the leader
row move on, as after any bridge's run). It refuses a database whose capture triggers
`triggers.install` would replace (install replaces every installed table), and one where
another bridge is active (the demo's bridge would only stand by). RabbitMQ and Kafka
get an exchange and a topic named for the demo, deleted on exit.

The modules, in the order the demo uses them:

    options.py   DemoOptions and the names of everything the demo creates
    database.py  EmbeddedPostgres, DemoTable (create, check, clean up)
    bridge.py    the bridge's Config, BridgeThread
    taps.py      Arrival; AmqpTap, KafkaTap read the brokers back
    workload.py  Workload makes the changes; CommitClock times them
    screen.py    Screen prints one line per arrival; summarize, percentile
    signals.py   Ctrl-C and SIGTERM while starting, running and cleaning up
    runner.py    Demo: starts everything, shows arrivals, cleans up
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from skor_bridge.tools.demo.options import AMQP_EXCHANGE, DemoOptions

if TYPE_CHECKING:
    from typing import TextIO

__all__ = ["AMQP_EXCHANGE", "DemoOptions", "run"]


def run(options: DemoOptions, out: TextIO) -> int:
    """Run the demo; 0 when it went as asked, 1 when --exit found events missing."""
    from skor_bridge import logs
    from skor_bridge.tools.demo.runner import Demo

    logs.configure("INFO" if options.verbose else "WARNING")
    return Demo(options, out).run()
