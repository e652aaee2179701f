"""Jig protocol v1, sans-IO: bytes and lines in, lines and events out."""
