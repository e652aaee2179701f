"""Simulated jigs and lines: devices with personalities, behind ptys at stable paths."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from linehost.errors import ConfigError, PkiError
from linehost.protocol.device import FINISH_PREFIX, FLOW_TIMEOUT, format_finish
from linehost.sim.firmware import (
    Action,
    DeviceIdentity,
    IdentityPool,
    Leave,
    Reseat,
    SimulatedDevice,
    Unplug,
    Write,
    random_uid,
)
from linehost.sim.letters import LetterDevice
from linehost.sim.personalities import Personality, get_personality
from linehost.sim.pty import PtyPort, ensure_fd_limit

#: Seconds a jig stays empty while the operator swaps the device.
DEFAULT_SWAP_SECONDS = 0.2
#: Identities generated before the ports are published (the rest are made on demand).
PREGENERATE_MAX = 20_000
#: Keys of provisioned devices kept for `cloned_key` devices.
CLONE_CANDIDATES: Final = 1000
#: Most recent device records kept in memory per line / per jig (the JSONL file keeps all).
LINE_RECORDS_KEPT: Final = 100_000
JIG_RECORDS_KEPT: Final = 10_000
#: UIDs shorter than this many hex digits are checked for collisions (longer ones cannot meet).
_TRACKED_UID_DIGITS: Final = 16
MANIFEST_NAME: Final = "ports.json"

_T = TypeVar("_T")

#: A device in a simulated jig, whichever protocol its firmware speaks.
SimDevice = SimulatedDevice | LetterDevice


@dataclass(slots=True)
class DeviceRecord:
    """What one simulated device did, as written to the JSONL record."""

    jig: str
    index: int  # position in the jig's plan, from 0
    uid: str  # upper case, as the host normalises it
    personality: str
    public_key_sha256: str  # lower-case hex of sha256(SubjectPublicKeyInfo DER)
    finish_code: int | None  # the last finish code answered to a delivery
    finish: str | None  # the same as sent, e.g. "000", "0ABC"
    finish_codes: list[int]
    stored_dac_serial: str | None  # upper-case hex, no leading zeros
    stored_dac_sha256: str | None
    check_detail: str | None  # why the firmware refused a DAC (finish:003)
    flows: int  # Start_provisioning answers
    aborted_flows: int
    ended: str  # left | unplugged | cancelled
    cloned_from: str | None
    arrived_at: str
    first_sync_at: str | None
    finished_at: str | None
    left_at: str
    reseats: int = 0  # times the operator took it out and put the same device back
    factory_data: dict[str, str] | None = None  # `FD:` fields stored with the DAC (onboarding)
    protocol: str = "v1"  # the jig protocol its firmware speaks
    attest_offered: bool = False  # offered the attestation extension (v1.1)
    attest_nonce: str | None = None  # lower-case hex of the challenge it received, if any
    stored_cd_sha256: str | None = None  # SHA-256 of the Certification Declaration it stored

    def to_json(self) -> str:
        """One JSONL line (without the newline)."""
        return json.dumps(asdict(self), separators=(",", ":"))


class DeviceFactory:
    """Builds devices for a line: unique UIDs, fresh or cloned keys, seeded behaviour."""

    def __init__(
        self,
        *,
        paa: x509.Certificate | None = None,
        seed: int | None = None,
        flow_timeout: float = FLOW_TIMEOUT,
        identities: IdentityPool | None = None,
    ) -> None:
        self.paa = paa
        self.seed = seed
        self.flow_timeout = flow_timeout
        self.identities = identities if identities is not None else IdentityPool()
        self._uids: set[str] = set()
        self._provisioned: deque[tuple[str, ec.EllipticCurvePrivateKey]] = deque(
            maxlen=CLONE_CANDIDATES
        )
        # Provisioned letter devices by jig: a `returning` (locked) chip comes back elsewhere.
        self._returnable: deque[tuple[str, str, ec.EllipticCurvePrivateKey]] = deque(
            maxlen=CLONE_CANDIDATES
        )
        self._last_on: dict[str, str] = {}  # jig -> UID of the device that left it last

    def make(
        self, personality: Personality, *, jig: str, index: int
    ) -> tuple[SimDevice, str | None]:
        """A new device and, for a clone, the UID whose key it presents."""
        rng = random.Random(f"{self.seed}/{jig}/{index}" if self.seed is not None else None)
        uid = random_uid(rng, personality.uid_digits)
        if personality.returning:
            # Not the device just finished in this jig: the host would see no swap.
            last = self._last_on.get(jig)
            elsewhere = [(u, k) for _, u, k in self._returnable if u != last]
            if elsewhere:
                uid, locked = rng.choice(elsewhere)
                identity = self.identities.make(uid, key=locked)
                return self._device(identity, personality, rng), uid
        if personality.uid_digits < _TRACKED_UID_DIGITS:
            while uid in self._uids:
                uid = random_uid(rng, personality.uid_digits)
            self._uids.add(uid)
        cloned_from: str | None = None
        key: ec.EllipticCurvePrivateKey | None = None
        # Only a key the host has already assigned: a key merely presented elsewhere may reach
        # the host after the clone (slow jigs, a loaded machine), and then the clone is the one
        # provisioned. Before any device is provisioned a clone presents a key of its own.
        if personality.clone_key and self._provisioned:
            cloned_from, key = rng.choice(self._provisioned)
        identity = self.identities.make(
            uid,
            curve=personality.curve,
            corrupt_signature=personality.corrupt_csr_signature,
            key=key,
        )
        return self._device(identity, personality, rng), cloned_from

    def provisioned(self, device: SimDevice, jig: str = "") -> None:
        """Remember a device that stored a DAC, as a source for cloned keys."""
        self._provisioned.append((device.identity.uid, device.identity.key))
        if isinstance(device, LetterDevice) and device.log.finish_codes:
            # Told `q`: the host confirmed it; its chip stays locked with that key.
            self._returnable.append((jig, device.identity.uid, device.identity.key))

    def left(self, device: SimDevice, jig: str) -> None:
        """`device` left `jig` (the last device the host saw there)."""
        self._last_on[jig] = device.identity.uid

    def _device(
        self, identity: DeviceIdentity, personality: Personality, rng: random.Random
    ) -> SimDevice:
        if personality.protocol == "ecc608-letters":
            return LetterDevice(
                identity, personality, rng=rng, paa=self.paa, flow_timeout=self.flow_timeout
            )
        return SimulatedDevice(
            identity, personality, rng=rng, paa=self.paa, flow_timeout=self.flow_timeout
        )


class SimulatedJig:
    """One programming jig: a pty at `directory/name` and a sequence of devices put into it."""

    def __init__(
        self,
        name: str,
        directory: str | Path,
        plan: Iterable[Personality] = (),
        *,
        swap_seconds: float = DEFAULT_SWAP_SECONDS,
        baud: int | None = None,
        factory: DeviceFactory | None = None,
        on_record: Callable[[DeviceRecord], None] | None = None,
    ) -> None:
        if swap_seconds < 0:
            raise ValueError("swap_seconds must be >= 0")
        if baud is not None and baud <= 0:
            raise ValueError("baud must be > 0")
        self.name = name
        self.path = Path(directory) / name
        self.swap_seconds = swap_seconds
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
        self._ops: deque[Action] = deque()
        self._drainer: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._replug: asyncio.TimerHandle | None = None
        self._reseat: asyncio.TimerHandle | None = None
        self._rx_free = 0.0  # loop time the receive wire is busy until (with `baud`)
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
            if not first and not self._skip_swap and self.swap_seconds > 0:
                await asyncio.sleep(self.swap_seconds)
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
            loop.call_at(self._rx_free, self._received, data)
            return
        self._received(data)

    def _received(self, data: bytes) -> None:
        device = self.current
        if device is None:
            return  # an empty jig: the host's bytes are lost
        self._perform(device.receive(data, asyncio.get_running_loop().time()))

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.current is not None:
            self._perform(self.current.poll(asyncio.get_running_loop().time()))

    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if self._ops or self._is_slow(action):
                self._ops.append(action)
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
                action = self._ops[0]
                if isinstance(action, Write):
                    await self._write_paced(action)
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

    async def _write_paced(self, action: Write) -> None:
        data = action.data
        if action.pause > 0:
            await asyncio.sleep(action.pause)
        if action.byte_delay > 0:
            per_byte = action.byte_delay + (10 / self.baud if self.baud else 0.0)
            for i in range(len(data)):
                self._port.write(data[i : i + 1])
                await asyncio.sleep(per_byte)
            return
        if self.baud:
            await asyncio.sleep(len(data) * 10 / self.baud)
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


def parse_mix(
    mix: str | Sequence[str | Personality], protocol: str = "v1"
) -> list[tuple[Personality, int]]:
    """`"good:8,noisy:1"` (or a list of names / personalities) -> weighted personalities."""
    items: Sequence[str | Personality] = (
        [part for part in mix.split(",") if part.strip()] if isinstance(mix, str) else mix
    )
    out: list[tuple[Personality, int]] = []
    for item in items:
        if isinstance(item, Personality):
            out.append((item, 1))
            continue
        name, _, weight = item.strip().partition(":")
        try:
            count = int(weight) if weight else 1
        except ValueError:
            raise ConfigError(f"bad weight in personality mix: {item!r}") from None
        if count < 1:
            raise ConfigError(f"bad weight in personality mix: {item!r}")
        out.append((get_personality(name.strip(), protocol), count))
    if not out:
        raise ConfigError("empty personality mix")
    return out


def plan_personalities(
    jigs: int,
    devices_per_jig: int,
    mix: str | Sequence[str | Personality],
    *,
    seed: int | None = None,
    protocol: str = "v1",
) -> list[list[Personality]]:
    """Deal `jigs * devices_per_jig` devices in the mix's proportions, shuffled, to the jigs."""
    weighted = parse_mix(mix, protocol)
    pool = [p for p, count in weighted for _ in range(count)]
    rng = random.Random(seed)
    total = jigs * devices_per_jig
    deck: list[Personality] = []
    while len(deck) < total:
        batch = list(pool)
        if len(weighted) > 1:
            rng.shuffle(batch)
        deck += batch
    return [deck[j:total:jigs] for j in range(jigs)]


def _endless(
    mix: str | Sequence[str | Personality], seed: str | None, protocol: str = "v1"
) -> Iterator[Personality]:
    weighted = parse_mix(mix, protocol)
    people = [p for p, _ in weighted]
    weights = [w for _, w in weighted]
    rng = random.Random(seed)
    while True:
        yield rng.choices(people, weights)[0]


class SimulatedLine:
    """N simulated jigs working through a device plan; `ports` maps jig name -> stable path."""

    def __init__(
        self,
        jigs: int = 1,
        *,
        devices_per_jig: int | None = 1,
        personality: str | Personality = "good",
        mix: str | Sequence[str | Personality] | None = None,
        directory: str | Path | None = None,
        record: str | Path | None = None,
        paa: x509.Certificate | str | Path | None = None,
        swap_seconds: float = DEFAULT_SWAP_SECONDS,
        seed: int | None = None,
        baud: int | None = None,
        flow_timeout: float = FLOW_TIMEOUT,
        jig_prefix: str = "j",
        pregenerate: bool = True,
        protocol: str = "v1",
        plans: Sequence[Sequence[str]] | None = None,
    ) -> None:
        if jigs < 1:
            raise ConfigError("a simulated line needs at least one jig")
        if devices_per_jig is not None and devices_per_jig < 0:
            raise ConfigError("devices per jig must be >= 0")
        if swap_seconds < 0:
            raise ConfigError("swap seconds must be >= 0")
        if baud is not None and baud <= 0:
            raise ConfigError("baud must be > 0")
        mix_spec: str | Sequence[str | Personality] = mix if mix is not None else [personality]
        self.protocol = protocol  # the jig protocol every simulated device speaks
        parse_mix(mix_spec, protocol)  # fail early on unknown names
        # Explicit device sequences, one per jig (`--plan`): override devices_per_jig and mix.
        self._fixed_plans = (
            [[get_personality(name, protocol) for name in plan] for plan in plans]
            if plans is not None
            else None
        )
        if self._fixed_plans is not None:
            jigs = len(self._fixed_plans)
            devices_per_jig = max((len(p) for p in self._fixed_plans), default=0)
        self.jig_names = [f"{jig_prefix}{i}" for i in range(1, jigs + 1)]
        self.devices_per_jig = devices_per_jig
        self.swap_seconds = swap_seconds
        self.baud = baud
        self.seed = seed
        self.records: deque[DeviceRecord] = deque(maxlen=LINE_RECORDS_KEPT)  # the most recent
        self.devices_done = 0  # devices that left (or were cancelled), all of them
        self.devices_provisioned = 0  # of which stored a DAC
        self.jigs: list[SimulatedJig] = []
        self.factory = DeviceFactory(paa=load_paa(paa), seed=seed, flow_timeout=flow_timeout)
        self._mix = mix_spec
        self._dir_arg = Path(directory) if directory is not None else None
        self._record_path = Path(record) if record is not None else None
        self._record_file: IO[str] | None = None
        self._pregenerate = pregenerate
        self._tasks: list[asyncio.Task[None]] = []
        self._made_dir = False
        self.directory: Path = self._dir_arg or Path(tempfile.gettempdir())
        self._started = False

    @property
    def ports(self) -> dict[str, str]:
        """Jig name -> the stable path of its port."""
        return {jig.name: str(jig.path) for jig in self.jigs}

    @property
    def manifest_path(self) -> Path:
        """The JSON file {jig-name: path} written at start."""
        return self.directory / MANIFEST_NAME

    async def start(self) -> None:
        """Create the ports, write the manifest and put the first devices in."""
        if self._started:
            return
        self._started = True
        if self._dir_arg is None:
            self.directory = Path(tempfile.mkdtemp(prefix="linehost-sim-"))
            self._made_dir = True
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
        jigs = len(self.jig_names)
        ensure_fd_limit(4 * jigs + 256)
        plans = self._plans()
        if self._pregenerate and self.devices_per_jig is not None:
            count = min(jigs * self.devices_per_jig, PREGENERATE_MAX)
            await asyncio.to_thread(self.factory.identities.pregenerate, count)
        if self._record_path is not None:
            self._record_path.parent.mkdir(parents=True, exist_ok=True)
            self._record_file = self._record_path.open("w", encoding="utf-8", buffering=1)
        try:
            for name, plan in zip(self.jig_names, plans, strict=True):
                jig = SimulatedJig(
                    name,
                    self.directory,
                    plan,
                    swap_seconds=self.swap_seconds,
                    baud=self.baud,
                    factory=self.factory,
                    on_record=self._on_record,
                )
                self.jigs.append(jig)
                jig.open()
            self._write_manifest()
        except BaseException:
            await self.aclose()
            raise
        self._tasks = [
            asyncio.create_task(jig.run(), name=f"sim-jig-{jig.name}") for jig in self.jigs
        ]

    async def wait(self) -> None:
        """Until every jig has worked through its devices (forever with no device count)."""
        if self._tasks:
            await asyncio.gather(*self._tasks)

    async def run(self) -> None:
        """start() then wait()."""
        await self.start()
        await self.wait()

    @property
    def done(self) -> bool:
        """True when every jig finished its plan."""
        return bool(self._tasks) and all(t.done() for t in self._tasks)

    async def aclose(self) -> None:
        """Stop every jig, unplug every port, close the record, remove what it created."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for jig in self.jigs:
            jig.close()
        with contextlib.suppress(FileNotFoundError):
            self.manifest_path.unlink()
        if self._record_file is not None:
            self._record_file.close()
            self._record_file = None
        if self._made_dir:
            with contextlib.suppress(OSError):
                self.directory.rmdir()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _plans(self) -> list[Iterable[Personality]]:
        if self._fixed_plans is not None:
            return list(self._fixed_plans)
        jigs = len(self.jig_names)
        if self.devices_per_jig is None:
            return [
                _endless(
                    self._mix, None if self.seed is None else f"{self.seed}/{name}", self.protocol
                )
                for name in self.jig_names
            ]
        return list(
            plan_personalities(
                jigs, self.devices_per_jig, self._mix, seed=self.seed, protocol=self.protocol
            )
        )

    def _on_record(self, record: DeviceRecord) -> None:
        self.records.append(record)
        self.devices_done += 1
        if record.stored_dac_serial is not None:
            self.devices_provisioned += 1
        if self._record_file is not None:
            self._record_file.write(record.to_json() + "\n")

    def _write_manifest(self) -> None:
        tmp = self.manifest_path.with_name(f".{MANIFEST_NAME}.tmp")
        tmp.write_text(json.dumps(self.ports, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.manifest_path)


class LineThread:
    """A SimulatedLine on its own event loop in a daemon thread, for synchronous callers."""

    def __init__(self, line: SimulatedLine) -> None:
        self.line = line
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._finished = threading.Event()

    def __enter__(self) -> SimulatedLine:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.line.start(), self._loop).result()
        except BaseException:
            self._stop()
            raise
        waiter = asyncio.run_coroutine_threadsafe(self.line.wait(), self._loop)
        waiter.add_done_callback(lambda _: self._finished.set())
        return self.line

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every device is done; False on timeout."""
        return self._finished.wait(timeout)

    def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run `fn(*args)` on the line's loop (e.g. `jig.unplug`) and return its result."""

        async def _call() -> _T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(_call(), self._loop).result()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.line.aclose(), self._loop).result()
        finally:
            self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def load_paa(paa: x509.Certificate | str | Path | None) -> x509.Certificate | None:
    """The PAA certificate from a certificate object or a PEM/DER file; PkiError when unusable."""
    if paa is None or isinstance(paa, x509.Certificate):
        return paa
    try:
        data = Path(paa).read_bytes()
    except OSError as exc:
        raise PkiError(f"cannot read PAA certificate {paa}: {exc.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise PkiError(f"PAA file {paa} is not a PEM or DER certificate") from None


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


__all__ = [
    "DEFAULT_SWAP_SECONDS",
    "DeviceFactory",
    "DeviceRecord",
    "LineThread",
    "SimulatedJig",
    "SimulatedLine",
    "load_paa",
    "parse_mix",
    "plan_personalities",
]
