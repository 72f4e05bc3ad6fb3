"""`skor-bridge run`: build the one Config from options, the environment and a file, and run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from skor_bridge.cli.errors import expected_errors
from skor_bridge.settings import Options, build_config

Opt = typer.Option
WEBHOOK_PANEL = "Webhook output"
AMQP_PANEL = "RabbitMQ output"
KAFKA_PANEL = "Kafka output"
TUNING_PANEL = "Tuning and operations"


def run(
    dsn_arg: Annotated[str | None, typer.Argument(
        metavar="[DSN]", help="Skor's positional form: DSN then webhook URL.")] = None,
    url_arg: Annotated[str | None, typer.Argument(metavar="[URL]", show_default=False)] = None,
    dsn: Annotated[str | None, Opt(
        envvar="SKOR_DSN", help="libpq DSN or postgresql:// URI. Without it, Skor's DBNAME, "
        "PGUSER, PGPASS, PGHOST and PGPORT variables are used.")] = None,
    config: Annotated[Path | None, Opt(
        envvar="SKOR_CONFIG", help="TOML file describing outputs and settings.")] = None,
    mode: Annotated[str | None, Opt(
        envvar="SKOR_MODE", help="durable (outbox, nothing lost) or notify (Skor's pg_notify, "
        "lossy). [default: durable]")] = None,
    webhook: Annotated[list[str] | None, Opt(
        envvar="SKOR_WEBHOOK", help="Webhook URL; repeat for several. Skor's WEBHOOKURL also "
        "works.", rich_help_panel=WEBHOOK_PANEL)] = None,
    webhook_secret: Annotated[str | None, Opt(
        envvar="SKOR_WEBHOOK_SECRET", help="whsec_<base64 key>: sign as Standard Webhooks do.",
        rich_help_panel=WEBHOOK_PANEL)] = None,
    header: Annotated[list[str] | None, Opt(
        help="Extra request header NAME:VALUE; repeatable.", rich_help_panel=WEBHOOK_PANEL)] = None,
    webhook_timeout: Annotated[float | None, Opt(
        envvar="SKOR_WEBHOOK_TIMEOUT", help="Seconds per request. [default: 10]",
        rich_help_panel=WEBHOOK_PANEL)] = None,
    webhook_concurrency: Annotated[int | None, Opt(
        envvar="SKOR_WEBHOOK_CONCURRENCY", help="Requests in flight (different rows). "
        "[default: 16]", rich_help_panel=WEBHOOK_PANEL)] = None,
    webhook_ca_file: Annotated[str | None, Opt(
        envvar="SKOR_WEBHOOK_CA_FILE", help="PEM file of the CA that signs an https "
        "receiver's certificate. [default: the public CA bundle]",
        rich_help_panel=WEBHOOK_PANEL)] = None,
    amqp: Annotated[str | None, Opt(
        envvar="SKOR_AMQP", help="amqp:// or amqps:// URL of RabbitMQ.",
        rich_help_panel=AMQP_PANEL)] = None,
    amqp_exchange: Annotated[str | None, Opt(
        envvar="SKOR_AMQP_EXCHANGE", help="Durable topic exchange. [default: skor]",
        rich_help_panel=AMQP_PANEL)] = None,
    amqp_routing_key: Annotated[str | None, Opt(
        envvar="SKOR_AMQP_ROUTING_KEY", help="Template with {schema} {table} {op}. "
        "[default: {schema}.{table}.{op}]", rich_help_panel=AMQP_PANEL)] = None,
    amqp_mandatory: Annotated[bool | None, Opt(
        "--amqp-mandatory", envvar="SKOR_AMQP_MANDATORY", help="Retry messages no queue "
        "receives, instead of counting them.", rich_help_panel=AMQP_PANEL)] = None,
    kafka: Annotated[str | None, Opt(
        envvar="SKOR_KAFKA", help="Kafka bootstrap servers host:port[,host:port].",
        rich_help_panel=KAFKA_PANEL)] = None,
    kafka_topic: Annotated[str | None, Opt(
        envvar="SKOR_KAFKA_TOPIC", help="Template with {schema} {table} {op}. "
        "[default: skor.{schema}.{table}]", rich_help_panel=KAFKA_PANEL)] = None,
    kafka_option: Annotated[list[str] | None, Opt(
        help="librdkafka setting key=value, passed through; repeatable.",
        rich_help_panel=KAFKA_PANEL)] = None,
    kafka_create_topics: Annotated[bool | None, Opt(
        "--kafka-create-topics/--no-kafka-create-topics", envvar="SKOR_KAFKA_CREATE_TOPICS",
        help="Create missing topics. [default: create]", rich_help_panel=KAFKA_PANEL)] = None,
    kafka_partitions: Annotated[int | None, Opt(
        envvar="SKOR_KAFKA_PARTITIONS", help="Partitions of created topics. [default: broker's]",
        rich_help_panel=KAFKA_PANEL)] = None,
    kafka_replication_factor: Annotated[int | None, Opt(
        envvar="SKOR_KAFKA_REPLICATION_FACTOR", help="Replication of created topics. "
        "[default: broker's]", rich_help_panel=KAFKA_PANEL)] = None,
    max_attempts: Annotated[int | None, Opt(
        envvar="SKOR_MAX_ATTEMPTS", help="Dead-letter an event after N failed attempts. "
        "[default: retry forever]", rich_help_panel=TUNING_PANEL)] = None,
    poll_interval: Annotated[float | None, Opt(
        envvar="SKOR_POLL_INTERVAL", help="Seconds between looks at an idle outbox. "
        "[default: 0.002]", rich_help_panel=TUNING_PANEL)] = None,
    batch_size: Annotated[int | None, Opt(
        envvar="SKOR_BATCH_SIZE", help="Events moved or read per round trip. [default: 2000]",
        rich_help_panel=TUNING_PANEL)] = None,
    max_in_flight: Annotated[int | None, Opt(
        envvar="SKOR_MAX_IN_FLIGHT", help="Events held in memory per output. [default: 20000]",
        rich_help_panel=TUNING_PANEL)] = None,
    failover_timeout: Annotated[float | None, Opt(
        envvar="SKOR_FAILOVER_TIMEOUT", help="Seconds of missed heartbeats before a standby "
        "takes over. [default: 10]", rich_help_panel=TUNING_PANEL)] = None,
    retention: Annotated[str | None, Opt(
        envvar="SKOR_RETENTION", help="Keep delivered events this long for replay (7d, 12h). "
        "[default: 7d]", rich_help_panel=TUNING_PANEL)] = None,
    retention_interval: Annotated[float | None, Opt(
        envvar="SKOR_RETENTION_INTERVAL", hidden=True,
        help="Seconds between retention passes. [default: 60]")] = None,
    start_from: Annotated[str | None, Opt(
        envvar="SKOR_START_FROM", help="Where a new output starts: earliest or latest. "
        "[default: earliest]", rich_help_panel=TUNING_PANEL)] = None,
    metrics_port: Annotated[int | None, Opt(
        envvar="SKOR_METRICS_PORT", help="Serve /metrics, /healthz and /readyz on this port.",
        rich_help_panel=TUNING_PANEL)] = None,
    log_level: Annotated[str | None, Opt(
        envvar="SKOR_LOG_LEVEL", help="debug, info, warning or error. [default: info]",
        rich_help_panel=TUNING_PANEL)] = None,
    log_format: Annotated[str | None, Opt(
        envvar="SKOR_LOG_FORMAT", help="text or json. [default: text]",
        rich_help_panel=TUNING_PANEL)] = None,
) -> None:
    """Deliver every captured change to the configured outputs until stopped."""
    from skor_bridge import logs
    from skor_bridge.bridge import Bridge

    options = Options(
        dsn=dsn or dsn_arg, webhooks=list(webhook or []) + ([url_arg] if url_arg else []),
        webhook_secret=webhook_secret, headers=list(header or []),
        webhook_timeout=webhook_timeout, webhook_concurrency=webhook_concurrency,
        webhook_ca_file=webhook_ca_file,
        max_attempts=max_attempts, mode=mode, amqp=amqp, amqp_exchange=amqp_exchange,
        amqp_routing_key=amqp_routing_key, amqp_mandatory=amqp_mandatory, kafka=kafka,
        kafka_topic=kafka_topic, kafka_options=list(kafka_option or []),
        kafka_create_topics=kafka_create_topics, kafka_partitions=kafka_partitions,
        kafka_replication_factor=kafka_replication_factor, poll_interval=poll_interval,
        batch_size=batch_size, max_in_flight=max_in_flight, failover_timeout=failover_timeout,
        retention=retention, start_from=start_from, metrics_port=metrics_port,
        log_level=log_level, log_format=log_format, retention_interval=retention_interval,
    )
    with expected_errors():
        cfg = build_config(options, config, os.environ)
        logs.configure(cfg.log_level, cfg.log_format)
        code = Bridge(cfg).run()
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command()(run)
