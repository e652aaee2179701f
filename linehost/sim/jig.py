"""One simulated programming jig: a pty at a stable path and the devices put into it, one after
another, with the operator's swap pauses; each device's story becomes a `DeviceRecord`."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from linehost.protocol.device import FINISH_PREFIX, format_finish
from linehost.sim.devices import DeviceFactory, DeviceRecord, SimDevice
from linehost.sim.firmware import Action, Leave, Reseat, Unplug, Write
from linehost.sim.personalities import Personality
from linehost.sim.pty import PtyPort

#: Seconds a jig stays empty while the operator swaps the device.
DEFAULT_SWAP_SECONDS = 0.2
#: Most recent device records kept in memory per jig (the JSONL file keeps all).
JIG_RECORDS_KEPT: Final = 10_000


class SimulatedJig:
    """One programming jig: a pty at `directory/name` and a sequence of devices put into it."""

    def __init__(
        self,
        name: str,
        directory: str | Path,
        plan: Iterable[Personality] = (),
        *,
        swap_seconds: float = DEFAULT_SWAP_SECONDS,
        swap_jitter: float = 0.0,
        swap_rng: random.Random | None = None,
        baud: int | None = None,
        factory: DeviceFactory | None = None,
        on_record: Callable[[DeviceRecord], None] | None = None,
    ) -> None:
        if swap_seconds < 0:
            raise ValueError("swap_seconds must be >= 0")
        if swap_jitter < 0:
            raise ValueError("swap_jitter must be >= 0")
        if baud is not None and baud <= 0:
            raise ValueError("baud must be > 0")
        self.name = name
        self.path = Path(directory) / name
        self.swap_seconds = swap_seconds
        # An operator's hands are not a clock: each swap takes swap_seconds plus up to
        # swap_jitter more (uniform), so the jigs of a line drift out of step as on a real line.
        self.swap_jitter = swap_jitter
        self._swap_rng = swap_rng if swap_rng is not None else random.Random()
        self.baud = baud
        self.factory = factory if factory is not None else DeviceFactory()
        self.records: deque[DeviceRecord] = deque(maxlen=JIG_RECORDS_KEPT)  # the most recent
        self.current: SimDevice | None = None
        self._plan: Iterator[Personality] = iter(plan)
        self._on_record = on_record
        self._port = PtyPort(self.path, self._on_data)
        self._plugged = asyncio.Event()
        self._skip_swap = False
        self._closed = False
        self._left: asyncio.Future[str] | None = None
        # Each queued action with the loop time it was due: the device's answer is timed from
        # when the host's bytes would have arrived on a real wire, not from when this loop's
        # timer fired (epoll rounds timeouts up to a whole millisecond, and the error would
        # otherwise add up hop after hop).
        self._ops: deque[tuple[Action, float]] = deque()
        self._drainer: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._replug: asyncio.TimerHandle | None = None
        self._reseat: asyncio.TimerHandle | None = None
        self._rx_free = 0.0  # loop time the receive wire is busy until (with `baud`)
        self._tx_free = 0.0  # loop time the send wire is busy until (with `baud`)
        self._arrived_wall = 0.0
        self._cloned_from: str | None = None
        self._index = 0

    @property
    def plugged(self) -> bool:
        """True while the port exists."""
        return self._port.is_open

    @property
    def device_path(self) -> str | None:
        """The pty the link currently points to (None while unplugged)."""
        return self._port.device_path

    def inject(self, data: bytes) -> None:
        """Raw bytes to the host as if from the jig (line noise, a log storm); on the loop."""
        self._port.write(data)

    def open(self) -> None:
        """Plug the jig in (empty); needs a running loop."""
        self._closed = False
        self._port.open()
        self._plugged.set()

    def close(self) -> None:
        """Unplug for good (`run` returns); a device still inside is recorded as `cancelled`."""
        if self._replug is not None:
            self._replug.cancel()
            self._replug = None
        self._closed = True
        self._remove_device("cancelled")
        self._port.close()
        self._plugged.set()  # wakes `run`, which sees `_closed`

    def unplug(self) -> None:
        """Pull the jig's cable: the link vanishes, a device inside leaves as `unplugged`."""
        self._remove_device("unplugged")
        self._port.close()
        self._plugged.clear()
        self._skip_swap = True

    def replug(self) -> None:
        """Plug the cable back in: a new pty at the same link path."""
        if self._replug is not None:
            self._replug.cancel()
            self._replug = None
        self.open()

    async def run(self) -> None:
        """Put each planned device in and wait until it leaves; returns after the last one."""
        loop = asyncio.get_running_loop()
        first = True
        for personality in self._plan:
            if not first and not self._skip_swap:
                swap = self.swap_seconds + self._swap_rng.uniform(0.0, self.swap_jitter)
                if swap > 0:
                    await asyncio.sleep(swap)
            first = False
            self._skip_swap = False
            await self._plugged.wait()
            if self._closed:
                return
            device, self._cloned_from = self.factory.make(
                personality, jig=self.name, index=self._index
            )
            self._left = loop.create_future()
            self.current = device
            self._arrived_wall = time.time()
            try:
                self._perform(device.arrive(loop.time()))
                await self._left
            finally:
                self._remove_device("cancelled")
            self._index += 1

    async def __aenter__(self) -> Self:
        self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _on_data(self, data: bytes) -> None:
        if self.baud is not None:
            # The host's bytes take their wire time too: the device sees them once all arrived.
            loop = asyncio.get_running_loop()
            self._rx_free = max(self._rx_free, loop.time()) + len(data) * 10 / self.baud
            loop.call_at(self._rx_free, self._received, data, self._rx_free)
            return
        self._received(data)

    def _received(self, data: bytes, at: float | None = None) -> None:
        """The host's `data` reached the device; `at`: when it did on the wire (default now)."""
        device = self.current
        if device is None:
            return  # an empty jig: the host's bytes are lost
        if at is None:
            at = asyncio.get_running_loop().time()
        self._perform(device.receive(data, at), at)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.current is not None:
            self._perform(self.current.poll(asyncio.get_running_loop().time()))

    def _perform(self, actions: list[Action], at: float | None = None) -> None:
        if at is None:
            at = asyncio.get_running_loop().time()
        for action in actions:
            if self._ops or self._is_slow(action):
                self._ops.append((action, at))
                if self._drainer is None:
                    self._drainer = asyncio.get_running_loop().create_task(
                        self._drain(), name=f"sim-jig-{self.name}-writer"
                    )
            elif isinstance(action, Write):
                self._port.write(action.data)
            elif isinstance(action, Leave):
                self._remove_device("left")
            elif isinstance(action, Reseat):
                self._take_out(action.down)
        self._arm_timer()

    def _is_slow(self, action: Action) -> bool:
        if isinstance(action, Unplug | Reseat):
            return True
        return isinstance(action, Write) and (
            action.byte_delay > 0 or action.pause > 0 or self.baud is not None
        )

    async def _drain(self) -> None:
        try:
            while self._ops:
                action, at = self._ops[0]
                if isinstance(action, Write):
                    await self._write_paced(action, at)
                elif isinstance(action, Unplug):
                    await asyncio.sleep(action.after)
                    self._unplug_for(action.down)
                elif isinstance(action, Leave):
                    self._remove_device("left")
                elif isinstance(action, Reseat):
                    self._take_out(action.down)
                if self._ops:
                    self._ops.popleft()
        finally:
            # A cancelled writer may finish after its successor started: leave that one alone.
            if self._drainer is asyncio.current_task():
                self._drainer = None

    async def _write_paced(self, action: Write, due: float) -> None:
        data = action.data
        if action.byte_delay > 0:
            if action.pause > 0:
                await asyncio.sleep(action.pause)
            per_byte = action.byte_delay + (10 / self.baud if self.baud else 0.0)
            for i in range(len(data)):
                self._port.write(data[i : i + 1])
                await asyncio.sleep(per_byte)
            return
        loop = asyncio.get_running_loop()
        if self.baud:
            # The last byte is out once the wire has carried everything before it: timed from
            # when the write was due (and its pause after the wire fell idle), never earlier
            # than on a real UART.
            start = max(self._tx_free, due) + action.pause
            self._tx_free = start + len(data) * 10 / self.baud
            await asyncio.sleep(max(0.0, self._tx_free - loop.time()))
        elif action.pause > 0:
            await asyncio.sleep(action.pause)
        self._port.write(data)

    def _take_out(self, down: float) -> None:
        """The device is out of the jig (silent) for `down` seconds, then the same one returns."""
        device = self.current
        if device is None:
            return
        self._arm_timer()

        def put_back() -> None:
            self._reseat = None
            if self.current is device:
                self._perform(device.put_back(asyncio.get_running_loop().time()))

        self._reseat = asyncio.get_running_loop().call_later(down, put_back)

    def _unplug_for(self, down: float) -> None:
        self._remove_device("unplugged")
        self._port.close()
        self._plugged.clear()
        self._skip_swap = True
        self._replug = asyncio.get_running_loop().call_later(down, self.replug)

    def _arm_timer(self) -> None:
        device = self.current
        at = device.deadline if device is not None else None
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = asyncio.get_running_loop().call_at(at, self._on_timer)

    def _remove_device(self, how: str) -> None:
        """Record the current device (if any) and empty the jig."""
        device = self.current
        if device is None:
            return
        self.current = None
        if self._left is not None and not self._left.done():
            self._left.set_result(how)
        if self._drainer is not None and self._drainer is not _current_task():
            self._drainer.cancel()
            self._drainer = None
        self._ops.clear()
        self._tx_free = 0.0  # what was still on its way is not sent
        if self._reseat is not None:
            self._reseat.cancel()
            self._reseat = None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None
        device.log.ended = how
        if device.log.stored is not None:
            self.factory.provisioned(device, self.name)
        self.factory.left(device, self.name)
        record = self._record(device, how)
        self.records.append(record)
        if self._on_record is not None:
            self._on_record(record)

    def _record(self, device: SimDevice, how: str) -> DeviceRecord:
        log = device.log
        now_wall = time.time()
        try:
            offset = now_wall - asyncio.get_running_loop().time()
        except RuntimeError:
            offset = now_wall - time.monotonic()
        code = log.finish_codes[-1] if log.finish_codes else None
        stored = log.stored
        return DeviceRecord(
            jig=self.name,
            index=self._index,
            uid=device.identity.uid.upper(),
            personality=device.personality.name,
            public_key_sha256=device.identity.public_key_sha256,
            finish_code=code,
            finish=None if code is None else _finish_text(code, device.personality.finish_digits),
            finish_codes=list(log.finish_codes),
            stored_dac_serial=stored.dac_serial if stored else None,
            stored_dac_sha256=stored.dac_sha256 if stored else None,
            check_detail=log.rejected.detail if log.rejected else None,
            flows=device.session.flows,
            aborted_flows=log.aborted_flows,
            ended=how,
            cloned_from=self._cloned_from,
            arrived_at=_iso(self._arrived_wall),
            first_sync_at=_iso_mono(log.first_sync_at, offset),
            finished_at=_iso_mono(log.finished_at, offset),
            left_at=_iso(now_wall),
            reseats=log.reseats,
            factory_data=dict(log.factory_data) if log.factory_data is not None else None,
            protocol=device.personality.protocol,
            attest_offered=device.personality.attest,
            attest_nonce=log.attest_nonce,
            stored_cd_sha256=log.stored_cd_sha256,
        )


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _finish_text(code: int, digits: int | None) -> str:
    return format_finish(code, digits).removeprefix(FINISH_PREFIX)


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")


def _iso_mono(mono: float | None, offset: float) -> str | None:
    return None if mono is None else _iso(mono + offset)
