"""Just enough DER to assemble and take apart certificates: single-byte tags, definite lengths."""

from __future__ import annotations

TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_SEQUENCE = 0x30


def encode_length(length: int) -> bytes:
    """The DER length octets for `length` content bytes."""
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, content: bytes) -> bytes:
    """One DER element: tag, length, content."""
    return bytes([tag]) + encode_length(len(content)) + content


def sequence(*parts: bytes) -> bytes:
    """A DER SEQUENCE of already-encoded elements."""
    return tlv(TAG_SEQUENCE, b"".join(parts))


def integer(value: int) -> bytes:
    """A DER INTEGER (two's complement, minimal length)."""
    length = max(1, (value + (value < 0)).bit_length() // 8 + 1)
    return tlv(TAG_INTEGER, value.to_bytes(length, "big", signed=True))


def read_element(data: bytes, offset: int = 0) -> tuple[int, int, int]:
    """(tag, content start, end) of the element at `offset`; ValueError if malformed."""
    if offset + 2 > len(data):
        raise ValueError("truncated DER element")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tags are not supported")
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(data):
        raise ValueError("DER element runs past the end of its container")
    return tag, pos, end


def children(element: bytes) -> list[bytes]:
    """The encoded child elements of one constructed element (e.g. a SEQUENCE)."""
    tag, start, end = read_element(element)
    if not tag & 0x20:
        raise ValueError(f"DER tag 0x{tag:02x} is not constructed")
    if end != len(element):
        raise ValueError("trailing bytes after DER element")
    out: list[bytes] = []
    pos = start
    while pos < end:
        _, _, child_end = read_element(element, pos)
        out.append(element[pos:child_end])
        pos = child_end
    return out
