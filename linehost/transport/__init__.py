"""Transports: the only layer that sees bytes and backend exceptions."""
