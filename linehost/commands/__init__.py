"""CLI command groups: each module exposes `register(subparsers)` and its handlers."""
