"""Every error skor-bridge raises on purpose.

    SkorError
    ├── ConfigError          bad option, bad triggers.json, bad DSN syntax (exit 2)
    ├── DatabaseError        PostgreSQL refused or lost us
    │   └── StartupError     could not connect at start-up (exit 1, one line)
    ├── TriggerError         a table or column in the trigger config does not exist
    └── SinkError            a sink could not be opened at all (bad URL, bad option)

Messages are one line and never contain a password: DSNs and URLs pass through
`config.redact()` before they reach a message.
"""

from __future__ import annotations


class SkorError(Exception):
    """Base of every error skor-bridge raises on purpose."""


class ConfigError(SkorError):
    """Invalid configuration; the message names the offending field."""


class DatabaseError(SkorError):
    """PostgreSQL could not be reached or refused an operation."""


class StartupError(DatabaseError):
    """The database could not be reached at start-up."""


class TriggerError(SkorError):
    """The trigger configuration does not match the database."""


class SinkError(SkorError):
    """A sink is misconfigured in a way that retrying cannot fix."""
