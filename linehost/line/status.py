"""Who hears about jig status changes (publisher, terminal table, metrics)."""

from __future__ import annotations

from typing import Protocol

from linehost.records import JigStatus


class StatusListener(Protocol):
    """Told about every jig status change (publisher, terminal table, metrics)."""

    def jig_changed(self, status: JigStatus) -> None: ...
