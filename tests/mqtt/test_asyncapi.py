"""docs/asyncapi.yaml describes what is really published: real messages validate against it."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from linehost.dashboard.alarms import (
    CRL_NEXT_UPDATE,
    HOST_OFFLINE,
    JIG_FAILING,
    JIG_OFFLINE,
    OUTBOX_GROWING,
)
from linehost.evidence.publish import checkpoint_topic
from linehost.mqtt.topics import LineTopics, subscriptions
from linehost.protocol.outcomes import JigState, Outcome
from tests.mqtt.line import running_line
from tests.mqtt.subscriber import Subscriber

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"
BASE = "urn:linehost:asyncapi"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text())
    return loaded


def validator(doc: dict[str, Any], schema: str) -> jsonschema.Draft7Validator:
    registry: Registry[Any] = Registry().with_resource(
        BASE, Resource.from_contents(doc, default_specification=DRAFT7)
    )
    return jsonschema.Draft7Validator(
        {"$ref": f"{BASE}#/components/schemas/{schema}"}, registry=registry
    )


def test_document_is_asyncapi_3_with_every_topic(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"].startswith("3.0")
    topics = LineTopics("{prefix}", "{line}")
    addresses = {name: ch["address"] for name, ch in doc["channels"].items()}
    assert addresses == {
        "hostStatus": topics.host_status,
        "jigState": topics.jig_state("{station}", "{jig}"),
        "results": topics.results,
        "workOrder": topics.work_order,
        "outbox": topics.outbox,
        "hostCrl": topics.host_crl,
        "alarms": topics.alarms,
        "auditCheckpoint": checkpoint_topic("{prefix}", "{line}"),
    }
    bindings = {
        op["channel"]["$ref"].rsplit("/", 1)[1]: op["bindings"]["mqtt"]
        for op in doc["operations"].values()
    }
    assert {k: (v["qos"], v["retain"]) for k, v in bindings.items()} == {
        "hostStatus": (1, True),
        "jigState": (1, True),
        "results": (1, False),
        "workOrder": (1, True),
        "outbox": (1, True),
        "hostCrl": (1, True),
        "alarms": (1, True),
        "auditCheckpoint": (1, True),
    }
    will = doc["servers"]["plant"]["bindings"]["mqtt"]["lastWill"]
    assert (will["topic"], will["qos"], will["retain"]) == (topics.host_status, 1, True)


def test_enums_match_the_code(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert set(schemas["Outcome"]["enum"]) == {o.value for o in Outcome}
    assert set(schemas["JigStateName"]["enum"]) == {s.value for s in JigState}
    kinds = {JIG_FAILING, JIG_OFFLINE, HOST_OFFLINE, OUTBOX_GROWING, CRL_NEXT_UPDATE}
    assert set(schemas["Alarm"]["properties"]["kind"]["enum"]) == kinds


def test_examples_validate(doc: dict[str, Any]) -> None:
    for message in doc["components"]["messages"].values():
        schema = message["payload"]["$ref"].rsplit("/", 1)[1]
        for example in message["examples"]:
            validator(doc, schema).validate(example["payload"])


@pytest.mark.mqtt
@pytest.mark.timeout(90)
async def test_published_messages_validate_against_the_document(
    doc: dict[str, Any], broker_url: str, prefix: str, tmp_path: Path
) -> None:
    sub = Subscriber(broker_url, subscriptions(prefix), f"t-{secrets.token_hex(4)}").start()
    try:
        mix = "good:3,finish_003:1,bad_csr_signature:1"
        async with running_line(
            tmp_path, broker_url, prefix, jigs=3, devices_per_jig=3, mix=mix
        ) as run:
            await asyncio.wait_for(run.sim.wait(), 60)
            await asyncio.sleep(0.5)
        await asyncio.to_thread(
            sub.wait_for,
            lambda ms: any(m.payload == b'{"online":false}' for m in ms),
            10,
            "host offline",
        )
    finally:
        sub.stop()
    messages = sub.snapshot()
    kinds: dict[str, int] = {"host": 0, "state": 0, "results": 0}
    for m in messages:
        if m.topic.endswith("/host/status"):
            schema = "HostOnline" if m.json()["online"] else "HostOffline"
            kinds["host"] += 1
        elif m.topic.endswith("/state"):
            schema = "JigState"
            kinds["state"] += 1
        else:
            assert m.topic == f"{prefix}/l1/results"
            assert not m.retain
            schema = "AttemptResult"
            kinds["results"] += 1
        validator(doc, schema).validate(m.json())
    assert kinds["host"] >= 2
    assert kinds["state"] >= 9
    assert kinds["results"] == 9
    outcomes = {m.json()["outcome"] for m in messages if m.topic.endswith("/results")}
    assert {"provisioned", "device_error", "csr_rejected"} <= outcomes
