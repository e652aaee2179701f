"""The protocol's part in pre steps (pure): new devices held back, finished ones kept apart."""

from __future__ import annotations

from linehost.protocol.host import AttemptStarted, HostSession, SendLine, Timing
from linehost.protocol.outcomes import JigState
from linehost.protocol.session import DeviceArrived, StateChanged

TIMING = Timing(sync_interval=1.0, empty_after_syncs=2)


def identify(session: HostSession, uid: str, now: float = 0.0) -> list[object]:
    out: list[object] = []
    out += session.on_line("Start_provisioning", now)
    out += session.on_line(f"UID:{uid}", now)
    return out


def test_idle_only_when_syncing_and_nothing_held() -> None:
    session = HostSession(TIMING)
    assert not session.idle  # closed
    session.open(0.0)
    assert session.idle
    session.expect_swap("AABBCCDD")
    assert not session.idle
    # the held device stays silent for more than empty_after_syncs: the jig counts as empty
    for t in (1.0, 2.0, 3.0):
        session.on_timer(t)
    assert session.idle


def test_a_new_device_is_held_back_while_its_pre_step_is_due() -> None:
    session = HostSession(TIMING)
    session.open(0.0)
    session.hold_new_devices(True)
    out = identify(session, "0011223344556677")
    assert DeviceArrived("0011223344556677") in out
    assert SendLine("Abort") in out
    assert not any(isinstance(e, AttemptStarted) for e in out)
    assert session.idle  # back to syncing: the runner runs the pre step now
    session.hold_new_devices(False)
    session.open(1.0)
    out = identify(session, "0011223344556677", 1.0)
    assert any(isinstance(e, AttemptStarted) for e in out)
    assert StateChanged(JigState.PROVISIONING, "0011223344556677") in out


def test_the_finished_device_after_a_pre_step_waits_for_swap() -> None:
    session = HostSession(TIMING)
    session.open(0.0)
    session.hold_new_devices(True)
    session.expect_swap("AABBCCDD")
    out = identify(session, "AABBCCDD")
    assert StateChanged(JigState.WAITING_FOR_SWAP, "AABBCCDD") in out
    assert not any(isinstance(e, AttemptStarted | DeviceArrived) for e in out)
