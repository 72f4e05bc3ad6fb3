"""Which output is which: a name that depends only on the output itself.

An output's name keys its progress, dead letters and parked rows in the database, so it must
not change when other outputs are added, removed or reordered. It is the user's (`name` in
the file, NAME=URL on the command line) or derived from the destination: the kind, the
host, and a digest of everything that makes the destination distinct (URL without its
password; AMQP URL + exchange; bootstrap servers + topic template). The digest is stable
across releases and machines and, being a hash, shows no token of the URL.

The first release named outputs by position (`webhook`, `webhook-2`, `amqp`, ...; in a
file, `<type>` for the first and `<type>-<N>` for the N-th); `legacy_names` reproduces that
so an upgraded database's progress is adopted once instead of starting over.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from typing import TYPE_CHECKING

from skor_bridge.config import AmqpConfig, KafkaConfig, WebhookConfig

if TYPE_CHECKING:
    from skor_bridge.config import SinkSettings

#: Hex digits of the digest: 32 bits tell apart the handful of outputs one database has.
DIGEST_LENGTH = 8


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    if parts.username:
        host = f"{parts.username}@{host}"
    return urllib.parse.urlunsplit((parts.scheme.lower(), host, parts.path or "/", parts.query, ""))


def destination_key(kind: str, settings: SinkSettings) -> str:
    """What makes a destination distinct; two outputs with the same key are the same."""
    if isinstance(settings, WebhookConfig):
        return f"webhook {_without_password(settings.url)}"
    if isinstance(settings, AmqpConfig):
        return f"amqp {_without_password(settings.url)} {settings.exchange}"
    if isinstance(settings, KafkaConfig):
        servers = ",".join(sorted(s.strip().lower() for s in settings.bootstrap.split(",")))
        return f"kafka {servers} {settings.topic}"
    raise ValueError(f"unknown output kind {kind!r}")


def _host(kind: str, settings: SinkSettings) -> str:
    if isinstance(settings, KafkaConfig):
        first = settings.bootstrap.split(",")[0].strip()
        host = first.rsplit(":", 1)[0] if ":" in first else first
    else:
        host = urllib.parse.urlsplit(settings.url).hostname or ""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", host).strip("-.")[:32] or kind


def derived_name(kind: str, settings: SinkSettings) -> str:
    """e.g. webhook-hooks.example.com-3f9a1c20, kafka-broker1-0b12aa7e."""
    digest = hashlib.sha256(destination_key(kind, settings).encode()).hexdigest()
    return f"{kind}-{_host(kind, settings)}-{digest[:DIGEST_LENGTH]}"


def legacy_name(kind: str, index: int) -> str:
    """The first release's name by position: the file's output at `index` (0-based, any
    kind), or the `index`-th command-line output of `kind`."""
    return kind if index == 0 else f"{kind}-{index + 1}"
