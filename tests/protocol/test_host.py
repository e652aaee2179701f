"""HostSession: every transition and every outcome of jig protocol v1, without ports or clocks."""

from __future__ import annotations

import pytest

from linehost.protocol.host import (
    CSR_BEGIN,
    CSR_END,
    MAX_CSR_BYTES,
    AttemptEnded,
    AttemptStarted,
    Effect,
    HostSession,
    KeyPresented,
    Phase,
    SendLine,
    Timing,
)
from linehost.protocol.outcomes import FINISH_CODES, JigState, Outcome, describe_finish
from linehost.protocol.session import StateChanged

TIMING = Timing(sync_interval=1.0, csr_timeout=30.0, result_timeout=30.0, empty_after_syncs=3)
CSR_BODY = ["MIIBCDCBrwIBADBNMQswCQYDVQQGEwJVUzEOMAwGA1UECgwFQWNtZTEuMCwGA1UE", "AwwlZGV2aWNl"]
DAC = "-----BEGIN CERTIFICATE-----\nREFD\n-----END CERTIFICATE-----\n"
PAI = "-----BEGIN CERTIFICATE-----\nUEFJ\n-----END CERTIFICATE-----\n"


def sent(effects: list[Effect]) -> list[str]:
    return [e.text for e in effects if isinstance(e, SendLine)]


def of_type(effects: list[Effect], kind: type) -> list[object]:
    return [e for e in effects if isinstance(e, kind)]


def ended(effects: list[Effect]) -> AttemptEnded:
    found = [e for e in effects if isinstance(e, AttemptEnded)]
    assert len(found) == 1, effects
    return found[0]


class Conversation:
    """Drives a session like a runner would, collecting every effect."""

    def __init__(self, timing: Timing = TIMING) -> None:
        self.session = HostSession(timing)
        self.now = 0.0
        self.log: list[Effect] = []

    def open(self) -> list[Effect]:
        return self._keep(self.session.open(self.now))

    def lines(self, *lines: str) -> list[Effect]:
        out: list[Effect] = []
        for line in lines:
            out += self.session.on_line(line, self.now)
        return self._keep(out)

    def advance(self, seconds: float) -> list[Effect]:
        self.now += seconds
        return self._keep(self.session.on_timer(self.now))

    def _keep(self, effects: list[Effect]) -> list[Effect]:
        self.log += effects
        return effects

    def to_csr_ready(self, uid: str = "00112233AABBCCDD") -> KeyPresented:
        self.open()
        self.lines("Start_provisioning", f"UID:{uid}")
        out = self.lines(CSR_BEGIN, *CSR_BODY, CSR_END)
        (ready,) = of_type(out, KeyPresented)
        assert isinstance(ready, KeyPresented)
        return ready

    def to_result(self, uid: str = "00112233AABBCCDD") -> list[Effect]:
        self.to_csr_ready(uid)
        return self._keep(self.session.deliver(DAC, PAI, self.now))


def test_open_sends_abort_then_init_and_waits_for_a_device() -> None:
    conv = Conversation()
    out = conv.open()
    assert sent(out) == ["Abort", "Init"]
    assert conv.session.state is JigState.WAITING_FOR_DEVICE
    assert of_type(out, StateChanged) == [StateChanged(JigState.WAITING_FOR_DEVICE, None)]


def test_init_repeats_every_sync_interval_and_idle_records_nothing() -> None:
    conv = Conversation()
    conv.open()
    assert conv.session.next_wakeup() == pytest.approx(1.0)
    assert sent(conv.advance(0.5)) == []
    assert sent(conv.advance(0.5)) == ["Init"]
    for _ in range(10):
        assert sent(conv.advance(1.0)) == ["Init"]
    assert not of_type(conv.log, AttemptStarted)
    assert not of_type(conv.log, AttemptEnded)


def test_lines_before_start_provisioning_are_ignored() -> None:
    conv = Conversation()
    conv.open()
    out = conv.lines("boot: ROM v1.2", "UID:00112233", "finish:000", "-----BEGIN CERTIFICATE-----")
    assert out == []
    assert conv.session.phase is Phase.SYNCING


def test_full_successful_conversation() -> None:
    conv = Conversation()
    ready = conv.to_csr_ready("deadbeef00")
    assert ready.uid == "DEADBEEF00"  # normalised to upper case
    assert ready.pem == "\n".join([CSR_BEGIN, *CSR_BODY, CSR_END]) + "\n"
    assert conv.session.state is JigState.PROVISIONING
    assert conv.session.next_wakeup() is None  # no timeout while the host issues
    out = conv.session.deliver(DAC, PAI, conv.now, cd_b64="Q0Q=", factory_data=(("x", "1"),))
    assert sent(out) == [
        "-----BEGIN CERTIFICATE-----",
        "REFD",
        "-----END CERTIFICATE-----",
        "-----BEGIN CERTIFICATE-----",
        "UEFJ",
        "-----END CERTIFICATE-----",
        "CD:Q0Q=",
        "FD:x=1",
        "END",
    ]
    assert conv.session.next_wakeup() == pytest.approx(30.0)
    out = conv.lines("I (55) writing credentials", "finish:000")
    result = ended(out)
    assert result.outcome is Outcome.PROVISIONED
    assert result.device_code == 0
    assert result.delivered
    assert "I (55) writing credentials" in result.transcript
    # no Abort after a good result, straight back to syncing for the next device
    assert sent(out) == ["Init"]
    assert conv.session.state is JigState.WAITING_FOR_DEVICE


@pytest.mark.parametrize("code", sorted(set(FINISH_CODES) - {0}))
def test_every_nonzero_finish_code_is_a_device_error_with_its_meaning(code: int) -> None:
    conv = Conversation()
    conv.to_result()
    text = f"{code:03X}"
    result = ended(conv.lines(f"finish:{text}"))
    assert result.outcome is Outcome.DEVICE_ERROR
    assert result.device_code == code
    assert result.detail == describe_finish(code)
    assert FINISH_CODES[code] in result.detail


def test_unknown_finish_code_is_reported_with_its_value() -> None:
    conv = Conversation()
    conv.to_result()
    result = ended(conv.lines("finish:0ABC"))
    assert result.outcome is Outcome.DEVICE_ERROR
    assert result.device_code == 0xABC
    assert "unknown device code 2748" in result.detail


def test_finish_code_accepts_lower_case_and_four_digits() -> None:
    conv = Conversation()
    conv.to_result()
    assert ended(conv.lines("finish:fffe")).device_code == 0xFFFE


@pytest.mark.parametrize(
    "junk", ["finish:", "finish:12", "finish:12345", "finish:00G", "finish: 000"]
)
def test_malformed_finish_is_a_protocol_error(junk: str) -> None:
    conv = Conversation()
    conv.to_result()
    out = conv.lines(junk)
    result = ended(out)
    assert result.outcome is Outcome.PROTOCOL_ERROR
    assert "malformed finish" in result.detail
    assert sent(out)[0] == "Abort"


def test_log_lines_inside_the_csr_block_are_not_part_of_it() -> None:
    conv = Conversation()
    conv.open()
    conv.lines("Start_provisioning", "UID:0011223344")
    out = conv.lines(
        CSR_BEGIN,
        CSR_BODY[0],
        "I (1234) app: heap free 41232",
        "W (1240) wifi: not started",
        CSR_BODY[1],
        CSR_END,
    )
    (ready,) = of_type(out, KeyPresented)
    assert isinstance(ready, KeyPresented)
    assert "heap" not in ready.pem
    assert ready.pem.splitlines() == [CSR_BEGIN, *CSR_BODY, CSR_END]


def test_log_lines_before_the_csr_and_while_issuing_are_kept_in_the_transcript() -> None:
    conv = Conversation()
    conv.open()
    conv.lines("Start_provisioning", "UID:0011223344", "boot log", CSR_BEGIN, *CSR_BODY, CSR_END)
    conv.lines("still alive")
    conv.session.deliver(DAC, PAI, conv.now)
    result = ended(conv.lines("finish:000"))
    assert "boot log" in result.transcript
    assert "still alive" in result.transcript


def test_csr_timeout_before_the_block() -> None:
    conv = Conversation()
    conv.open()
    conv.lines("Start_provisioning", "UID:0011223344")
    conv.advance(29.9)
    out = conv.advance(0.2)
    result = ended(out)
    assert (result.outcome, result.detail) == (Outcome.TIMEOUT, "csr")
    assert sent(out)[0] == "Abort"


def test_csr_block_never_closed_is_a_protocol_error() -> None:
    conv = Conversation()
    conv.open()
    conv.lines("Start_provisioning", "UID:0011223344", CSR_BEGIN, CSR_BODY[0])
    result = ended(conv.advance(31))
    assert result.outcome is Outcome.PROTOCOL_ERROR
    assert "never closed" in result.detail


def test_csr_deadline_counts_from_start_provisioning() -> None:
    conv = Conversation()
    conv.open()
    conv.lines("Start_provisioning")
    conv.advance(20)
    conv.lines("UID:0011223344")
    result = ended(conv.advance(10.5))
    assert result.detail == "csr"


def test_start_provisioning_without_uid_is_no_attempt() -> None:
    conv = Conversation()
    conv.open()
    conv.lines("Start_provisioning")
    out = conv.advance(31)
    assert not of_type(out, AttemptEnded)
    assert sent(out) == ["Abort"]
    assert conv.session.phase is Phase.SYNCING


def test_oversized_csr_is_rejected_as_too_large() -> None:
    conv = Conversation()
    conv.open()
    conv.lines("Start_provisioning", "UID:0011223344", CSR_BEGIN)
    out: list[Effect] = []
    for _ in range(MAX_CSR_BYTES // 64 + 2):
        out += conv.lines("A" * 64)
    result = ended(out)
    assert result.outcome is Outcome.CSR_REJECTED
    assert "too large" in result.detail


def test_result_timeout_ends_unknown_and_aborts() -> None:
    conv = Conversation()
    conv.to_result()
    out = conv.advance(30.1)
    result = ended(out)
    assert (result.outcome, result.detail, result.delivered) == (Outcome.TIMEOUT, "result", True)
    assert sent(out)[:2] == ["Abort", "Init"]


@pytest.mark.parametrize(
    ("outcome", "detail"),
    [
        (Outcome.CSR_REJECTED, "CSR key is not EC P-256"),
        (Outcome.ISSUER_ERROR, "HSM not reachable"),
        (Outcome.DUPLICATE_KEY, "key assigned to UID 99"),
        (Outcome.ALREADY_PROVISIONED, "UID has a confirmed DAC"),
    ],
)
def test_reject_aborts_the_device_and_ends_with_that_outcome(outcome: Outcome, detail: str) -> None:
    conv = Conversation()
    conv.to_csr_ready()
    out = conv.session.reject(outcome, detail, conv.now)
    result = ended(out)
    assert (result.outcome, result.detail, result.delivered) == (outcome, detail, False)
    assert sent(out)[0] == "Abort"
    # after an abort, whatever the device says is discarded until Start_provisioning
    assert conv.lines("finish:FFFF") == []
    assert conv.session.phase is Phase.SYNCING


def test_deliver_or_reject_outside_issuing_does_nothing() -> None:
    conv = Conversation()
    conv.open()
    assert conv.session.deliver(DAC, PAI, 0.0) == []
    assert conv.session.reject(Outcome.ISSUER_ERROR, "x", 0.0) == []


def test_line_too_long_during_an_attempt_is_a_protocol_error() -> None:
    conv = Conversation()
    conv.open()
    conv.lines("Start_provisioning", "UID:0011223344")
    result = ended(conv.session.on_line_too_long(5000, conv.now))
    assert result.outcome is Outcome.PROTOCOL_ERROR
    assert "1024" in result.detail


def test_line_too_long_while_idle_is_ignored() -> None:
    conv = Conversation()
    conv.open()
    assert conv.session.on_line_too_long(5000, conv.now) == []


@pytest.mark.parametrize(
    ("setup", "line"),
    [
        ("csr", "finish:000"),
        ("csr", "UID:0011223355"),
        ("csr", "Start_provisioning"),
        ("csr", "-----BEGIN CERTIFICATE-----"),
        ("in_block", "-----END CERTIFICATE-----"),
        ("in_block", "finish:000"),
        ("issuing", "finish:000"),
        ("result", "UID:0011223355"),
        ("result", "-----BEGIN CERTIFICATE REQUEST-----"),
    ],
)
def test_sequence_violations_are_protocol_errors(setup: str, line: str) -> None:
    conv = Conversation()
    conv.open()
    conv.lines("Start_provisioning", "UID:0011223344")
    if setup == "in_block":
        conv.lines(CSR_BEGIN, CSR_BODY[0])
    elif setup == "issuing":
        conv.lines(CSR_BEGIN, *CSR_BODY, CSR_END)
    elif setup == "result":
        conv.lines(CSR_BEGIN, *CSR_BODY, CSR_END)
        conv.session.deliver(DAC, PAI, conv.now)
    out = conv.lines(line)
    result = ended(out)
    assert result.outcome is Outcome.PROTOCOL_ERROR
    assert sent(out)[0] == "Abort"


@pytest.mark.parametrize("line", ["UID:", "UID:1234567", "UID:" + "A" * 65, "UID:XYZ12345"])
def test_malformed_uid_is_a_protocol_error_without_uid(line: str) -> None:
    conv = Conversation()
    conv.open()
    conv.lines("Start_provisioning")
    out = conv.lines(line)
    (started,) = of_type(out, AttemptStarted)
    assert isinstance(started, AttemptStarted)
    assert started.uid is None
    result = ended(out)
    assert result.outcome is Outcome.PROTOCOL_ERROR
    assert "malformed UID" in result.detail


@pytest.mark.parametrize("uid", ["0" * 8, "f" * 64])
def test_uid_bounds(uid: str) -> None:
    conv = Conversation()
    assert conv.to_csr_ready(uid).uid == uid.upper()


def test_same_uid_right_after_an_attempt_waits_for_swap_and_records_nothing() -> None:
    conv = Conversation()
    conv.to_result("00112233AABBCCDD")
    conv.lines("finish:000")
    out = conv.lines("Start_provisioning", "UID:00112233aabbccdd")
    assert sent(out) == ["Abort"]
    assert not of_type(out, AttemptStarted)
    assert conv.session.state is JigState.WAITING_FOR_SWAP
    # it keeps syncing and keeps refusing the same device
    assert sent(conv.advance(1.0)) == ["Init"]
    assert sent(conv.lines("Start_provisioning", "UID:00112233AABBCCDD")) == ["Abort"]
    assert conv.session.state is JigState.WAITING_FOR_SWAP
    # a different device starts a new attempt
    out = conv.advance(1.0) + conv.lines("Start_provisioning", "UID:0000000000000002")
    (started,) = of_type(out, AttemptStarted)
    assert isinstance(started, AttemptStarted)
    assert started.uid == "0000000000000002"
    assert conv.session.state is JigState.PROVISIONING


def test_empty_jig_releases_the_swap_hold_so_a_reseated_device_is_served() -> None:
    conv = Conversation()
    conv.to_result("00112233AABBCCDD")
    conv.lines("finish:001")
    conv.lines("Start_provisioning", "UID:00112233AABBCCDD")
    assert conv.session.state is JigState.WAITING_FOR_SWAP
    for _ in range(TIMING.empty_after_syncs + 1):  # nobody answers: device taken out
        conv.advance(1.0)
    assert conv.session.state is JigState.WAITING_FOR_DEVICE
    out = conv.lines("Start_provisioning", "UID:00112233AABBCCDD")
    assert of_type(out, AttemptStarted)


def test_device_answering_abort_with_finish_ffff_is_ignored() -> None:
    conv = Conversation()
    conv.to_result()
    conv.advance(31)  # result timeout -> Abort
    assert conv.lines("finish:FFFF") == []
    assert conv.session.phase is Phase.SYNCING


def test_close_mid_attempt_is_disconnected_and_offline() -> None:
    conv = Conversation()
    conv.to_result()
    out = conv.session.close(Outcome.DISCONNECTED, "port lost: EIO", conv.now)
    result = ended(out)
    assert (result.outcome, result.delivered) == (Outcome.DISCONNECTED, True)
    assert conv.session.state is JigState.OFFLINE
    assert sent(out) == []  # the port is gone: nothing to say


def test_close_when_idle_records_no_attempt() -> None:
    conv = Conversation()
    conv.open()
    out = conv.session.close(Outcome.DISCONNECTED, "gone", conv.now)
    assert not of_type(out, AttemptEnded)
    assert conv.session.state is JigState.OFFLINE


def test_abort_at_shutdown_tells_the_device() -> None:
    conv = Conversation()
    conv.to_csr_ready()
    out = conv.session.abort(Outcome.DISCONNECTED, "host shutdown", conv.now)
    assert sent(out)[0] == "Abort"
    assert ended(out).outcome is Outcome.DISCONNECTED


def test_crlf_is_handled_by_the_framer_so_the_session_sees_clean_lines() -> None:
    from linehost.protocol.framing import LineFramer

    conv = Conversation()
    conv.open()
    stream = "\r\n".join(["Start_provisioning", "UID:0011223344", CSR_BEGIN, *CSR_BODY, CSR_END])
    frames = LineFramer().feed((stream + "\r\n").encode())
    out = conv.lines(*[f for f in frames if isinstance(f, str)])
    assert of_type(out, KeyPresented)


def test_every_outcome_in_the_vocabulary_is_reachable() -> None:
    """The session reaches all outcomes except the runner-only ones (issuer, store, post step)."""
    reached: set[Outcome] = set()
    conv = Conversation()
    conv.to_result()
    reached.add(ended(conv.lines("finish:000")).outcome)
    conv = Conversation()
    conv.to_result()
    reached.add(ended(conv.lines("finish:001")).outcome)
    conv = Conversation()
    conv.to_result()
    reached.add(ended(conv.advance(40)).outcome)
    conv = Conversation()
    conv.to_result()
    reached.add(ended(conv.lines("finish:zz")).outcome)
    conv = Conversation()
    conv.to_result()
    reached.add(ended(conv.session.close(Outcome.DISCONNECTED, "x", 0)).outcome)
    for outcome in (
        Outcome.CSR_REJECTED,
        Outcome.DUPLICATE_KEY,
        Outcome.ALREADY_PROVISIONED,
        Outcome.ISSUER_ERROR,
    ):
        conv = Conversation()
        conv.to_csr_ready()
        reached.add(ended(conv.session.reject(outcome, "x", 0)).outcome)
    conv = Conversation(Timing(attest="when_offered"))  # v1.1: a challenge answered finish:001
    conv.open()
    conv.lines("Start_provisioning attest", "UID:0011223344", CSR_BEGIN, *CSR_BODY, CSR_END)
    conv.session.deliver(DAC, PAI, conv.now)
    conv.lines("finish:000")
    reached.add(ended(conv.lines("finish:001")).outcome)
    assert reached == set(Outcome) - {Outcome.POST_STEP_FAILED}


def test_bytes_in_any_chunking_frame_into_the_same_conversation() -> None:
    session = HostSession(TIMING)
    session.open(0.0)
    stream = "\r\n".join(["boot", "Start_provisioning", "UID:00112233", CSR_BEGIN, *CSR_BODY])
    stream += "\r\n" + CSR_END + "\n"
    data = stream.encode()
    out: list[Effect] = []
    for i in range(0, len(data), 7):  # cut across lines, CRs and markers
        out += session.on_bytes(data[i : i + 7], 0.0)
    (key,) = of_type(out, KeyPresented)
    assert isinstance(key, KeyPresented)
    assert key.uid == "00112233"
    assert key.key_proof == "csr"
    assert key.pem.splitlines() == [CSR_BEGIN, *CSR_BODY, CSR_END]


def test_an_overlong_line_in_bytes_is_a_protocol_error() -> None:
    session = HostSession(TIMING)
    session.open(0.0)
    session.on_bytes(b"Start_provisioning\nUID:00112233\n", 0.0)
    out = session.on_bytes(b"A" * 2000 + b"\n", 0.0)
    assert ended(out).outcome is Outcome.PROTOCOL_ERROR
    assert "longer than 1024" in ended(out).detail


def test_a_reopened_session_forgets_a_partial_line() -> None:
    session = HostSession(TIMING)
    session.open(0.0)
    session.on_bytes(b"Start_provi", 0.0)
    session.open(1.0)
    assert session.on_bytes(b"sioning\n", 1.0) == []
    assert session.next_wakeup() == 2.0  # still syncing: the half line was dropped


def test_stop_sends_abort_and_sends_are_wire_bytes() -> None:
    session = HostSession(TIMING)
    session.open(0.0)
    (stop,) = session.stop(1.0)
    assert isinstance(stop, SendLine)
    assert stop.data == b"Abort\n"
