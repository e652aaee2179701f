"""Simulated ECC608 letter devices: each personality against the real host session (sans-IO),
the factory's cloned and locked chips, and `linehost sim --protocol ecc608-letters`."""

from __future__ import annotations

import argparse
import random

import pytest
from cryptography.hazmat.primitives import serialization

from linehost.errors import ConfigError
from linehost.protocol.letters import LetterSession
from linehost.protocol.outcomes import JigState, Outcome
from linehost.protocol.session import AttemptEnded, Effect, KeyPresented, SendBytes, Timing
from linehost.sim.cli import add_arguments
from linehost.sim.devices import DeviceFactory
from linehost.sim.firmware import Leave, Unplug, Write
from linehost.sim.harness import SimulatedLine
from linehost.sim.identity import IdentityPool, random_uid
from linehost.sim.letters import LetterDevice
from linehost.sim.personalities import get_personality, personality_names

from .helpers import Ca

LETTERS = "ecc608-letters"
TIMING = Timing(sync_interval=0.5, csr_timeout=5, result_timeout=5, letter_gap=0.1)


class Wire:
    """A LetterSession and a LetterDevice back to back; time is advanced by hand."""

    def __init__(self, device: LetterDevice, pai: Ca, paa: Ca | None = None) -> None:
        self.session = LetterSession(TIMING)
        self.device = device
        self.pai = pai
        self.paa = paa
        self.now = 0.0
        self.effects: list[Effect] = []
        self.device_wrote: list[Write] = []
        self.actions: list[object] = []

    def run(self, effects: list[Effect]) -> None:
        pending = list(effects)
        while pending:
            effect = pending.pop(0)
            self.effects.append(effect)
            if isinstance(effect, SendBytes):
                for action in self.device.receive(effect.data, self.now):
                    self.actions.append(action)
                    if isinstance(action, Write):
                        self.device_wrote.append(action)
                        pending += self.session.on_bytes(action.data, self.now)
            elif isinstance(effect, KeyPresented):
                key = serialization.load_pem_public_key(effect.pem.encode())
                dac = self.pai.issue(key)  # type: ignore[arg-type]
                root = None
                if self.paa is not None:
                    root = (
                        self.paa.cert.public_key()
                        .public_bytes(
                            serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo,
                        )
                        .decode()
                    )
                pending += self.session.deliver(dac, self.pai.pem, self.now, root_key_pem=root)

    def play(self, seconds: float) -> None:
        self.run(self.session.open(self.now))
        end = self.now + seconds
        while not self.device.gone:
            wakes = [w for w in (self.session.next_wakeup(), self.device.deadline) if w is not None]
            if not wakes or min(wakes) > end:
                break
            self.now = max(self.now, min(wakes))
            self.actions += self.device.poll(self.now)
            self.run(self.session.on_timer(self.now))

    def ended(self) -> list[AttemptEnded]:
        return [e for e in self.effects if isinstance(e, AttemptEnded)]


def device(name: str, seed: int = 1) -> LetterDevice:
    rng = random.Random(seed)
    personality = get_personality(name, LETTERS)
    identity = IdentityPool().make(random_uid(rng, 18))
    return LetterDevice(identity, personality, rng=rng)


def test_letter_personalities_are_their_own_set() -> None:
    assert set(personality_names(LETTERS)) == {
        "good", "noisy", "slow_chunks", "readback_corrupt", "locked", "cloned_key", "unplug",
        "silent_after_q",
    }  # fmt: skip
    assert "slow_chunks" not in personality_names()
    with pytest.raises(ConfigError, match="unknown ecc608-letters device personality 'p384'"):
        get_personality("p384", LETTERS)


@pytest.mark.parametrize("name", ["good", "noisy", "slow_chunks"])
def test_provisioned_then_taken_out(name: str, pai: Ca, paa: Ca) -> None:
    wire = Wire(device(name), pai, paa)
    wire.play(10.0)
    (end,) = wire.ended()
    assert (end.outcome, end.detail) == (Outcome.PROVISIONED, "readback ok")
    assert wire.device.log.stored is not None
    assert wire.device.session.slots["root"].startswith(b"-----BEGIN PUBLIC KEY-----")
    assert isinstance(wire.actions[-1], Leave)
    if name == "noisy":
        assert any(w.data.startswith((b"I (", b"W (", b"D (")) for w in wire.device_wrote)
    if name == "slow_chunks":
        assert sum(w.pause > 0 for w in wire.device_wrote) > 10


def test_noisy_device_logs_between_readback_chunks(pai: Ca) -> None:
    wire = Wire(device("noisy", seed=5), pai)
    wire.play(10.0)
    writes = [w.data for w in wire.device_wrote]
    first_chunk = writes.index(next(w for w in writes if w.startswith(b"-----BEGIN CERT")))
    assert any(w.startswith((b"I (", b"W (", b"D (")) for w in writes[first_chunk:])


def test_readback_corrupt_is_a_device_error_and_leaves_on_the_swap_check(pai: Ca) -> None:
    wire = Wire(device("readback_corrupt"), pai)
    wire.play(10.0)
    (end,) = wire.ended()
    assert (end.outcome, end.detail) == (Outcome.DEVICE_ERROR, "readback mismatch")
    assert wire.session.state is JigState.WAITING_FOR_SWAP
    assert isinstance(wire.actions[-1], Leave)
    assert not wire.device.log.finish_codes  # never told q


def test_unplug_mid_delivery(pai: Ca) -> None:
    wire = Wire(device("unplug"), pai)
    wire.play(10.0)
    unplugs = [a for a in wire.actions if isinstance(a, Unplug)]
    assert len(unplugs) == 1
    assert wire.device.gone
    assert wire.session.in_attempt  # the port vanishing ends it (the runner closes the session)


def test_silent_after_q_stays_then_leaves(pai: Ca) -> None:
    wire = Wire(device("silent_after_q"), pai)
    wire.play(1.5)
    (end,) = wire.ended()
    assert end.outcome is Outcome.PROVISIONED
    assert not wire.device.gone
    assert wire.session.state is JigState.WAITING_FOR_SWAP
    wire.play(10.0)
    assert wire.device.gone
    assert wire.session.state is JigState.WAITING_FOR_SWAP  # until a different serial answers


def test_factory_cloned_and_locked_chips(pai: Ca) -> None:
    factory = DeviceFactory(seed=3)
    first, _ = factory.make(get_personality("good", LETTERS), jig="j1", index=0)
    Wire(first, pai).play(10.0)  # type: ignore[arg-type]
    factory.provisioned(first, "j1")
    factory.left(first, "j1")
    # The locked chip never returns to the jig that just had it (the host would see no swap).
    same_jig, source = factory.make(get_personality("locked", LETTERS), jig="j1", index=1)
    assert source is None
    assert same_jig.identity.uid != first.identity.uid
    locked, source = factory.make(get_personality("locked", LETTERS), jig="j2", index=0)
    assert source == first.identity.uid == locked.identity.uid
    assert locked.identity.public_key_sha256 == first.identity.public_key_sha256
    cloned, source = factory.make(get_personality("cloned_key", LETTERS), jig="j3", index=0)
    assert source == first.identity.uid != cloned.identity.uid
    assert cloned.identity.public_key_sha256 == first.identity.public_key_sha256
    assert isinstance(locked, LetterDevice)
    assert len(cloned.identity.uid) == 18


def test_sim_arguments_protocol_and_plan() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--protocol", LETTERS, "--plan", "good,locked;unplug"])
    assert args.protocol == LETTERS
    assert args.plan == [["good", "locked"], ["unplug"]]
    with pytest.raises(SystemExit):
        parser.parse_args(["--protocol", "v2"])


def test_a_mix_from_the_other_protocol_is_refused() -> None:
    with pytest.raises(ConfigError, match="slow_chunks"):
        SimulatedLine(1, personality="slow_chunks")
    with pytest.raises(ConfigError, match="p384"):
        SimulatedLine(1, mix="good,p384", protocol=LETTERS)
    line = SimulatedLine(protocol=LETTERS, plans=[["good", "locked"], ["unplug"]])
    assert line.jig_names == ["j1", "j2"]
