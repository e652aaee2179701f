"""`linehost status` and `linehost workorder status`: the line at a glance, from the database."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from linehost.config import LineConfig, load_config
from linehost.errors import ConfigError, LinehostError
from linehost.line.statusboard import HEARTBEAT
from linehost.records import iso_utc
from linehost.store.audit import Audit
from linehost.store.floor import summarise

#: A jig row older than this means its host stopped writing (crashed or not running).
STALE_AFTER: Final = timedelta(seconds=3 * HEARTBEAT)
DETAIL_CHARS: Final = 60
COLUMNS: Final = ("station", "jig", "state", "uid", "in state", "ok", "failed", "last outcome",
                  "detail")  # fmt: skip

_STYLE = {
    "provisioning": "bold cyan",
    "pre_step": "cyan",
    "post_step": "cyan",
    "waiting_for_device": "green",
    "waiting_for_swap": "yellow",
    "pre_step_failed": "bold red",
    "waiting_for_database": "bold red",
    "waiting_for_issuer": "bold red",
    "offline": "red",
    "stopped": "dim",
    "work_order_complete": "bold magenta",
    "held": "bold yellow",
}


def show_status(args: argparse.Namespace) -> int:
    """Print the jig table; refresh it until Ctrl-C unless --once or --json."""
    config = load_config(args.config)
    interval: float = args.interval
    if interval <= 0:
        raise ConfigError("--interval must be positive")

    async def go() -> int:
        audit = await _open_audit(config)
        try:
            if args.json:
                snapshot = await _snapshot(audit, config)
                print(json.dumps(snapshot, indent=2, default=str))
                return 0
            console = Console()
            if args.once:
                console.print(render(await _snapshot(audit, config)))
                return 0
            with Live(console=console, auto_refresh=False, screen=False) as live:
                while True:
                    live.update(render(await _snapshot(audit, config)), refresh=True)
                    await asyncio.sleep(interval)
        finally:
            await audit.close()

    try:
        return asyncio.run(go())
    except KeyboardInterrupt:
        return 0


def workorder_status(args: argparse.Namespace) -> int:
    """done / failed / remaining of the configured (or given) work order."""
    config = load_config(args.config)
    work_order = args.id or (config.work_order.id if config.work_order else None)
    if work_order is None:
        raise ConfigError(f"{args.config}: no [work_order] section; give --id")
    quantity = config.work_order.quantity if config.work_order else 0

    async def go() -> dict[str, Any] | None:
        audit = await _open_audit(config)
        try:
            return await audit.work_order_progress(work_order)
        finally:
            await audit.close()

    progress = asyncio.run(go())
    if progress is None and config.work_order is None:
        print(f"work order {work_order}: no records")
        return 1
    summary = summarise(progress, work_order, quantity)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"work order {summary['work_order']}: quantity {summary['quantity']}")
    print(f"  done       {summary['done']:>8}  devices with a confirmed DAC")
    print(f"  in flight  {summary['in_flight']:>8}  DAC issued, result not (yet) known")
    print(f"  remaining  {summary['remaining']:>8}")
    print(
        f"  failed     {summary['failed']:>8}  attempts"
        f" (post_step_failed {summary['post_step_failed']})"
    )
    if summary["attempts"]:
        outcomes = ", ".join(f"{k} {v}" for k, v in summary["attempts"].items())
        print(f"  attempts by outcome: {outcomes}")
    if summary["closed_at"]:
        print(f"  closed at {summary['closed_at']}: takes no more devices")
    return 0


# --- rendering ------------------------------------------------------------------------------


def render(snapshot: dict[str, Any]) -> Group:
    """The status table (and a work-order line) for one snapshot."""
    now = _parse(snapshot["now"])
    table = Table(title=f"line {snapshot['line']}", title_justify="left", expand=False)
    for name in COLUMNS:
        right = name in ("in state", "ok", "failed")
        table.add_column(name, justify="right" if right else "left", no_wrap=name != "detail")
    for jig in snapshot["jigs"]:
        if jig["state"] is None:
            table.add_row(jig["station"], jig["jig"], Text("no status yet", style="dim"))
            continue
        stale = jig["stale"]
        state = Text(jig["state"], style="dim" if stale else _STYLE.get(jig["state"], ""))
        if stale:
            state.append(" (host silent)", style="bold red")
        table.add_row(
            jig["station"],
            jig["jig"],
            state,
            jig["uid"] or jig["last_uid"] or "",
            _age(now - _parse(jig["since"])),
            str(jig["ok"]),
            str(jig["failed"]),
            jig["last_outcome"] or "",
            (jig["last_detail"] or "")[:DETAIL_CHARS],
        )
    parts: list[Any] = [table]
    wo = snapshot.get("work_order")
    if wo is not None:
        parts.append(
            Text(
                f"work order {wo['work_order']}: {wo['done']} of {wo['quantity']} done, "
                f"{wo['in_flight']} in flight, {wo['remaining']} remaining, "
                f"{wo['failed']} failed attempts",
                style="bold magenta" if wo["remaining"] == 0 else "",
            )
        )
    parts.append(Text(f"as of {snapshot['now']}  (Ctrl-C to quit)", style="dim"))
    return Group(*parts)


async def _snapshot(audit: Audit, config: LineConfig) -> dict[str, Any]:
    now = datetime.now(UTC)
    rows = {(r["station"], r["jig"]): r for r in await audit.jig_status_rows(config.line.name)}
    jigs = []
    for jig in config.jigs:
        row = rows.pop((jig.station, jig.name), None)
        jigs.append(_jig(jig.station, jig.name, row, now))
    jigs.extend(_jig(station, name, row, now) for (station, name), row in sorted(rows.items()))
    snapshot: dict[str, Any] = {"line": config.line.name, "now": iso_utc(now), "jigs": jigs}
    if config.work_order is not None:
        wo = config.work_order
        snapshot["work_order"] = summarise(
            await audit.work_order_progress(wo.id), wo.id, wo.quantity
        )
    return snapshot


def _jig(station: str, name: str, row: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    if row is None:
        return {"station": station, "jig": name, "state": None, "stale": True}
    return {
        "station": station,
        "jig": name,
        "state": row["state"],
        "uid": row["uid"],
        "since": iso_utc(row["since"]),
        "ok": row["ok"],
        "failed": row["failed"],
        "last_outcome": row["last_outcome"],
        "last_detail": row["last_detail"],
        "last_uid": row["last_uid"],
        "updated_at": iso_utc(row["updated_at"]),
        "stale": row["state"] != "stopped" and now - row["updated_at"] > STALE_AFTER,
    }


async def _open_audit(config: LineConfig) -> Audit:
    try:
        return await Audit.open(config.database.url)
    except LinehostError:
        raise
    except Exception as exc:  # pragma: no cover - Audit.open translates its errors
        raise ConfigError(f"database: {exc}") from None


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
