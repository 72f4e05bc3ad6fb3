"""Outputs. Each sink module is imported only when chosen, so pika and confluent_kafka
load only for users who asked for RabbitMQ or Kafka."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from skor_bridge.sinks.base import Sink

#: Sink kind -> "module:Class". The CLI and config file name sinks by these keys.
SINKS = {
    "webhook": "skor_bridge.sinks.webhook:WebhookSink",
    "amqp": "skor_bridge.sinks.amqp:AmqpSink",
    "kafka": "skor_bridge.sinks.kafka:KafkaSink",
}


def load_sink(kind: str, name: str, config: Any) -> Sink:
    module_name, _, class_name = SINKS[kind].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    sink: Sink = cls(name, config)
    return sink
