"""Named device personalities: the well-behaved firmware and every fault the line must survive.

A personality is a bag of knobs (`Personality`); the registry maps a name to a builder so that the
module-level timing constants below can be patched in tests and take effect at the next lookup.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final, Literal

from linehost.errors import ConfigError

#: Probability of a log line before each line a `noisy` device writes and after each line it reads.
NOISE_PROBABILITY = 0.3
#: Delay per byte of the `slow` writer.
SLOW_BYTE_DELAY = 0.001
#: `Init` lines a `late_sync` device ignores while "booting".
LATE_SYNC_INITS = 3
#: Extra sync rounds a `stays` device answers after its result before the operator swaps it.
STAY_ROUNDS = 3
#: Seconds between an `unplug` device's CSR and the port vanishing.
UNPLUG_AFTER_CSR = 0.05
#: Seconds the jig's port stays gone after an unplug.
UNPLUG_SECONDS = 0.5
#: Length of the over-long line a `garbage` device sends (the host bound is 1024 bytes).
GARBAGE_LINE_BYTES = 1500
#: Random bytes a `garbage` device spews before it behaves.
GARBAGE_RANDOM_BYTES = 256
#: Random bytes and over-long line of a `flood` device (it also never closes its CSR block).
FLOOD_RANDOM_BYTES = 10 * 1024 * 1024
FLOOD_LINE_BYTES = 1024 * 1024
#: What a `finish_junk` device answers to a delivery.
FINISH_JUNK = "finish:0z\x00\xff junk"
#: Aborted (or timed-out) flows after which the operator takes an unfinished device out.
MAX_ABORTED_FLOWS = 2
#: Seconds a `reseated_after_silence` device stays out of the jig before the operator puts it
#: back; must exceed the host's `empty_after_syncs` unanswered Init rounds (3 x 1 s by default).
RESEAT_SECONDS = 5.0
#: ecc608-letters: seconds a `slow_chunks` device pauses before each read-back chunk.
SLOW_CHUNK_PAUSE = 0.1
#: ecc608-letters: seconds after `v` until an `unplug` device's port vanishes.
UNPLUG_AFTER_DELIVERY = 0.05
#: ecc608-letters: seconds a `silent_after_q` device stays (deaf) in the jig after `q`.
SILENT_AFTER_Q_SECONDS = 3.0

Curve = Literal["P-256", "P-384"]
#: How an attesting device answers the host's `Attest:` challenge (jig protocol v1.1):
#: sign: correctly; wrong_key: signs with another key; wrong_dac: signs over a corrupted copy of
#: the stored DAC; silent: never answers; error: answers `finish:<attest_error_code>`.
AttestAnswer = Literal["sign", "wrong_key", "wrong_dac", "silent", "error"]
#: What an `attest_error` device answers to a challenge (it cannot read its DAC back).
ATTEST_ERROR_CODE = 0x001

BOOT_BANNER: Final = (
    "ESP-ROM:esp32c3-api1-20210207",
    "rst:0x1 (POWERON),boot:0xc (SPI_FAST_FLASH_BOOT)",
    "",
    "I (30) boot: ESP-IDF v5.1.2 2nd stage bootloader",
    "I (214) cpu_start: Pro cpu start user code",
    "I (251) app_main: provisioning firmware 1.4.0 booting",
)


@dataclass(frozen=True, slots=True)
class Personality:
    """How one simulated device behaves; the defaults are a well-behaved device."""

    name: str
    description: str = ""
    line_ending: bytes = b"\n"
    noise: float = 0.0  # probability of a log line around each line written or read
    byte_delay: float = 0.0  # > 0: write byte by byte with this delay
    ignore_inits: int = 0  # Init lines ignored after arrival, as if still booting
    boot_banner: tuple[str, ...] = ()  # printed on arrival
    finish_code: int | None = None  # forced answer to a complete delivery (nothing is stored)
    finish_digits: int | None = None  # 3 or 4: zero-pad the finish code (finish:0ABC)
    answer_finish: bool = True  # False: never answers a delivery
    answer_abort: bool = False  # answer Abort with finish:FFFF
    curve: Curve = "P-256"
    corrupt_csr_signature: bool = False
    clone_key: bool = False  # reuse the key of a device this simulator provisioned before
    unplug_after_csr: float | None = None  # seconds after the CSR until the port vanishes
    unplug_seconds: float = 0.5  # how long the port stays gone
    stay_rounds: int = 0  # sync rounds answered after the result before the swap
    garbage: bool = False  # binary junk and an over-long line before the first answer
    garbage_random_bytes: int | None = None  # None: GARBAGE_RANDOM_BYTES
    garbage_line_bytes: int | None = None  # None: GARBAGE_LINE_BYTES
    csr_unclosed: bool = False  # the CSR block never gets its END marker
    finish_junk: str | None = None  # answered to a delivery instead of a finish code
    max_aborted_flows: int = MAX_ABORTED_FLOWS
    # > 0: the first delivery goes unanswered; when that flow ends (Abort, timeout) the operator
    # takes the SAME device out for this many seconds and puts it back; then it answers.
    reseat_seconds: float = 0.0
    uid_digits: int = 16
    uid_lowercase: bool = False
    # --- ecc608-letters devices (protocol = "ecc608-letters") ---
    protocol: str = "v1"  # the jig protocol the simulated firmware speaks
    chunk_pause: float = 0.0  # > 0: seconds before each read-back chunk
    corrupt_readback: bool = False  # `p` prints the DAC with one character changed
    returning: bool = False  # a locked chip back again: serial and key of a provisioned device
    unplug_after_delivery: float | None = None  # seconds after `v` until the port vanishes
    stay_after_quit: float = 0.0  # seconds it stays, deaf, in the jig after `q`
    attest: bool = False  # offers the attestation extension: `Start_provisioning attest`
    attest_answer: AttestAnswer = "sign"
    attest_error_code: int = ATTEST_ERROR_CODE

    def __post_init__(self) -> None:
        if not 8 <= self.uid_digits <= 64:
            raise ValueError(f"uid_digits must be 8..64, not {self.uid_digits}")
        if self.finish_code is not None and not 0 <= self.finish_code <= 0xFFFF:
            raise ValueError(f"finish_code out of range: {self.finish_code}")
        if self.reseat_seconds < 0:
            raise ValueError(f"reseat_seconds must be >= 0, not {self.reseat_seconds}")
        if self.finish_digits not in (None, 3, 4):
            raise ValueError(f"finish_digits must be 3 or 4, not {self.finish_digits}")

    def with_(self, **changes: object) -> Personality:
        """A copy with some knobs changed (same as dataclasses.replace)."""
        return replace(self, **changes)  # type: ignore[arg-type]


PersonalityBuilder = Callable[[], Personality]

_REGISTRY: dict[str, PersonalityBuilder] = {}
#: Personalities of devices speaking another jig protocol, per protocol name.
_OTHER_REGISTRIES: dict[str, dict[str, PersonalityBuilder]] = {"ecc608-letters": {}}
_FINISH_NAME = re.compile(r"finish_([0-9A-Fa-f]{3,4})")


def register(name: str, build: PersonalityBuilder | Personality, *, protocol: str = "v1") -> None:
    """Add (or replace) a named personality; a builder is called at every lookup."""
    registry = _REGISTRY if protocol == "v1" else _OTHER_REGISTRIES.setdefault(protocol, {})
    if isinstance(build, Personality):
        fixed = build
        registry[name] = lambda: fixed
    else:
        registry[name] = build


def get_personality(name: str, protocol: str = "v1") -> Personality:
    """The personality called `name`; `finish_<hex>` works for any code. ConfigError if unknown."""
    if protocol != "v1":
        other = _OTHER_REGISTRIES.get(protocol)
        if other is None:
            raise ConfigError(f"unknown jig protocol {protocol!r}")
        if name in other:
            return other[name]()
        known = ", ".join(personality_names(protocol))
        raise ConfigError(f"unknown {protocol} device personality {name!r} (known: {known})")
    build = _REGISTRY.get(name)
    if build is not None:
        return build()
    match = _FINISH_NAME.fullmatch(name)
    if match is not None:
        return _finish(int(match.group(1), 16))
    known = ", ".join(personality_names())
    raise ConfigError(f"unknown device personality {name!r} (known: {known})")


def personality_names(protocol: str = "v1") -> list[str]:
    """Every registered name of devices speaking `protocol`, sorted."""
    if protocol != "v1":
        return sorted(_OTHER_REGISTRIES.get(protocol, {}))
    return sorted(_REGISTRY)


def protocol_names() -> list[str]:
    """The jig protocols the simulator speaks."""
    return ["v1", *sorted(_OTHER_REGISTRIES)]


def _finish(code: int) -> Personality:
    return Personality(
        name=f"finish_{code:03X}",
        description=f"answers every delivery with finish:{code:03X}",
        finish_code=code,
    )


register("good", Personality("good", "well-behaved device"))
register("crlf", Personality("crlf", "every line ends CRLF", line_ending=b"\r\n"))
register(
    "noisy",
    lambda: Personality(
        "noisy", "log lines at random moments, also inside its CSR block", noise=NOISE_PROBABILITY
    ),
)
register("slow", lambda: Personality("slow", "writes byte by byte", byte_delay=SLOW_BYTE_DELAY))
register(
    "late_sync",
    lambda: Personality(
        "late_sync",
        "prints a boot banner and ignores the first Init lines",
        ignore_inits=LATE_SYNC_INITS,
        boot_banner=BOOT_BANNER,
    ),
)
for _code in (0x001, 0x002, 0x003, 0x004, 0xFFFE, 0xFFFF):
    register(f"finish_{_code:03X}", _finish(_code))
register("finish_unknown", _finish(0x0ABC).with_(name="finish_unknown", finish_digits=4))
register(
    "bad_csr_signature",
    Personality("bad_csr_signature", "CSR signature bytes corrupted", corrupt_csr_signature=True),
)
register("p384", Personality("p384", "CSR with a P-384 key", curve="P-384"))
register(
    "silent_after_delivery",
    Personality("silent_after_delivery", "never answers after END", answer_finish=False),
)
register(
    "unplug",
    lambda: Personality(
        "unplug",
        "the port vanishes after the CSR and returns with the next device",
        unplug_after_csr=UNPLUG_AFTER_CSR,
        unplug_seconds=UNPLUG_SECONDS,
    ),
)
register(
    "cloned_key",
    Personality(
        "cloned_key", "a new UID with the key of a device provisioned before", clone_key=True
    ),
)
register(
    "stays",
    lambda: Personality(
        "stays", "stays in the jig for a few sync rounds after its result", stay_rounds=STAY_ROUNDS
    ),
)
register(
    "garbage",
    Personality("garbage", "random bytes, NULs, invalid UTF-8, an over-long line", garbage=True),
)
register(
    "abort_ffff", Personality("abort_ffff", "answers Abort with finish:FFFF", answer_abort=True)
)
register(
    "reseated_after_silence",
    lambda: Personality(
        "reseated_after_silence",
        "silent after its first delivery; taken out, put back (same UID and key), then answers",
        reseat_seconds=RESEAT_SECONDS,
        max_aborted_flows=MAX_ABORTED_FLOWS + 1,
    ),
)
register(
    "flood",
    lambda: Personality(
        "flood",
        "10 MB of random bytes, NULs, invalid UTF-8, a 1 MB line, then a CSR that never closes",
        garbage=True,
        garbage_random_bytes=FLOOD_RANDOM_BYTES,
        garbage_line_bytes=FLOOD_LINE_BYTES,
        csr_unclosed=True,
    ),
)
register(
    "finish_junk",
    lambda: Personality(
        "finish_junk", "answers a delivery with finish: and junk", finish_junk=FINISH_JUNK
    ),
)
register("lower_uid", Personality("lower_uid", "sends its UID in lower case", uid_lowercase=True))

# The attestation extension (v1.1): each of these offers it; a v1 personality (`good`) does not.
register("attest", Personality("attest", "offers attestation and proves its DAC", attest=True))
register(
    "attest_wrong_key",
    Personality(
        "attest_wrong_key",
        "offers attestation, signs the challenge with a key that is not its DAC key",
        attest=True,
        attest_answer="wrong_key",
    ),
)
register(
    "attest_wrong_dac",
    Personality(
        "attest_wrong_dac",
        "offers attestation, signs over a corrupted copy of its stored DAC",
        attest=True,
        attest_answer="wrong_dac",
    ),
)
register(
    "attest_silent",
    Personality(
        "attest_silent",
        "offers attestation, never answers the challenge",
        attest=True,
        attest_answer="silent",
    ),
)
register(
    "attest_error",
    lambda: Personality(
        "attest_error",
        f"offers attestation, answers the challenge with finish:{ATTEST_ERROR_CODE:03X}",
        attest=True,
        attest_answer="error",
        attest_error_code=ATTEST_ERROR_CODE,
    ),
)

# --- ECC608 letter-protocol devices (`linehost sim --protocol ecc608-letters`) -----------------
LETTERS: Final = "ecc608-letters"


def _letters(name: str, description: str, **knobs: object) -> Personality:
    return Personality(name, description, protocol=LETTERS, uid_digits=18, **knobs)  # type: ignore[arg-type]


register("good", _letters("good", "well-behaved ECC608 firmware"), protocol=LETTERS)
register(
    "noisy",
    lambda: _letters(
        "noisy", "log lines between answers and between read-back chunks", noise=NOISE_PROBABILITY
    ),
    protocol=LETTERS,
)
register(
    "slow_chunks",
    lambda: _letters(
        "slow_chunks",
        "read-back chunks come slowly, one every SLOW_CHUNK_PAUSE seconds",
        chunk_pause=SLOW_CHUNK_PAUSE,
    ),
    protocol=LETTERS,
)
register(
    "readback_corrupt",
    _letters("readback_corrupt", "reads back a corrupted DAC", corrupt_readback=True),
    protocol=LETTERS,
)
register(
    "locked",
    _letters(
        "locked",
        "an already locked chip back in the line: the serial and key of a device provisioned "
        "before, the same key on every k",
        returning=True,
    ),
    protocol=LETTERS,
)
register(
    "cloned_key",
    _letters(
        "cloned_key", "a new serial with the key of a device provisioned before", clone_key=True
    ),
    protocol=LETTERS,
)
register(
    "unplug",
    lambda: _letters(
        "unplug",
        "the port vanishes mid-delivery (after v) and returns with the next device",
        unplug_after_delivery=UNPLUG_AFTER_DELIVERY,
        unplug_seconds=UNPLUG_SECONDS,
    ),
    protocol=LETTERS,
)
register(
    "silent_after_q",
    lambda: _letters(
        "silent_after_q",
        "stays in the jig, silent, for a while after q",
        stay_after_quit=SILENT_AFTER_Q_SECONDS,
    ),
    protocol=LETTERS,
)
