"""The store's side of onboarding data: read, allocate inside the assign transaction, write.

Sequences come from `onboarding_counters` rows incremented inside the batch transaction
(PostgreSQL holds the row lock to commit, SQLite writes one transaction at a time), so several
hosts on one database never hand out the same serial sequence or discriminator slot.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from linehost.errors import OnboardingError
from linehost.records import AttemptStart, OnboardingRecord, OnboardingRequest
from linehost.store.allocation import (
    RANDOM_WINDOW,
    AllocationError,
    DiscriminatorWindow,
    render_serial,
    sequential_discriminator,
)
from linehost.store.models import onboarding, onboarding_counters

SERIAL_COUNTER: Final = "serial"

Scope = tuple[str, str]  # (vid, pid)


def discriminator_counter(vid: str, pid: str) -> str:
    """The counter of discriminator slots handed out for one VID/PID."""
    return f"discriminator/{vid.upper()}/{pid.upper()}"


@dataclass(slots=True, eq=False)
class OnboardingRow:
    """One device's onboarding data as the batch sees it."""

    id: int | None
    uid: str
    vid: str
    pid: str
    assignment_id: int | None
    serial_num: str
    serial_seq: int | None
    discriminator: int
    passcode_sealed: str
    passcode_tag: str
    key_id: str
    spake2p_it: int
    spake2p_salt: str
    spake2p_verifier: str
    rd_uid: str | None
    mfg_date: str
    hw_ver: int
    hw_ver_str: str
    commissioning_flow: int
    discovery: int
    created_at: datetime
    assignment: Any = None  # the assignment row inserted in the same batch (its id comes later)

    @classmethod
    def from_db(cls, row: Any) -> OnboardingRow:
        m = row._mapping
        return cls(**{k: m[k] for k in _COLUMNS})

    def record(self) -> OnboardingRecord:
        return OnboardingRecord(
            uid=self.uid,
            vid=self.vid,
            pid=self.pid,
            serial_num=self.serial_num,
            discriminator=self.discriminator,
            passcode_sealed=self.passcode_sealed,
            key_id=self.key_id,
            spake2p_it=self.spake2p_it,
            spake2p_salt=self.spake2p_salt,
            spake2p_verifier=self.spake2p_verifier,
            rd_uid=self.rd_uid,
            mfg_date=self.mfg_date,
            hw_ver=self.hw_ver,
            hw_ver_str=self.hw_ver_str,
            commissioning_flow=self.commissioning_flow,
            discovery=self.discovery,
        )

    def insert_params(self) -> dict[str, Any]:
        params = {k: getattr(self, k) for k in _COLUMNS if k != "id"}
        if self.assignment is not None:
            params["assignment_id"] = self.assignment.id
        return params


_COLUMNS = [c.name for c in onboarding.c]


class OnboardingBook:
    """The onboarding rows of one batch: those read, those allocated, the reserved sequences."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self._rows: dict[tuple[str, str, str], OnboardingRow] = {}
        self._new: list[OnboardingRow] = []
        self._serials: deque[int] = deque()
        self._slots: dict[Scope, deque[int]] = {}
        self._windows: dict[Scope, DiscriminatorWindow] = {}

    async def load(
        self, conn: AsyncConnection, uids: set[str], requests: Sequence[OnboardingRequest]
    ) -> None:
        """Reserve sequences for `requests`, then read the windows and the devices' rows."""
        if not requests:
            return
        scopes: defaultdict[Scope, int] = defaultdict(int)
        random_scopes: set[Scope] = set()
        for req in requests:
            scope = (req.vid.upper(), req.pid.upper())
            scopes[scope] += 1
            if req.discriminator_policy == "random":
                random_scopes.add(scope)
        # Counters first, always in the same order: they serialise concurrent hosts.
        first = await _reserve(conn, SERIAL_COUNTER, len(requests))
        self._serials = deque(range(first, first + len(requests)))
        for scope in sorted(scopes):
            count = scopes[scope]
            start = await _reserve(conn, discriminator_counter(*scope), count)
            self._slots[scope] = deque(range(start, start + count))
        for scope in sorted(random_scopes):
            recent = await conn.execute(
                select(onboarding.c.discriminator)
                .where(onboarding.c.vid == scope[0], onboarding.c.pid == scope[1])
                .order_by(onboarding.c.id.desc())
                .limit(RANDOM_WINDOW - 1)
            )
            self._windows[scope] = DiscriminatorWindow(recent.scalars().all())
        if uids:
            rows = await conn.execute(select(onboarding).where(onboarding.c.uid.in_(uids)))
            for row in rows:
                self._index(OnboardingRow.from_db(row))

    def existing(self, uid: str, vid: str, pid: str) -> OnboardingRow | None:
        """The device's recorded (or just allocated) onboarding data, if any."""
        return self._rows.get((uid, vid.upper(), pid.upper()))

    def prepare(self, req: OnboardingRequest, start: AttemptStart) -> OnboardingRow:
        """The device's existing row, or a new one (not yet added); OnboardingError if none
        can be made. Changes nothing but the use of reserved sequence numbers."""
        assert start.uid is not None
        vid, pid = req.vid.upper(), req.pid.upper()
        found = self.existing(start.uid, vid, pid)
        if found is not None:
            return found
        scope = (vid, pid)
        if not self._serials or not self._slots.get(scope):
            raise OnboardingError("onboarding sequences were not reserved for this request")
        seq = self._serials.popleft()
        slot = self._slots[scope].popleft()
        try:
            serial = render_serial(
                req.serial_template,
                seq=seq,
                uid=start.uid,
                line=start.line,
                station=start.station,
                jig=start.jig,
                vid=vid,
                pid=pid,
                now=self.now,
            )
        except AllocationError as exc:
            raise OnboardingError(str(exc)) from None
        if req.discriminator_policy == "random":
            discriminator = self._windows[scope].draw()
        else:
            discriminator = sequential_discriminator(slot)
        return OnboardingRow(
            id=None,
            uid=start.uid,
            vid=vid,
            pid=pid,
            assignment_id=None,
            serial_num=serial,
            serial_seq=seq,
            discriminator=discriminator,
            passcode_sealed=req.passcode_sealed,
            passcode_tag=req.passcode_tag,
            key_id=req.key_id,
            spake2p_it=req.spake2p_it,
            spake2p_salt=req.spake2p_salt,
            spake2p_verifier=req.spake2p_verifier,
            rd_uid=req.rd_uid,
            mfg_date=self.now.strftime("%Y-%m-%d"),
            hw_ver=req.hw_ver,
            hw_ver_str=req.hw_ver_str,
            commissioning_flow=req.commissioning_flow,
            discovery=req.discovery,
            created_at=self.now,
        )

    def bind(self, row: OnboardingRow, assignment: Any) -> None:
        """Record a prepared new row with the assignment it came with (no-op for old rows)."""
        if row.id is not None or row in self._new:
            return
        row.assignment_id = assignment.id
        row.assignment = assignment if assignment.id is None else None
        self._new.append(row)
        self._index(row)
        window = self._windows.get((row.vid, row.pid))
        if window is not None:
            window.push(row.discriminator)

    def has_new(self) -> bool:
        """True when the batch inserts onboarding rows."""
        return bool(self._new)

    async def flush(self, conn: AsyncConnection) -> None:
        """Insert the new rows (after their assignments, whose ids they carry)."""
        if not self._new:
            return
        # Ids may come back in any order: match them by the unique serial number.
        stmt = onboarding.insert().returning(onboarding.c.id, onboarding.c.serial_num)
        result = await conn.execute(stmt, [row.insert_params() for row in self._new])
        new_ids = {serial: new_id for new_id, serial in result.all()}
        for row in self._new:
            row.id = new_ids[row.serial_num]
            if row.assignment is not None:
                row.assignment_id = row.assignment.id

    def _index(self, row: OnboardingRow) -> None:
        self._rows[(row.uid, row.vid, row.pid)] = row


async def _reserve(conn: AsyncConnection, name: str, count: int) -> int:
    """Take `count` consecutive values of counter `name`; returns the first (from 0)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    await conn.execute(
        dialect.insert(onboarding_counters)
        .values(name=name, value=0)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    result = await conn.execute(
        update(onboarding_counters)
        .where(onboarding_counters.c.name == name)
        .values(value=onboarding_counters.c.value + count)
        .returning(onboarding_counters.c.value)
    )
    return int(result.scalar_one()) - count
