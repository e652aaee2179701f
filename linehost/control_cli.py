"""`linehost workorder close`: a supervisor operation from the shell, audited like OPC UA ones."""

from __future__ import annotations

import asyncio
import getpass
from dataclasses import dataclass
from pathlib import Path

from linehost.config import load_config
from linehost.errors import ConfigError
from linehost.line.controls import Caller, LineControls
from linehost.line.hold import JigHolds
from linehost.mqtt.payloads import result_payload
from linehost.store.store import Store

VIA = "cli"


@dataclass(frozen=True, slots=True)
class WorkOrderClose:
    """`workorder close` as parsed: the config, and the work order if not its [work_order]."""

    config: Path
    id: str | None = None


def close_work_order(args: WorkOrderClose) -> int:
    """Close the configured (or given) work order; every host stops provisioning against it."""
    config = load_config(args.config)
    work_order = args.id or (config.work_order.id if config.work_order else None)
    if work_order is None:
        raise ConfigError(f"{args.config}: no [work_order] section; give --id")
    caller = Caller(VIA, getpass.getuser())

    async def go() -> None:
        store = await Store.open(
            config.database.url,
            line=config.line.name,
            auto_migrate=config.database.auto_migrate,
            result_payload=result_payload,
        )
        try:
            # The running hosts see it in the database: at once for new claims, within their
            # work_order_poll for what their jigs show.
            await LineControls(store, JigHolds(), jigs=[]).close_work_order(caller, work_order)
        finally:
            await store.close()

    asyncio.run(go())
    print(f"work order {work_order} closed by {caller.user}: no more devices against it")
    return 0
