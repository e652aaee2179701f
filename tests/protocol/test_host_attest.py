"""HostSession with the attestation extension (jig protocol v1.1): offer, challenge, answer."""

from __future__ import annotations

import base64

import pytest

from linehost.protocol.host import (
    CSR_BEGIN,
    CSR_END,
    NONCE_BYTES,
    AttemptEnded,
    Effect,
    HostSession,
    KeyPresented,
    Phase,
    SendLine,
    Timing,
)
from linehost.protocol.outcomes import Outcome
from linehost.protocol.session import AttestMode

CSR_BODY = ["MIIBCDCBrwIBADBNMQswCQYDVQQGEwJVUzEOMAwGA1UECgwFQWNtZTEuMCwGA1UE", "AwwlZGV2aWNl"]
DAC = "-----BEGIN CERTIFICATE-----\nREFD\n-----END CERTIFICATE-----\n"
PAI = "-----BEGIN CERTIFICATE-----\nUEFJ\n-----END CERTIFICATE-----\n"
UID = "00112233AABBCCDD"
SIGNATURE = bytes(range(70))
ATTEST_LINE = "ATTEST:" + base64.b64encode(SIGNATURE).decode()


class Entropy:
    """A predictable CSPRNG stand-in: 0x01 * 32, then 0x02 * 32, ..."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, n: int) -> bytes:
        self.calls += 1
        return bytes([self.calls]) * n


class Conversation:
    def __init__(self, attest: AttestMode) -> None:
        self.entropy = Entropy()
        self.session = HostSession(
            Timing(sync_interval=1.0, result_timeout=30.0, attest=attest), entropy=self.entropy
        )
        self.now = 0.0
        self.session.open(self.now)

    def lines(self, *lines: str) -> list[Effect]:
        out: list[Effect] = []
        for line in lines:
            out += self.session.on_line(line, self.now)
        return out

    def advance(self, seconds: float) -> list[Effect]:
        self.now += seconds
        return self.session.on_timer(self.now)

    def delivered(self, start: str = "Start_provisioning attest", uid: str = UID) -> None:
        out = self.lines(start, f"UID:{uid}", CSR_BEGIN, *CSR_BODY, CSR_END)
        assert [e for e in out if isinstance(e, KeyPresented)], out
        self.session.deliver(DAC, PAI, self.now)


def sent(effects: list[Effect]) -> list[str]:
    return [e.text for e in effects if isinstance(e, SendLine)]


def ended(effects: list[Effect]) -> AttemptEnded:
    found = [e for e in effects if isinstance(e, AttemptEnded)]
    assert len(found) == 1, effects
    return found[0]


def test_an_offering_device_is_challenged_after_finish_000_and_its_answer_is_attached() -> None:
    conv = Conversation("when_offered")
    conv.delivered()
    out = conv.lines("finish:000")
    assert sent(out) == ["Attest:" + "01" * NONCE_BYTES]
    assert not [e for e in out if isinstance(e, AttemptEnded)]
    assert conv.session.phase is Phase.AWAITING_ATTESTATION
    assert conv.session.in_attempt
    assert conv.lines(ATTEST_LINE) == []
    end = ended(conv.lines("finish:000"))
    assert end.outcome is Outcome.PROVISIONED  # the provisioner still verifies the signature
    assert end.attestation is not None
    assert end.attestation.nonce == b"\x01" * NONCE_BYTES
    assert end.attestation.signature == SIGNATURE
    assert ATTEST_LINE in end.transcript
    assert conv.session.phase is Phase.SYNCING


def test_every_attempt_gets_a_new_challenge() -> None:
    conv = Conversation("require")
    conv.delivered()
    first = sent(conv.lines("finish:000"))
    conv.lines(ATTEST_LINE, "finish:000")
    conv.delivered(uid="99887766")  # the next device
    second = sent(conv.lines("finish:000"))
    assert first != second
    assert conv.entropy.calls == 2


@pytest.mark.parametrize("mode", ["off", "when_offered"])
def test_a_device_that_does_not_offer_is_provisioned_as_in_v1(mode: AttestMode) -> None:
    conv = Conversation(mode)
    conv.delivered(start="Start_provisioning")
    out = conv.lines("finish:000")
    assert ended(out).outcome is Outcome.PROVISIONED
    assert ended(out).attestation is None
    assert conv.entropy.calls == 0


def test_attest_off_accepts_the_offer_suffix_and_never_challenges() -> None:
    conv = Conversation("off")
    conv.delivered(start="Start_provisioning attest other_word")
    out = conv.lines("finish:000")
    assert ended(out).outcome is Outcome.PROVISIONED
    assert not [t for t in sent(out) if t.startswith("Attest:")]


def test_unknown_capability_words_are_ignored() -> None:
    conv = Conversation("when_offered")
    conv.delivered(start="Start_provisioning fast_baud attest")
    assert sent(conv.lines("finish:000"))[0].startswith("Attest:")
    conv = Conversation("when_offered")
    conv.delivered(start="Start_provisioning attestation")  # not the word `attest`
    assert ended(conv.lines("finish:000")).outcome is Outcome.PROVISIONED


def test_require_aborts_a_device_that_does_not_offer_before_its_csr() -> None:
    conv = Conversation("require")
    out = conv.lines("Start_provisioning", f"UID:{UID}")
    end = ended(out)
    assert (end.outcome, end.detail, end.uid) == (
        Outcome.PROTOCOL_ERROR,
        "attestation not offered",
        UID,
    )
    assert sent(out)[0] == "Abort"
    # its CSR lines, still on the wire, are dropped: no key is ever presented
    assert not [e for e in conv.lines(CSR_BEGIN, *CSR_BODY, CSR_END) if isinstance(e, KeyPresented)]


@pytest.mark.parametrize(
    ("answer", "detail", "code", "aborts"),
    [
        (["finish:001"], "finish:001 data not found (answer to Attest)", 0x001, False),
        (["finish:000"], "finish:000 without an ATTEST answer", 0x000, False),
        (["ATTEST:not base64!", "finish:000"], "malformed ATTEST line", None, True),
        (["ATTEST:"], "malformed ATTEST line", None, True),
        ([ATTEST_LINE, ATTEST_LINE], "more than one ATTEST line", None, True),
        (["finish:zz"], "malformed finish line", None, True),
        (["UID:0011223344"], "unexpected 'UID:0011223344' while waiting for ATTEST", None, True),
    ],
)
def test_a_bad_answer_is_attestation_failed(
    answer: list[str], detail: str, code: int | None, aborts: bool
) -> None:
    conv = Conversation("when_offered")
    conv.delivered()
    conv.lines("finish:000")
    out = conv.lines(*answer)
    end = ended(out)
    assert end.outcome is Outcome.ATTESTATION_FAILED
    assert end.detail.startswith(detail), end.detail
    assert end.device_code == code
    assert end.delivered
    assert end.attestation is not None
    assert end.attestation.nonce == b"\x01" * NONCE_BYTES
    assert ("Abort" in sent(out)) is aborts


def test_no_answer_within_result_timeout_is_attestation_failed_and_aborts() -> None:
    conv = Conversation("require")
    conv.delivered()
    conv.lines("finish:000")
    assert conv.advance(29.9) == []
    out = conv.advance(0.2)
    end = ended(out)
    assert (end.outcome, end.detail) == (
        Outcome.ATTESTATION_FAILED,
        "no answer to Attest (timeout)",
    )
    assert end.attestation is not None
    assert end.attestation.signature is None
    assert sent(out)[0] == "Abort"


def test_log_lines_during_attestation_go_to_the_transcript_only() -> None:
    conv = Conversation("when_offered")
    conv.delivered()
    conv.lines("finish:000")
    assert conv.lines("I (123) se: reading slot 3", ATTEST_LINE) == []
    end = ended(conv.lines("finish:000"))
    assert end.outcome is Outcome.PROVISIONED
    assert "I (123) se: reading slot 3" in end.transcript


def test_port_lost_during_attestation_is_disconnected() -> None:
    conv = Conversation("when_offered")
    conv.delivered()
    conv.lines("finish:000")
    end = ended(conv.session.close(Outcome.DISCONNECTED, "port lost", conv.now))
    assert end.outcome is Outcome.DISCONNECTED
    assert end.attestation is not None
