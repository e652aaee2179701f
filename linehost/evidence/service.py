"""What `linehost run` starts from `[audit]`: the checkpointer and its MQTT publisher."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from linehost.config import LineConfig
from linehost.evidence.checkpoint import open_audit_key
from linehost.evidence.checkpointer import Checkpointer
from linehost.evidence.publish import MqttCheckpoints


class Evidence:
    """The running checkpointer of a line (and its MQTT publisher, with `[mqtt]`)."""

    def __init__(self, checkpointer: Checkpointer, publisher: MqttCheckpoints | None) -> None:
        """Hold the parts; `start_evidence` builds them."""
        self.checkpointer = checkpointer
        self.publisher = publisher

    async def close(self) -> None:
        """A final checkpoint of every committed row, published; then stop."""
        try:
            await self.checkpointer.close()
        finally:
            if self.publisher is not None:
                await self.publisher.close()


async def start_evidence(config: LineConfig, engine: AsyncEngine) -> Evidence | None:
    """Open the audit key and start checkpointing the line (None without `[audit]`);
    raise ConfigError / PkiError / StoreError before any jig starts."""
    audit = config.audit
    if audit is None:
        return None
    # An HSM login blocks: keep the loop free.
    key = await asyncio.to_thread(
        open_audit_key,
        audit.key,
        passphrase=audit.passphrase(),
        pkcs11_module=audit.pkcs11_module,
        pkcs11_pin=audit.pin(),
    )
    publisher = None
    if config.mqtt is not None:
        publisher = MqttCheckpoints(config.mqtt, config.line.name)
    checkpointer = Checkpointer(
        engine,
        config.line.name,
        key,
        audit.checkpoint_dir,
        every=audit.checkpoint_every,
        interval=audit.checkpoint_interval,
        sinks=[publisher] if publisher is not None else [],
    )
    try:
        await checkpointer.start()
    except BaseException:
        await key.aclose()
        raise
    if publisher is not None:
        publisher.start()
    return Evidence(checkpointer, publisher)
