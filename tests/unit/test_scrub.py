"""Relay text keeps no spelling of any secret of the run, and the redaction itself never reveals a short one."""

from __future__ import annotations

import base64
import re
import urllib.parse

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from support.spellings import USER, encodings, leaks, split_lines

from certbot_smtp_dist._internal import scrub
from certbot_smtp_dist.errors import ErrorCode
from certbot_smtp_dist.model import Failure, Phase, Reply, Secret

PW = "pw-Fault-7Qx!never-leaks"

# Secrets as `credentials set` accepts them: no control characters (and no lone surrogates, which UTF-8 cannot hold).
secret_chars = st.characters(blacklist_categories=("Cc", "Cs"))
long_secrets = st.text(secret_chars, min_size=scrub.MIN_SECRET, max_size=40).filter(
    lambda s: len(re.sub(r"\s", "", s)) >= scrub.MIN_SECRET)
relay_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


def scrubbed(secret: str, raw: str) -> str:
    """What a reply text becomes on its way out: classify's one line, then the run's scrubber."""
    return scrub.Scrubber.of([Secret(secret)]).text(scrub.one_line(raw))


@pytest.mark.parametrize("form", encodings(PW).keys())
@pytest.mark.parametrize("split", [False, True])
def test_every_spelling_is_scrubbed(form: str, split: bool) -> None:
    spelled = encodings(PW)[form]
    spelled = split_lines(spelled, len(spelled) // 2) if split else spelled
    raw = f"5.7.8 bad credentials for {USER}: {spelled} (try again)\nsecond line"
    assert leaks(PW, raw), "the oracle must see the secret before scrubbing"
    out = scrubbed(PW, raw)
    assert leaks(PW, out) == [], out
    assert scrub.MASK in out and "bad credentials" in out and "second line" in out


def test_a_secret_split_with_enhanced_codes_on_every_line_is_scrubbed() -> None:
    """RFC 2034 §3 repeats the enhanced code on each line of a multi-line reply."""
    raw = f"5.7.8 bad password {PW[:9]}\n5.7.8 {PW[9:]} refused"
    assert PW[9:] not in scrubbed(PW, raw) and PW[:9] not in scrubbed(PW, raw)


@given(secret=long_secrets, form=st.sampled_from(sorted(encodings(PW))), before=relay_text, after=relay_text,
       split=st.none() | st.integers(1, 200))
@example(secret="pw-Fault-7Qx!never-leaks", form="b64-plain-blob", before="", after="", split=None)
@example(secret="        abcdefgh", form="plain", before="x", after="y", split=3)
@example(secret="a***bcdefghi", form="plain", before="a", after="bcdefghi", split=None)
def test_no_spelling_of_a_long_secret_survives(secret: str, form: str, before: str, after: str,
                                               split: int | None) -> None:
    spelled = encodings(secret)[form]
    if split is not None and len(spelled) > 1:
        spelled = split_lines(spelled, split)
    out = scrubbed(secret, f"{before}{spelled}{after}")
    assert leaks(secret, out) == [], (out, leaks(secret, out))
    assert len(out) <= scrub.MAX_TEXT
    assert out.isprintable() and "\n" not in out


@given(secret=st.text(secret_chars, min_size=1, max_size=scrub.MIN_SECRET - 1), text=relay_text)
@example(secret="5", text="535 5.7.8 Authentication credentials invalid")
@example(secret="12", text="535 5.7.8 bad 123 4.5.6 12")
def test_a_short_secret_withholds_the_text(secret: str, text: str) -> None:
    out = scrubbed(secret, text)
    assert out == scrub.WITHHELD
    assert scrub.Scrubber.of([Secret(PW), Secret(secret)]).text(text) == scrub.WITHHELD  # any secret of the run


def test_short_secret_redaction_reveals_nothing() -> None:
    """0.1.0 masked each "3" of a one-character password "3": `***3*** ***.7.8`."""
    failure = Failure(ErrorCode.SMTP_AUTH, Phase.AUTH, "535 5.7.8 bad credentials 123 4.5.6 3", 535, "5.7.8")
    out = scrub.scrub_failure(failure, [Secret("3")])
    assert out.detail == f"535 5.7.8 {scrub.WITHHELD}"
    assert (out.code, out.smtp_code, out.enhanced_status) == (ErrorCode.SMTP_AUTH, 535, "5.7.8")
    reply = scrub.scrub_reply(Reply(550, "5.1.1", "no such user 3"), [Secret("3")])
    assert reply == Reply(550, "5.1.1", scrub.WITHHELD)


def test_whitespace_does_not_count_towards_the_length() -> None:
    assert scrubbed("a b c d e f g", "a b c d e f g") == scrub.WITHHELD


def test_text_without_secrets_is_kept_and_bounded_after_scrubbing() -> None:
    assert scrubbed(PW, "250 fine\n  \nall good") == "250 fine / all good"
    # The secret straddles the cut: scrubbing first leaves none of it; cutting first would leave its first half.
    raw = "x" * (scrub.MAX_TEXT - 10) + PW + "y" * 50
    out = scrubbed(PW, raw)
    assert len(out) == scrub.MAX_TEXT and out.endswith("...") and PW[:8] not in out
    assert out.startswith("x" * (scrub.MAX_TEXT - 10) + scrub.MASK)


def test_no_secrets_means_nothing_to_scrub() -> None:
    assert scrub.Scrubber.of([]).text("hello / world") == "hello / world"
    assert scrub.Scrubber.of([Secret("")]).text("hello") == "hello"


@given(data=st.binary(min_size=1, max_size=30), before=st.binary(max_size=5), after=st.binary(max_size=5))
def test_base64_cores_are_found_at_every_alignment(data: bytes, before: bytes, after: bytes) -> None:
    blob = base64.b64encode(before + data + after).decode()
    core = scrub.base64_cores(data)[len(before) % 3]
    assert core in blob


@pytest.mark.parametrize("form", ["plain", "b64-plain-blob", "hex", "percent"])
def test_masked_keeps_lines_and_length_but_no_spelling(form: str) -> None:
    # The -vv transcript scrubs a whole multi-line reply at once (a secret split across its lines is whole again)
    # and shows it line by line, uncut.
    reply = "250-relay.test\n" + split_lines(encodings(PW)[form], 5) + "\n250 " + "x" * scrub.MAX_TEXT
    masked = scrub.Scrubber.of([Secret(PW)]).masked(reply)
    assert masked is not None and leaks(PW, masked) == []
    assert masked.startswith("250-relay.test\n") and masked.endswith("x" * scrub.MAX_TEXT) and scrub.MASK in masked


def test_masked_is_none_while_a_secret_is_too_short() -> None:
    assert scrub.Scrubber.of([Secret("a5b7c"), Secret(PW)]).masked("220 relay ready") is None


UNICODE_PW = "Pässwörd-Größe-ÆØÅ-çé"


@pytest.mark.parametrize("form", ["swapped", "mixed", "upper", "utf16le-hex", "utf16be-HEX", "utf16le-b64-blob",
                                  "utf16be-b64-offset-1", "percent", "utf16le-percent", "utf16be-percent-plus",
                                  "utf16le-percent-all", "utf16le-percent-swapped", "utf16be-percent-upper"])
@pytest.mark.parametrize("split", [False, True])
def test_non_ascii_letters_in_any_case_and_utf16_spellings_are_scrubbed(form: str, split: bool) -> None:
    """Letter case is folded for every letter, not ASCII alone ("ÄöSS" reads as "äöß"), and the UTF-16 bytes of
    a secret (either byte order) are looked for as hex, base64 and percent-encoded, as its UTF-8 bytes are."""
    spelled = encodings(UNICODE_PW)[form]
    spelled = split_lines(spelled, len(spelled) // 2) if split else spelled
    raw = f"5.7.8 bad credentials: {spelled} (try again)"
    assert leaks(UNICODE_PW, raw), "the oracle must see the secret before scrubbing"
    out = scrubbed(UNICODE_PW, raw)
    assert leaks(UNICODE_PW, out) == [], out
    assert "bad credentials" in out and "try again" in out


def test_a_runs_scrubber_is_built_once_per_set_of_secrets() -> None:
    """Issue 16: every failure, refusal and -vv line of a run was scrubbed with a scrubber built anew (ms each)."""
    password, passphrase = Secret("relay-password-0123"), Secret("p12-passphrase-4567")
    first = scrub.scrubber_of((password, passphrase))
    assert scrub.scrubber_of([password, passphrase]) is first
    assert scrub.scrub_reply(Reply(550, None, "no relay-password-0123 here"), (password, passphrase)).text \
        == f"no {scrub.MASK} here"
    # Keyed by the secrets themselves, never by their values: another secret of the same value is its own entry.
    again = scrub.scrubber_of((Secret("relay-password-0123"), passphrase))
    assert again is not first and again.needles == first.needles


@given(secret=long_secrets, order=st.sampled_from(["utf-16-le", "utf-16-be"]), before=st.binary(max_size=6),
       after=st.binary(max_size=6), plus=st.booleans())
@example(secret=PW, order="utf-16-le", before=b"", after=b"", plus=False)
@example(secret="Pässwörd Größe", order="utf-16-be", before=b"\xc3", after=b"\x00", plus=True)
def test_percent_encoded_utf16_is_scrubbed_among_any_octets(secret: str, order: str, before: bytes, after: bytes,
                                                            plus: bool) -> None:
    """RFC 3986 §2.1 percent-encodes octets, whatever they spell: the UTF-16 of a secret among any other octets
    (a lead byte of UTF-8 before it, half a code unit after) is found as the octets it is, not as UTF-8 text."""
    quote = urllib.parse.quote_plus if plus else urllib.parse.quote
    raw = f"5.7.8 bad credentials {quote(before + secret.encode(order) + after, safe='')} try again"
    assert leaks(secret, raw), "the oracle must see the secret before scrubbing"
    out = scrubbed(secret, raw)
    assert leaks(secret, out) == [], out
    assert "bad credentials" in out and "try again" in out


@given(secret=long_secrets, order=st.sampled_from(["utf-16-le", "utf-16-be"]), before=st.binary(max_size=3),
       case=st.sampled_from(["upper", "lower", "swapcase", "title"]), plus=st.booleans())
@example(secret="Pässwörd Größe", order="utf-16-le", before=b"", case="upper", plus=False)
@example(secret="ÆØÅ-çé-Straße-1", order="utf-16-be", before=b"a", case="swapcase", plus=True)
def test_percent_encoded_utf16_in_another_letter_case_is_scrubbed(secret: str, order: str, before: bytes,
                                                                  case: str, plus: bool) -> None:
    """Letter case is folded in the UTF-16 of a secret as in its text: "PÄSSWÖRD" in UTF-16, percent-encoded,
    is "Pässwörd" (the octets of "Ä" and "ä" differ in more than ASCII's case bit)."""
    quote = urllib.parse.quote_plus if plus else urllib.parse.quote
    variant = getattr(str, case)(secret)
    raw = f"5.7.8 bad credentials {quote(before + variant.encode(order), safe='')} try again"
    assume(leaks(secret, raw))  # a case mapping that does not fold back (dotless i) spells another secret
    out = scrubbed(secret, raw)
    assert leaks(secret, out) == [], out
    assert "bad credentials" in out and "try again" in out
