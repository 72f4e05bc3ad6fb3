"""Dispatch: route each event to every output and deliver it there, in order per row."""
