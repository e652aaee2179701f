"""`linehost pki import-bundle` and `linehost audit bundles`: the pre-issued DAC pool by hand."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from linehost.config import load_config
from linehost.pki.bundle import ImportReport, format_counts
from linehost.pki.bundle import import_bundle as run_import
from linehost.pki.local import load_certificate
from linehost.pki.profile import check_chain_or_raise
from linehost.progress import Meter, progress_display
from linehost.store.bundles import BundlePool
from linehost.store.engine import create_engine
from linehost.store.migrate import open_current, upgrade_to_head

EXIT_OK = 0
EXIT_REJECTS = 1  # the import ran; some entries were rejected (listed on stdout)


@dataclass(frozen=True, slots=True)
class BundleImport:
    """`pki import-bundle` as parsed: the config, the source, and the bundle's name if given."""

    config: Path
    source: Path  # a directory of <UID>*.pem, or a uid,dac CSV
    bundle: str | None = None  # default: the source's name


def import_bundle(args: BundleImport) -> int:
    """Validate and load a bundle; print progress on stderr and one line per reject."""
    config = load_config(args.config)
    pki = config.pki
    pai = load_certificate(pki.pai_cert, "PAI")
    paa = load_certificate(pki.paa_cert, "PAA") if pki.paa_cert is not None else None
    check_chain_or_raise(
        pai, paa, pai_name=f"PAI certificate {pki.pai_cert}", paa_name=f"PAA {pki.paa_cert}"
    )

    async def go(progress: _ImportMeters) -> tuple[ImportReport, list[str]]:
        if config.database.auto_migrate:
            engine = create_engine(config.database.url)
            try:
                await upgrade_to_head(engine)
            except BaseException:
                await engine.dispose()
                raise
        else:
            engine = await open_current(config.database.url)
        try:
            pool = BundlePool(engine)
            report = await run_import(
                pool,
                args.source,
                pai=pai,
                vid=pki.vid,
                pid=pki.pid,
                bundle=args.bundle,
                progress=progress,
            )
            return report, format_counts(await pool.counts())
        finally:
            await engine.dispose()

    print(f"importing {args.source} (checking every DAC against {pki.pai_cert})", file=sys.stderr)
    with progress_display() as meter_for:
        report, counts = asyncio.run(go(_ImportMeters(meter_for)))
    for source, reason in report.rejected:
        print(f"REJECT {source}: {reason}")
    for source in report.skipped:
        print(f"SKIP {source}: file name carries no UID")
    print(
        f"bundle {report.bundle}: {report.read} read, {report.added} added, "
        f"{report.unchanged} already in the pool, {len(report.rejected)} rejected"
    )
    for line in counts:
        print(line)
    return EXIT_REJECTS if report.rejected else EXIT_OK


class _ImportMeters:
    """ImportProgress on two meters: checking, then storing."""

    def __init__(self, meter_for: Callable[[str, int | None], Meter]) -> None:
        self._meter_for = meter_for
        self._checking: Meter | None = None
        self._storing: Meter | None = None

    def checking(self, total: int) -> None:
        self._checking = self._meter_for("checking DACs", total)

    def checked(self) -> None:
        assert self._checking is not None
        self._checking.advance()

    def storing(self, total: int) -> None:
        if self._checking is not None:
            self._checking.finish()
        self._storing = self._meter_for("adding to the pool", total)
        if total == 0:
            self._storing.finish()

    def stored(self, count: int) -> None:
        assert self._storing is not None
        self._storing.advance(count)
        if self._storing.done >= (self._storing.total or 0):
            self._storing.finish()


def show_bundles(config_path: Path) -> int:
    """Remaining entries per bundle."""
    config = load_config(config_path)

    async def go() -> list[str]:
        pool = await BundlePool.open(config.database.url)
        try:
            return format_counts(await pool.counts())
        finally:
            await pool.close()

    lines = asyncio.run(go())
    if not lines:
        print("no bundles imported")
    for line in lines:
        print(line)
    return EXIT_OK
