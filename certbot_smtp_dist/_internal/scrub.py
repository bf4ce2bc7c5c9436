"""Scrub relay text of every spelling of every secret of the run, then bound it: what comes out reveals none of them.

A relay's reply ends up in output, logs, the journal and the spool, which more people read than the credential
store. Each secret is looked for as written and in any letter case (non-ASCII letters too); its UTF-8 and UTF-16
bytes as hex and as base64 at each of the three byte alignments they can have inside a longer blob (the SASL PLAIN
message ``\\0user\\0pass``, RFC 4616 §2); percent-encoded, its UTF-16 bytes too (read back as UTF-16 text, in
any letter case); and split across the lines of a multi-line reply.
Masking a short secret would itself reveal it (every "5" masked in "535 5.7.8" tells which character the password
is), so while any secret of the run is under `MIN_SECRET` characters the relay's text is withheld instead.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import overload

from certbot_smtp_dist._internal.addresses import printable
from certbot_smtp_dist.model import Failure, Reply, Secret

MIN_SECRET = 8  # characters, not counting spaces; shorter secrets cannot be masked without revealing them
MAX_TEXT = 400  # characters of relay text kept per failure or refusal, cut after scrubbing
MASK = "***"
WITHHELD = "(relay text withheld: a secret of this run is too short to scrub safely)"
LINE_JOIN = " / "  # how the lines of a multi-line reply are joined into one
_MAX_PASSES = 4  # masking can join text into a new match; after this many passes the text is withheld

# Both compiled on first use (re's cache): a delivered run scrubs no relay text.
# Where a multi-line reply was joined (plus the RFC 3463 code RFC 2034 §3 repeats on each line), and any space.
_JOINT_RE = rb" / (?:[245]\.\d{1,3}\.\d{1,3} )?|\s"
# RFC 3986 §2.1 percent-encoding, and the "+" for a space of HTML form encoding.
_PERCENT_RE = rb"%([0-9A-Fa-f]{2})|\+"


def one_line(text: str) -> str:
    """Relay text as one printable line: each line stripped, joined by `LINE_JOIN`, non-printables as "?"."""
    return printable(LINE_JOIN.join(part.strip() for part in str(text).splitlines() if part.strip()))


@dataclass(frozen=True, slots=True)
class _View:
    """Text as case-folded UTF-8 bytes, each byte knowing the span of characters of the original text it came from.
    Folding is per character (str.casefold), non-ASCII letters included: "Ä" and "ä" read alike, "ß" as "ss"."""

    data: bytes
    spans: Sequence[tuple[int, int]]

    @classmethod
    def of(cls, text: str) -> _View:
        return cls._encoded(text, _fold_char, str.lower)

    @classmethod
    def raw(cls, text: str) -> _View:
        """Text as its UTF-8 bytes, unfolded: where percent-encoding leaves an octet as a literal character ("A" in
        "%D8A%00"), folding would change the octet, and with it the UTF-16 code unit it is half of."""
        return cls._encoded(text, _utf8_char, str)

    @classmethod
    def _encoded(cls, text: str, each: Callable[[str], bytes], ascii_text: Callable[[str], str]) -> _View:
        if text.isascii():  # one byte a character: no loop in Python (most relay text)
            return cls(ascii_text(text).encode("ascii"), tuple(zip(range(len(text)), range(1, len(text) + 1), strict=True)))
        data, spans = bytearray(), list[tuple[int, int]]()
        for i, char in enumerate(text):
            encoded = each(char)
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
        data, spans, pos = bytearray(), list[tuple[int, int]](), 0
        for match in re.finditer(_JOINT_RE, self.data):  # a slice per joint, not a step per byte
            data += self.data[pos:match.start()]
            spans += self.spans[pos:match.start()]
            pos = match.end()
        data += self.data[pos:]
        spans += self.spans[pos:]
        return _View(bytes(data), tuple(spans))

    def percent(self) -> _View:
        """With percent-encoding undone (either case of hex digit): the bytes as they are, not yet read as text
        (`fold`) or as octets (`lowered`)."""
        data, spans, pos = bytearray(), list[tuple[int, int]](), 0
        for match in re.finditer(_PERCENT_RE, self.data):
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

    def utf16(self, codec: str, skip: int) -> _View:
        """The octets read as UTF-16 text in byte order `codec` from octet `skip` on (0 or 1: a secret's code units
        sit at either parity among other octets), folded as `of` folds text, so a letter in any case reads alike
        ("Ä" is C4 00, "ä" E4 00 in UTF-16LE: not ASCII's case bit). A surrogate pair is one character, a lone
        surrogate stands as it is."""
        text = self.data[skip:skip + (len(self.data) - skip) // 2 * 2].decode(codec, "surrogatepass")
        source = self.spans

        def spans() -> tuple[tuple[int, int], ...]:
            out, at = list[tuple[int, int]](), skip
            for char in text:
                size = 4 if ord(char) > 0xFFFF else 2
                out += [(source[at][0], source[at + size - 1][1])] * len(_fold_char(char))
                at += size
            return tuple(out)

        # str.casefold folds each character by itself (Unicode's CaseFolding.txt), as _fold_char does one by one.
        return _View(text.casefold().encode("utf-8", "surrogatepass"), _Deferred(spans))

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


def _utf8_char(char: str) -> bytes:
    return char.encode("utf-8", "surrogatepass")


class _Deferred(Sequence[tuple[int, int]]):
    """Spans made on first use. A UTF-16 reading is searched, never read further, and only a match (a relay echoing
    a secret: rare) needs its spans; making them costs a loop over every character of the text."""

    def __init__(self, make: Callable[[], tuple[tuple[int, int], ...]]) -> None:
        self._make = make
        self._made: tuple[tuple[int, int], ...] | None = None

    def _spans(self) -> tuple[tuple[int, int], ...]:
        if self._made is None:
            self._made = self._make()
        return self._made

    @overload
    def __getitem__(self, index: int) -> tuple[int, int]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[int, int]]: ...
    def __getitem__(self, index: int | slice) -> tuple[int, int] | Sequence[tuple[int, int]]:
        return self._spans()[index]

    def __len__(self) -> int:
        return len(self._spans())


# The views a secret is looked for in: as written, joined, percent-decoded, and both in either order (decoding can
# make new spaces, so joining comes last).
_VIEWS: tuple[tuple[Callable[[_View], _View], ...], ...] = (
    (), (_View.joined,), (_View.percent, _View.fold), (_View.percent, _View.fold, _View.joined),
    (_View.joined, _View.percent, _View.fold, _View.joined),
)
_UTF16 = ("utf-16-le", "utf-16-be")


def _reading(codec: str, skip: int) -> Callable[[_View], _View]:
    def read(view: _View) -> _View:
        return view.utf16(codec, skip)
    return read


# The UTF-16 readings of octets: each byte order at each parity, one function each (a view is made once per run of
# steps, keyed by the steps themselves).
_UTF16_READINGS = {(codec, skip): _reading(codec, skip) for codec in _UTF16 for skip in (0, 1)}
# The views the UTF-16 of a secret (either byte order) is looked for in, percent-encoded (RFC 3986 §2.1 encodes
# octets, whatever they spell): decoded to octets, as written and joined across reply lines first, then read as
# UTF-16 text and folded. Eight views, each one pass over the text: letter case costs no variants of the secret.
_OCTET_VIEWS: tuple[tuple[Callable[[_View], _View], ...], ...] = tuple(
    (*joining, _View.percent, read) for joining in ((), (_View.joined,)) for read in _UTF16_READINGS.values())


def utf16_folded(secret: str) -> list[bytes]:
    """The needles of `secret` in the UTF-16 readings: its UTF-16 in either byte order read back as `_View.utf16`
    reads it (so a surrogate pair or a lone surrogate in it reads the same there), folded."""
    needles = []
    for codec in _UTF16:
        raw = secret.encode(codec, "surrogatepass")
        needles.append(_View(raw, ((0, 0),) * len(raw)).utf16(codec, 0).data)
    return needles


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
        octets = tuple(sorted({o for v in values for o in utf16_folded(v)}, key=len, reverse=True))
        short = any(len(v) < MIN_SECRET for v in values) or any(len(n) < MIN_SECRET for ns in needles for n in ns)
        return cls(needles, short, octets)

    def spans(self, text: str) -> list[tuple[int, int]]:
        views = _Views(_View.of(text))
        found = [span for steps, needles in zip(_VIEWS, self.needles, strict=True) if needles
                 for needle in needles for span in views.get(steps).find(needle)]
        if self.octet_needles:  # from the text as written: its literal octets are halves of code units
            octets = _Views(_View.raw(text))
            found += [span for steps in _OCTET_VIEWS for needle in self.octet_needles
                      for span in octets.get(steps).find(needle)]
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


class _Views:
    """The views of one text, each made once: they share their first steps (joining, percent-decoding)."""

    def __init__(self, root: _View) -> None:
        self._made: dict[tuple[Callable[[_View], _View], ...], _View] = {(): root}

    def get(self, steps: tuple[Callable[[_View], _View], ...]) -> _View:
        if steps not in self._made:
            self._made[steps] = steps[-1](self.get(steps[:-1]))
        return self._made[steps]


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
