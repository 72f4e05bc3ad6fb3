"""skor-bridge: durable PostgreSQL change capture to webhooks, RabbitMQ and Kafka."""

__version__ = "0.1.0"
