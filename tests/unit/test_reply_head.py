"""transport._ReplyHead reads the reply codes off the wire as the relay's octets arrive, however they are cut into
reads: its line scan (issue 16 made it look each line's first octets up instead of matching them again) notes
exactly what the line-by-line scan it replaced noted."""

from __future__ import annotations

import collections
import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from certbot_smtp_dist._internal import transport

CODE = re.compile(rb"([2-5][0-9][0-9])(?:[ \-\r\n]|$)")


class Reference:
    """The scan as it was before issue 16's rewrite, line by line and octet for octet."""

    def __init__(self) -> None:
        self.line = bytearray()
        self.lines: dict[int, None] = {}
        self.replies: collections.deque[list[int]] = collections.deque()

    def scan(self, data: bytes) -> None:
        at = 0
        while at < len(data):
            end = data.find(b"\n", at)
            if len(self.line) < 4:
                self.line += data[at:min(at + 4 - len(self.line), len(data) if end < 0 else end + 1)]
            if end < 0:
                return
            match = CODE.match(bytes(self.line))
            if match:
                self.lines.pop(int(match.group(1)), None)
                self.lines[int(match.group(1))] = None
            if self.line[3:4] != b"-":
                if len(self.replies) < 4:
                    self.replies.append(list(self.lines))
                self.lines.clear()
            self.line.clear()
            at = end + 1


class Protocol:
    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def data_received(self, data: bytes) -> None:
        self.got.append(data)

    async def read_response(self, timeout: float | None = None) -> Any:  # pragma: no cover - not read here
        return None


def state(head: Any) -> tuple[bytes, list[int], list[list[int]]]:
    return bytes(head.line), list(head.lines), list(head.replies)


LINES = st.lists(st.sampled_from([b"250-", b"250 ", b"220 ", b"451-", b"550 ", b"25", b"250", b"2", b"", b"354",
                                  b"221 Bye", b"250-SIZE 1000", b"abcd", b"550-", b"999 ", b"\r"])
                 .map(lambda x: x + b"\r\n"), max_size=12)


@given(LINES, st.lists(st.integers(0, 40), max_size=8), st.binary(max_size=6))
def test_every_cut_of_the_octets_notes_what_the_line_by_line_scan_noted(lines: list[bytes], cuts: list[int],
                                                                         tail: bytes) -> None:
    data = b"".join(lines) + tail  # a line still arriving at the end, maybe
    points = sorted({min(c, len(data)) for c in cuts})
    reads = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    protocol = Protocol()
    head, reference = transport._ReplyHead(protocol), Reference()
    for chunk in reads:
        protocol.data_received(chunk)
        reference.scan(chunk)
        assert state(head) == state(reference)
    assert b"".join(protocol.got) == data  # every octet still reaches aiosmtplib's own protocol


@given(st.binary(max_size=64), st.binary(max_size=64))
def test_any_octets_at_all(first: bytes, second: bytes) -> None:
    protocol = Protocol()
    head, reference = transport._ReplyHead(protocol), Reference()
    for chunk in (first, second):
        protocol.data_received(chunk)
        reference.scan(chunk)
    assert state(head) == state(reference)


def test_a_write_starts_afresh_and_reaches_the_protocol() -> None:
    protocol = Protocol()
    head = transport._ReplyHead(protocol)
    protocol.data_received(b"250-a\r\n250 b\r\n451-")
    assert state(head) == (b"451-", [], [[250]])
    protocol.write(b"QUIT\r\n")
    assert state(head) == (b"", [], []) and protocol.sent == [b"QUIT\r\n"]


def test_the_heads_kept_are_bounded() -> None:
    """A hostile relay chooses the first octets of its lines: what _head decided is kept for a bounded number."""
    protocol = Protocol()
    head = transport._ReplyHead(protocol)
    for i in range(3 * transport._HEADS_KEPT // 256 + 1):
        protocol.data_received(b"".join(bytes([i % 256, j, 0x41, 0x20]) + b"\n" for j in range(256)))
    assert len(transport._HEADS) <= transport._HEADS_KEPT
    assert head.replies and len(head.replies) <= 4
