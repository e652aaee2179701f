"""The Sparkplug B edge node's own CPU per device, without the line (issue 16).

An `EdgeNode` on a real broker, its 64 jigs driven by synthetic status changes (a device
starts on every jig, then ends: two DDATA per device) and its results from an in-memory
outbox (one NDATA per device, QoS 1, marked after the PUBACK). Prints one JSON line:
us_per_device is the process CPU from the first device to the last result acknowledged,
divided by the devices (the driver's own work included, ~10 %).

    python benchmarks/edge_node.py --devices 6400 [--broker mqtt://127.0.0.1:1883]

Compare two trees by running each one's copy (PYTHONPATH=<tree> python <tree>/benchmarks/...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import linehost  # noqa: E402
from linehost.config import MqttSection, SparkplugSection  # noqa: E402
from linehost.protocol.outcomes import JigState, Outcome  # noqa: E402
from linehost.records import JigStatus, iso_utc, utcnow  # noqa: E402
from linehost.sparkplug.node import EdgeNode  # noqa: E402
from linehost.store.sparkplug import QueuedResult  # noqa: E402

JIGS = 64
DETAIL = "finish:000 provisioning done"


class MemoryOutbox:
    """The part of the store the edge node uses, in memory."""

    def __init__(self) -> None:
        self.rows: dict[int, QueuedResult] = {}

    async def next_bd_seq(self, group_id: str, edge_node_id: str, at: datetime) -> int:
        return 0

    async def pending_results(self, limit: int) -> list[QueuedResult]:
        return list(self.rows.values())[:limit]

    async def mark_results_sent(self, ids: Sequence[int], at: datetime) -> None:
        for outbox_id in ids:
            self.rows.pop(outbox_id, None)

    async def outbox_depth(self) -> int:
        return len(self.rows)

    def add(self, outbox_id: int, record: dict[str, object]) -> None:
        self.rows[outbox_id] = QueuedResult(outbox_id, json.dumps(record), utcnow())


def _record(status: JigStatus, attempt_id: str, uid: str, started: datetime) -> dict[str, object]:
    return {
        "attempt_id": attempt_id, "uid": uid, "line": status.line, "station": status.station,
        "jig": status.jig, "outcome": "provisioned", "detail": DETAIL, "device_code": 0,
        "dac_serial": secrets.token_hex(8).upper(), "started_at": iso_utc(started),
        "ended_at": iso_utc(status.since), "work_order": None, "key_proof": "csr",
        "attest_nonce": None, "attest_signature": None,
    }  # fmt: skip


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 - the edge node has no event for these
        await asyncio.sleep(0.01)


async def run(devices: int, broker: str) -> dict[str, object]:
    outbox = MemoryOutbox()
    keys = [(f"st{i // 16 + 1}", f"j{i + 1}") for i in range(JIGS)]
    node = EdgeNode(
        SparkplugSection(group_id=f"bench{secrets.token_hex(3)}"),
        MqttSection(url=broker, drain_timeout=10),
        outbox,
        line="bench",
        jigs=keys,
    )
    jigs = [JigStatus("bench", s, j, state=JigState.WAITING_FOR_DEVICE) for s, j in keys]
    for status in jigs:
        node.jig_changed(status)
    node.start()
    await _until(lambda: node.born)
    cpu0, t0 = time.process_time(), time.monotonic()
    done = 0
    while done < devices:
        for status in jigs:  # a device starts on every jig ...
            status.state, status.since = JigState.PROVISIONING, utcnow()
            status.uid, status.attempt_id = secrets.token_hex(8).upper(), str(uuid.uuid4())
            node.jig_changed(status)
        await asyncio.sleep(0.03)
        for status in jigs:  # ... and ends: recorded (the outbox), then shown
            started, attempt_id, uid = status.since, status.attempt_id or "", status.uid or ""
            status.attempt_ended(Outcome.PROVISIONED, DETAIL, uid)
            status.state, status.uid, status.since = JigState.WAITING_FOR_SWAP, None, utcnow()
            done += 1
            outbox.add(done, _record(status, attempt_id, uid, started))
            node.jig_changed(status)
        await asyncio.sleep(0.03)
    await _until(lambda: node.results_published >= done)
    cpu1, t1 = time.process_time(), time.monotonic()
    await node.close()
    return {
        "tree": str(Path(linehost.__file__).parents[1]),
        "jigs": JIGS,
        "devices": done,
        "us_per_device": round((cpu1 - cpu0) * 1e6 / done, 1),
        "seconds": round(t1 - t0, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=6400)
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.devices, args.broker))))


if __name__ == "__main__":
    main()
