"""Commands run around a device: `pre_command` before it syncs, `post_command` after finish:000.

A step is an argument list with placeholders, run as an asyncio subprocess (never a shell), with
a timeout; its output (stdout and stderr merged) is kept bounded for the attempt transcript.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: Output kept per step: the first and the last lines, each cut to TRANSCRIPT_LINE_CHARS.
OUTPUT_HEAD_LINES: Final = 40
OUTPUT_TAIL_LINES: Final = 60
OUTPUT_LINE_CHARS: Final = 200
#: After the timeout: SIGTERM, then this long before SIGKILL.
KILL_GRACE: Final = 2.0
READ_CHUNK: Final = 65536


@dataclass(frozen=True, slots=True)
class StepCommand:
    """One configured step: what to run, for how long at most, and where."""

    name: str  # "pre" or "post"
    argv: tuple[str, ...]
    timeout: float
    cwd: Path | None = None

    def render(self, values: Mapping[str, str]) -> list[str]:
        """The argument list with {port}, {uid}, ... filled in (missing values are empty)."""
        return [arg.format_map(_Blank(values)) for arg in self.argv]


@dataclass(frozen=True, slots=True)
class StepResult:
    """How a step went; `output` is bounded and ready for a transcript."""

    name: str
    ok: bool
    exit_code: int | None  # None: it could not start or it timed out
    timed_out: bool
    output: tuple[str, ...]
    seconds: float
    detail: str  # one line for the attempt detail / jig status

    def transcript(self) -> list[str]:
        """Lines for the attempt transcript, framed so they cannot pass for protocol lines."""
        head = f"[{self.name}_step] {self.detail} ({self.seconds:.2f} s)"
        return [head, *(f"[{self.name}_step] {line}" for line in self.output)]

    def summary(self, lines: int = 3) -> str:
        """The detail plus the last few output lines, for a jig status tile."""
        tail = [line for line in self.output if line.strip()][-lines:]
        return self.detail + ("" if not tail else ": " + " | ".join(tail))


async def run_step(step: StepCommand, values: Mapping[str, str]) -> StepResult:
    """Run one step to completion or timeout; never raises for the command's own failure."""
    argv = step.render(values)
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=step.cwd,
            start_new_session=True,  # its own process group: a timeout kills its children too
        )
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return StepResult(
            step.name, False, None, False, (), 0.0, f"cannot start {argv[0]}: {reason}"
        )
    output = _BoundedOutput()
    assert proc.stdout is not None
    reader = asyncio.create_task(output.consume(proc.stdout), name=f"{step.name}-step-output")
    timed_out = False
    try:
        async with asyncio.timeout(step.timeout):
            await proc.wait()
    except TimeoutError:
        timed_out = True
        await _kill(proc)
    except asyncio.CancelledError:
        await _kill(proc)
        reader.cancel()
        raise
    finally:
        # A grandchild may keep the pipe open after the child exited: do not wait for it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(KILL_GRACE):
                await asyncio.shield(reader)
        reader.cancel()
    seconds = time.monotonic() - started
    code = proc.returncode
    if timed_out:
        detail = f"{step.name} step timed out after {step.timeout:g} s"
        return StepResult(step.name, False, None, True, output.lines(), seconds, detail)
    assert code is not None
    if code == 0:
        detail = f"{step.name} step ok"
    elif code < 0:
        detail = f"{step.name} step killed by signal {-code}"
    else:
        detail = f"{step.name} step failed: exit code {code}"
    return StepResult(step.name, code == 0, code, False, output.lines(), seconds, detail)


class _Blank(dict[str, str]):
    """format_map mapping where an unknown value (e.g. {uid} before a device) is empty."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)

    def __missing__(self, key: str) -> str:
        return ""


class _BoundedOutput:
    """Keeps the first and last lines of a stream and counts what it dropped."""

    def __init__(self) -> None:
        self._head: list[str] = []
        self._tail: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
        self._dropped = 0
        self._partial = b""

    async def consume(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(READ_CHUNK):
            data = self._partial + chunk
            *lines, self._partial = data.split(b"\n")
            for raw in lines:
                self._add(raw)
            if len(self._partial) > OUTPUT_LINE_CHARS * 4:  # no newline for a long time
                self._add(self._partial)
                self._partial = b""
        if self._partial:
            self._add(self._partial)
            self._partial = b""

    def _add(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")[:OUTPUT_LINE_CHARS]
        if len(self._head) < OUTPUT_HEAD_LINES:
            self._head.append(text)
            return
        if len(self._tail) == self._tail.maxlen:
            self._dropped += 1
        self._tail.append(text)

    def lines(self) -> tuple[str, ...]:
        middle = [f"<{self._dropped} lines of output dropped>"] if self._dropped else []
        return (*self._head, *middle, *self._tail)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the step's process group, then SIGKILL after KILL_GRACE."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        if wait is None:
            break
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await proc.wait()
            return
    await proc.wait()


@dataclass(frozen=True, slots=True)
class JigSteps:
    """A jig's configured steps (either may be absent) and its programmer id."""

    pre: StepCommand | None = None
    post: StepCommand | None = None
    pre_retry: float = 5.0  # first back-off after a failed pre step; doubles up to PRE_RETRY_MAX
    probe: str = ""

    @property
    def any(self) -> bool:
        """True when at least one step is configured."""
        return self.pre is not None or self.post is not None


#: The longest wait between two tries of a failing pre step.
PRE_RETRY_MAX: Final = 60.0
#: A pre step exiting with this code (EX_TEMPFAIL) says "no new device yet": not a failure.
PRE_NOT_READY: Final = 75
