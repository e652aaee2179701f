"""Sparkplug B payloads of the edge node, decoded by an independent library (pysparkplug)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from linehost.protocol.outcomes import JigState, Outcome
from linehost.records import JigStatus
from linehost.sparkplug import payloads as spb

pysparkplug = pytest.importorskip("pysparkplug")

T = 1_764_000_000_123
NONCE = "ab" * 32


def test_aliases_are_unique_across_the_node_and_every_device() -> None:
    aliases = [m.alias for m in spb.node_metrics()]
    for index in range(50):
        aliases += [m.alias for m in spb.device_metrics(index)]
    assert len(aliases) == len(set(aliases))


def test_nbirth_carries_bd_seq_and_every_node_metric_by_name_and_alias() -> None:
    metrics = spb.node_metrics()
    raw = spb.birth(0, T, metrics, {spb.REBIRTH: False, "Line/Jigs": 4}, bd_seq=7)
    birth = pysparkplug.NBirth.decode(raw)
    assert birth.seq == 0
    assert birth.timestamp == T
    by_name = {m.name: m for m in birth.metrics}
    assert by_name["bdSeq"].value == 7
    assert by_name["bdSeq"].alias is None
    assert by_name[spb.REBIRTH].value is False
    assert by_name["Line/Jigs"].value == 4
    assert by_name["Work Order/Id"].is_null
    assert {m.name for m in metrics} <= set(by_name)
    assert all(by_name[m.name].alias == m.alias for m in metrics)


def test_ddata_names_metrics_by_alias_only_resolved_through_the_dbirth() -> None:
    metrics = spb.device_metrics(1)
    status = JigStatus("l", "st1", "j2", state=JigState.PROVISIONING, uid="AB12", attempt_id="a-1")
    tally = spb.JigTally()
    tally.note(status)
    dbirth = pysparkplug.DBirth.decode(spb.birth(3, T, metrics, spb.jig_values(status, tally)))
    assert {m.name: m.value for m in dbirth.metrics}["UID"] == "AB12"
    status.state, status.ok, status.last_outcome = (
        JigState.WAITING_FOR_DEVICE,
        1,
        Outcome.PROVISIONED,
    )
    status.attempt_id = None
    tally.note(status)
    values = spb.jig_values(status, tally)
    changed = [(m, values[m.name]) for m in metrics if m.name in ("State", "Last Attempt Id")]
    raw = spb.data(4, T, changed)
    assert all(not m.name for m in spb.Payload.FromString(raw).metrics)
    ddata = pysparkplug.DData.decode(raw, birth=dbirth)
    assert ddata.seq == 4
    assert {m.name: m.value for m in ddata.metrics} == {
        "State": "waiting_for_device",
        "Last Attempt Id": "a-1",
    }
    assert tally.by_outcome["provisioned"] == 1


def test_result_as_historical_ndata() -> None:
    record = {
        "attempt_id": "a-9", "uid": "CAFE", "line": "l", "station": "st1", "jig": "j1",
        "outcome": "device_error", "detail": "finish:003", "device_code": -3,
        "dac_serial": None, "started_at": "2026-12-02T03:00:00.000Z",
        "ended_at": "2026-12-02T03:00:01.500Z", "work_order": None,
        "key_proof": "none", "attest_nonce": NONCE, "attest_signature": "MEUCIQD+sig==",
    }  # fmt: skip
    values = spb.result_values(42, json.dumps(record))
    by_name = {m.name: m for m in spb.node_metrics()}
    nbirth = pysparkplug.NBirth.decode(spb.birth(0, T, spb.node_metrics(), {}, bd_seq=0))
    ended = values["Result/Ended At"]
    raw = spb.result_data(9, T, 42, json.dumps(record), historical=True)
    ndata = pysparkplug.NData.decode(raw, birth=nbirth)
    got = {m.name: m for m in ndata.metrics}
    # The template-made payload says what the generic NDATA of the same values says.
    generic = spb.data(9, T, [(by_name[n], v) for n, v in values.items()], historical=True,
                       metric_timestamp=ended if isinstance(ended, int) else None)  # fmt: skip
    same = pysparkplug.NData.decode(generic, birth=nbirth)
    assert sorted(ndata.metrics, key=lambda m: m.name) == sorted(same.metrics, key=lambda m: m.name)
    assert ndata.seq == 9
    assert got["Result/Outbox Id"].value == 42
    assert got["Result/Attempt Id"].value == "a-9"
    assert got["Result/Device Code"].value == -3
    assert got["Result/DAC Serial"].is_null
    assert got["Result/Ended At"].value == datetime(2026, 12, 2, 3, 0, 1, 500000, tzinfo=UTC)
    # Issue 17: how the device showed its key, and its attestation challenge and answer.
    assert got["Result/Key Proof"].value == "none"
    assert got["Result/Attest Nonce"].value == NONCE
    assert got["Result/Attest Signature"].value == "MEUCIQD+sig=="
    # Every field of the JSON attempt record but `line` (the edge node is the line) is a metric.
    fields = set(record) - {"line"}
    assert len(fields) == len(values) - 1  # and Result/Outbox Id
    assert all(m.is_historical for m in ndata.metrics)
    assert all(m.timestamp == ended for m in ndata.metrics)


def test_result_of_a_device_never_challenged_has_null_attestation() -> None:
    record = {
        "attempt_id": "a-1", "uid": "CAFE", "line": "l", "station": "st1", "jig": "j1",
        "outcome": "provisioned", "detail": "finish:000", "device_code": 0,
        "dac_serial": "1A2B", "started_at": "2026-12-02T03:00:00.000Z",
        "ended_at": "2026-12-02T03:00:01.500Z", "work_order": "WO-1", "key_proof": "csr",
        "attest_nonce": None, "attest_signature": None,
    }  # fmt: skip
    nbirth = pysparkplug.NBirth.decode(spb.birth(0, T, spb.node_metrics(), {}, bd_seq=0))
    raw = spb.result_data(3, T, 7, json.dumps(record), historical=False)
    got = {m.name: m for m in pysparkplug.NData.decode(raw, birth=nbirth).metrics}
    assert not any(m.is_historical for m in got.values())
    assert got["Result/Outbox Id"].value == 7
    assert got["Result/Key Proof"].value == "csr"
    assert got["Result/Attest Nonce"].is_null
    assert got["Result/Attest Signature"].is_null
    assert got["Result/Work Order"].value == "WO-1"


def test_ndeath_has_bd_seq_and_no_seq() -> None:
    raw = spb.node_death(200, T)
    assert not spb.Payload.FromString(raw).HasField("seq")
    assert pysparkplug.NDeath.decode(raw).bd_seq_metric.value == 200


@pytest.mark.parametrize("by_alias", [False, True])
def test_rebirth_command_by_name_or_alias(by_alias: bool) -> None:
    alias = {m.name: m.alias for m in spb.node_metrics()}[spb.REBIRTH]
    metric = pysparkplug.Metric(
        timestamp=T,
        name=None if by_alias else spb.REBIRTH,
        alias=alias if by_alias else None,
        datatype=pysparkplug.DataType.BOOLEAN,
        value=True,
    )
    raw = pysparkplug.NCmd(timestamp=T, metrics=(metric,)).encode(include_dtypes=True)
    aliases = {m.alias: m.name for m in spb.node_metrics()}
    assert spb.wants_rebirth(raw, aliases)
    off = pysparkplug.Metric(timestamp=T, name=spb.REBIRTH,
                             datatype=pysparkplug.DataType.BOOLEAN, value=False)  # fmt: skip
    assert not spb.wants_rebirth(pysparkplug.NCmd(timestamp=T, metrics=(off,)).encode(), aliases)
    assert not spb.wants_rebirth(b"\xff\xff not protobuf", aliases)


def test_primary_host_state_payloads() -> None:
    assert spb.host_online(b'{"online": true, "timestamp": 1}') is True
    assert spb.host_online(b'{"online": false, "timestamp": 1}') is False
    assert spb.host_online(b"ONLINE") is None  # Sparkplug 2.2 style: not 3.0
    assert spb.host_online(b"[]") is None
