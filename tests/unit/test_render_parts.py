"""A run's targets share its rendering work (render.PartCache: attachments' MIME parts, parsed and folded headers,
the Diagnostics text): each message is what rendering it alone makes, byte for byte, and no target gets another
payload's attachment (the private key above all)."""

from __future__ import annotations

import base64
import email
import email.policy
import random
import re
from datetime import datetime, timezone
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from certbot_smtp_dist._internal import render
from certbot_smtp_dist._internal.config import parse_settings
from certbot_smtp_dist._internal.payload import BUILTIN_FORMATS
from certbot_smtp_dist.model import Attachment, CertificateFacts, Finding, Payload, Severity, Target

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
FACTS = CertificateFacts("n", "host.example", ("host.example",), "CN=x", NOW, NOW, "1", "00")
CHAIN = Attachment("host.example.pem", "application/x-pem-file", b"-----BEGIN CERTIFICATE-----\nAAAA\n" * 40)
KEY = Attachment("host.example.key", "application/octet-stream", bytes(range(256)) * 3, contains_private_key=True)
OTHER = Attachment("other.pem", "application/x-pem-file", b"other\n")


def target(name: str, **table: object) -> Target:
    doc = {"targets": {name: {"host": "127.0.0.1", "tls_mode": "plaintext", "from_address": "robot@example.com",
                              "to": ["pki@example.com"], **table}}}
    return parse_settings(doc, Path("c.toml"), {}, {f.name: f for f in BUILTIN_FORMATS}).targets[0]


def unbounded(data: bytes) -> bytes:
    """The message with its random multipart boundary replaced by one fixed text."""
    boundary = re.search(rb'boundary="([^"]+)"', data)
    assert boundary is not None
    return data.replace(boundary.group(1), b"BOUNDARY")


def test_shared_parts_render_what_add_attachment_rendered() -> None:
    payload = Payload("pem", (CHAIN, KEY))
    parts = render.PartCache()
    targets = [target("a"), target("b", to=["x@example.com", "y@example.com"], from_name="Zoë")]
    for t in targets * 2:
        shared = render.render(t, FACTS, payload, "<id@example.com>", NOW, parts=parts).data
        alone = render.render(t, FACTS, payload, "<id@example.com>", NOW).data
        assert unbounded(shared) == unbounded(alone)
        parsed = email.message_from_bytes(shared, policy=email.policy.default)
        got = [(p.get_filename(), p.get_content_type(), p.get_content_disposition(), p.get_payload(decode=True))
               for p in parsed.iter_attachments()]
        assert got == [(a.filename, a.content_type, "attachment", a.data) for a in (CHAIN, KEY)]
    assert set(parts.attachments) == {CHAIN, KEY}  # made once each, for four messages


def test_attachment_part_is_what_add_attachment_makes() -> None:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg.set_content("body")
    msg.add_attachment(KEY.data, maintype="application", subtype="octet-stream", filename=KEY.filename)
    made = list(msg.iter_attachments())[0]
    assert render.attachment_part(KEY).as_bytes() == made.as_bytes()


def test_no_target_gets_another_payloads_attachment() -> None:
    parts = render.PartCache()
    first = render.render(target("a"), FACTS, Payload("pem", (CHAIN,)), "<1@example.com>", NOW, parts=parts)
    second = render.render(target("b"), FACTS, Payload("pem", (OTHER,)), "<2@example.com>", NOW, parts=parts)
    names = [[p.get_filename() for p in email.message_from_bytes(m.data, policy=email.policy.default)
              .iter_attachments()] for m in (first, second)]
    assert names == [["host.example.pem"], ["other.pem"]]


FINDINGS = (Finding(Severity.WARNING, "chain", "the chain lacks an issuer " + "x" * 90, "add it"),
            Finding(Severity.INFO, "key", "the private key matches the leaf"))
LONG_TO = [f"recipient-{i}@a-rather-long-domain-name.example.com" for i in range(6)]
# Targets that differ in every input a message is made of: recipients (a To long enough to fold, Cc), sender name
# (non-ASCII: an encoded word), subject prefix, payload (chain only, chain and key, notice), and name.
VARIED = (
    ("plain", {}, (CHAIN,)),
    ("keyed", {"payload": "pem_and_key"}, (CHAIN, KEY)),
    ("folded", {"to": LONG_TO, "cc": ["cc@example.com"], "from_name": "Zoë Ops"}, (CHAIN,)),
    ("prefixed", {"subject_prefix": "prod", "from_name": "Ops", "bcc": ["hidden@example.com"]}, (CHAIN, KEY)),
    ("notice", {"payload": "notice"}, ()),
    ("other", {"to": LONG_TO[:2]}, (OTHER,)),
)


def exactly(t: Target, payload: Payload, message_id: str, seed: int, parts: render.PartCache | None,
            findings: tuple[Finding, ...] = FINDINGS, envelope_to: tuple[str, ...] | None = None) -> bytes:
    """The message rendered with a boundary drawn from `seed`: the same one both ways."""
    drawn, render.boundary = render.boundary, lambda: f"=_{seed:032x}"  # type: ignore[assignment]
    if parts is not None:
        parts.boundary = render.boundary()
    try:
        random.seed(seed)  # what the email package draws its own boundary from (render._delimits' fallback)
        return render.render(t, FACTS, payload, message_id, NOW, envelope_to, findings, parts).data
    finally:
        render.boundary = drawn  # type: ignore[assignment]


def test_shared_render_work_gives_every_target_the_bytes_rendering_it_alone_gives() -> None:
    parts = render.PartCache()
    cases = [(target(name, **table), Payload("p", atts)) for name, table, atts in VARIED]
    for round_ in range(2):  # the second round renders from what the first remembered
        for index, (t, payload) in enumerate(cases):
            seed, message_id = 100 * round_ + index, f"<{round_}.{t.name}@example.com>"
            shared = exactly(t, payload, message_id, seed, parts)
            assert shared == exactly(t, payload, message_id, seed, None), t.name
    # Other findings, and a retry's narrowed envelope, on the same memory.
    t, payload = cases[2]
    for findings in ((), FINDINGS[1:]):
        assert exactly(t, payload, "<x@example.com>", 7, parts, findings, ("cc@example.com",)) == \
            exactly(t, payload, "<x@example.com>", 7, None, findings, ("cc@example.com",))


def test_without_the_memory_the_messages_are_what_the_smtp_policy_makes() -> None:
    t = target("a", to=LONG_TO, from_name="Zoë")
    fresh = exactly(t, Payload("pem", (CHAIN, KEY)), "<1@example.com>", 3, None)
    parsed = email.message_from_bytes(fresh, policy=email.policy.SMTP)
    random.seed(3)
    assert parsed.as_bytes() == fresh  # the generator's own output, nothing of ours in between


def attachments_of(data: bytes) -> list[bytes]:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    return [p.get_payload(decode=True) for p in parsed.iter_attachments()]


def test_the_key_reaches_only_the_targets_whose_payload_holds_it() -> None:
    parts = render.PartCache()
    key_b64 = base64.b64encode(KEY.data)[:60]
    messages = {}
    for name, table, atts in VARIED * 2:  # keyed targets before and after the others, twice
        messages[name] = render.render(target(name, **table), FACTS, Payload("p", atts), f"<{name}@example.com>",
                                       NOW, parts=parts).data
    for name, _, atts in VARIED:
        holds = KEY in atts
        assert (KEY.data in attachments_of(messages[name])) is holds, name
        assert (key_b64 in messages[name].replace(b"\r\n", b"")) is holds, name
        assert (b"WARNING: this message contains private key" in messages[name]) is holds, name


def test_what_each_message_has_of_its_own_is_not_kept_for_the_run() -> None:
    """Only header values met more than once are kept (parsed, and folded): a run to 500 targets must not hold
    a Message-ID's or a boundary's parse tree per target (issue 16's memory budget)."""
    parts = render.PartCache()
    held: list[int] = []
    for count in (3, 30):
        for i in range(count):
            render.render(target(f"t{i}"), FACTS, Payload("pem", (CHAIN,)), f"<{count}.{i}@example.com>", NOW,
                          findings=FINDINGS, parts=parts)
        assert parts.policy.memory is not None
        held.append(sum(1 for key in parts.policy.memory if key[0] == "held"))
    assert held[0] == held[1] > 0, held


def test_the_boundary_is_ours_and_delimits_the_parts_only() -> None:
    """Rendering picks the multipart boundary itself ("=_" and 128 random bits: render.boundary), so the email
    package's generator does not search the text for its own; it occurs as the delimiter lines and nowhere else."""
    payload = Payload("pem", (CHAIN, KEY))
    message = render.render(target("a"), FACTS, payload, "<id@example.com>", NOW, parts=render.PartCache())
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    mark = parsed.get_boundary()
    assert mark is not None and re.fullmatch(r"=_[0-9a-f]{32}", mark), mark
    assert message.data.count(mark.encode()) == 1 + 4  # the Content-Type parameter, 3 parts' delimiters, the close
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "application/x-pem-file",
                                                                   "application/octet-stream"]
    run = render.PartCache()  # one boundary a run (the Content-Type parsed once), another the next run
    marks = [email.message_from_bytes(render.render(target(n), FACTS, payload, f"<{n}@example.com>", NOW,
                                                    parts=p).data).get_boundary()
             for n, p in (("a", run), ("b", run), ("c", render.PartCache()))]
    assert marks[0] == marks[1] == run.boundary != marks[2]


def test_a_boundary_met_in_the_content_gives_way_to_the_email_packages_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never seen with our boundary (see render.boundary), so forced here: a text part that is quoted-printable (a
    non-ASCII name) turns the RFC 3676 signature line "-- " into "--=20", a delimiter line for the boundary "=20".
    The message is then rendered again with the email package's own boundary (searched for in the text), and
    every part reads back whole."""
    facts = CertificateFacts("n", "zoë.example", ("zoë.example",), "CN=x", NOW, NOW, "1", "00")
    payload = Payload("pem", (CHAIN,))
    monkeypatch.setattr(render, "boundary", lambda: "=20")
    for parts in (None, render.PartCache()):
        data = render.render(target("a"), facts, payload, "<id@example.com>", NOW, parts=parts).data
        assert b"\r\n--=20\r\n" in data  # the signature line, in the text part
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        assert parsed.get_boundary() not in (None, "=20")
        text, attached = list(parsed.iter_parts())
        assert text.get_content().replace("\r\n", "\n").endswith('\n-- \ncertbot-smtp-dist, for target "a"\n')
        assert attached.get_payload(decode=True) == CHAIN.data


def test_the_runs_header_registry_makes_each_header_class_once() -> None:
    """HeaderRegistry makes a new class per header set; the run's registry makes one per name (any case) and
    forgets it when the name is mapped to another class, as HeaderRegistry.map_to_type is documented to do."""
    from email.headerregistry import UnstructuredHeader

    registry = render.PartCache().policy.header_factory
    assert registry["To"] is registry["to"] is registry["TO"]
    assert registry["To"] is not registry["Cc"] and issubclass(registry["To"], email.headerregistry.AddressHeader)
    registry.map_to_type("to", UnstructuredHeader)
    assert issubclass(registry["To"], UnstructuredHeader)
    assert email.policy.SMTP.header_factory["To"] is not email.policy.SMTP.header_factory["To"]  # the stock one


def test_a_shared_part_is_written_once_a_run_as_the_generator_writes_it() -> None:
    """The run's attachment parts are flattened once (render._Generator); what is kept, and so what every later
    message carries, is what the email package's generator writes for that part under the run's policy."""
    from email.generator import BytesGenerator
    from io import BytesIO

    parts = render.PartCache()
    payload = Payload("pem", (CHAIN, KEY))
    for name in ("a", "b", "c"):
        render.render(target(name), FACTS, payload, f"<{name}@example.com>", NOW, parts=parts)
    assert len(parts.flat) == 2  # one entry a part (and line end), however many messages
    for (ident, linesep), kept in parts.flat.items():
        out = BytesIO()
        BytesGenerator(out, False, policy=parts.policy).flatten(parts.shared[ident], False, linesep)
        assert kept == out.getvalue()
        assert kept in render.render(target("d"), FACTS, payload, "<d@example.com>", NOW, parts=parts).data


def test_what_is_not_a_shared_part_is_written_as_ever() -> None:
    """A part the run did not make, or one written under another policy, is never taken from what was kept."""
    parts = render.PartCache()
    render.render(target("a"), FACTS, Payload("pem", (CHAIN,)), "<a@example.com>", NOW, parts=parts)
    part = parts.attachments[CHAIN]
    twin = render.attachment_part(CHAIN)  # equal, but not the run's own object
    assert twin.as_bytes() == part.as_bytes() and id(twin) not in parts.shared
    kept = len(parts.flat)
    for msg in (twin, part):
        with_parts = render._flatten(msg, parts)  # the part's own policy is not the run's: written as ever
        assert with_parts == msg.as_bytes()
    assert len(parts.flat) == kept


@pytest.mark.parametrize("address", ["not an address", "robot@example.com@other", "a@[bad"])
def test_a_sender_that_cannot_be_made_fails_every_target_as_it_fails_alone(address: str) -> None:
    """The From address is made once a run for the targets that share it (render.sender): one that cannot be
    made is never kept, and raises for every target what it raises rendered alone."""
    import dataclasses

    t = dataclasses.replace(target("a"), from_address=address)
    payload = Payload("pem", (CHAIN,))
    with pytest.raises(Exception) as alone:  # noqa: PT011 (the email package's own, whichever it is)
        render.render(t, FACTS, payload, "<1@example.com>", NOW)
    parts = render.PartCache()
    for _ in range(2):
        with pytest.raises(type(alone.value)) as shared:
            render.render(t, FACTS, payload, "<1@example.com>", NOW, parts=parts)
        assert str(shared.value) == str(alone.value)
    assert parts.addresses == {}


def test_targets_sharing_a_sender_share_its_address_and_the_rest_of_the_text() -> None:
    """One Address a sender and one set of body fields a (certificate, payload, findings) for the run; each
    text part still names its own target."""
    parts = render.PartCache()
    payload = Payload("pem", (CHAIN,))
    data = {name: render.render(target(name), FACTS, payload, f"<{name}@example.com>", NOW, findings=FINDINGS,
                                parts=parts).data for name in ("a", "b")}
    assert len(parts.addresses) == 1 and len(parts.bodies) == 1
    for name in data:
        text = next(iter(email.message_from_bytes(data[name], policy=email.policy.default).iter_parts()))
        content = text.get_content().replace("\r\n", "\n")
        assert content.endswith(f'for target "{name}"\n')
        assert render.body(target(name), FACTS, payload, FINDINGS) == content


@given(st.text(st.sampled_from("ab .=-\r\n\té\udcff"), max_size=40))
def test_a_text_is_written_with_the_line_ends_the_generator_writes(text: str) -> None:
    """render._Generator writes a text part's lines in one piece (as email.generator's Generator._write_lines
    writes them one by one: every CRLF, CR or LF made the policy's line end); the same bytes, whatever the text."""
    from email.generator import BytesGenerator
    from io import BytesIO

    parts = render.PartCache()
    msg = EmailMessage(policy=parts.policy)
    msg["Content-Type"] = "text/plain"
    msg.set_payload(text)
    out = BytesIO()
    try:
        BytesGenerator(out, mangle_from_=False, policy=parts.policy).flatten(msg, unixfrom=False)
    except UnicodeEncodeError as exc:  # what the generator makes of such a text, the same both ways
        with pytest.raises(UnicodeEncodeError) as ours:
            render._flatten(msg, parts)
        assert str(ours.value) == str(exc)
        return
    assert render._flatten(msg, parts) == out.getvalue()


ATOM = st.text(st.sampled_from("abcXYZ019_-"), min_size=1, max_size=30)
PLAIN_IDS = st.builds(lambda left, right: f"<{'.'.join(left)}@{'.'.join(right)}>",
                      st.lists(ATOM, min_size=1, max_size=3), st.lists(ATOM, min_size=1, max_size=3))
OTHER_IDS = st.text(st.characters(min_codepoint=32, max_codepoint=0x24FF),
                    max_size=70).map(lambda s: f"<{s}>") | st.text(max_size=20)


@given(PLAIN_IDS | OTHER_IDS)
def test_every_message_id_is_written_as_the_email_package_writes_it(message_id: str) -> None:
    """A plain msg-id that fits its line is written without the email package's parse when the run shares its
    work (render._build); the bytes are those of the parsed header, long, odd or non-ASCII ones parsed as ever."""
    t, payload = target("a"), Payload("pem", (CHAIN,))

    def outcome(parts: render.PartCache | None) -> object:
        try:
            return exactly(t, payload, message_id, 5, parts)
        except Exception as exc:  # noqa: BLE001 - the email package's own, for odd ids: the same both ways
            return type(exc), str(exc)

    assert outcome(render.PartCache()) == outcome(None)


LINES = st.lists(st.text(st.sampled_from("ab =.\t\u00e9\u4e2d\u20ac"), max_size=110), max_size=16).map("\n".join)


@example("\n".join(["\u4e2d" * 40] * 12))  # a sniff shorter in base64
@example("\n".join(["a" * 100] * 12))  # in quoted-printable
@given(LINES)
def test_a_text_part_has_the_encoding_set_content_picks(text: str) -> None:
    """render._text_cte picks once a run what set_content's heuristic picks from a text's first 10 lines: the text
    part is the same, byte for byte, whether set_content picks itself or is told (a second text from the memory)."""
    parts = render.PartCache()
    for _ in range(2):
        told, picked = EmailMessage(policy=parts.policy), EmailMessage(policy=parts.policy)
        told.set_content(text, charset="utf-8", cte=render._text_cte(text, parts))
        picked.set_content(text, charset="utf-8")
        assert told["Content-Transfer-Encoding"] == picked["Content-Transfer-Encoding"]
        assert told.as_bytes() == picked.as_bytes()
