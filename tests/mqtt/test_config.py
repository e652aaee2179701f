"""`[mqtt]` and `[dashboard]` config, the link's helpers and the CLI's user errors."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from linehost.backoff import Backoff
from linehost.config import MqttSection, load_config, parse_listen
from linehost.errors import ConfigError
from linehost.evidence.publish import MqttCheckpoints
from linehost.mqtt.link import BrokerLink, companion_link, default_client_id
from tests.test_config import MINIMAL, write


def test_mqtt_section_defaults_and_paths(tmp_path: Path) -> None:
    text = MINIMAL + '[mqtt]\nurl = "mqtts://broker.plant:8884"\nusername = "u"\n'
    text += 'password_file = "secrets/mqtt"\nca_file = "ca.pem"\n'
    config = load_config(write(tmp_path, text))
    mqtt = config.mqtt
    assert mqtt is not None
    assert (mqtt.host, mqtt.port, mqtt.tls, mqtt.topic_prefix) == (
        "broker.plant",
        8884,
        True,
        "linehost",
    )
    assert mqtt.password_file == tmp_path / "secrets/mqtt"
    assert mqtt.ca_file == tmp_path / "ca.pem"
    assert load_config(write(tmp_path, MINIMAL)).mqtt is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('url = "http://x"', "mqtt.url: Value error, must look like mqtt://"),
        ('url = "mqtt://x"\ntopic_prefix = "a/#"', "wildcards"),
        ('url = "mqtt://x"\ntopic_prefix = "a//b"', "empty level"),
        ('url = "mqtt://x"\npassword_env = "P"', "a password needs a username"),
        ('url = "mqtt://x"\nca_file = "ca.pem"', "need an mqtts:// url"),
        ('url = "mqtt://x"\nsurprise = 1', "mqtt.surprise: unknown key"),
    ],
)
def test_bad_mqtt_sections_name_the_key(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"line\.toml: mqtt") as err:
        load_config(write(tmp_path, MINIMAL + "[mqtt]\n" + extra + "\n"))
    assert message in str(err.value)


def test_password_from_env_and_missing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = MINIMAL + '[mqtt]\nurl = "mqtt://x"\nusername = "u"\npassword_env = "LH_MQTT_PW"\n'
    config = load_config(write(tmp_path, text))
    assert config.mqtt is not None
    with pytest.raises(ConfigError, match="LH_MQTT_PW is not set"):
        BrokerLink(config.mqtt, "id")
    monkeypatch.setenv("LH_MQTT_PW", "s3cret")
    assert config.mqtt.password() == "s3cret"
    text = MINIMAL + '[mqtt]\nurl = "mqtt://x"\nusername = "u"\npassword_file = "nope"\n'
    config = load_config(write(tmp_path, text))
    assert config.mqtt is not None
    with pytest.raises(ConfigError, match=r"mqtt\.password_file: cannot read"):
        config.mqtt.password()


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen(":9000") == ("0.0.0.0", 9000)
    assert parse_listen("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen("8080")


def test_the_hosts_other_clients_never_connect_under_the_relays_client_id() -> None:
    """Two connections with one client id take each other's session over, again and again."""
    named = MqttSection(url="mqtt://x", client_id="line-1-host")
    assert BrokerLink(named, default_client_id("host", "l1")).client_id == "line-1-host"
    assert companion_link(named, "doctor", "l1").client_id == "line-1-host-doctor"
    checkpoints = MqttCheckpoints(named, "l1")
    assert checkpoints._link.client_id == "line-1-host-audit"
    unnamed = MqttSection(url="mqtt://x")
    assert companion_link(unnamed, "doctor", "l1").client_id == default_client_id("doctor", "l1")
    assert MqttCheckpoints(unnamed, "l1")._link.client_id == default_client_id("audit", "l1")


def test_backoff_is_capped_and_jittered() -> None:
    backoff = Backoff(low=0.5, high=4, jitter=0.25, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(10)]
    assert 0.375 <= delays[0] <= 0.625
    assert all(d <= 4 * 1.25 for d in delays)
    assert delays[-1] >= 3
    backoff.reset()
    assert backoff.next_delay() <= 0.625


def test_dashboard_without_mqtt_is_a_one_line_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    proc = subprocess.run(
        [sys.executable, "-m", "linehost.cli", "dashboard", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("the dashboard needs an [mqtt] section (url = ...)")
    assert "Traceback" not in proc.stderr
