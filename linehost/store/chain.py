"""The audit hash chain: canonical JSON and the row hash, shared by the writer and the verifier."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

#: prev_hash of the first row of every line's chain.
GENESIS_HASH = "0" * 64


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, UTF-8 kept as is: one text per value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def row_hash(
    prev_hash: str,
    *,
    seq: int,
    line: str,
    at: str,
    entity: str,
    entity_id: str,
    event: str,
    data: Mapping[str, Any],
) -> str:
    """sha256 hex of prev_hash + canonical JSON of {seq, line, at, entity, entity_id, event,
    data}."""
    return row_hash_of_json(
        prev_hash, seq=seq, line=line, at=at, entity=entity, entity_id=entity_id, event=event,
        data_json=canonical_json(data),
    )  # fmt: skip


def row_hash_of_json(
    prev_hash: str,
    *,
    seq: int,
    line: str,
    at: str,
    entity: str,
    entity_id: str,
    event: str,
    data_json: str,
) -> str:
    """row_hash for `data` already in canonical JSON (`data_json`), without encoding it again.

    The body is spelled out in canonical order (at, data, entity, entity_id, event, line, seq):
    byte for byte what canonical_json gives for the whole record (tests/store/test_chain.py);
    the writer encodes each row's data once and stores that same text.
    """
    body = row_body(
        seq=seq, line=line, at=at, entity=entity, entity_id=entity_id, event=event,
        data_json=data_json,
    )  # fmt: skip
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def row_body(
    *, seq: int, line: str, at: str, entity: str, entity_id: str, event: str, data_json: str
) -> str:
    """The canonical JSON of a row's record: what its hash covers after prev_hash, and the
    text of its Merkle leaf (docs/audit.md)."""
    dump = _canonical_scalar
    return (
        f'{{"at":{dump(at)},"data":{data_json},"entity":{dump(entity)},'
        f'"entity_id":{dump(entity_id)},"event":{dump(event)},"line":{dump(line)},"seq":{seq:d}}}'
    )


class CommittedRow(NamedTuple):
    """An audit row as its writer made it: what the checkpointer needs, without a read."""

    line: str
    seq: int
    prev_hash: str
    row_hash: str
    body: str  # row_body: the hashed record text


_canonical_scalar = json.JSONEncoder(ensure_ascii=False).encode
