"""The one SoftHSM2 token of a test session (fixture `softhsm` in tests/conftest.py).

SoftHSM reads its configuration once per process, at C_Initialize: a second token directory in
the same process would be invisible and its login state shared, so every test module uses this
single session-scoped token.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from linehost.pki.devpki import DevPki, init_dev

from .builders import run_tool, write

try:
    import pkcs11  # noqa: F401 (the hsm extra is optional; the fixture reports it)

    HAVE_PKCS11 = True
except ImportError:
    HAVE_PKCS11 = False

MODULE = os.environ.get("SOFTHSM2_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
TOKEN = "linehost-test"
PIN = "1234"


def unavailable(reason: str) -> None:
    """Skip loudly, or fail when CI=true: CI must run the HSM tests."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"SoftHSM2 tests cannot run on CI: {reason}")
    pytest.skip(f"SoftHSM2 tests skipped: {reason}")


@dataclass(frozen=True)
class SoftHsm:
    """A SoftHSM2 token holding the development PAI key (label pai, id 01) and others."""

    module: str
    pki: DevPki
    workdir: Path


def make_softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """One token for the session: SoftHSM reads its config once, at C_Initialize."""
    if not HAVE_PKCS11:
        unavailable("python-pkcs11 is not installed (the hsm extra)")
    util = shutil.which("softhsm2-util")
    if util is None or not Path(MODULE).exists():
        unavailable(f"softhsm2-util or {MODULE} missing (apt-get install softhsm2)")
    if shutil.which("openssl") is None:
        unavailable("openssl CLI missing")
    assert util is not None
    work = tmp_path_factory.mktemp("softhsm")
    (work / "tokens").mkdir()
    conf = write(
        work / "softhsm2.conf",
        f"directories.tokendir = {work / 'tokens'}\n"
        "objectstore.backend = file\nlog.level = ERROR\n",
    )
    old_conf = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        init = run_tool(
            util, "--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", "5678"
        )
        assert init.returncode == 0, init.stdout + init.stderr
        pki = init_dev(work / "pki")
        other = init_dev(work / "other")
        for label, key_id, key in (
            ("pai", "01", pki.pai_key),
            ("other", "02", other.pai_key),
            ("doomed", "03", pki.pai_key),
        ):
            pk8 = work / f"{label}.pk8"
            conv = run_tool("openssl", "pkcs8", "-topk8", "-nocrypt", "-in", key, "-out", pk8)
            assert conv.returncode == 0, conv.stderr
            imp = run_tool(
                util, "--import", pk8, "--token", TOKEN, "--label", label, "--id", key_id,
                "--pin", PIN,
            )  # fmt: skip
            assert imp.returncode == 0, imp.stdout + imp.stderr
            pk8.unlink()
        yield SoftHsm(MODULE, pki, work)
    finally:
        if old_conf is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = old_conf
