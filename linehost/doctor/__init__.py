"""`linehost doctor`: is this host ready to run its line? One row per check, each with a fix.

`report` holds the rows and the table, `host` the checks of the config, ports and services,
`pki` those of the PAI, its key, the chain, the clock and the CD.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path

from linehost.doctor.host import (
    check_broker,
    check_config,
    check_database,
    check_disk,
    check_key_proof_row,
    check_ports,
    check_printer,
)
from linehost.doctor.pki import (
    check_clock,
    check_line_cd,
    check_paa_chain,
    check_pai,
    check_pai_key,
)
from linehost.doctor.report import DEFAULT_LIMITS, Check, Limits, Status


async def diagnose(path: Path, limits: Limits = DEFAULT_LIMITS) -> list[Check]:
    """Every check for the station config at `path`, in the order a new line is brought up."""
    row, config = check_config(path)
    if config is None:
        later = ("jig ports", "PAI", "PAI key", "PAA chain", "clock", "CD", "database", "broker",
                 "label printer", "free disk")  # fmt: skip
        return [row, *(Check(name, Status.SKIPPED, "the config is not valid") for name in later)]
    rows = [row]
    proof = check_key_proof_row(config)
    if proof is not None:
        rows.append(proof)
    rows.extend(await check_ports(config))
    pai_row, pai = check_pai(config.pki)
    rows.append(pai_row)
    rows.append(await check_pai_key(config.pki, pai))
    rows.append(check_paa_chain(config.pki, pai))
    rows.append(check_clock(pai, margin=config.pki.pai_expiry_warning))
    rows.append(check_line_cd(config))
    rows.append(await _timed("database", check_database(config), limits.timeout))
    rows.append(await _timed("broker", check_broker(config), limits.timeout))
    rows.append(await _timed("label printer", check_printer(config), limits.timeout))
    rows.append(check_disk(config, limits.min_free_mb))
    return rows


async def _timed(name: str, check: Awaitable[Check], seconds: float) -> Check:
    try:
        async with asyncio.timeout(seconds):
            return await check
    except TimeoutError:
        return Check(name, Status.FAIL, f"no answer in {seconds:.0f} s", "check host and port")
