"""Simulated lines: N jigs working through a device plan (personality mixes), behind ptys at
stable paths published in a manifest; `LineThread` runs one beside synchronous code."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self, TypeVar

from cryptography import x509

from linehost.errors import ConfigError, PkiError
from linehost.protocol.device import FLOW_TIMEOUT
from linehost.sim.devices import DeviceFactory, DeviceRecord
from linehost.sim.jig import DEFAULT_SWAP_SECONDS, SimulatedJig
from linehost.sim.personalities import Personality, get_personality
from linehost.sim.pty import ensure_fd_limit

#: Identities generated before the ports are published (the rest are made on demand).
PREGENERATE_MAX = 20_000
#: Most recent device records kept in memory per line (the JSONL file keeps all).
LINE_RECORDS_KEPT: Final = 100_000
MANIFEST_NAME: Final = "ports.json"

_T = TypeVar("_T")


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
        swap_jitter: float = 0.0,
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
        if swap_jitter < 0:
            raise ConfigError("swap jitter must be >= 0")
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
        self.swap_jitter = swap_jitter
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
                    swap_jitter=self.swap_jitter,
                    swap_rng=random.Random(
                        None if self.seed is None else f"{self.seed}/swap/{name}"
                    ),
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
