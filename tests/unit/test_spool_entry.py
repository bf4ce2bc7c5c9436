"""A spool entry's one serializer and parser (spool.encode / decode): what is written is read back as the same value,
and the document is the entry's fields, each a JSON value of its own (issue 16 replaced dataclasses.asdict here)."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pytest
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


@given(entries)
def test_an_entry_is_written_as_json_dumps_with_indent_1_writes_it(entry: sp.Entry) -> None:
    """spool.indented lays the document out itself (the json module's indenting encoder is pure Python): the
    bytes written, and so every file a spool holds, are those json.dumps(..., indent=1) wrote."""
    doc = {"format": sp.FORMAT, **entry.to_json(), "mac": "0" * 64}
    assert sp.indented(doc) == json.dumps(doc, indent=1)
    assert sp.encode(entry, KEY) == (json.dumps(json.loads(sp.encode(entry, KEY)), indent=1) + "\n").encode()


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=12)


@given(st.dictionaries(st.text(max_size=5) | st.integers() | st.booleans() | st.none(), JSON, max_size=4))
def test_any_document_is_laid_out_as_json_dumps_lays_it_out(doc: dict[Any, Any]) -> None:
    """Any depth, floats (NaN and infinities too), tuples and keys json.dumps turns into strings: the same text,
    whichever way it was made."""
    assert sp.indented(doc) == json.dumps(doc, indent=1)


class Text(str):
    pass


def test_what_is_not_plain_json_is_left_to_json_dumps_errors_and_all() -> None:
    assert sp.indented({"phase": Text("data"), "n": True, "x": 1.5}) == json.dumps(
        {"phase": "data", "n": True, "x": 1.5}, indent=1)
    loop: list[Any] = []
    loop.append(loop)
    for bad, error in (({"x": object()}, TypeError), ({"x": {1j: 1}}, TypeError), ({"x": loop}, ValueError)):
        with pytest.raises(error) as ours:
            sp.indented(bad)
        with pytest.raises(error) as theirs:
            json.dumps(bad, indent=1)
        assert str(ours.value) == str(theirs.value)
