"""Sparkplug B 3.0 topics, metric names and payloads of the line host's edge node (sans-IO).

Metric names, types and aliases are documented in docs/mes.md; payloads are encoded with the
Eclipse Tahu schema (`sparkplug_b_pb2`, generated, EPL-2.0).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any, Final

from linehost.protocol.outcomes import Outcome
from linehost.records import JigStatus
from linehost.sparkplug.sparkplug_b_pb2 import Payload

NAMESPACE: Final = "spBv1.0"
SEQ_MODULO: Final = 256
REBIRTH: Final = "Node Control/Rebirth"
BD_SEQ: Final = "bdSeq"
_UINT64: Final = (1 << 64) - 1

Value = str | int | bool | None


class DataType(IntEnum):
    """The Sparkplug B data types linehost uses (Tahu numbering)."""

    INT64 = 4
    UINT32 = 7
    UINT64 = 8
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13


@dataclass(frozen=True, slots=True)
class MetricDef:
    """A metric's name, type and alias (aliases are unique across the edge node)."""

    name: str
    datatype: DataType
    alias: int


def node_topic(group_id: str, kind: str, edge_node_id: str, device_id: str | None = None) -> str:
    """`spBv1.0/<group>/<kind>/<edge node>[/<device>]`."""
    topic = f"{NAMESPACE}/{group_id}/{kind}/{edge_node_id}"
    return topic if device_id is None else f"{topic}/{device_id}"


def state_topic(host_id: str) -> str:
    """The primary host application's retained STATE topic."""
    return f"{NAMESPACE}/STATE/{host_id}"


def device_id(station: str, jig: str) -> str:
    """A jig's Sparkplug device id: `<station>-<jig>`."""
    return f"{station}-{jig}"


def ms(moment: datetime) -> int:
    """Milliseconds since the epoch, UTC."""
    return int(moment.timestamp() * 1000)


# --- the metric sets -------------------------------------------------------------------------

_NODE: Final = (
    (REBIRTH, DataType.BOOLEAN),
    ("Properties/Host Version", DataType.STRING),
    ("Properties/Line", DataType.STRING),
    ("Line/Jigs", DataType.UINT32),
    ("Line/Jigs Online", DataType.UINT32),
    ("Line/Devices OK", DataType.UINT64),
    ("Line/Devices Failed", DataType.UINT64),
    ("Work Order/Id", DataType.STRING),
    ("Work Order/Quantity", DataType.UINT64),
    ("Work Order/Done", DataType.UINT64),
    ("Work Order/Remaining", DataType.UINT64),
    ("Work Order/Failed", DataType.UINT64),
    ("Outbox/Depth", DataType.UINT64),
)

#: One attempt record as node data; `Result/Outbox Id` is the de-duplication key.
_RESULT: Final = (
    ("Result/Outbox Id", DataType.UINT64),
    ("Result/Attempt Id", DataType.STRING),
    ("Result/UID", DataType.STRING),
    ("Result/Station", DataType.STRING),
    ("Result/Jig", DataType.STRING),
    ("Result/Outcome", DataType.STRING),
    ("Result/Detail", DataType.STRING),
    ("Result/Device Code", DataType.INT64),
    ("Result/DAC Serial", DataType.STRING),
    ("Result/Work Order", DataType.STRING),
    ("Result/Started At", DataType.DATETIME),
    ("Result/Ended At", DataType.DATETIME),
    # Issue 17, at the end so that the aliases above stay as they were.
    ("Result/Key Proof", DataType.STRING),
    ("Result/Attest Nonce", DataType.STRING),
    ("Result/Attest Signature", DataType.STRING),
)
_RESULT_FIELDS: Final = {
    "Result/Attempt Id": "attempt_id",
    "Result/UID": "uid",
    "Result/Station": "station",
    "Result/Jig": "jig",
    "Result/Outcome": "outcome",
    "Result/Detail": "detail",
    "Result/Device Code": "device_code",
    "Result/DAC Serial": "dac_serial",
    "Result/Work Order": "work_order",
    "Result/Key Proof": "key_proof",
    "Result/Attest Nonce": "attest_nonce",
    "Result/Attest Signature": "attest_signature",
}

_DEVICE: Final = (
    ("State", DataType.STRING),
    ("UID", DataType.STRING),
    ("Attempt Id", DataType.STRING),
    ("Since", DataType.DATETIME),
    ("Attempts/OK", DataType.UINT64),
    ("Attempts/Failed", DataType.UINT64),
    *((f"Attempts/By Outcome/{o.value}", DataType.UINT64) for o in Outcome),
    ("Last Outcome", DataType.STRING),
    ("Last Detail", DataType.STRING),
    ("Last UID", DataType.STRING),
    ("Last Attempt Id", DataType.STRING),
    ("Properties/Station", DataType.STRING),
    ("Properties/Jig", DataType.STRING),
)
_DEVICE_ALIAS_BASE: Final = 1000  # device n's aliases start at 1000 * (n + 1)
#: The device metric names in DBIRTH order: the order of `jig_row`.
DEVICE_NAMES: Final = tuple(name for name, _ in _DEVICE)
_OUTCOMES: Final = tuple(o.value for o in Outcome)


def node_metrics() -> tuple[MetricDef, ...]:
    """The edge node's metrics (NBIRTH), results included."""
    return tuple(
        MetricDef(name, datatype, alias)
        for alias, (name, datatype) in enumerate((*_NODE, *_RESULT), start=1)
    )


def device_metrics(index: int) -> tuple[MetricDef, ...]:
    """The metrics of the jig at `index` in the config (DBIRTH)."""
    base = _DEVICE_ALIAS_BASE * (index + 1)
    return tuple(MetricDef(name, datatype, base + n) for n, (name, datatype) in enumerate(_DEVICE))


class JigTally:
    """What a jig's status alone does not say: attempts by outcome, the last attempt's id."""

    def __init__(self) -> None:
        self.by_outcome: dict[str, int] = {o.value: 0 for o in Outcome}
        self.last_attempt_id: str | None = None
        self._current: str | None = None
        self._done = 0

    def note(self, status: JigStatus) -> None:
        """Count the attempts that ended since the last status seen."""
        done = status.ok + status.failed
        if done > self._done and status.last_outcome is not None:
            outcome = status.last_outcome.value
            self.by_outcome[outcome] = self.by_outcome.get(outcome, 0) + done - self._done
            self.last_attempt_id = self._current
        self._done = done
        if status.attempt_id is not None:
            self._current = status.attempt_id


def jig_row(status: JigStatus, tally: JigTally) -> tuple[Value, ...]:
    """A jig's device metric values in DBIRTH order (`DEVICE_NAMES`): compared with the row
    sent last position by position, on every change of every jig."""
    by_outcome = tally.by_outcome
    last = status.last_outcome
    return (
        status.state.value,
        status.uid,
        status.attempt_id,
        ms(status.since),
        status.ok,
        status.failed,
        *[by_outcome.get(outcome, 0) for outcome in _OUTCOMES],
        last.value if last is not None else None,
        status.last_detail,
        status.last_uid,
        tally.last_attempt_id,
        status.station,
        status.jig,
    )


def jig_values(status: JigStatus, tally: JigTally) -> dict[str, Value]:
    """A jig's device metric values, by name."""
    return dict(zip(DEVICE_NAMES, jig_row(status, tally), strict=True))


def work_order_values(work_order: Mapping[str, Any] | None) -> dict[str, Value]:
    """The `Work Order/*` node metrics from a work-order summary (all null without one)."""
    if work_order is None:
        return {
            "Work Order/Id": None,
            "Work Order/Quantity": None,
            "Work Order/Done": None,
            "Work Order/Remaining": None,
            "Work Order/Failed": None,
        }
    return {
        "Work Order/Id": work_order["work_order"],
        "Work Order/Quantity": work_order["quantity"],
        "Work Order/Done": work_order["done"],
        "Work Order/Remaining": work_order["remaining"],
        "Work Order/Failed": work_order["failed"],
    }


def result_values(outbox_id: int, record_json: str) -> dict[str, Value]:
    """The `Result/*` node metrics of one outbox row (the contract attempt record)."""
    record: dict[str, Any] = json.loads(record_json)
    values: dict[str, Value] = {"Result/Outbox Id": outbox_id}
    for name, key in _RESULT_FIELDS.items():
        value = record.get(key)
        values[name] = value if value is None or isinstance(value, int) else str(value)
    for name, key in (("Result/Started At", "started_at"), ("Result/Ended At", "ended_at")):
        at = record.get(key)
        values[name] = ms(datetime.fromisoformat(at)) if at else None
    return values


# --- payloads ----------------------------------------------------------------------------------

_RESULT_TEMPLATE: Final = Payload(
    metrics=[
        Payload.Metric(alias=m.alias, datatype=m.datatype)
        for m in node_metrics()
        if m.name.startswith("Result/")
    ]
)


def birth(
    seq: int,
    timestamp: int,
    metrics: Sequence[MetricDef],
    values: Mapping[str, Value],
    *,
    bd_seq: int | None = None,
) -> bytes:
    """NBIRTH (with `bd_seq`) or DBIRTH: every metric by name, alias, type and value."""
    payload = Payload(timestamp=timestamp, seq=seq)
    if bd_seq is not None:
        _put(payload, BD_SEQ, None, DataType.UINT64, bd_seq, timestamp)
    for metric in metrics:
        _put(payload, metric.name, metric.alias, metric.datatype, values.get(metric.name),
             timestamp)  # fmt: skip
    raw: bytes = payload.SerializeToString()
    return raw


def data(
    seq: int,
    timestamp: int,
    metrics: Iterable[tuple[MetricDef, Value]],
    *,
    historical: bool = False,
    metric_timestamp: int | None = None,
) -> bytes:
    """NDATA or DDATA: the given metrics by alias only."""
    payload = Payload(timestamp=timestamp, seq=seq)
    at = timestamp if metric_timestamp is None else metric_timestamp
    for metric, value in metrics:
        m = _put(payload, None, metric.alias, metric.datatype, value, at)
        if historical:
            m.is_historical = True
    raw: bytes = payload.SerializeToString()
    return raw


def result_data(
    seq: int, timestamp: int, outbox_id: int, record_json: str, *, historical: bool
) -> bytes:
    """One result as NDATA: every `Result/*` metric by alias, stamped with the attempt's end.

    The same payload as `data` with `result_values` gives, made from a prebuilt template (alias
    and type of every metric copied in one step): one of these per attempt, on the event loop.
    """
    values = result_values(outbox_id, record_json)
    ended = values["Result/Ended At"]
    at = ended if isinstance(ended, int) else timestamp
    payload = Payload(timestamp=timestamp, seq=seq)
    payload.MergeFrom(_RESULT_TEMPLATE)
    for metric, (name, datatype) in zip(payload.metrics, _RESULT, strict=True):
        metric.timestamp = at
        if historical:
            metric.is_historical = True
        value = values[name]
        if value is None:
            metric.is_null = True
        elif datatype is DataType.STRING:
            metric.string_value = str(value)
        else:  # Int64 in two's complement, UInt64 and DateTime (ms) as they are
            metric.long_value = int(value) & _UINT64
    raw: bytes = payload.SerializeToString()
    return raw


def node_death(bd_seq: int, timestamp: int) -> bytes:
    """NDEATH (the MQTT Will): only bdSeq, no seq."""
    payload = Payload(timestamp=timestamp)
    _put(payload, BD_SEQ, None, DataType.UINT64, bd_seq, timestamp)
    raw: bytes = payload.SerializeToString()
    return raw


def device_death(seq: int, timestamp: int) -> bytes:
    """DDEATH: no metrics."""
    raw: bytes = Payload(timestamp=timestamp, seq=seq).SerializeToString()
    return raw


def wants_rebirth(raw: bytes, aliases: Mapping[int, str]) -> bool:
    """True when an NCMD sets `Node Control/Rebirth` (by name or alias) to true."""
    try:
        payload = Payload.FromString(raw)
    except Exception:  # a foreign or broken payload: not a command we act on
        return False
    for metric in payload.metrics:
        name = metric.name or aliases.get(metric.alias, "")
        if name == REBIRTH and metric.WhichOneof("value") == "boolean_value":
            return bool(metric.boolean_value)
    return False


def host_online(raw: bytes) -> bool | None:
    """A primary host's STATE payload (`{"online": bool, "timestamp": ms}`): online, or None."""
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    online = value.get("online") if isinstance(value, dict) else None
    return online if isinstance(online, bool) else None


def _put(
    payload: Payload,
    name: str | None,
    alias: int | None,
    datatype: DataType,
    value: Value,
    timestamp: int,
) -> Payload.Metric:
    metric: Payload.Metric = payload.metrics.add()
    if name is not None:
        metric.name = name
    if alias is not None:
        metric.alias = alias
    metric.datatype = datatype
    metric.timestamp = timestamp
    if value is None:
        metric.is_null = True
    elif datatype is DataType.BOOLEAN:
        metric.boolean_value = bool(value)
    elif datatype is DataType.STRING:
        metric.string_value = str(value)
    elif datatype is DataType.UINT32:
        metric.int_value = int(value)
    else:  # Int64 in two's complement, UInt64 and DateTime (ms) as they are
        metric.long_value = int(value) & _UINT64
    return metric
