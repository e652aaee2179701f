"""Config for ECC608 letter jigs: `[[jigs]] protocol`, `[protocol] letter_gap`,
`[pki] allow_without_pop`, and the start-up gate of `linehost run`."""

from __future__ import annotations

from pathlib import Path

import pytest

from linehost.app import check_key_proof, timing_of
from linehost.config import load_config
from linehost.errors import ConfigError

LETTER_LINE = """
[line]
name = "l1"
[pki]
pai_cert = "pki/pai.pem"
pai_key = "pki/pai.key"
vid = "fff1"
pid = "8000"
{pki}
[protocol]
letter_gap = 0.05
{protocol_keys}
[[jigs]]
name = "j1"
station = "st1"
port = "jigs/j1"
[[jigs]]
name = "e1"
station = "st2"
port = "jigs/e1"
protocol = "{protocol}"
"""


def write(
    tmp_path: Path, *, pki: str = "", protocol: str = "ecc608-letters", protocol_keys: str = ""
) -> Path:
    path = tmp_path / "line.toml"
    path.write_text(LETTER_LINE.format(pki=pki, protocol=protocol, protocol_keys=protocol_keys))
    return path


def test_letter_jigs_load_with_their_keys(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, pki="allow_without_pop = true"))
    assert [jig.protocol for jig in config.jigs] == ["v1", "ecc608-letters"]
    assert config.pki.allow_without_pop is True
    assert timing_of(config).letter_gap == 0.05
    check_key_proof(config)  # allowed: no error


def test_without_allow_without_pop_the_line_refuses_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path)
    config = load_config(path)  # other commands (audit export) still read it
    assert config.pki.allow_without_pop is False
    with pytest.raises(ConfigError) as exc:
        check_key_proof(config)
    message = str(exc.value)
    assert "\n" not in message
    assert str(path) in message
    assert "st2/e1" in message
    assert "allow_without_pop = true" in message


def test_an_est_issuer_cannot_serve_letter_jigs(tmp_path: Path) -> None:
    est = (
        'allow_without_pop = true\nissuer = "est"\n[pki.est]\nurl = "https://gw:8443"\n'
        'client_cert = "c.pem"\nclient_key = "c.key"\nserver_ca = "ca.pem"\n'
    )
    config = load_config(write(tmp_path, pki=est))
    with pytest.raises(ConfigError, match="enrols CSRs only"):
        check_key_proof(config)


def test_letter_jigs_cannot_meet_attest_require(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, pki="allow_without_pop = true", protocol_keys='attest = "require"')
    )
    with pytest.raises(ConfigError) as exc:
        check_key_proof(config)
    assert "\n" not in str(exc.value)
    assert "attest = 'when_offered'" in str(exc.value)
    relaxed = 'attest = "when_offered"'
    check_key_proof(
        load_config(write(tmp_path, pki="allow_without_pop = true", protocol_keys=relaxed))
    )


def test_a_v1_only_line_needs_no_gate(tmp_path: Path) -> None:
    check_key_proof(load_config(write(tmp_path, protocol="v1")))


def test_an_unknown_protocol_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"jigs\[1\]\.protocol|jigs.1.protocol"):
        load_config(write(tmp_path, protocol="ecc508"))
