"""relaycert.diagnose on certificates built here: the chain a relay sent (Python 3.13+ tells it; before, the leaf
alone), anchors looked up in a hashed directory or a bundle (anchors.Store), names shown bounded."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from support import pki

from certbot_smtp_dist._internal import anchors, relaycert

NOW = dt.datetime.now(dt.timezone.utc)


def der(issued: pki.Issued) -> bytes:
    return issued.cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture
def chain() -> tuple[pki.Issued, pki.Issued, pki.Issued]:
    root = pki.make_ca("relaycert-unit root")
    intermediate = pki.issue(root, common_name="relaycert-unit intermediate", is_ca=True)
    return root, intermediate, pki.issue(intermediate, sans=("relay.example",))


def hashed(tmp_path: Path, ca: pki.Issued) -> anchors.Store:
    """A store that is a c_rehash directory only (no bundle): what get_ca_certs() lists none of until looked up."""
    directory = tmp_path / "capath"
    directory.mkdir()
    digest = hashlib.sha1(anchors.canonical(ca.cert.subject.public_bytes())).digest()
    (directory / f"{int.from_bytes(digest[:4], 'little'):08x}.0").write_bytes(ca.cert_pem())
    return anchors.Store("the system trust store", capaths=(directory,))


def bundle(tmp_path: Path, *cas: pki.Issued) -> anchors.Store:
    return anchors.Store("tls_ca_file", cafile=pki.write_pem(tmp_path / "ca.pem", *cas))


def test_an_issuer_in_a_hashed_directory_is_no_missing_intermediate(tmp_path: Path) -> None:
    root = pki.make_ca("relaycert-unit root")
    leaf = pki.issue(root, sans=("relay.example",))
    stores = [bundle(tmp_path, pki.make_ca("someone else")), hashed(tmp_path, root)]
    found = relaycert.diagnose(der(leaf), (), stores, "relay.example", False, NOW)
    assert found is not None and found.host_matches
    assert not any("missing intermediate" in p for p in found.problems), found.problems
    assert any("cannot name" in p for p in found.problems), found.problems
    missing = relaycert.diagnose(der(leaf), (), stores[:1], "relay.example", False, NOW)
    assert missing is not None and any("missing intermediate" in p for p in missing.problems), missing.problems


def test_an_anchor_of_the_same_name_but_another_key_is_no_anchor(
        tmp_path: Path, chain: tuple[pki.Issued, pki.Issued, pki.Issued]) -> None:
    """A CA re-keyed under the same name (tls_ca_file still holds its old certificate), or an impostor: the anchor
    of that name did not sign. That was reported as a missing intermediate "not a trust anchor here", telling the
    operator to have the relay send a chain (no help) or to name a root they had named already."""
    root, intermediate, leaf = chain
    direct = pki.issue(root, sans=("relay.example",))
    impostor = pki.make_ca("relaycert-unit root")
    stores = [bundle(tmp_path, pki.make_ca("someone else")), hashed(tmp_path, impostor)]
    found = relaycert.diagnose(der(direct), (), stores, "relay.example", False, NOW)
    assert found is not None and len(found.problems) == 1, found.problems
    assert "the system trust store holds an anchor named CN=relaycert-unit root" in found.problems[0]
    assert "did not sign the relay's certificate" in found.problems[0], found.problems
    assert "missing intermediate" not in found.problems[0], found.problems
    # Python 3.13+: the intermediate sent, and it is the one the anchor of that name did not sign.
    sent = relaycert.diagnose(der(leaf), (der(leaf), der(intermediate)), stores, "relay.example", False, NOW)
    assert sent is not None and len(sent.problems) == 1, sent.problems
    assert "did not sign CN=relaycert-unit intermediate" in sent.problems[0], sent.problems


def test_a_sent_chain_that_reaches_an_anchor_names_only_the_host(
        tmp_path: Path, chain: tuple[pki.Issued, pki.Issued, pki.Issued]) -> None:
    """Python 3.13+: leaf and intermediate sent, the root an anchor; refused for the host name alone. The chain
    was said not to end at a trust anchor whenever the leaf's issuer had been sent."""
    root, intermediate, leaf = chain
    found = relaycert.diagnose(der(leaf), (der(leaf), der(intermediate)), [hashed(tmp_path, root)],
                               "other.example", False, NOW)
    assert found is not None and found.chain_length == 2
    assert len(found.problems) == 1 and "not among the certificate's names" in found.problems[0], found.problems


def test_a_sent_chain_to_no_anchor_and_an_omitted_intermediate(
        tmp_path: Path, chain: tuple[pki.Issued, pki.Issued, pki.Issued]) -> None:
    _, intermediate, leaf = chain
    stores = [bundle(tmp_path, pki.make_ca("someone else"))]
    sent = relaycert.diagnose(der(leaf), (der(leaf), der(intermediate)), stores, "relay.example", False, NOW)
    assert sent is not None and any("does not end at a trust anchor" in p for p in sent.problems), sent.problems
    # The relay sent its leaf alone (a known chain): the missing intermediate is named even beside a host problem.
    alone = relaycert.diagnose(der(leaf), (der(leaf),), stores, "other.example", False, NOW)
    assert alone is not None and len(alone.problems) == 2, alone.problems
    assert "missing intermediate" in alone.problems[1] and "likely cause" not in alone.problems[1]
    assert "CN=relaycert-unit intermediate" in alone.problems[1]


def test_many_long_sans_are_listed_bounded_with_their_count(tmp_path: Path) -> None:
    root = pki.make_ca("relaycert-unit root")
    leaf = pki.issue(root, common_name="relay", sans=[f"n{i}.{'x' * 100}.example" for i in range(500)])
    found = relaycert.diagnose(der(leaf), (), [hashed(tmp_path, root)], "other.example", False, NOW)
    assert found is not None and len(found.sans) == relaycert.MAX_SANS and found.sans_total == 500
    assert found.to_json(NOW)["sans_total"] == 500
    line = found.shown_sans()
    assert len(line) <= relaycert.LISTED_CHARS + 40 and line.endswith(" more"), line
    assert len(found.problems[0]) < relaycert.LISTED_CHARS + 200, found.problems
