"""Station config: typed, strict, errors that name file, key and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from linehost.config import load_config
from linehost.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """
[line]
name = "l1"
[pki]
pai_cert = "pki/pai.pem"
pai_key = "pki/pai.key"
vid = "fff1"
pid = "8000"
[[jigs]]
name = "j1"
station = "st1"
port = "jigs/j1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "line.toml"
    path.write_text(text)
    return path


def test_minimal_config_gets_defaults_and_resolves_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.line.shutdown_grace == 10
    assert config.protocol.sync_interval == 1.0
    assert config.protocol.csr_timeout == 30
    assert config.pki.vid == "FFF1"
    assert config.pki.pai_cert == tmp_path / "pki/pai.pem"
    assert config.pki.pai_key == str(tmp_path / "pki/pai.key")
    assert config.jigs[0].port == str(tmp_path / "jigs/j1")
    assert config.jigs[0].baudrate == 115200
    assert config.database.url == f"sqlite+aiosqlite:///{tmp_path}/linehost.db"


@pytest.mark.parametrize("path", sorted((REPO / "station-configs").glob("*.toml")))
def test_example_station_configs_are_valid(path: Path) -> None:
    config = load_config(path)
    assert len(config.jigs) >= 4


def test_url_ports_pass_through_unchanged(tmp_path: Path) -> None:
    text = MINIMAL.replace('port = "jigs/j1"', 'port = "socket://10.0.0.5:4001"')
    assert load_config(write(tmp_path, text)).jigs[0].port == "socket://10.0.0.5:4001"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('name = "l1"', 'name = "l1"\ncolour = "red"'), "line.colour: unknown key"),
        (('vid = "fff1"', 'vid = "FFFFF"'), "pki.vid: Value error, must be exactly 4 hex digits"),
        (('pid = "8000"\n', ""), "pki.pid: required key is missing"),
        (('port = "jigs/j1"', "port = 5"), "jigs[0].port: Input should be a valid string"),
        (("[pki]", "[protocol]\ncsr_timeout = -1\n[pki]"), "protocol.csr_timeout: Input should be"),
        (('name = "j1"', 'name = "j 1"'), "jigs[0].name: Value error"),
        (
            ('name = "l1"', 'name = "l1"\n[database]\nurl = "mysql://x"'),
            "database.url: Value error, must start with",
        ),
        (
            ('pid = "8000"', 'pid = "8000"\ncn_template = "{serial}"'),
            "pki.cn_template: Value error, may use only",
        ),
    ],
)
def test_bad_values_name_file_key_and_problem(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    text = MINIMAL.replace(*change)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_duplicate_jig_and_port_are_refused(tmp_path: Path) -> None:
    twice = MINIMAL + '[[jigs]]\nname = "j1"\nstation = "st1"\nport = "jigs/j2"\n'
    with pytest.raises(ConfigError, match="appears twice"):
        load_config(write(tmp_path, twice))
    same_port = MINIMAL + '[[jigs]]\nname = "j2"\nstation = "st1"\nport = "jigs/j1"\n'
    with pytest.raises(ConfigError, match="used by two jigs"):
        load_config(write(tmp_path, same_port))


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="bad TOML"):
        load_config(write(tmp_path, "[line\nname="))


def test_passphrase_comes_from_env_or_file_never_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = MINIMAL.replace('pid = "8000"', 'pid = "8000"\npai_key_passphrase_env = "PAI_PASS"')
    config = load_config(write(tmp_path, text))
    monkeypatch.delenv("PAI_PASS", raising=False)
    with pytest.raises(ConfigError, match="PAI_PASS is not set"):
        config.pki.passphrase()
    monkeypatch.setenv("PAI_PASS", "s3cret")
    assert config.pki.passphrase() == b"s3cret"
    (tmp_path / "pass.txt").write_text("from-file\n")
    text = MINIMAL.replace('pid = "8000"', 'pid = "8000"\npai_key_passphrase_file = "pass.txt"')
    assert load_config(write(tmp_path, text)).pki.passphrase() == b"from-file"
    text = MINIMAL.replace('pid = "8000"', 'pid = "8000"\npai_key_passphrase = "x"')
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(write(tmp_path, text))
