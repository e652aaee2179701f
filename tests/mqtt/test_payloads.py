"""mqtt/payloads.py: the results message the store writes to its outbox."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from linehost.mqtt.payloads import encode, result_payload
from linehost.records import attempt_record

T0 = datetime(2026, 12, 7, 4, 30, tzinfo=UTC)


def record(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "attempt_id": "a-1",
        "uid": "AABBCCDD",
        "line": "l1",
        "station": "st1",
        "jig": "j1",
        "outcome": "provisioned",
        "detail": "finish:000 ok",
        "device_code": 0,
        "dac_serial": "4B1F",
        "started_at": T0,
        "ended_at": T0,
        "work_order": None,
    }
    return attempt_record(row | changes)


def test_result_payload_is_the_attempt_record_as_compact_json() -> None:
    rec = record()
    text = result_payload(rec)
    assert json.loads(text) == rec
    assert list(json.loads(text)) == list(rec)  # field order kept
    assert ", " not in text
    assert ": " not in text
    assert text.startswith('{"attempt_id":"a-1","uid":"AABBCCDD",')
    assert '"started_at":"2026-12-07T04:30:00' in text


def test_result_payload_keeps_non_ascii_and_matches_encode() -> None:
    rec = record(detail="Gerät antwortet nicht")
    text = result_payload(rec)
    assert "Gerät" in text
    assert text.encode() == encode(rec)
