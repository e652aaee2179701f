"""The pure parts around a device: the pre step's state (Preparation) and what a jig shows."""

from __future__ import annotations

import structlog

from linehost.line.display import JigDisplay
from linehost.line.preparation import Preparation, PreStep
from linehost.line.steps import JigSteps, StepCommand, StepResult
from linehost.observers import Observer
from linehost.protocol.outcomes import JigState
from linehost.records import JigStatus

PRE = StepCommand("pre", ("flash", "{port}", "{uid}", "{probe}"), 5.0)


class States(Observer):
    def __init__(self) -> None:
        self.shown: list[tuple[JigState, str | None]] = []

    def jig_changed(self, status: JigStatus) -> None:
        self.shown.append((status.state, status.uid))


def display(complete: list[bool] | None = None) -> tuple[JigDisplay, States]:
    seen = States()
    flag = complete if complete is not None else [False]
    return JigDisplay(JigStatus("l1", "st1", "j1"), seen, lambda: flag[0]), seen


def preparation(steps: JigSteps | None, complete: list[bool] | None = None) -> Preparation:
    shown, _ = display(complete)
    return Preparation(steps, "/dev/ttyJ1", shown, Observer(), structlog.get_logger("test"))


def ok(name: str = "pre") -> StepResult:
    return StepResult(name, True, 0, False, ("flashed",), 0.5, f"{name} step ok")


def test_without_a_pre_step_nothing_is_ever_due_or_held() -> None:
    prep = preparation(None)
    prep.due()
    assert prep.state is PreStep.NONE
    assert not prep.pre_step_due(jig_free=True)
    assert not prep.holds_new_devices()


def test_a_pre_step_is_due_then_done_then_due_for_the_next_device() -> None:
    complete = [False]
    prep = preparation(JigSteps(pre=PRE, probe="P1"), complete)
    assert prep.state is PreStep.DUE
    assert prep.holds_new_devices()
    assert not prep.pre_step_due(jig_free=False)
    assert prep.pre_step_due(jig_free=True)
    complete[0] = True  # nothing left to provision: refused and recorded instead
    assert not prep.holds_new_devices()
    assert not prep.pre_step_due(jig_free=True)
    complete[0] = False
    prep.prepared(ok())
    assert prep.state is PreStep.DONE
    assert not prep.holds_new_devices()
    assert prep.take_pre_output() == ["[pre_step] pre step ok (0.50 s)", "[pre_step] flashed"]
    assert prep.take_pre_output() == []  # once
    prep.due()
    assert prep.state is PreStep.DUE


def test_a_prepared_device_waiting_for_its_swap_makes_the_next_pre_step_due() -> None:
    prep = preparation(JigSteps(pre=PRE, probe="P1"))
    prep.prepared(ok())
    assert not prep.swap_due(JigState.PROVISIONING)  # still the prepared device's attempt
    assert prep.state is PreStep.DONE
    assert prep.swap_due(JigState.WAITING_FOR_SWAP)
    assert prep.state is PreStep.DUE
    assert not prep.swap_due(JigState.WAITING_FOR_SWAP)  # due already: nothing changed
    assert not preparation(None).swap_due(JigState.WAITING_FOR_SWAP)  # no pre step at all


def test_step_values_name_the_jig_and_the_device() -> None:
    prep = preparation(JigSteps(pre=PRE, probe="P1"))
    values = prep.values("AABB", "SN-1")
    assert values == {
        "port": "/dev/ttyJ1",
        "jig": "j1",
        "station": "st1",
        "line": "l1",
        "probe": "P1",
        "uid": "AABB",
        "serial_num": "SN-1",
    }
    assert PRE.render(prep.values(None)) == ["flash", "/dev/ttyJ1", "", "P1"]


def test_a_wait_is_shown_over_the_state_it_interrupts_then_restored() -> None:
    shown, seen = display()
    shown.show(JigState.PROVISIONING, "AABB")
    shown.waiting(JigState.WAITING_FOR_DATABASE)
    shown.waiting(JigState.WAITING_FOR_DATABASE)  # no second change
    shown.waiting(None)
    assert seen.shown == [
        (JigState.PROVISIONING, "AABB"),
        (JigState.WAITING_FOR_DATABASE, "AABB"),
        (JigState.PROVISIONING, "AABB"),
    ]


def test_an_idle_jig_shows_a_complete_work_order_and_its_reopening() -> None:
    complete = [False]
    shown, seen = display(complete)
    shown.show(JigState.WAITING_FOR_DEVICE)
    complete[0] = True
    shown.work_order_changed(JigState.WAITING_FOR_DEVICE)
    complete[0] = False
    shown.work_order_changed(JigState.WAITING_FOR_DEVICE)
    shown.show(JigState.PROVISIONING, "CC")
    complete[0] = True
    shown.work_order_changed(JigState.PROVISIONING)  # busy: shown after its attempt
    assert [state for state, _ in seen.shown] == [
        JigState.WAITING_FOR_DEVICE,
        JigState.WORK_ORDER_COMPLETE,
        JigState.WAITING_FOR_DEVICE,
        JigState.PROVISIONING,
    ]
