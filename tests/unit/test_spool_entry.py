"""A spool entry's one serializer and parser (spool.encode / decode): what is written is read back as the same value,
and the document is the entry's fields, each a JSON value of its own (issue 16 replaced dataclasses.asdict here)."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from certbot_smtp_dist._internal import spool as sp

KEY = b"k" * 32
TEXT = st.text(max_size=20)

entries = st.builds(
    sp.Entry, id=st.text("0123456789abcdef", min_size=24, max_size=24), state=st.sampled_from(sorted(sp.STATES)),
    target=TEXT, certificate=TEXT, serial=TEXT, fingerprint=TEXT, message_id=st.none() | TEXT, date=TEXT,
    envelope_to=st.lists(TEXT, max_size=3).map(tuple),
    source=st.dictionaries(st.sampled_from(sorted(sp._SOURCE_KEYS)), st.none() | TEXT),
    created=TEXT, updated=TEXT, attempts=st.integers(0, 10**6),
    last_failure=st.none() | st.dictionaries(TEXT, st.none() | TEXT | st.integers() | st.booleans(), max_size=6),
    kind=st.sampled_from(sorted(sp.KINDS)), uncertain=st.integers(0, 5), resend_due=st.booleans(),
    not_before=TEXT, not_after=TEXT)


@given(entries)
def test_an_encoded_entry_decodes_to_the_same_value(entry: sp.Entry) -> None:
    assert sp.decode(sp.encode(entry, KEY), KEY, Path(f"{entry.id}.json")) == entry


@given(entries)
def test_the_document_is_every_field_as_asdict_gives_it(entry: sp.Entry) -> None:
    """Field for field and in the same order as dataclasses.asdict (the bytes written, and so every MAC, are the
    ones earlier versions wrote), a field added to Entry included without touching to_json."""
    expected = {**asdict(entry), "envelope_to": list(entry.envelope_to)}
    doc = entry.to_json()
    assert doc == expected and list(doc) == [f.name for f in fields(sp.Entry)]


def test_the_document_shares_no_container_with_the_entry() -> None:
    """The entry is a frozen value: changing the document made from it changes nothing in it."""
    entry = sp.Entry(id="0" * 24, state=sp.PENDING, target="t", certificate="c", serial="01", fingerprint="ff",
                     message_id="<m@example.com>", date="d", envelope_to=("a@example.com",),
                     source={"key": "/k/privkey.pem"}, created="c", updated="u",
                     last_failure={"error_code": "SMTP_TRANSIENT"})
    doc = entry.to_json()
    doc["source"]["key"] = "/tmp/evil.pem"
    doc["last_failure"]["error_code"] = "SMTP_PERMANENT"
    doc["envelope_to"].append("mallory@example.com")
    assert entry.source == {"key": "/k/privkey.pem"} and entry.last_failure == {"error_code": "SMTP_TRANSIENT"}
    assert entry.envelope_to == ("a@example.com",)
