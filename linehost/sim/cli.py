"""`linehost sim`: simulated provisioning firmware on pseudo-terminals, printing the port paths."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import selectors
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from linehost.sim import personalities
from linehost.sim.harness import SimulatedLine, parse_mix
from linehost.sim.jig import DEFAULT_SWAP_SECONDS
from linehost.sim.personalities import personality_names, protocol_names

#: Seconds the ports stay open after the last device, so the host can read its last answer.
DEFAULT_LINGER: Final = 2.0
#: Up to this many jigs the simulator's loop waits in select(), whose timeout is exact to the
#: microsecond: epoll rounds every timeout up to a whole millisecond, so each paced answer
#: (with `--baud`) reached the host up to 1 ms after a UART would have delivered it. select()
#: takes only descriptors below 1024 (FD_SETSIZE), and each jig holds two.
PRECISE_TIMERS_UP_TO: Final = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `sim` options to `parser`."""
    parser.add_argument("--jigs", type=_positive_int, default=1, metavar="N", help="jigs (1)")
    parser.add_argument(
        "--protocol",
        choices=protocol_names(),
        default="v1",
        help="the jig protocol the simulated firmware speaks (v1); ecc608-letters devices: "
        f"{', '.join(personality_names('ecc608-letters'))}",
    )
    parser.add_argument(
        "--devices",
        type=_non_negative_int,
        default=None,
        metavar="PER_JIG",
        help="devices per jig (default: endless, until SIGINT)",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--personality",
        type=_personality,
        default=None,
        metavar="NAME",
        help=f"every device behaves like NAME (good): {', '.join(personality_names())}, "
        "finish_<hex>",
    )
    which.add_argument(
        "--mix",
        type=_mix,
        default=None,
        metavar="NAME[:W],...",
        help="personalities dealt in these proportions (weights W, default 1), shuffled by --seed",
    )
    which.add_argument(
        "--plan",
        type=_plan,
        default=None,
        metavar="NAME,...;NAME,...",
        help="exactly these devices, in order, one list per jig (sets --jigs and --devices)",
    )
    parser.add_argument(
        "--dir", default=None, metavar="DIR", help="where the port links go (default: a temp dir)"
    )
    parser.add_argument(
        "--record", default=None, metavar="FILE", help="write one JSON line per device to FILE"
    )
    parser.add_argument(
        "--paa", default=None, metavar="FILE", help="devices also check the PAI against this PAA"
    )
    parser.add_argument(
        "--swap-seconds",
        type=_non_negative_float,
        default=DEFAULT_SWAP_SECONDS,
        metavar="S",
        help=f"an empty jig's time between devices ({DEFAULT_SWAP_SECONDS})",
    )
    parser.add_argument(
        "--swap-jitter",
        type=_non_negative_float,
        default=0.0,
        metavar="S",
        help="each swap takes up to S seconds more, uniformly at random (0: every swap alike)",
    )
    parser.add_argument("--seed", type=int, default=None, metavar="N", help="reproducible plan")
    parser.add_argument(
        "--baud",
        type=_positive_int,
        default=None,
        metavar="B",
        help="pace both directions at B baud (10 bits per byte)",
    )
    parser.add_argument(
        "--reseat-seconds",
        type=_non_negative_float,
        default=None,
        metavar="S",
        help="how long a reseated_after_silence device stays out of the jig "
        f"({personalities.RESEAT_SECONDS})",
    )
    parser.add_argument(
        "--linger",
        type=_non_negative_float,
        default=DEFAULT_LINGER,
        metavar="S",
        help=f"keep the ports open S seconds after the last device ({DEFAULT_LINGER})",
    )


@dataclass(frozen=True, slots=True)
class SimOptions:
    """`linehost sim` as parsed (see `add_arguments` for what each option means; the mapping
    from argparse is `linehost.commands.sim.sim_options`)."""

    jigs: int = 1
    devices: int | None = None  # per jig; None: endless, until SIGINT
    personality: str | None = None
    mix: str | None = None
    dir: str | None = None
    record: str | None = None
    paa: str | None = None
    swap_seconds: float = DEFAULT_SWAP_SECONDS
    swap_jitter: float = 0.0
    seed: int | None = None
    baud: int | None = None
    reseat_seconds: float | None = None
    linger: float = DEFAULT_LINGER
    protocol: str = "v1"  # the jig protocol the simulated firmware speaks
    plans: list[list[str]] | None = None  # exactly these devices, one list per jig


def loop_factory(jigs: int) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop for a simulated line of `jigs`: select() up to PRECISE_TIMERS_UP_TO
    jigs, else asyncio's default (epoll)."""
    if jigs > PRECISE_TIMERS_UP_TO:
        return None
    return lambda: asyncio.SelectorEventLoop(selectors.SelectSelector())


def run(options: SimOptions) -> int:
    """Run the simulated line on the loop `loop_factory` chooses; return the exit code."""
    jigs = len(options.plans) if options.plans else options.jigs
    with asyncio.Runner(loop_factory=loop_factory(jigs)) as runner:
        return runner.run(run_simulator(options))


async def run_simulator(options: SimOptions) -> int:
    """Run the simulated line until its devices are done or SIGINT/SIGTERM; return the exit code."""
    if options.reseat_seconds is not None:
        personalities.RESEAT_SECONDS = options.reseat_seconds  # builders read it at lookup
    plans = options.plans
    line = SimulatedLine(
        len(plans) if plans else options.jigs,
        devices_per_jig=options.devices,
        personality=options.personality or "good",
        mix=options.mix,
        directory=options.dir,
        record=options.record,
        paa=options.paa,
        swap_seconds=options.swap_seconds,
        swap_jitter=options.swap_jitter,
        seed=options.seed,
        baud=options.baud,
        protocol=options.protocol,
        plans=plans,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        await line.start()
        for name, path in line.ports.items():
            print(f"{name} {path}")
        sys.stdout.flush()
        done = asyncio.create_task(line.wait(), name="sim-line")
        stopped = asyncio.create_task(stop.wait(), name="sim-stop")
        try:
            await asyncio.wait({done, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if done.done():
                done.result()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), options.linger)
        finally:
            for task in (done, stopped):
                task.cancel()
            await asyncio.gather(done, stopped, return_exceptions=True)
    finally:
        await line.aclose()
        for sig in installed:
            loop.remove_signal_handler(sig)
    print(
        f"sim: {line.devices_done} devices, {line.devices_provisioned} provisioned",
        file=sys.stderr,
    )
    return 0


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _personality(text: str) -> str:
    _known_somewhere(text)
    return text


def _plan(text: str) -> list[list[str]]:
    plans = [[name.strip() for name in jig.split(",") if name.strip()] for jig in text.split(";")]
    if not plans or not all(plans):
        raise argparse.ArgumentTypeError(f"every jig needs at least one device: {text!r}")
    for plan in plans:
        _known_somewhere(",".join(plan))
    return plans


def _mix(text: str) -> str:
    _known_somewhere(text)
    return text


def _known_somewhere(mix: str) -> None:
    """ArgumentTypeError unless some protocol's simulator knows every personality of `mix`
    (checked against --protocol when the line is built)."""
    problems = []
    for protocol in protocol_names():
        try:
            parse_mix(mix, protocol)
            return
        except Exception as exc:
            problems.append(str(exc))
    raise argparse.ArgumentTypeError(problems[0])
