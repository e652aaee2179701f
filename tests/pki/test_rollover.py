"""PAI rollover and work-order CDs, below the CLI: the `[pki]` forms, where each PAI's CRL goes,
the expiry margin, and the CD checks (signature by a configured CD signer, VID/PID)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from linehost.config import load_config
from linehost.errors import ConfigError, PkiError
from linehost.line.workorder import load_work_order_cd
from linehost.pki import lifecycle
from linehost.pki.cd import check_cd_for, check_cd_signature, load_cd
from linehost.pki.devpki import init_dev, issue_dev_pai
from linehost.pki.pai import load_certificate

SINGLE = """
[line]
name = "l1"
[pki]
pai_cert = "a/pai.pem"
pai_key = "a/pai.key"
paa_cert = "a/paa.pem"
vid = "FFF1"
pid = "8000"
"""
ROLLED = SINGLE.replace('"a/pai', '"b/pai') + (
    '[[pki.previous_pais]]\npai_cert = "a/pai.pem"\npai_key = "a/pai.key"\n'
)


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rollover")
    init_dev(root / "a", cd=True)
    issue_dev_pai(root / "a", root / "b")
    init_dev(root / "other", cd=True)  # another CD signer
    init_dev(root / "p8001", pid="8001", cd=True)
    return root


def _config(root: Path, text: str, name: str = "line.toml") -> Path:
    path = root / name
    path.write_text(text)
    return path


def test_single_pai_config_is_one_active_pai(pkis: Path) -> None:
    config = load_config(_config(pkis, SINGLE))
    [only] = config.pki.pais()
    assert only.active
    assert only.pai_cert == pkis / "a/pai.pem"
    assert only.pai_key == str(pkis / "a/pai.key")
    assert config.pki.pai_expiry_warning == timedelta(days=30)


def test_rolled_over_config_lists_active_first(pkis: Path) -> None:
    config = load_config(_config(pkis, ROLLED))
    active, previous = config.pki.pais()
    assert (active.active, active.pai_cert) == (True, pkis / "b/pai.pem")
    assert (previous.active, previous.pai_cert) == (False, pkis / "a/pai.pem")
    pais = lifecycle.configured_pais(config.pki)
    assert pais[0][1].sha256 != pais[1][1].sha256
    signer = lifecycle.open_crl_signer(config.pki, pais[1][1].certificate, previous)
    assert signer.certificate == pais[1][1].certificate


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SINGLE + '[[pki.previous_pais]]\npai_cert = "a/pai.pem"\n', "named twice"),
        (ROLLED + "crl_signer_cert = 'x.pem'\n", "crl_signer_cert and crl_signer_key go together"),
        (ROLLED + "pai_key_passphrase = 'x'\n", "pai_key_passphrase"),
        (
            SINGLE + '[work_order]\nid = "W"\nquantity = 1\ncd_file = "a/cd.der"\n',
            "work_order.cd_file needs pki.cd_signer_certs",
        ),
    ],
)
def test_bad_rollover_and_cd_config_is_one_line(pkis: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_config(pkis, text, "bad.toml"))
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_previous_pai_without_a_key_cannot_sign_its_crl(pkis: Path) -> None:
    text = ROLLED.replace('pai_key = "a/pai.key"\n', "")
    config = load_config(_config(pkis, text, "nokey.toml"))
    keys, pai = lifecycle.configured_pais(config.pki)[1]
    with pytest.raises(PkiError, match=r"no key to sign its CRL \(set pki\.previous_pais\.pai_key"):
        lifecycle.open_crl_signer(config.pki, pai.certificate, keys)


def test_crl_paths_one_per_pai(pkis: Path, tmp_path: Path) -> None:
    config = load_config(_config(pkis, ROLLED))
    pais = [p for _, p in lifecycle.configured_pais(config.pki)]
    stems = [lifecycle.crl_file_stem(p) for p in pais]
    assert lifecycle.crl_paths(tmp_path / "x.crl", pais[:1]) == [tmp_path / "x.crl"]
    assert lifecycle.crl_paths(tmp_path, pais) == [tmp_path / f"{s}.crl" for s in stems]
    assert lifecycle.crl_paths(tmp_path / "x.pem", pais) == [
        tmp_path / f"x-{s.removeprefix('pai-')}.pem" for s in stems
    ]


def test_expiry_warning_inside_the_margin_only(pkis: Path, tmp_path: Path) -> None:
    soon = datetime.now(UTC) + timedelta(days=10)
    issue_dev_pai(pkis / "a", tmp_path / "short", not_after=soon)
    config = load_config(
        _config(pkis, SINGLE.replace('"a/pai', f'"{tmp_path}/short/pai'), "short.toml")
    )
    pai = lifecycle.issuing_pai(config.pki)
    warning = lifecycle.expiry_warning(pai, timedelta(days=30))
    assert warning is not None
    assert "days left, pki.pai_expiry_warning is 30 days" in warning
    assert lifecycle.expiry_warning(pai, timedelta(days=5)) is None


def test_cd_signature_and_vid_pid_checks(pkis: Path, tmp_path: Path) -> None:
    cd = load_cd(pkis / "a/cd.der")
    signer = load_certificate(pkis / "a/cd-signer.pem", "CD signer")
    other = load_certificate(pkis / "other/cd-signer.pem", "CD signer")
    check_cd_signature(cd, [other, signer])
    check_cd_for(cd, "FFF1", "8000")
    with pytest.raises(PkiError, match="unknown CD signer"):
        check_cd_signature(cd, [other])
    with pytest.raises(PkiError, match=r"certifies VID FFF1 PID 8000, not FFF1/8001"):
        check_cd_for(cd, "FFF1", "8001")
    data = bytearray((pkis / "a/cd.der").read_bytes())
    data[-1] ^= 0x01
    (tmp_path / "bad.der").write_bytes(bytes(data))
    with pytest.raises(PkiError, match=r"bad signature"):
        check_cd_signature(load_cd(tmp_path / "bad.der"), [signer])
    shutil.copy(pkis / "p8001/cd.der", tmp_path / "p8001.der")
    with pytest.raises(PkiError) as caught:
        load_work_order_cd(
            "WO-1", tmp_path / "p8001.der", "FFF1", "8000",
            [pkis / "a/cd-signer.pem", pkis / "p8001/cd-signer.pem"],
        )  # fmt: skip
    assert str(caught.value) == (
        f"work order WO-1: CD file {tmp_path / 'p8001.der'}: "
        "certifies VID FFF1 PID 8001, not FFF1/8000"
    )


def test_select_pai_by_skid(pkis: Path) -> None:
    config = load_config(_config(pkis, ROLLED))
    (active_keys, active), (old_keys, old) = lifecycle.configured_pais(config.pki)
    assert lifecycle.select_pai(config.pki, None)[1].sha256 == active.sha256
    skid = lifecycle.crl_file_stem(old).removeprefix("pai-")
    keys, found = lifecycle.select_pai(config.pki, skid.lower())
    assert (keys, found.sha256) == (old_keys, old.sha256)
    assert active_keys.pai_cert != keys.pai_cert
    with pytest.raises(PkiError, match=r"--pai 00: no configured PAI has that SKID"):
        lifecycle.select_pai(config.pki, "00")
