"""LineFramer: LF lines, CR stripped, bounded memory, any chunking."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from linehost.protocol.framing import MAX_LINE, LineFramer, LineTooLong


def test_lines_split_on_lf_and_cr_is_stripped() -> None:
    framer = LineFramer()
    assert framer.feed(b"Init\r\nUID:ABCD") == ["Init"]
    assert framer.feed(b"1234\n\n") == ["UID:ABCD1234", ""]


def test_line_of_exactly_max_bytes_passes_and_one_more_is_too_long() -> None:
    framer = LineFramer()
    ok = b"A" * MAX_LINE
    assert framer.feed(ok + b"\r\n") == ["A" * MAX_LINE]
    assert framer.feed(ok + b"B\n") == [LineTooLong(MAX_LINE + 1)]


def test_overlong_line_without_newline_is_reported_once_and_memory_stays_bounded() -> None:
    framer = LineFramer()
    frames = []
    for _ in range(1000):  # 1 MB without a newline
        frames += framer.feed(b"x" * 1000)
    # reported once, as soon as the bound is crossed (2 KB seen at that point)
    assert frames == [LineTooLong(2000)]
    assert len(framer._buf) == 0  # nothing of the junk is held
    # the next newline ends the junk; what follows is a clean line again
    assert framer.feed(b"tail-of-junk\nStart_provisioning\n") == ["Start_provisioning"]


def test_invalid_utf8_and_nul_bytes_become_replacement_characters() -> None:
    framer = LineFramer()
    (line,) = framer.feed(b"\xff\x00log\xc3\n")
    assert isinstance(line, str)
    assert line.endswith("log\ufffd")
    assert "\x00" in line


def test_reset_drops_partial_line() -> None:
    framer = LineFramer()
    framer.feed(b"half a li")
    framer.reset()
    assert framer.feed(b"ne\n") == ["ne"]


@given(
    lines=st.lists(st.binary(max_size=80).map(lambda b: b.replace(b"\n", b"")), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=30),
)
def test_any_chunking_gives_the_same_lines(lines: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    whole = LineFramer().feed(stream)
    framer = LineFramer()
    pieces: list[object] = []
    points = sorted({c % (len(stream) + 1) for c in cuts})
    prev = 0
    for point in [*points, len(stream)]:
        pieces += framer.feed(stream[prev:point])
        prev = point
    assert pieces == whole
    assert len(whole) == len(lines)
