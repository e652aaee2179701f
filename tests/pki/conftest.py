"""Shared PKI fixtures: a development PAA + PAI on disk and an issuer over it."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest

from linehost.pki.devpki import DevPki, init_dev
from linehost.pki.local import LocalIssuer
from linehost.pki.signer import FileKeySigner


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """One development PKI for the whole session (read-only for tests)."""
    return init_dev(tmp_path_factory.mktemp("devpki") / "pki")


@pytest.fixture
async def issuer(dev_pki: DevPki) -> AsyncIterator[LocalIssuer]:
    """A LocalIssuer over the development PAI with its key file."""
    issuer = LocalIssuer.load(
        dev_pki.pai_cert,
        FileKeySigner.load(dev_pki.pai_key),
        "FFF1",
        "8000",
        paa_cert=dev_pki.paa_cert,
    )
    yield issuer
    await issuer.aclose()


@pytest.fixture(scope="session")
def openssl() -> str:
    """Path of the openssl CLI, the independent verifier."""
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("openssl CLI not installed: the independent verification cannot run")
    return path
