"""Session services: the machine's PostgreSQL and RabbitMQ, a Kafka-protocol broker
started here, and real HTTP receivers. Each test gets its own database."""

from __future__ import annotations

import os
import uuid

import psycopg2
import pytest

from skor_bridge.tools.receiver import Receiver

pytest_plugins = [
    "tests.fixtures_amqp",
    "tests.fixtures_kafka",
    "tests.fixtures_bridge",
    "tests.fixtures_wal",
]

#: The server every test database is created on; override for another PostgreSQL.
ADMIN_DSN = os.environ.get(
    "SKOR_TEST_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)


def _admin():
    conn = psycopg2.connect(ADMIN_DSN)
    conn.autocommit = True
    return conn


@pytest.fixture
def dsn():
    """A fresh, empty database for one test; dropped afterwards."""
    name = f"skor_test_{uuid.uuid4().hex[:12]}"
    conn = _admin()
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    base = psycopg2.extensions.parse_dsn(ADMIN_DSN)
    base["dbname"] = name
    yield " ".join(f"{k}={v}" for k, v in base.items())
    conn = _admin()
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


@pytest.fixture
def db(dsn):
    """An autocommit connection to the test database."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture
def receiver():
    """A webhook receiver answering 200; tests may replace `receiver.respond`."""
    with Receiver() as running:
        yield running
