"""What the demo is asked to do, and the names of everything it creates."""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA = "public"
#: The demo's table: `orders` in its own server; in someone else's database (--dsn), a
#: name no application would use.
OWN_TABLE = "orders"
SHARED_TABLE = "skor_demo_orders"

#: Outputs, exchange and topic have names of their own, so that in a shared database or
#: broker the demo never moves a real output's progress or feeds a real consumer.
OUTPUT_PREFIX = "skor-demo-"
AMQP_EXCHANGE = "skor-demo"
KAFKA_TOPIC = "skor-demo.{schema}.{table}"


@dataclass(frozen=True)
class DemoOptions:
    dsn: str | None = None
    amqp: str | None = None
    kafka: str | None = None
    events: int = 6
    exit: bool = False
    #: Seconds --exit waits, after the last change, for every change to arrive everywhere.
    timeout: float = 30.0
    verbose: bool = False

    @property
    def table(self) -> str:
        """The demo's table, without its schema."""
        return OWN_TABLE if self.dsn is None else SHARED_TABLE
