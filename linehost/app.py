"""Assembles a line from its config: issuer, store, one runner per jig, the supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import structlog

from linehost.config import LineConfig
from linehost.line.runner import JigRunner, JigSpec
from linehost.line.status import StatusListener, utcnow
from linehost.line.supervisor import LineSupervisor
from linehost.pki.issuer import Issuer
from linehost.pki.local import LocalIssuer
from linehost.pki.signer import FileKeySigner
from linehost.protocol.host import Timing
from linehost.store.store import Store

_log = structlog.get_logger("linehost.app")


async def open_issuer(config: LineConfig) -> Issuer:
    """The configured issuer, checked (PAI conforms, key matches) before any jig starts."""
    pki = config.pki
    signer = FileKeySigner.load(Path(pki.pai_key), passphrase=pki.passphrase())
    return LocalIssuer.load(
        pki.pai_cert,
        signer,
        pki.vid,
        pki.pid,
        cn_template=pki.cn_template,
        paa_cert=pki.paa_cert,
    )


@contextlib.asynccontextmanager
async def open_line_store(config: LineConfig) -> AsyncIterator[Store]:
    """The store for this line, migrated when allowed, interrupted attempts recorded."""
    store = await Store.open(
        config.database.url, line=config.line.name, auto_migrate=config.database.auto_migrate
    )
    try:
        recovered = await store.recover_interrupted(utcnow())
        if recovered:
            _log.warning("interrupted_attempts_recorded", count=recovered)
        yield store
    finally:
        await store.close()


def timing_of(config: LineConfig) -> Timing:
    """Protocol timing from `[protocol]`."""
    p = config.protocol
    return Timing(
        sync_interval=p.sync_interval,
        csr_timeout=p.csr_timeout,
        result_timeout=p.result_timeout,
        empty_after_syncs=p.empty_after_syncs,
    )


async def run_line(
    config: LineConfig, stop: asyncio.Event, listener: StatusListener | None = None
) -> list[JigRunner]:
    """Run every jig of the line until `stop` is set; return the runners (for their counts)."""
    issuer = await open_issuer(config)
    try:
        async with open_line_store(config) as store:
            timing = timing_of(config)
            runners = [
                JigRunner(
                    JigSpec(config.line.name, jig.station, jig.name, jig.port, jig.baudrate),
                    issuer=issuer,
                    store=store,
                    timing=timing,
                    listener=listener,
                    allow_reprovision=config.pki.allow_reprovision,
                )
                for jig in config.jigs
            ]
            _log.info(
                "line_started",
                line=config.line.name,
                jigs=len(runners),
                database=_redact(config.database.url),
            )
            supervisor = LineSupervisor(runners, shutdown_grace=config.line.shutdown_grace)
            await supervisor.run(stop)
            return runners
    finally:
        await issuer.aclose()


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGINT and SIGTERM set `stop` (staged shutdown) instead of killing the loop."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_signal, stop, sig)


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    _log.info("stop_requested", signal=sig.name)
    stop.set()


def _redact(url: str) -> str:
    """A database URL without its password, for logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}@{host}"
    return url
