"""`[onboarding]` / `[labels]` config, and the CLI's onboarding commands on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from linehost.config import load_config
from linehost.errors import ConfigError
from linehost.onboarding.service import Onboarding
from tests.e2e.harness import linehost

BASE = """
[line]
name = "l1"
[database]
url = "sqlite+aiosqlite:///line.db"
[pki]
pai_cert = "pki/pai.pem"
pai_key = "pki/pai.key"
vid = "FFF1"
pid = "8000"
"""


def write(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "line.toml"
    path.write_text(BASE + extra)
    return path


def test_onboarding_is_off_without_the_section(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.onboarding is None
    assert Onboarding.from_config(config) is None


def test_onboarding_section_defaults_and_paths(tmp_path: Path) -> None:
    (tmp_path / "k.key").write_text("ab" * 32)
    config = load_config(
        write(tmp_path, '[onboarding]\npasscode_key_file = "k.key"\n[labels]\nfolder = "out"\n')
    )
    section = config.onboarding
    assert section is not None
    assert section.discriminator == "sequential"
    assert section.spake2p_iterations == 10_000
    assert section.serial_template == "{line}-{seq:06d}"
    assert not section.send_passcode
    assert section.passcode_key_file == tmp_path / "k.key"
    assert config.labels is not None
    assert config.labels.folder == tmp_path / "out"
    assert Onboarding.from_config(config) is not None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[onboarding]\n", "passcode_key_file or passcode_key_env"),
        ('[onboarding]\npasscode_key_env = "K"\ncolour = 1\n', "onboarding.colour: unknown key"),
        ('[onboarding]\npasscode_key_env = "K"\ndiscriminator = "odd"\n', "discriminator"),
        ('[onboarding]\npasscode_key_env = "K"\nspake2p_iterations = 999\n', "spake2p_iterations"),
        ('[onboarding]\npasscode_key_env = "K"\nserial_template = "{line}"\n', "{seq} or {uid}"),
        ('[onboarding]\npasscode_key_env = "K"\nserial_template = "{lot}-{seq}"\n', "lot"),
        ('[labels]\nprinter = "host:99999"\n', "HOST:PORT"),
    ],
)
def test_bad_onboarding_config_names_the_key(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        load_config(write(tmp_path, extra))


def test_missing_key_is_a_clear_error(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[onboarding]\npasscode_key_env = "LH_NO_SUCH_KEY"\n'))
    with pytest.raises(ConfigError, match="LH_NO_SUCH_KEY"):
        Onboarding.from_config(config)


def test_include_onboarding_needs_the_section(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    result = linehost("audit", "--config", path, "export", "--include-onboarding", check=False)
    assert result.returncode == 2
    assert "--include-onboarding needs the [onboarding] section" in result.stderr
    assert "Traceback" not in result.stderr


def test_label_needs_a_destination(tmp_path: Path) -> None:
    path = write(tmp_path, '[onboarding]\npasscode_key_env = "K"\n')
    result = linehost("label", "--config", path, "0011223344556677", check=False)
    assert result.returncode == 2
    assert "give --out DIR" in result.stderr
