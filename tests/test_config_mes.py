"""`[sparkplug]` and `[opcua]`: defaults, the broker they share, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from linehost.config import load_config
from linehost.errors import ConfigError
from tests.test_config import MINIMAL, write

MQTT = (
    '[mqtt]\nurl = "mqtts://broker:8883"\nclient_id = "mine"\nusername = "u"\npassword_env = "P"\n'
)


def test_sparkplug_defaults_to_the_mqtt_broker_with_its_own_client_id(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL + MQTT + "[sparkplug]\n"))
    spb = config.sparkplug
    assert spb is not None
    assert (spb.group_id, spb.edge_node_id, spb.primary_host_id) == ("linehost", None, None)
    broker = spb.broker(config.mqtt)
    assert (broker.host, broker.port, broker.tls, broker.username) == ("broker", 8883, True, "u")
    assert broker.client_id is None  # never the relay's: the two would kick each other off
    other = load_config(write(tmp_path, MINIMAL + '[sparkplug]\nurl = "mqtt://h:1999"\n'))
    assert other.sparkplug is not None
    assert other.sparkplug.broker(other.mqtt).port == 1999


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("[sparkplug]\n", "[sparkplug] needs a url, or an [mqtt] broker"),
        ('[sparkplug]\nurl = "http://x"\n', "sparkplug.url: "),
        ('[sparkplug]\nurl = "mqtt://h"\ngroup_id = "a/b"\n', "sparkplug.group_id: "),
        ('[opcua]\nendpoint = "http://x:1"\n', "opcua.endpoint: "),
        ('[opcua]\nsecurity = "aes"\n', "opcua.security: "),
        ('[[opcua.users]]\nname = "mes"\n', "needs password_env or password_file"),
    ],
)
def test_bad_sections_name_the_key(tmp_path: Path, section: str, expected: str) -> None:
    path = write(tmp_path, MINIMAL + section)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert expected in str(caught.value)


def test_opcua_security_none_only_on_loopback_unless_configured(tmp_path: Path) -> None:
    local = load_config(write(tmp_path, MINIMAL + "[opcua]\n")).opcua
    assert local is not None
    assert local.policy == "none"
    assert local.certificate_dir == tmp_path / "opcua-pki"
    wide = '[opcua]\nendpoint = "opc.tcp://0.0.0.0:4840/x"\n'
    assert load_config(write(tmp_path, MINIMAL + wide)).opcua.policy == "basic256sha256"  # type: ignore[union-attr]
    explicit = wide + 'security = "none"\n'
    assert load_config(write(tmp_path, MINIMAL + explicit)).opcua.policy == "none"  # type: ignore[union-attr]
