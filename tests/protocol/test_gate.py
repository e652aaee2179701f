"""DeviceGate on its own: the swap hold, the new-device hold, the sync clock, the visible state."""

from __future__ import annotations

from linehost.protocol.gate import Admission, DeviceGate
from linehost.protocol.outcomes import JigState
from linehost.protocol.session import DeviceArrived, Effect, SendLine, StateChanged, Timing

TIMING = Timing(sync_interval=1.0, empty_after_syncs=2)
ABORT = SendLine("Abort")


def syncing(gate: DeviceGate, now: float = 0.0) -> list[Effect]:
    out: list[Effect] = []
    assert gate.start_syncing(now, now, out)
    return out


def rounds(gate: DeviceGate, times: list[float]) -> list[Effect]:
    out: list[Effect] = []
    for now in times:
        assert gate.sync_due(now, out)
    return out


def test_starts_offline_then_waits_for_a_device() -> None:
    gate = DeviceGate(TIMING)
    assert gate.state is JigState.OFFLINE
    assert syncing(gate) == [StateChanged(JigState.WAITING_FOR_DEVICE, None)]
    assert gate.next_sync == 1.0
    assert syncing(gate) == []  # no change, no effect


def test_first_round_later_is_not_sent_now() -> None:
    gate = DeviceGate(TIMING)
    out: list[Effect] = []
    assert not gate.start_syncing(5.0, 5.2, out)
    assert gate.next_sync == 5.2
    assert not gate.sync_due(5.1, out)
    assert gate.sync_due(5.2, out)
    assert gate.next_sync == 6.2


def test_a_new_device_is_admitted_and_clears_nothing_else() -> None:
    gate = DeviceGate(TIMING, turn_away=(ABORT,))
    out: list[Effect] = []
    assert gate.admit("AABBCCDD", out) is Admission.ATTEMPT
    assert out == []
    assert not gate.holding


def test_the_finished_device_waits_for_a_swap_and_is_turned_away() -> None:
    gate = DeviceGate(TIMING, turn_away=(ABORT,))
    syncing(gate)
    gate.finished("AABBCCDD")
    assert gate.holding
    out: list[Effect] = []
    assert gate.admit("AABBCCDD", out) is Admission.SWAP
    assert out == [ABORT, StateChanged(JigState.WAITING_FOR_SWAP, "AABBCCDD")]
    # Syncing again keeps showing the swap while the device is held.
    assert syncing(gate) == []
    assert gate.state is JigState.WAITING_FOR_SWAP


def test_another_device_ends_the_swap_hold() -> None:
    gate = DeviceGate(TIMING)
    gate.finished("AABBCCDD")
    assert gate.admit("11223344", []) is Admission.ATTEMPT
    assert not gate.holding
    assert gate.admit("AABBCCDD", []) is Admission.ATTEMPT  # no longer held


def test_unanswered_rounds_end_the_swap_hold() -> None:
    gate = DeviceGate(TIMING)
    syncing(gate)
    gate.finished("AABBCCDD")
    gate.admit("AABBCCDD", [])
    # empty_after_syncs = 2: the third unanswered round releases the hold.
    assert rounds(gate, [1.0, 2.0]) == []
    assert gate.holding
    assert rounds(gate, [3.0]) == [StateChanged(JigState.WAITING_FOR_DEVICE, None)]
    assert not gate.holding


def test_an_answer_restarts_the_count() -> None:
    gate = DeviceGate(TIMING)
    syncing(gate)
    gate.finished("AABBCCDD")
    rounds(gate, [1.0, 2.0])
    gate.answered()
    rounds(gate, [3.0, 4.0])
    assert gate.holding
    rounds(gate, [5.0])
    assert not gate.holding


def test_a_silenced_device_is_held_through_silence() -> None:
    gate = DeviceGate(TIMING)
    syncing(gate)
    gate.finished("AABBCCDD", silent=True)
    assert rounds(gate, [float(t) for t in range(1, 20)]) == []
    assert gate.holding
    # Only another device ends that hold; a later attempt's end is not silent any more.
    assert gate.admit("11223344", []) is Admission.ATTEMPT
    gate.finished("11223344")
    rounds(gate, [20.0, 21.0, 22.0])
    assert not gate.holding


def test_ending_an_attempt_without_uid_holds_nothing() -> None:
    gate = DeviceGate(TIMING)
    gate.finished("AABBCCDD")
    gate.finished(None)
    assert not gate.holding


def test_expect_swap_holds_a_uid_but_none_changes_nothing() -> None:
    gate = DeviceGate(TIMING)
    gate.expect_swap(None)
    assert not gate.holding
    gate.expect_swap("AABBCCDD")
    assert gate.holding
    gate.expect_swap(None)
    assert gate.holding
    assert gate.admit("AABBCCDD", []) is Admission.SWAP


def test_held_new_devices_are_announced_not_admitted() -> None:
    gate = DeviceGate(TIMING, turn_away=(ABORT,))
    gate.hold_new_devices(True)
    out: list[Effect] = []
    assert gate.admit("11223344", out) is Admission.ARRIVED
    assert out == [ABORT, DeviceArrived("11223344")]
    # The held finished device still waits for its swap rather than being announced.
    gate.finished("AABBCCDD")
    out = []
    assert gate.admit("AABBCCDD", out) is Admission.SWAP
    gate.hold_new_devices(False)
    assert gate.admit("11223344", []) is Admission.ATTEMPT


def test_show_reports_changes_only() -> None:
    gate = DeviceGate(TIMING)
    out: list[Effect] = []
    gate.show(JigState.PROVISIONING, "AABBCCDD", out)
    gate.show(JigState.PROVISIONING, "AABBCCDD", out)
    assert out == [StateChanged(JigState.PROVISIONING, "AABBCCDD")]
    assert gate.state is JigState.PROVISIONING
