"""What `linehost doctor` reports: one row per check (`Check`), its `Status`, the table."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

CHECK_TIMEOUT: Final = 5.0  # seconds for each network check (database, broker, printer)
MIN_FREE_MB: Final = 500  # below this, the database and the labels may not fit a shift


class Status(enum.StrEnum):
    """How one check came out; only FAIL makes the host not ready."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Check:
    """One row of the report: what was checked, how it came out, and how to fix it."""

    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True, slots=True)
class Limits:
    """The thresholds of the checks that have one."""

    min_free_mb: int = MIN_FREE_MB
    timeout: float = CHECK_TIMEOUT


DEFAULT_LIMITS: Final = Limits()


def ready(rows: list[Check]) -> bool:
    """True when no check failed (warnings and skipped checks do not stop a line)."""
    return all(row.status is not Status.FAIL for row in rows)


def format_table(rows: list[Check]) -> str:
    """The report as an aligned text table; a detail of several lines continues below."""
    name_w = max(len("check"), *(len(r.name) for r in rows))
    status_w = len("skipped")
    lines = [f"{'check':<{name_w}}  {'status':<{status_w}}  detail / fix"]
    for row in rows:
        first, *rest = row.detail.splitlines() or [""]
        lines.append(f"{row.name:<{name_w}}  {row.status.value:<{status_w}}  {first}")
        pad = " " * (name_w + status_w + 4)
        lines.extend(f"{pad}{more}" for more in rest)
        if row.fix and row.status in (Status.FAIL, Status.WARN):
            lines.append(f"{pad}fix: {row.fix}")
    return "\n".join(lines)
