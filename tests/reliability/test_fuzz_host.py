"""Property tests of the sans-IO host engine (framing + HostSession) under hostile input.

1. Any chunking of the byte stream and any firmware log lines between the protocol lines leave
   the outcome unchanged: the same UIDs, the same CSRs, the same results.
2. No input, however random, raises anything but linehost's own errors.
"""

from __future__ import annotations

import itertools
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linehost.errors import LinehostError
from linehost.protocol.framing import LineFramer, LineTooLong
from linehost.protocol.host import (
    CSR_BEGIN,
    CSR_END,
    START,
    AttemptEnded,
    Effect,
    HostSession,
    KeyPresented,
    Timing,
)
from linehost.protocol.outcomes import Outcome

CSR_BODY = [
    "MIHZMIGAAgEAMBcxFTATBgNVBAMMDGxpbmVob3N0LXNpbTBZMBMGByqGSM49AgEG",
    "CCqGSM49AwEHA0IABBw0Vd2Qd3cG2U3d4m2WQyfZ0Q2j0CrmH6c1W2v9t5Bf1H2o",
    "oAAwCgYIKoZIzj0EAwIDSAAwRQIhAJ3=",
]
DEVICES = [("00112233AABBCCDD", "finish:000"), ("0A0B0C0D", "finish:003")]
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_PROTOCOL = (START, "UID:", "finish:", "-----BEGIN ", "-----END ")


def _is_noise(line: str) -> bool:
    """A firmware log line: never a protocol line, never mistakable for PEM body text."""
    stripped = line.removesuffix("\r")
    return (
        bool(stripped)
        and not stripped.startswith(_PROTOCOL)
        and stripped != START
        and not _BASE64.fullmatch(stripped)
    )


noise_line = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=120
).filter(_is_noise)


def conversation(uid: str, finish: str) -> list[str]:
    return [START, f"UID:{uid}", CSR_BEGIN, *CSR_BODY, CSR_END, finish]


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Both devices' lines, log lines anywhere between them, any line endings."""
    out: list[bytes] = []
    for uid, finish in DEVICES:
        for line in conversation(uid, finish):
            for noise in draw(st.lists(noise_line, max_size=3)):
                out.append(noise.encode() + b"\n")
            eol = draw(st.sampled_from([b"\n", b"\r\n"]))
            out.append(line.encode() + eol)
    return b"".join(out)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


def run(chunks: list[bytes]) -> list[tuple[str | None, Outcome, str, str | None]]:
    """Feed the chunks through framing and the session; deliver every CSR; return the results."""
    session = HostSession(Timing(sync_interval=1.0, csr_timeout=30, result_timeout=30))
    framer = LineFramer()
    results: list[tuple[str | None, Outcome, str, str | None]] = []
    csrs: dict[str | None, str] = {}
    pending = list(session.open(0.0))
    now = 0.0
    for chunk in chunks:
        for frame in framer.feed(chunk):
            if isinstance(frame, LineTooLong):
                pending += session.on_line_too_long(frame.length, now)
            else:
                pending += session.on_line(frame, now)
            while pending:
                effect: Effect = pending.pop(0)
                if isinstance(effect, KeyPresented):
                    csrs[effect.uid] = effect.pem
                    pending += session.deliver("DAC", "PAI", now)
                elif isinstance(effect, AttemptEnded):
                    results.append(
                        (effect.uid, effect.outcome, effect.detail, csrs.get(effect.uid))
                    )
    return results


def expected() -> list[tuple[str | None, Outcome, str, str | None]]:
    clean = b"".join(
        (line + "\n").encode() for uid, finish in DEVICES for line in conversation(uid, finish)
    )
    return run([clean])


EXPECTED = expected()


def test_the_clean_stream_gives_both_results() -> None:
    pem = "\n".join([CSR_BEGIN, *CSR_BODY, CSR_END]) + "\n"
    assert [(u, o, p) for u, o, _, p in EXPECTED] == [
        ("00112233AABBCCDD", Outcome.PROVISIONED, pem),
        ("0A0B0C0D", Outcome.DEVICE_ERROR, pem),
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=streams(), cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_chunking_and_log_noise_never_change_the_outcome(data: bytes, cuts: list[int]) -> None:
    assert run(chunked(data, cuts)) == EXPECTED


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.sampled_from(
                [
                    b"Start_provisioning\n",
                    b"UID:00112233\n",
                    b"UID:zz\n",
                    (CSR_BEGIN + "\n").encode(),
                    (CSR_END + "\n").encode(),
                    b"-----BEGIN CERTIFICATE-----\n",
                    b"finish:000\n",
                    b"finish:\xff\x00junk\n",
                    b"A" * 2000,
                    b"\n",
                    b"\x00" * 50,
                ]
            ),
            st.just(b"TIMER"),
        ),
        max_size=60,
    )
)
def test_random_input_raises_nothing_but_our_own_errors(pieces: list[bytes]) -> None:
    session = HostSession(Timing(sync_interval=0.5, csr_timeout=2, result_timeout=2))
    framer = LineFramer()
    now = 0.0
    try:
        session.open(now)
        for piece in pieces:
            now += 0.3
            if piece == b"TIMER":
                effects = session.on_timer(now)
            else:
                effects = []
                for frame in framer.feed(piece):
                    if isinstance(frame, LineTooLong):
                        effects += session.on_line_too_long(frame.length, now)
                    else:
                        effects += session.on_line(frame, now)
            for effect in effects:
                if isinstance(effect, KeyPresented):
                    if len(effect.pem) % 2:
                        session.deliver("DAC", "PAI", now)
                    else:
                        session.reject(Outcome.CSR_REJECTED, "fuzz", now)
    except LinehostError:
        pass  # the protocol's own errors are allowed


def test_a_line_of_dashes_inside_the_csr_block_is_a_log_line() -> None:
    lines = conversation(*DEVICES[0])
    lines.insert(4, "----- boot: flash ok -----")
    assert run(["".join(f"{ln}\n" for ln in lines).encode()]) == EXPECTED[:1]
