"""Walk and write the few DER (X.690) elements read without a parser: certificate names and extensions."""

from __future__ import annotations


def tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER element at `pos`; ValueError when malformed."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, first = data[pos], data[pos + 1]
    start = pos + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or start + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[start:start + count], "big")
        start += count
    if start + length > len(data):
        raise ValueError("truncated DER")
    return tag, start, start + length


def encode(tag: int, value: bytes) -> bytes:
    """The DER element of `tag` holding `value` (X.690 §8.1.3: definite length, short form under 128)."""
    n = len(value)
    if n < 0x80:
        return bytes((tag, n)) + value
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + value


def oid_text(value: bytes) -> str:
    """The dotted form of an OBJECT IDENTIFIER's content octets (X.690 §8.19): base-128 arcs, the first two joined
    as 40 * X + Y. ValueError when malformed (empty, a truncated arc, a padded 0x80 lead, an arc past 128 bits)."""
    arcs: list[int] = []
    arc, started = 0, False
    for byte in value:
        if not started and byte == 0x80:
            raise ValueError("padded OID arc")
        arc, started = (arc << 7) | (byte & 0x7F), True
        if arc.bit_length() > 128:
            raise ValueError("OID arc too long")
        if not byte & 0x80:
            arcs.append(arc)
            arc, started = 0, False
    if not arcs or started:
        raise ValueError("truncated OID")
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))
