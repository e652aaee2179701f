"""Assembles a line from its config: issuer, store, one runner per jig, the supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import structlog
from cryptography.hazmat.primitives import serialization

from linehost.config import LineConfig
from linehost.errors import ConfigError, LinehostError
from linehost.evidence.service import start_evidence
from linehost.line.controls import LineControls
from linehost.line.hold import JigHolds
from linehost.line.operations import LineOperations, jig_steps, with_work_order
from linehost.line.provisioning import NO_ONBOARDING, Provisioner
from linehost.line.runner import JigRunner, JigSpec, LineContext
from linehost.line.supervisor import LineSupervisor
from linehost.line.workorder import NO_WORK_ORDER, WorkOrder, checked_work_order
from linehost.mqtt.payloads import result_payload
from linehost.observers import AttemptObserver, fan_out
from linehost.onboarding.service import Onboarding
from linehost.pki.bundle import BundleIssuer, format_counts
from linehost.pki.cd import CertificationDeclaration, load_cd
from linehost.pki.issuer import Issuer
from linehost.pki.local import open_local_issuer
from linehost.pki.pai import load_certificate
from linehost.protocol.factory import WITHOUT_POP
from linehost.protocol.session import Timing
from linehost.records import utcnow
from linehost.store.store import Store
from linehost.transport.serial import ensure_fd_limit

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from linehost.mqtt.progress import CrlSource
    from linehost.mqtt.relay import MqttRelay
    from linehost.opcua.server import OpcuaServer
    from linehost.pki.crl_keeper import CrlKeepers
    from linehost.sparkplug.node import EdgeNode

_log = structlog.get_logger("linehost.app")


async def open_issuer(config: LineConfig) -> Issuer:
    """The configured issuer, checked before any jig starts: the PAI conforms, is current,
    chains to the PAA (when given) and matches its key; raise PkiError / ConfigError."""
    pki = config.pki
    if pki.issuer == "bundle":
        from linehost.store.bundles import BundlePool
        from linehost.store.engine import create_engine

        return BundleIssuer.load(
            pki.pai_cert,
            pki.vid,
            pki.pid,
            pool=BundlePool(create_engine(config.database.url), owns_engine=True),
            line=config.line.name,
            paa_cert=pki.paa_cert,
        )
    if pki.issuer == "est":
        from linehost.pki.est import open_est_issuer

        work_order = config.work_order.id if config.work_order is not None else None
        return await open_est_issuer(pki, work_order=work_order)
    return await open_local_issuer(pki)


def line_cd(config: LineConfig, work_order: WorkOrder | None) -> CertificationDeclaration | None:
    """The Certification Declaration every device gets: the work order's own (checked when it
    was opened), else `[pki] cd_file` (checked here), else None."""
    if work_order is not None and work_order.cd is not None:
        return work_order.cd
    if config.pki.cd_file is None:
        return None
    return load_cd(config.pki.cd_file)


async def log_pki(config: LineConfig, issuer: Issuer, cd: CertificationDeclaration | None) -> None:
    """Say at start-up what the line issues with; for bundles, how much of each pool is left."""
    pki = config.pki
    key = pki.pai_key if pki.issuer == "local" else None
    _log.info(
        "pki_ready",
        issuer=pki.issuer,
        key_source=None if key is None else ("pkcs11" if key.startswith("pkcs11:") else "file"),
        pai_sha256=issuer.pai_sha256[:16],
        cd=cd is not None,
        cd_sha256=cd.sha256[:16] if cd is not None else None,
    )
    if isinstance(issuer, BundleIssuer):
        try:
            for line in format_counts(await issuer.counts()):
                _log.info("bundle_pool", detail=line)
        except LinehostError as exc:
            _log.warning("bundle_pool_unreadable", detail=str(exc))


def check_pais(config: LineConfig) -> None:
    """Check the previous PAIs (they conform and chain; PkiError otherwise) and warn when the
    active PAI expires within `pki.pai_expiry_warning`."""
    from linehost.pki import lifecycle

    pais = lifecycle.configured_pais(config.pki)
    active = pais[0][1]
    warning = lifecycle.expiry_warning(active, config.pki.pai_expiry_warning)
    if warning is not None:
        _log.warning(
            "pai_expires_soon",
            pai=str(config.pki.pai_cert),
            not_after=active.certificate.not_valid_after_utc.isoformat(),
            detail=warning,
        )
    if len(pais) > 1:
        _log.info("pais_configured", active=active.sha256[:16], previous=len(pais) - 1)


@contextlib.asynccontextmanager
async def open_line_store(config: LineConfig) -> AsyncIterator[Store]:
    """The store for this line, migrated when allowed, interrupted attempts recorded."""
    store = await Store.open(
        config.database.url,
        line=config.line.name,
        auto_migrate=config.database.auto_migrate,
        result_payload=result_payload,
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
        letter_gap=p.letter_gap,
        attest=p.attest,
    )


def check_key_proof(config: LineConfig) -> None:
    """Refuse (ConfigError, one line) a line whose jigs would get DACs for bare public keys
    unless `[pki] allow_without_pop` says so, or whose issuer needs a CSR they cannot give."""
    bare = [jig for jig in config.jigs if jig.protocol in WITHOUT_POP]
    if not bare:
        return
    where = f"{config.source}: " if config.source is not None else ""
    jig = bare[0]
    named = f"jig {jig.station}/{jig.name} (protocol = {jig.protocol!r})"
    if not config.pki.allow_without_pop:
        raise ConfigError(
            f"{where}{named} sends a bare public key (no proof of possession); "
            "set [pki] allow_without_pop = true to issue DACs without it"
        )
    if config.pki.issuer == "est":
        raise ConfigError(
            f"{where}{named} has no CSR, and [pki] issuer = 'est' enrols CSRs only; "
            "use issuer = 'local' or 'bundle' for it"
        )
    if config.protocol.attest == "require":
        # Letter firmware cannot answer a challenge: every DAC it got would end failed.
        raise ConfigError(
            f"{where}{named} cannot attest, and [protocol] attest = 'require' confirms no DAC "
            "without an attestation; use attest = 'when_offered' on a line with letter jigs"
        )


def root_key_pem(config: LineConfig) -> str | None:
    """The PAA's public key as PEM (`[pki] paa_cert`), delivered by protocols that store it."""
    if config.pki.paa_cert is None:
        return None
    paa = load_certificate(config.pki.paa_cert, "PAA")
    return (
        paa.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


async def run_line(
    config: LineConfig,
    stop: asyncio.Event,
    observer: AttemptObserver | None = None,
    count_database: Callable[[AsyncEngine], None] | None = None,
) -> list[JigRunner]:
    """Run every jig of the line until `stop` is set; return the runners (for their counts).

    `observer` hears every jig's changes and attempts, besides the configured outputs.
    """
    check_key_proof(config)
    config = with_work_order(config)
    work_order = checked_work_order(config)  # its CD: signature and VID/PID, before any jig
    ops = LineOperations(config, work_order)
    ensure_fd_limit(len(config.jigs))
    cd = line_cd(config, work_order)
    onboarding = Onboarding.from_config(config)  # checks the passcode key before any jig
    issuer = await open_issuer(config)  # refuses an expired (or not yet valid) active PAI
    try:
        check_pais(config)
        async with open_line_store(config) as store:
            if count_database is not None:  # benchmarks: round trips per device
                count_database(store.engine)
                if store.writer.engine is not store.engine:
                    count_database(store.writer.engine)
            await log_pki(config, issuer, cd)
            timing = timing_of(config)
            crl_keeper = await _start_crl_keeper(config, store, issuer, ops)
            try:
                relay = open_relay(config, store, crl_keeper)  # publishes the keeper's CRL
                edge_node = open_edge_node(config, store)
                holds = JigHolds()
                controls = LineControls(
                    store,
                    holds,
                    jigs=[(j.station, j.name) for j in config.jigs],
                    gate=ops.gate,
                    check_work_order=functools.partial(check_own_work_order, config),
                )
                opcua = open_opcua(config, store, controls)
                evidence = await start_evidence(config, store.engine)
                if evidence is not None:  # this host's commits go to the tree without a read
                    store.writer.add_commit_listener(evidence.checkpointer.rows_committed)
            except BaseException:
                if crl_keeper is not None:
                    await crl_keeper.aclose()
                raise
            await ops.start(store)
            if opcua is not None:
                await opcua.start()
            observers = fan_out([observer, relay, edge_node, opcua, *ops.observers()])
            provisioner = Provisioner(
                issuer,
                store,
                allow_reprovision=config.pki.allow_reprovision,
                onboarding=onboarding if onboarding is not None else NO_ONBOARDING,
                cd_b64=cd.b64 if cd is not None else None,
                cd_sha256=cd.sha256 if cd is not None else None,
                gate=ops.gate if ops.gate is not None else NO_WORK_ORDER,
                root_key_pem=root_key_pem(config),
                attest=config.protocol.attest,
            )
            context = LineContext(provisioner, timing, observers, holds=holds)
            runners = [
                JigRunner(
                    JigSpec(
                        config.line.name,
                        jig.station,
                        jig.name,
                        jig.port,
                        jig.baudrate,
                        jig.protocol,
                    ),
                    context,
                    steps=jig_steps(config, jig),
                )
                for jig in config.jigs
            ]
            _log.info(
                "line_started",
                line=config.line.name,
                jigs=len(runners),
                database=_redact(config.database.url),
            )
            if relay is not None:
                relay.start()
            if edge_node is not None:
                edge_node.start()
            try:
                supervisor = LineSupervisor(runners, shutdown_grace=config.line.shutdown_grace)
                await supervisor.run(stop)
            finally:
                if crl_keeper is not None:
                    await crl_keeper.aclose()
                await ops.close()
                if opcua is not None:
                    await opcua.close()
                if evidence is not None:
                    await evidence.close()  # the final checkpoint, before MQTT goes
                if relay is not None:
                    # Staged: runners are done; drain the outbox, publish offline, disconnect.
                    await relay.close()
                if edge_node is not None:
                    await edge_node.close()  # its own drain, DDEATHs and NDEATH
            return runners
    finally:
        if onboarding is not None:
            await onboarding.aclose()  # labels still printing
        await issuer.aclose()


async def _start_crl_keeper(
    config: LineConfig, store: Store, issuer: Issuer, ops: LineOperations
) -> CrlKeepers | None:
    """The CRL keeper of `[pki] crl_dir` (None without it), its first CRL signed."""
    if config.pki.crl_dir is None:
        return None
    from linehost.pki.crl_keeper import start_crl_keeper
    from linehost.pki.local import LocalIssuer
    from linehost.store.revocations import RevocationLedger

    metrics = ops.metrics
    return await start_crl_keeper(
        config.pki,
        RevocationLedger(store.engine),
        issuer.signer if isinstance(issuer, LocalIssuer) else None,
        on_remaining=metrics.crl_to_next_update.set if metrics is not None else None,
    )


def open_relay(
    config: LineConfig, store: Store, crl_keeper: CrlSource | None = None
) -> MqttRelay | None:
    """The MQTT relay when `[mqtt]` is configured (secrets and TLS files are read here); it
    publishes what `crl_keeper` signs."""
    if config.mqtt is None:
        return None
    from linehost.mqtt.progress import HostFacts
    from linehost.mqtt.relay import MqttRelay
    from linehost.store.audit import Audit

    wo = config.work_order
    work_order = (wo.id, wo.quantity) if wo else None
    facts = HostFacts(Audit(store.engine), config.line.name, work_order, crl_keeper)
    return MqttRelay(config.mqtt, store, line=config.line.name, jigs=len(config.jigs), facts=facts)


def open_edge_node(config: LineConfig, store: Store) -> EdgeNode | None:
    """The Sparkplug B edge node when `[sparkplug]` is configured."""
    if config.sparkplug is None:
        return None
    from linehost.mqtt.progress import HostFacts
    from linehost.sparkplug.node import EdgeNode
    from linehost.store.audit import Audit
    from linehost.store.sparkplug import SparkplugStore

    wo = config.work_order
    facts = HostFacts(Audit(store.engine), config.line.name, (wo.id, wo.quantity) if wo else None)
    return EdgeNode(
        config.sparkplug,
        config.sparkplug.broker(config.mqtt),
        SparkplugStore(store.engine, config.line.name),
        line=config.line.name,
        jigs=[(jig.station, jig.name) for jig in config.jigs],
        work_order=facts.work_order if wo else None,
    )


def open_opcua(config: LineConfig, store: Store, controls: LineControls) -> OpcuaServer | None:
    """The OPC UA server when `[opcua]` is configured (user passwords are read here)."""
    if config.opcua is None:
        return None
    from linehost.mqtt.progress import HostFacts
    from linehost.opcua.server import OpcuaServer
    from linehost.store.audit import Audit

    wo = config.work_order
    facts = HostFacts(Audit(store.engine), config.line.name, (wo.id, wo.quantity) if wo else None)
    return OpcuaServer(
        config.opcua,
        line=config.line.name,
        jigs=[(jig.station, jig.name) for jig in config.jigs],
        work_order=facts.work_order if wo else None,
        controls=controls,
    )


def check_own_work_order(config: LineConfig, work_order: str) -> None:
    """Before a work order is opened from outside (OPC UA `WorkOrder.Open`): the line's own
    work order is checked again as at start-up (its CD file: signature, VID/PID); PkiError
    when it no longer passes. Any other work order names no CD here."""
    if config.work_order is not None and config.work_order.id == work_order:
        checked_work_order(config)


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
