"""JSON payloads of the topic tree; the schemas live in docs/asyncapi.yaml."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from linehost.records import iso_utc

if TYPE_CHECKING:
    from linehost.records import CrlState

#: The Will, and what a clean shutdown publishes itself.
HOST_OFFLINE: Final = b'{"online":false}'


def encode(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON."""
    return _json(payload).encode()


def result_payload(record: Mapping[str, Any]) -> str:
    """The `results` message of one ended attempt: its contract attempt record as compact JSON.

    The store writes it to the outbox in the attempt's own transaction (`Store(result_payload=)`);
    the relay and the Sparkplug node publish it from there as it is.
    """
    return _json(record)


def _json(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def host_online(version: str, started_at: datetime, line: str, jigs: int) -> bytes:
    """The retained `host/status` payload while the line host runs."""
    return encode(
        {"online": True, "version": version, "started_at": iso_utc(started_at), "line": line,
         "jigs": jigs}
    )  # fmt: skip


def host_crl(state: CrlState, line: str, now: datetime) -> bytes:
    """The retained `host/crl` payload: the CRL the host keeps, and its seconds left at `now`."""
    return encode(
        {
            "pai_skid": state.pai_skid,
            "crl_number": state.number,
            "this_update": iso_utc(state.this_update),
            "next_update": iso_utc(state.next_update),
            "seconds_left": round((state.next_update - now).total_seconds(), 3),
            "revoked": state.revoked,
            "line": line,
            "at": iso_utc(now),
        }
    )


def decode(payload: bytes | bytearray | str) -> dict[str, Any] | None:
    """A JSON object, or None when the payload is not one (foreign or broken messages)."""
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None
