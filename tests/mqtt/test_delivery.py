"""Every attempt reaches a durable subscriber across a broker outage and a SIGKILL of the host.

`linehost run` and the simulator run as real processes against a private Mosquitto (with
persistence) that the test stops and starts again mid-run.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest

from linehost.mqtt.topics import subscriptions
from tests.e2e.harness import HostRun, SimRun, jsonl, linehost, wait_for, write_config
from tests.mqtt.broker import PrivateBroker
from tests.mqtt.subscriber import Received, Subscriber

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki") / "pki"
    linehost("pki", "init-dev", "--out", out)
    return out


def attempt_ids(messages: list[Received]) -> list[str]:
    return [m.json()["attempt_id"] for m in messages if m.topic.endswith("/results")]


def recorded_attempts(config: Path) -> list[dict[str, object]]:
    return jsonl(linehost("audit", "--config", config, "attempts", "--format", "jsonl").stdout)


@pytest.mark.timeout(240)
def test_every_attempt_reaches_a_durable_subscriber_across_outage_and_sigkill(
    tmp_path: Path, dev_pki: Path, own_broker: PrivateBroker, prefix: str
) -> None:
    line = "mqtt-line"
    sub = Subscriber(own_broker.url, subscriptions(prefix, line), f"mes-{secrets.token_hex(4)}")
    sub.start()
    # Paced by the wire (115200 baud), not by this machine's speed: the line is still running
    # when the host is killed, however fast the host gets through the outage before it.
    jigs, per_jig = 4, 60
    sim = SimRun(
        tmp_path, jigs=jigs, devices=per_jig, mix="good", paa=dev_pki / "paa.pem",
        swap_seconds=0.15, extra=["--baud", "115200"],
    ).start()  # fmt: skip
    mqtt = f'[mqtt]\nurl = "{own_broker.url}"\ntopic_prefix = "{prefix}"\ndrain_timeout = 10\n'
    config = write_config(tmp_path / "line.toml", pki=dev_pki, ports=sim.ports, line=line,
                          extra="\n" + mqtt)  # fmt: skip
    host = HostRun(config).start()
    restarted: HostRun | None = None
    try:
        sub.wait_for(lambda ms: len(attempt_ids(ms)) >= 5, 60, "the first results")

        # 1. The broker goes away; the line keeps provisioning.
        own_broker.stop()
        during = len(recorded_attempts(config))
        wait_for(lambda: len(recorded_attempts(config)) >= during + 8, 60, "attempts, broker down")
        own_broker.start()
        seen = len(attempt_ids(sub.snapshot()))
        sub.wait_for(lambda ms: len(attempt_ids(ms)) >= seen + 8, 60, "the backlog after outage")

        # 2. The host dies without a word, mid-run; the broker publishes its Will.
        assert len(sim.devices_seen()) < jigs * per_jig, "the line ended before the kill"
        host.kill()
        sub.wait_for(
            lambda ms: any(
                m.topic.endswith("/host/status") and m.json() == {"online": False} for m in ms
            ),
            30,
            "the Will after SIGKILL",
        )
        time.sleep(1.0)  # devices keep arriving at the jigs meanwhile
        restarted = HostRun(config).start()
        wait_for(lambda: "line_started" in restarted.output(), 60, "the restarted host")
        sim.wait(timeout=150)
        attempts = recorded_attempts(config)
        expected = {str(a["attempt_id"]) for a in attempts}
        sub.wait_for(lambda ms: expected <= set(attempt_ids(ms)), 60, "a result for every attempt")
    finally:
        sim.stop()
        code = restarted.stop() if restarted else None
        host.kill()
        sub.stop()
    assert restarted is not None
    assert code == 0, restarted.output()[-3000:]
    assert "Traceback" not in restarted.output()
    received = attempt_ids(sub.snapshot())
    assert set(received) == expected, "every attempt, and nothing else"
    assert len(attempts) >= 4 * 40, "every device had an attempt"
    status = [m.json() for m in sub.snapshot() if m.topic.endswith("/host/status")]
    assert status[-1] == {"online": False}, "a clean stop publishes offline"
    assert sum(1 for s in status if s.get("online")) >= 2, "online again after each start"
