"""Scrub relay text of every spelling of every secret of the run, then bound it: what comes out reveals none of them.

A relay's reply ends up in output, logs, the journal and the spool, which more people read than the credential
store. Each secret is looked for as written and in any letter case (non-ASCII letters too); its UTF-8 and UTF-16
bytes as hex and as base64 at each of the three byte alignments they can have inside a longer blob (the SASL PLAIN
message ``\\0user\\0pass``, RFC 4616 §2); percent-encoded, its UTF-16 bytes too; and split across the lines of a
multi-line reply.
Masking a short secret would itself reveal it (every "5" masked in "535 5.7.8" tells which character the password
is), so while any secret of the run is under `MIN_SECRET` characters the relay's text is withheld instead.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from certbot_smtp_dist._internal.addresses import printable
from certbot_smtp_dist.model import Failure, Reply, Secret

MIN_SECRET = 8  # characters, not counting spaces; shorter secrets cannot be masked without revealing them
MAX_TEXT = 400  # characters of relay text kept per failure or refusal, cut after scrubbing
MASK = "***"
WITHHELD = "(relay text withheld: a secret of this run is too short to scrub safely)"
LINE_JOIN = " / "  # how the lines of a multi-line reply are joined into one
_MAX_PASSES = 4  # masking can join text into a new match; after this many passes the text is withheld

# Where a multi-line reply was joined (plus the RFC 3463 code RFC 2034 §3 repeats on each line), and any space.
_JOINT_RE = re.compile(rb" / (?:[245]\.\d{1,3}\.\d{1,3} )?|\s")
# RFC 3986 §2.1 percent-encoding, and the "+" for a space of HTML form encoding.
_PERCENT_RE = re.compile(rb"%([0-9A-Fa-f]{2})|\+")


def one_line(text: str) -> str:
    """Relay text as one printable line: each line stripped, joined by `LINE_JOIN`, non-printables as "?"."""
    return printable(LINE_JOIN.join(part.strip() for part in str(text).splitlines() if part.strip()))


@dataclass(frozen=True, slots=True)
class _View:
    """Text as case-folded UTF-8 bytes, each byte knowing the span of characters of the original text it came from.
    Folding is per character (str.casefold), non-ASCII letters included: "Ä" and "ä" read alike, "ß" as "ss"."""

    data: bytes
    spans: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, text: str) -> _View:
        data, spans = bytearray(), list[tuple[int, int]]()
        for i, char in enumerate(text):
            encoded = _fold_char(char)
            data += encoded
            spans += [(i, i + 1)] * len(encoded)
        return cls(bytes(data), tuple(spans))

    @classmethod
    def folded(cls, data: bytes, spans: list[tuple[int, int]]) -> _View:
        """Bytes that percent-decoding made, folded as `of` folds text: each UTF-8 character in them, and any
        byte that is not part of one by itself (ASCII-lowered)."""
        out, out_spans, i = bytearray(), list[tuple[int, int]](), 0
        while i < len(data):
            size = _UTF8_SIZE.get(data[i] >> 4, 1)
            try:
                encoded = _fold_char(data[i:i + size].decode("utf-8", "surrogatepass"))
            except UnicodeDecodeError:
                size, encoded = 1, data[i:i + 1].lower()
            out += encoded
            out_spans += [(spans[i][0], spans[i + size - 1][1])] * len(encoded)
            i += size
        return cls(bytes(out), tuple(out_spans))

    def joined(self) -> _View:
        """Without line joints and spaces, so a secret split across reply lines is whole again."""
        keep = [True] * len(self.data)
        for match in _JOINT_RE.finditer(self.data):
            keep[match.start():match.end()] = [False] * (match.end() - match.start())
        return _View(bytes(b for b, k in zip(self.data, keep, strict=True) if k),
                     tuple(s for s, k in zip(self.spans, keep, strict=True) if k))

    def percent(self) -> _View:
        """With percent-encoding undone (either case of hex digit): the bytes as they are, not yet read as text
        (`fold`) or as octets (`lowered`)."""
        data, spans, pos = bytearray(), list[tuple[int, int]](), 0
        for match in _PERCENT_RE.finditer(self.data):
            data += self.data[pos:match.start()]
            spans += self.spans[pos:match.start()]
            byte = int(match.group(1), 16) if match.group(1) else ord(" ")
            data.append(byte)
            spans.append((self.spans[match.start()][0], self.spans[match.end() - 1][1]))
            pos = match.end()
        data += self.data[pos:]
        spans += self.spans[pos:]
        return _View(bytes(data), tuple(spans))

    def fold(self) -> _View:
        """Read as UTF-8 text, folded as `of` folds it."""
        return _View.folded(self.data, list(self.spans))

    def lowered(self) -> _View:
        """As octets (ASCII letters lowered): the UTF-16 of a secret is no UTF-8, so it cannot be read as text."""
        return _View(self.data.lower(), self.spans)

    def find(self, needle: bytes) -> Iterable[tuple[int, int]]:
        """The character span of every (also overlapping) occurrence of `needle`."""
        at = self.data.find(needle)
        while at >= 0:
            yield self.spans[at][0], self.spans[at + len(needle) - 1][1]
            at = self.data.find(needle, at + 1)


# A UTF-8 lead byte's high nibble -> the length of its character (RFC 3629 §3); anything else stands alone.
_UTF8_SIZE = {0xC: 2, 0xD: 2, 0xE: 3, 0xF: 4}


def _fold_char(char: str) -> bytes:
    return char.casefold().encode("utf-8", "surrogatepass")


# The views a secret is looked for in: as written, joined, percent-decoded, and both in either order (decoding can
# make new spaces, so joining comes last).
_VIEWS: tuple[tuple[Callable[[_View], _View], ...], ...] = (
    (), (_View.joined,), (_View.percent, _View.fold), (_View.percent, _View.fold, _View.joined),
    (_View.joined, _View.percent, _View.fold, _View.joined),
)
# The views the UTF-16 bytes of a secret (either byte order) are looked for in, percent-encoded (RFC 3986 §2.1
# encodes octets, whatever they spell): decoded to octets, as written and joined across reply lines first.
_OCTET_VIEWS: tuple[tuple[Callable[[_View], _View], ...], ...] = (
    (_View.percent, _View.lowered), (_View.joined, _View.percent, _View.lowered),
)


def utf16_octets(secret: str) -> list[bytes]:
    """The UTF-16 bytes of `secret` in either byte order, ASCII letters lowered as `_View.lowered` lowers them."""
    return [secret.encode(codec, "surrogatepass").lower() for codec in ("utf-16-le", "utf-16-be")]


def _through(view: _View, steps: tuple[Callable[[_View], _View], ...]) -> _View:
    for step in steps:
        view = step(view)
    return view


def _normalising(steps: tuple[Callable[[_View], _View], ...]) -> tuple[Callable[[_View], _View], ...]:
    """The steps a needle goes through for a view: the same joining, but no decoding (a spelling is looked for as
    it reads once the text is decoded; `_View.of` has folded it)."""
    return tuple(step for step in steps if step is _View.joined)


def base64_cores(data: bytes) -> list[str]:
    """The base64 characters that encode only `data`, wherever it sits in a longer base64 blob.

    Each character carries 6 bits (RFC 4648 §4), so `data` starting 0, 1 or 2 bytes into a 3-byte group shares its
    first 0, 2 or 3 characters and its last character with the bytes around it; everything between is fixed.
    """
    cores = []
    for before in range(3):
        encoded = base64.b64encode(bytes(before) + data).decode("ascii").rstrip("=")
        total = before + len(data)
        end = 4 * (total // 3) + (total % 3)  # a partial last group keeps 1 or 2 characters of its own
        cores.append(encoded[(0, 2, 3)[before]:end])
    return cores


def spellings(secret: str) -> list[str]:
    """Every spelling of `secret` looked for in each view (letter case is folded by the views themselves): its
    UTF-8 bytes, and its UTF-16 ones (either byte order) as a Windows-minded peer may echo them, each as hex and
    as base64 at every alignment."""
    raw = secret.encode("utf-8", "surrogatepass")
    forms = [secret, secret.upper(), secret.lower()]
    for encoded in (raw, secret.encode("utf-16-le", "surrogatepass"), secret.encode("utf-16-be", "surrogatepass")):
        cores = base64_cores(encoded)
        forms += [encoded.hex(), *cores,
                  *(c.translate(str.maketrans("+/", "-_")) for c in cores)]  # RFC 4648 §5 URL-safe alphabet
    return sorted({f for form in forms for f in (form, printable(form))}, key=len, reverse=True)


@dataclass(frozen=True, slots=True)
class Scrubber:
    """The needles of one run's secrets in each view, or the decision to withhold relay text altogether."""

    needles: tuple[tuple[bytes, ...], ...]  # per entry of _VIEWS
    withhold: bool
    octet_needles: tuple[bytes, ...] = ()  # looked for in each of _OCTET_VIEWS

    @classmethod
    def of(cls, secrets: Iterable[Secret]) -> Scrubber:
        values = [s.reveal() for s in secrets if s.reveal()]
        needles = tuple(
            tuple(sorted({_through(_View.of(form), _normalising(steps)).data
                          for v in values for form in spellings(v)}, key=len, reverse=True))
            for steps in _VIEWS
        )
        octets = tuple(sorted({o for v in values for o in utf16_octets(v)}, key=len, reverse=True))
        short = any(len(v) < MIN_SECRET for v in values) or any(len(n) < MIN_SECRET for ns in needles for n in ns)
        return cls(needles, short, octets)

    def spans(self, text: str) -> list[tuple[int, int]]:
        made: dict[tuple[Callable[[_View], _View], ...], _View] = {(): _View.of(text)}

        def view(steps: tuple[Callable[[_View], _View], ...]) -> _View:
            """Each view once: the views share their first steps (joining, percent-decoding)."""
            if steps not in made:
                made[steps] = steps[-1](view(steps[:-1]))
            return made[steps]

        found = [span for steps, needles in zip(_VIEWS, self.needles, strict=True) if needles
                 for needle in needles for span in view(steps).find(needle)]
        found += [span for steps in _OCTET_VIEWS if self.octet_needles
                  for needle in self.octet_needles for span in view(steps).find(needle)]
        return _merged(found)

    def text(self, text: str) -> str:
        """`text` with every spelling of every secret masked, then cut to `MAX_TEXT`; or the withheld note."""
        clean = self.masked(text)
        if clean is None:
            return WITHHELD
        return clean if len(clean) <= MAX_TEXT else clean[: MAX_TEXT - 3] + "..."

    def masked(self, text: str) -> str | None:
        """`text`, of any length and lines, with every spelling of every secret masked; None when it must be
        withheld (a short secret, or masks that kept forming new matches)."""
        if self.withhold:
            return None
        for _ in range(_MAX_PASSES):
            spans = self.spans(text)
            if not spans:
                return text
            for start, end in reversed(spans):
                text = text[:start] + MASK + text[end:]
        return None  # masks kept forming new matches: show nothing rather than something


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def scrubber_of(secrets: Iterable[Secret]) -> Scrubber:
    """The scrubber of these secrets, built once: a run scrubs every failure, refusal and -vv line of every target
    with the same secrets, and building one costs milliseconds (every spelling in every view)."""
    return _built(tuple(secrets))


@functools.lru_cache(maxsize=16)
def _built(secrets: tuple[Secret, ...]) -> Scrubber:
    # Keyed by the Secret objects themselves (identity: Secret defines no equality), never by their values.
    return Scrubber.of(secrets)


def scrub_failure(failure: Failure, secrets: Iterable[Secret]) -> Failure:
    scrubber = scrubber_of(secrets)
    if scrubber.withhold:
        facts = " ".join(str(f) for f in (failure.smtp_code, failure.enhanced_status) if f)
        return replace(failure, detail=f"{facts} {WITHHELD}" if facts else WITHHELD)
    return replace(failure, detail=scrubber.text(failure.detail))


def scrub_reply(reply: Reply, secrets: Iterable[Secret]) -> Reply:
    return replace(reply, text=scrubber_of(secrets).text(reply.text))
