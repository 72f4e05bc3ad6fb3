"""The deploy files and docs: no PostgreSQL port on the host, a demo queue bound with the
routing keys the bridge really sends (lower-case operations), metrics on every interface
only in images."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from skor_bridge.config import AmqpConfig
from skor_bridge.options import BY_NAME

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_does_not_publish_postgresql_on_the_host():
    postgres = compose()["services"]["postgres"]
    assert not any("5432" in str(port) for port in postgres.get("ports", []))


def test_compose_binds_a_demo_queue_to_the_routing_keys_the_bridge_sends():
    rabbitmq = compose()["services"]["rabbitmq"]
    mounts = {v.split(":")[1]: DEPLOY / v.split(":")[0] for v in rabbitmq["volumes"]}
    conf = mounts["/etc/rabbitmq/conf.d/20-skor.conf"].read_text()
    path = re.search(r"definitions\.local\.path\s*=\s*(\S+)", conf)[1]
    definitions = json.loads(mounts[path].read_text())
    exchange = AmqpConfig(url="amqp://h/").exchange
    assert [e["name"] for e in definitions["exchanges"]] == [exchange]
    assert definitions["exchanges"][0]["type"] == "topic"
    assert definitions["exchanges"][0]["durable"] is True  # as the bridge declares it
    (binding,) = definitions["bindings"]
    assert binding["source"] == exchange and binding["destination_type"] == "queue"
    # The bridge's default routing key, for an insert into public.orders:
    key = AmqpConfig(url="amqp://h/").routing_key.format(
        schema="public", table="orders", op="insert"
    )
    pattern = re.escape(binding["routing_key"]).replace(r"\*", r"[^.]+").replace(r"\#", ".*")
    assert re.fullmatch(pattern, key)


def test_docs_show_routing_keys_with_lower_case_operations():
    for path in (ROOT / "README.md", DEPLOY / "README.md"):
        upper = re.findall(r"\b\w+\.\w+\.(?:INSERT|UPDATE|DELETE)\b", path.read_text())
        assert upper == [], f"{path.name}: {upper}"


def test_metrics_listen_on_loopback_unless_an_image_opens_them():
    assert BY_NAME["metrics_host"].default == "127.0.0.1"
    assert "SKOR_METRICS_HOST=0.0.0.0" in (ROOT / "Dockerfile").read_text()
    deployment = (DEPLOY / "k8s" / "deployment.yaml").read_text()
    assert re.search(r"name: SKOR_METRICS_HOST\s+value: \"0\.0\.0\.0\"", deployment)
