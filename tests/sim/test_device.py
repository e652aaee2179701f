"""The device side of jig protocol v1 (sans-IO): every transition, and a fuzz."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linehost.protocol.device import (
    FLOW_TIMEOUT,
    MAX_CD_BYTES,
    MAX_PEM_BLOCK,
    Delivery,
    DeliveryComplete,
    DeviceEvent,
    DeviceSession,
    DeviceState,
    FlowEnd,
    FlowEnded,
    Send,
    format_finish,
    is_base64_line,
)
from linehost.protocol.framing import LineTooLong

UID = "0123456789ABCDEF"
CSR = (
    "-----BEGIN CERTIFICATE REQUEST-----\n"
    "MIHIMHACAQAwDjEMMAoGA1UEAwwDc2ltMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcD\n"
    "QgAE\n"
    "-----END CERTIFICATE REQUEST-----\n"
)
DAC = "-----BEGIN CERTIFICATE-----\nREFDREFDREFD\nREFD\n-----END CERTIFICATE-----\n"
PAI = "-----BEGIN CERTIFICATE-----\nUEFJUEFJ\n-----END CERTIFICATE-----\n"


def sent(events: list[DeviceEvent]) -> list[str]:
    return [e.line for e in events if isinstance(e, Send)]


def ended(events: list[DeviceEvent]) -> list[FlowEnded]:
    return [e for e in events if isinstance(e, FlowEnded)]


def feed(session: DeviceSession, lines: list[str], now: float = 1.0) -> list[DeviceEvent]:
    out: list[DeviceEvent] = []
    for line in lines:
        out += session.receive_line(line, now)
    return out


def started(now: float = 1.0, **kwargs: object) -> DeviceSession:
    session = DeviceSession(UID, CSR, **kwargs)  # type: ignore[arg-type]
    feed(session, ["Init"], now)
    assert session.state is DeviceState.AWAITING_DELIVERY
    return session


def delivery(*extra: str, dac: str = DAC, pai: str = PAI) -> list[str]:
    return [*dac.splitlines(), *pai.splitlines(), *extra, "END"]


def completed(events: list[DeviceEvent]) -> Delivery:
    done = [e for e in events if isinstance(e, DeliveryComplete)]
    assert len(done) == 1, events
    return done[0].delivery


@pytest.mark.parametrize(
    ("code", "line"),
    [
        (0x000, "finish:000"),
        (0x003, "finish:003"),
        (0xABC, "finish:ABC"),
        (0xFFF, "finish:FFF"),
        (0x1000, "finish:1000"),
        (0xFFFE, "finish:FFFE"),
        (0xFFFF, "finish:FFFF"),
    ],
)
def test_format_finish(code: int, line: str) -> None:
    assert format_finish(code) == line


def test_format_finish_forced_width_and_range() -> None:
    assert format_finish(0xABC, 4) == "finish:0ABC"
    assert format_finish(0x1, 3) == "finish:001"
    with pytest.raises(ValueError, match="range"):
        format_finish(0x10000)
    with pytest.raises(ValueError, match="range"):
        format_finish(-1)
    with pytest.raises(ValueError, match="digits"):
        format_finish(0x1000, 3)


def test_base64_line_detection() -> None:
    assert is_base64_line("MIIBkTCCATegAwIBAgIIQ8Gx+/ab==")
    assert not is_base64_line("I (1234) app: heap free 41232")
    assert not is_base64_line("")
    assert not is_base64_line("abc=def")


def test_idle_ignores_everything_but_init() -> None:
    session = DeviceSession(UID, CSR)
    for line in ["", "hello", "Abort", "END", "init", "Init now", *DAC.splitlines(), "CD:AAAA"]:
        assert session.receive_line(line, 1.0) == []
    assert session.receive_line(LineTooLong(2000), 1.0) == []
    assert session.state is DeviceState.IDLE
    assert session.deadline is None
    assert session.flows == 0


def test_init_answers_start_uid_and_csr() -> None:
    session = DeviceSession(UID, CSR)
    events = session.receive_line("Init", 10.0)
    assert sent(events) == ["Start_provisioning", f"UID:{UID}", *CSR.splitlines()]
    assert all(isinstance(e, Send) for e in events)
    assert session.state is DeviceState.AWAITING_DELIVERY
    assert session.deadline == 10.0 + FLOW_TIMEOUT
    assert session.flows == 1


def test_init_surrounded_by_whitespace_still_syncs() -> None:
    session = DeviceSession(UID, CSR)
    assert sent(session.receive_line("  Init \t", 0.0))[0] == "Start_provisioning"


def test_stale_inits_are_ignored_until_the_flow_ends() -> None:
    session = started()
    assert feed(session, ["Init", "Init", "Init"]) == []
    assert session.flows == 1
    events = feed(session, delivery())
    completed(events)
    assert session.state is DeviceState.AWAITING_RESULT
    assert feed(session, ["Init"]) == []
    events = session.finish(0, 2.0)
    assert sent(events) == ["finish:000"]
    assert ended(events) == [FlowEnded(FlowEnd.FINISHED, 0)]
    # Only now does an Init start a new flow.
    assert sent(feed(session, ["Init"]))[0] == "Start_provisioning"
    assert session.flows == 2


def test_full_delivery_with_cd_and_factory_data() -> None:
    session = started()
    cd = b"\x30\x82certification-declaration"
    events = feed(
        session,
        delivery(
            "CD:" + base64.b64encode(cd).decode(),
            "FD:serial_num=SN-0001",
            "FD:discriminator=3840",
            "FD:spake2p_salt=c2FsdHNhbHRzYWx0c2FsdA==",
            "FD:broken",
            "FD:=nameless",
        ),
    )
    got = completed(events)
    assert got.dac_pem == DAC
    assert got.pai_pem == PAI
    assert got.cd == cd
    assert dict(got.factory_data) == {
        "serial_num": "SN-0001",
        "discriminator": "3840",
        "spake2p_salt": "c2FsdHNhbHRzYWx0c2FsdA==",
    }
    assert sent(events) == []  # the firmware decides the answer


def test_delivery_without_cd_or_fd() -> None:
    got = completed(feed(started(), delivery()))
    assert got.cd is None
    assert dict(got.factory_data) == {}


def test_log_lines_inside_delivered_blocks_are_skipped() -> None:
    session = started()
    dac_lines = DAC.splitlines()
    noisy = [dac_lines[0], "host says hi: 1", dac_lines[1], "", dac_lines[2], dac_lines[3]]
    events = feed(session, [*noisy, "some log", *PAI.splitlines(), "END"])
    got = completed(events)
    assert got.dac_pem == DAC
    assert got.pai_pem == PAI


def test_finish_codes_after_delivery() -> None:
    for code, line in [(0x003, "finish:003"), (0xFFFE, "finish:FFFE"), (0xABC, "finish:ABC")]:
        session = started()
        completed(feed(session, delivery()))
        events = session.finish(code, 2.0)
        assert sent(events) == [line]
        assert ended(events) == [FlowEnded(FlowEnd.FINISHED, code)]
        assert session.state is DeviceState.IDLE
        assert session.deadline is None


def test_finish_with_forced_digits() -> None:
    session = started()
    completed(feed(session, delivery()))
    assert sent(session.finish(0xABC, 2.0, digits=4)) == ["finish:0ABC"]


def test_finish_outside_awaiting_result_is_a_no_op() -> None:
    session = DeviceSession(UID, CSR)
    assert session.finish(0, 1.0) == []
    session = started()
    assert session.finish(0, 1.0) == []
    assert session.state is DeviceState.AWAITING_DELIVERY


@pytest.mark.parametrize("where", ["before_dac", "inside_dac", "between", "after_pai"])
def test_abort_ends_the_flow_without_answer(where: str) -> None:
    session = started()
    lines = delivery()[:-1]
    cut = {"before_dac": 0, "inside_dac": 2, "between": 4, "after_pai": len(lines)}[where]
    feed(session, lines[:cut])
    events = session.receive_line("Abort", 3.0)
    assert events == [FlowEnded(FlowEnd.ABORTED, None)]
    assert session.state is DeviceState.IDLE
    assert session.deadline is None
    # The rest of the old delivery is now noise for an idle device.
    assert feed(session, [*lines[cut:], "END"]) == []
    # A fresh flow starts clean: an earlier partial block does not leak into it.
    feed(session, ["Init"])
    assert completed(feed(session, delivery())).dac_pem == DAC


def test_abort_while_awaiting_result_then_late_finish_is_dropped() -> None:
    session = started()
    completed(feed(session, delivery()))
    assert feed(session, ["Abort"]) == [FlowEnded(FlowEnd.ABORTED, None)]
    assert session.finish(0, 2.0) == []


def test_abort_answered_with_ffff_when_asked() -> None:
    session = started(answer_abort=True)
    events = feed(session, ["Abort"])
    assert sent(events) == ["finish:FFFF"]
    assert ended(events) == [FlowEnded(FlowEnd.ABORTED, 0xFFFF)]
    # But never when idle.
    assert feed(session, ["Abort"]) == []


def test_flow_timeout_returns_to_idle() -> None:
    session = started(now=100.0, flow_timeout=5.0)
    assert session.deadline == 105.0
    assert session.poll(104.9) == []
    assert session.poll(105.0) == [FlowEnded(FlowEnd.TIMED_OUT, None)]
    assert session.state is DeviceState.IDLE
    assert session.poll(200.0) == []


def test_flow_timeout_also_covers_awaiting_result() -> None:
    session = started(now=0.0, flow_timeout=5.0)
    completed(feed(session, delivery(), now=1.0))
    assert session.poll(6.0) == [FlowEnded(FlowEnd.TIMED_OUT, None)]
    assert session.finish(0, 6.0) == []


def test_timeout_is_applied_before_a_late_line() -> None:
    session = started(now=0.0, flow_timeout=5.0)
    events = session.receive_line("Init", 7.0)
    assert events[0] == FlowEnded(FlowEnd.TIMED_OUT, None)
    assert sent(events)[0] == "Start_provisioning"
    assert session.deadline == 12.0
    assert session.flows == 2


def finish_after(lines: list[str]) -> list[str]:
    session = started()
    events = feed(session, lines)
    assert not any(isinstance(e, DeliveryComplete) for e in events)
    assert session.state is DeviceState.IDLE
    assert len(ended(events)) == 1
    return sent(events)


def test_end_without_certificates_is_data_not_found() -> None:
    assert finish_after(["END"]) == ["finish:001"]


def test_end_without_pai_is_data_not_found() -> None:
    assert finish_after([*DAC.splitlines(), "END"]) == ["finish:001"]


def test_oversized_block_is_buffer_too_small() -> None:
    big = ["QUFB" * 16] * (MAX_PEM_BLOCK // 64 + 2)
    dac = ["-----BEGIN CERTIFICATE-----", *big, "-----END CERTIFICATE-----"]
    assert finish_after([*dac, *PAI.splitlines(), "END"]) == ["finish:002"]


def test_over_long_line_in_delivery_is_buffer_too_small() -> None:
    session = started()
    feed(session, DAC.splitlines()[:2])
    assert session.receive_line(LineTooLong(1500), 1.0) == []
    events = feed(session, [*DAC.splitlines()[2:], *PAI.splitlines(), "END"])
    assert sent(events) == ["finish:002"]


def test_oversized_cd_is_buffer_too_small() -> None:
    cd = base64.b64encode(bytes(MAX_CD_BYTES + 1)).decode()
    assert finish_after(delivery(f"CD:{cd}")) == ["finish:002"]


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param([*DAC.splitlines()[:2], "END"], id="block-never-closed"),
        pytest.param(
            [*DAC.splitlines()[:2], *DAC.splitlines(), *PAI.splitlines(), "END"],
            id="begin-inside-block",
        ),
        pytest.param(delivery(*DAC.splitlines()), id="third-certificate"),
        pytest.param([*DAC.splitlines(), "CD:AAAA", *PAI.splitlines(), "END"], id="cd-before-pai"),
        pytest.param(delivery("CD:not base64!"), id="cd-not-base64"),
    ],
)
def test_malformed_delivery_is_parameter_error(lines: list[str]) -> None:
    assert finish_after(lines) == ["finish:003"]


def test_receive_data_frames_crlf_and_split_chunks() -> None:
    session = DeviceSession(UID, CSR)
    assert session.receive_data(b"In", 0.0) == []
    events = session.receive_data(b"it\r\n", 0.0)
    assert sent(events)[0] == "Start_provisioning"
    data = "\r\n".join(delivery()).encode() + b"\r\n"
    events = []
    for i in range(0, len(data), 7):
        events += session.receive_data(data[i : i + 7], 0.0)
    assert completed(events).pai_pem == PAI


def test_reset_forgets_flow_and_partial_line() -> None:
    session = started()
    session.receive_data(b"Ab", 1.0)
    session.reset()
    assert session.state is DeviceState.IDLE
    assert session.deadline is None
    # "ort" alone is not "Abort", and an Init starts a fresh flow.
    assert session.receive_data(b"ort\n", 1.0) == []
    assert sent(session.receive_data(b"Init\n", 1.0))[0] == "Start_provisioning"


HOST_LINES = st.sampled_from(
    [
        "Init",
        "Abort",
        "END",
        "-----BEGIN CERTIFICATE-----",
        "-----END CERTIFICATE-----",
        "QUFBQUFB",
        "CD:QUFB",
        "CD:@@",
        "FD:a=b",
        "noise line",
        "",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.one_of(HOST_LINES, st.text(max_size=40), st.builds(LineTooLong, st.integers())),
            st.floats(min_value=0, max_value=3),
            st.sampled_from([None, 0, 3, 0xFFFF]),
        ),
        max_size=60,
    ),
    answer_abort=st.booleans(),
)
def test_fuzz_session_invariants(
    steps: list[tuple[str | LineTooLong, float, int | None]], answer_abort: bool
) -> None:
    session = DeviceSession(UID, CSR, flow_timeout=5.0, answer_abort=answer_abort)
    now = 0.0
    in_flow = False
    for line, dt, finish in steps:
        now += dt
        events = session.receive_line(line, now)
        if finish is not None:
            events += session.finish(finish, now)
        for event in events:
            if isinstance(event, Send):
                if event.line == "Start_provisioning":
                    assert not in_flow, "a flow restarted before it ended"
                    in_flow = True
                elif event.line.startswith("finish:"):
                    assert in_flow
                else:
                    assert in_flow
            elif isinstance(event, FlowEnded):
                assert in_flow
                in_flow = False
        assert in_flow == (session.state is not DeviceState.IDLE)
        assert (session.deadline is None) == (not in_flow)
