"""The row hash is sha256(prev_hash + canonical JSON of the whole record), byte for byte."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from linehost.store.chain import GENESIS_HASH, canonical_json, row_hash, row_hash_of_json

text = st.text(st.characters(codec="utf-8"), max_size=40)  # quotes, controls, non-ASCII
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


@given(
    seq=st.integers(min_value=1, max_value=2**62),
    line=text,
    at=text,
    entity=text,
    entity_id=text,
    event=text,
    data=st.dictionaries(text, json_values, max_size=6),
)
def test_row_hash_of_json_equals_row_hash(
    seq: int, line: str, at: str, entity: str, entity_id: str, event: str, data: dict[str, object]
) -> None:
    fields = {"seq": seq, "line": line, "at": at, "entity": entity, "entity_id": entity_id}
    record = canonical_json({**fields, "event": event, "data": data})  # the definition
    expected = hashlib.sha256((GENESIS_HASH + record).encode()).hexdigest()
    fast = row_hash_of_json(GENESIS_HASH, **fields, event=event, data_json=canonical_json(data))
    assert fast == expected
    assert row_hash(GENESIS_HASH, **fields, event=event, data=data) == expected


def test_a_changed_field_changes_the_hash() -> None:
    base = {"seq": 1, "line": "l1", "at": "2026-01-01T00:00:00.000000Z", "entity": "attempt",
            "entity_id": "a", "event": "attempt_ended"}  # fmt: skip
    one = row_hash_of_json(GENESIS_HASH, **base, data_json='{"uid":"A"}')
    other = row_hash_of_json(GENESIS_HASH, **base, data_json='{"uid":"B"}')
    assert one != other
    assert one == row_hash(GENESIS_HASH, **base, data={"uid": "A"})
