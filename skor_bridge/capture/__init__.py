"""Capture: turn committed row changes into ChangeEvents (triggers, outbox, notify)."""
