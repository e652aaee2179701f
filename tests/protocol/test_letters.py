"""LetterSession: every transition and outcome of the ECC608 letter protocol, no port, no clock."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from linehost.protocol.letters import (
    MAX_ANSWER_BYTES,
    MAX_KEY_BYTES,
    READBACK_MISMATCH,
    READBACK_TIMEOUT,
    LetterSession,
    Phase,
)
from linehost.protocol.letters_device import Chunks, LetterFirmware, Reply, chunked
from linehost.protocol.outcomes import JigState, Outcome
from linehost.protocol.session import (
    AttemptEnded,
    AttemptStarted,
    DeviceArrived,
    Effect,
    KeyPresented,
    SendBytes,
    StateChanged,
    Timing,
)

TIMING = Timing(
    sync_interval=1.0, csr_timeout=30.0, result_timeout=30.0, empty_after_syncs=3, letter_gap=0.2
)
SERIAL = "0123ABCDEF01234567"
KEY = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEVtUlbhQ6fTCYlkQ7qDrQKfXfNrWh\n"
    "h2IYsaFQ1q0wq6wm3xqmhWQ8BzoeMMrT5VyrqN0xKh0tPzKX5gqUQ8lJHw==\n"
    "-----END PUBLIC KEY-----\n"
)
DAC = "-----BEGIN CERTIFICATE-----\n" + "REFD" * 40 + "\n-----END CERTIFICATE-----\n"
PAI = "-----BEGIN CERTIFICATE-----\n" + "UEFJ" * 40 + "\n-----END CERTIFICATE-----\n"
LOG = b"I (1234) app: heap free 123456\n"
COLOURED = b"\x1b[0;33mW (99) wifi: sta disconnected\x1b[0m\n"


def sent(effects: list[Effect]) -> list[bytes]:
    return [e.data for e in effects if isinstance(e, SendBytes)]


def ended(effects: list[Effect]) -> AttemptEnded:
    found = [e for e in effects if isinstance(e, AttemptEnded)]
    assert len(found) == 1, effects
    return found[0]


class Bench:
    """A LetterSession wired to a LetterFirmware, time advanced by hand."""

    def __init__(self, firmware: LetterFirmware | None = None, timing: Timing = TIMING) -> None:
        self.session = LetterSession(timing)
        self.firmware = firmware or LetterFirmware(SERIAL, KEY)
        self.now = 0.0
        self.log: list[Effect] = []
        self.wire: list[bytes] = []  # what the host wrote
        self.noise = b""  # written by the "device" before each answer
        self.corrupt: bytes | None = None  # replaces the read-back when set
        self.present = True

    def run(self, effects: list[Effect]) -> None:
        pending = list(effects)
        while pending:
            effect = pending.pop(0)
            self.log.append(effect)
            if isinstance(effect, SendBytes):
                self.wire.append(effect.data)
                if self.present:
                    pending += self.device_says(self.firmware.receive(effect.data))

    def device_says(self, events: list[object]) -> list[Effect]:
        out: list[Effect] = []
        for event in events:
            if isinstance(event, Reply):
                out += self.session.on_bytes(self.noise + event.data, self.now)
            elif isinstance(event, Chunks):
                data = b"".join(event.chunks) if self.corrupt is None else self.corrupt
                for chunk in chunked(data):
                    out += self.session.on_bytes(chunk + self.noise, self.now)
        return out

    def open(self) -> None:
        self.run(self.session.open(self.now))

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            wake = self.session.next_wakeup()
            if wake is None or wake > end:
                break
            self.now = max(self.now, wake)
            self.run(self.session.on_timer(self.now))
        self.now = end

    def key(self) -> KeyPresented:
        keys = [e for e in self.log if isinstance(e, KeyPresented)]
        assert len(keys) == 1
        return keys[0]

    def deliver(self, root: str | None = None) -> None:
        self.run(self.session.deliver(DAC, PAI, self.now, root_key_pem=root))

    def ends(self) -> list[AttemptEnded]:
        return [e for e in self.log if isinstance(e, AttemptEnded)]


def test_good_device_provisioned_and_told_q() -> None:
    bench = Bench()
    bench.open()
    key = bench.key()
    assert key.uid == SERIAL
    assert key.key_proof == "none"
    assert key.pem == KEY
    started = [e for e in bench.log if isinstance(e, AttemptStarted)]
    assert started[0].key_proof == "none"
    assert started[0].uid == SERIAL
    assert bench.wire == [b"r", b"s", b"k"]
    bench.deliver()
    assert bench.wire[-1] == b"c"  # one letter alone, the PEM after letter_gap
    bench.advance(2.0)
    assert bench.wire[3:9] == [b"c", PAI.encode(), b"v", DAC.encode(), b"p", b"q"]
    assert set(bench.wire[9:]) == {b"r"}  # syncing on: the firmware no longer answers
    end = ended(bench.log)
    assert (end.outcome, end.detail, end.delivered) == (Outcome.PROVISIONED, "readback ok", True)
    assert bench.firmware.slots == {"signer": PAI.encode(), "device": DAC.encode()}
    assert bench.session.state is JigState.WAITING_FOR_SWAP


def test_letters_are_sent_apart() -> None:
    bench = Bench()
    bench.open()
    bench.deliver(root="-----BEGIN PUBLIC KEY-----\nUEFB\n-----END PUBLIC KEY-----\n")
    times = []
    while bench.session.phase is Phase.DELIVERING:
        times.append(bench.session.next_wakeup())
        bench.advance(0.2)
    assert bench.wire[3:5] == [
        b"b",
        b"-----BEGIN PUBLIC KEY-----\nUEFB\n-----END PUBLIC KEY-----\n",
    ]
    assert all(b - a >= 0.2 - 1e-9 for a, b in itertools.pairwise(times))
    assert bench.firmware.slots["root"].startswith(b"-----BEGIN PUBLIC KEY-----")


def test_log_lines_between_chunks_and_answers_are_ignored() -> None:
    bench = Bench()
    bench.noise = LOG
    bench.open()
    assert bench.key().pem == KEY
    bench.deliver()
    bench.advance(2.0)
    assert ended(bench.log).outcome is Outcome.PROVISIONED
    assert any("heap free" in line for line in ended(bench.log).transcript)


def test_coloured_log_lines_are_ignored_too() -> None:
    bench = Bench()
    bench.noise = b"\x1b[0;32mI (1234) atecc: slot 0 locked\x1b[0m\n"
    bench.open()
    assert bench.key().pem == KEY
    bench.deliver()
    bench.advance(2.0)
    assert ended(bench.log).outcome is Outcome.PROVISIONED


def test_readback_of_a_corrupted_certificate() -> None:
    bench = Bench()
    bench.open()
    bench.corrupt = (PAI + DAC.replace("REFD", "REFE", 1)).encode()
    bench.deliver()
    bench.advance(2.0)
    end = ended(bench.log)
    assert (end.outcome, end.detail, end.device_code) == (
        Outcome.DEVICE_ERROR,
        READBACK_MISMATCH,
        None,
    )
    assert b"q" not in bench.wire  # the operator re-seats; no q
    # The device still answers: same serial -> waiting for swap, no new attempt.
    bench.advance(1.0)
    assert bench.session.state is JigState.WAITING_FOR_SWAP
    assert len(bench.ends()) == 1
    # Taken out (silence), put back: a new attempt for the same serial.
    bench.present = False
    bench.advance(5.0)
    assert bench.session.state is JigState.WAITING_FOR_DEVICE
    bench.present = True
    bench.advance(1.0)
    assert len([e for e in bench.log if isinstance(e, AttemptStarted)]) == 2


def test_readback_timeout_when_p_is_unanswered() -> None:
    bench = Bench()
    bench.open()
    bench.deliver()
    bench.present = False
    bench.advance(31.0)
    end = ended(bench.log)
    assert (end.outcome, end.detail, end.delivered) == (
        Outcome.DEVICE_ERROR,
        READBACK_TIMEOUT,
        True,
    )


def test_silent_after_q_keeps_waiting_for_swap_until_a_new_serial() -> None:
    bench = Bench()
    bench.open()
    bench.deliver()
    bench.advance(2.0)
    bench.advance(20.0)  # the firmware no longer listens: r goes unanswered
    assert bench.session.state is JigState.WAITING_FOR_SWAP
    assert len(bench.ends()) == 1
    bench.firmware = LetterFirmware("FFFFFFFFFFFFFFFFFF", KEY)
    bench.advance(1.0)
    assert bench.session.state is JigState.PROVISIONING
    assert bench.session.uid == "FFFFFFFFFFFFFFFFFF"


def test_reject_ends_without_delivery() -> None:
    bench = Bench()
    bench.open()
    bench.run(bench.session.reject(Outcome.DUPLICATE_KEY, "public key already assigned", 0.0))
    end = ended(bench.log)
    assert (end.outcome, end.delivered) == (Outcome.DUPLICATE_KEY, False)
    assert bench.wire == [b"r", b"s", b"k"]


def test_key_timeout_and_unclosed_block() -> None:
    bench = Bench(LetterFirmware(SERIAL, ""))
    bench.open()
    bench.advance(31.0)
    assert (ended(bench.log).outcome, ended(bench.log).detail) == (Outcome.TIMEOUT, "csr")
    bench = Bench(LetterFirmware(SERIAL, KEY.split("-----END")[0]))
    bench.open()
    bench.advance(31.0)
    end = ended(bench.log)
    assert (end.outcome, end.detail) == (
        Outcome.PROTOCOL_ERROR,
        "public key PEM block never closed",
    )


def test_oversized_key_is_rejected() -> None:
    body = "\n".join(["QUFB" * 16] * 20)
    bench = Bench(LetterFirmware(SERIAL, f"-----BEGIN PUBLIC KEY-----\n{body}\n"))
    bench.open()
    end = ended(bench.log)
    assert end.outcome is Outcome.CSR_REJECTED
    assert str(MAX_KEY_BYTES) in end.detail


def test_malformed_serial_is_a_protocol_error_without_uid() -> None:
    bench = Bench(LetterFirmware("0123abcdef01234567", KEY))
    bench.open()
    end = ended(bench.log)
    assert (end.outcome, end.uid) == (Outcome.PROTOCOL_ERROR, None)
    bench = Bench(LetterFirmware("XYZ123ABCDEF0123456789", KEY))
    bench.open()
    assert ended(bench.log).outcome is Outcome.PROTOCOL_ERROR


def test_no_serial_goes_back_to_sync_without_attempt() -> None:
    bench = Bench(LetterFirmware("", KEY))
    bench.open()
    bench.advance(31.0)
    assert bench.ends() == []
    assert not bench.session.in_attempt
    assert bench.wire == [b"r", b"s", b"r", b"s"]  # after csr_timeout: sync again


def test_empty_jig_keeps_syncing() -> None:
    bench = Bench()
    bench.present = False
    bench.open()
    bench.advance(5.0)
    assert bench.wire == [b"r"] * 6
    assert [e for e in bench.log if isinstance(e, StateChanged)] == [
        StateChanged(JigState.WAITING_FOR_DEVICE, None)
    ]


def test_close_mid_delivery_is_disconnected() -> None:
    bench = Bench()
    bench.open()
    bench.deliver()
    bench.advance(0.7)  # c, PAI, v, DAC sent
    bench.run(bench.session.close(Outcome.DISCONNECTED, "port lost", bench.now))
    end = ended(bench.log)
    assert (end.outcome, end.delivered) == (Outcome.DISCONNECTED, True)
    assert bench.session.state is JigState.OFFLINE


def test_hold_new_devices_yields_device_arrived() -> None:
    bench = Bench()
    bench.session.hold_new_devices(True)
    bench.open()
    assert [e for e in bench.log if isinstance(e, DeviceArrived)] == [DeviceArrived(SERIAL)]
    assert bench.ends() == []
    assert not bench.session.in_attempt


# --- fuzz --------------------------------------------------------------------------------------


def _feed(session: LetterSession, data: bytes, cuts: list[int], now: float) -> list[Effect]:
    """`data` in pieces of the sizes in `cuts` (the rest in one piece)."""
    effects: list[Effect] = []
    pos = 0
    for cut in [*cuts, len(data)]:
        effects += session.on_bytes(data[pos : pos + cut], now)
        pos += cut
        if pos >= len(data):
            break
    return effects


@settings(max_examples=200, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=60),
    noise=st.sampled_from([b"", LOG, COLOURED]),
)
def test_fuzz_any_chunking_gives_the_same_key(cuts: list[int], noise: bytes) -> None:
    session = LetterSession(TIMING)
    session.open(0.0)
    effects: list[Effect] = []
    # Each answer follows its command letter; any answer may come in any pieces.
    for answer in (
        b"Ready.\r\n",
        SERIAL.encode(),
        noise + KEY.encode().replace(b"\n", b"\n" + noise, 1),
    ):
        effects += _feed(session, answer, cuts, 0.0)
    assert [e.pem for e in effects if isinstance(e, KeyPresented)] == [KEY]
    assert sent(effects) == [b"s", b"k"]


@settings(max_examples=200, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=90), max_size=80),
    noise=st.sampled_from([b"", LOG, COLOURED]),
)
def test_fuzz_readback_any_chunking(cuts: list[int], noise: bytes) -> None:
    session = LetterSession(TIMING)
    session.open(0.0)
    for answer in (b"Ready.\n", SERIAL.encode(), KEY.encode()):
        session.on_bytes(answer, 0.0)
    session.deliver(DAC, PAI, 0.0)
    now = 0.0
    while session.phase is Phase.DELIVERING:
        now += 0.2
        session.on_timer(now)
    assert session.phase is Phase.READBACK
    pieces = chunked((PAI + DAC).encode())
    data = noise.join(pieces)
    effects = _feed(session, data, cuts, now)
    assert ended(effects).outcome is Outcome.PROVISIONED
    assert sent(effects)[0] == b"q"


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=300), max_size=40),
    ticks=st.lists(st.floats(min_value=0, max_value=40), max_size=10),
)
def test_fuzz_random_bytes_never_raise_and_stay_bounded(
    chunks: list[bytes], ticks: list[float]
) -> None:
    session = LetterSession(TIMING)
    now = 0.0
    session.open(now)
    starts = ends = 0
    for i, chunk in enumerate(chunks):
        effects = session.on_bytes(b"Ready.\n" + chunk if i % 3 == 0 else chunk, now)
        if ticks:
            now += ticks[i % len(ticks)]
            effects += session.on_timer(now)
        for effect in effects:
            if isinstance(effect, KeyPresented):
                effects += session.reject(Outcome.CSR_REJECTED, "fuzz", now)
            starts += isinstance(effect, AttemptStarted)
            ends += isinstance(effect, AttemptEnded)
        assert session.buffered <= MAX_ANSWER_BYTES
    assert starts - ends in (0, 1)
    assert (starts - ends == 1) == session.in_attempt
