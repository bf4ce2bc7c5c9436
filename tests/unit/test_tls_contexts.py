"""The relay's TLS client context is made once per trust configuration and process, and read again when the
`tls_ca_file` it trusts is replaced; after STARTTLS the client acknowledges the relay's session tickets at once
(issue 16: the system store load and a 40 ms delayed-ACK stall per session)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from pathlib import Path

import pytest
from support.pki import relay_certs

from certbot_smtp_dist._internal import transport
from certbot_smtp_dist.errors import ErrorCode
from certbot_smtp_dist.model import AuthMethod, Failure, Phase, Target, TlsMode


def target(ca_file: Path | None, tls_mode: TlsMode = TlsMode.STARTTLS, skip_verify: bool = False) -> Target:
    return Target("t", "relay.test", 587, tls_mode, skip_verify, ca_file, AuthMethod.NONE, None, None, 30.0,
                  "certbot@example.com", None, ("ops@example.com",), (), (), "pem", None, None, ())


def test_runs_in_one_process_share_the_context_of_one_trust_configuration(tmp_path: Path) -> None:
    ca = relay_certs(tmp_path).ca_file
    first = transport.TlsContexts().get(target(ca))
    assert first is not None
    assert transport.TlsContexts().get(target(ca)) is first  # a second run: no second load of the system store
    assert transport.TlsContexts().get(dataclasses.replace(target(ca), name="other", port=465)) is first


def test_each_trust_configuration_has_its_own_context(tmp_path: Path) -> None:
    ca = relay_certs(tmp_path).ca_file
    contexts = transport.TlsContexts()
    verified, unverified, system = contexts.get(target(ca)), contexts.get(target(ca, skip_verify=True)), \
        contexts.get(target(None))
    assert verified is not None and unverified is not None and system is not None
    assert len({id(verified), id(unverified), id(system)}) == 3
    assert unverified.verify_mode.name == "CERT_NONE" and verified.check_hostname
    assert contexts.get(target(ca, TlsMode.PLAINTEXT)) is None


def test_a_replaced_anchor_file_is_read_again(tmp_path: Path) -> None:
    ca = relay_certs(tmp_path / "a").ca_file
    before = transport.TlsContexts().get(target(ca))
    replacement = tmp_path / "new.pem"
    replacement.write_bytes(relay_certs(tmp_path / "b").ca_file.read_bytes())
    os.replace(replacement, ca)  # how a CA file is updated: a new inode under the same name
    after = transport.TlsContexts().get(target(ca))
    assert after is not None and after is not before


def test_a_missing_anchor_is_an_error_every_time(tmp_path: Path) -> None:
    missing = tmp_path / "gone.pem"
    for _ in range(2):
        with pytest.raises(OSError):
            transport.TlsContexts().get(target(missing))


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux only")
def test_quick_acknowledgement_is_asked_for_on_the_clients_socket() -> None:
    calls: list[tuple[int, int, int]] = []

    class Sock:
        def setsockopt(self, level: int, option: int, value: int) -> None:
            calls.append((level, option, value))

    class Transport:
        def get_extra_info(self, name: str) -> object:
            return Sock() if name == "socket" else None

    class Client:
        transport = Transport()

    async def run() -> list[tuple[int, int, int]]:
        transport._ack_promptly(Client())
        before = list(calls)  # not yet: the command about to be written would turn delayed ACKs back on
        await asyncio.sleep(0)
        return before

    assert asyncio.run(run()) == []
    assert calls == [(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)]


def test_a_prefetched_context_is_the_one_get_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy starts loading the trust store on a thread (prefetch) while it reads the certificate; get() waits for
    that thread and hands out what it built, with the same policy, and loads nothing twice."""
    ca = relay_certs(tmp_path).ca_file
    built: list[str] = []
    real = transport.client_tls_context

    def counted(t: Target, whole_store: bool = True) -> object:
        built.append(t.name)
        return real(t, whole_store)

    monkeypatch.setattr(transport, "client_tls_context", counted)
    monkeypatch.setattr(transport.TlsContexts, "_made", {})
    transport.TlsContexts.prefetch([target(ca), target(ca, TlsMode.PLAINTEXT), dataclasses.replace(target(ca),
                                                                                                   name="u")])
    got = transport.TlsContexts().first(target(ca))
    assert got is not None and got.check_hostname and got.verify_mode.name == "CERT_REQUIRED"
    assert got.minimum_version >= transport.ssl.TLSVersion.TLSv1_2
    assert built == ["t"]  # one per trust configuration, none for plaintext, none again in get()
    transport.TlsContexts.prefetch([target(ca)])  # already made: no thread, nothing built
    assert built == ["t"]


def test_a_prefetch_that_fails_leaves_the_error_to_get(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport.TlsContexts, "_made", {})
    missing = tmp_path / "gone.pem"
    transport.TlsContexts.prefetch([target(missing)])
    with pytest.raises(OSError):
        transport.TlsContexts().first(target(missing))


def _system_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hashed: bool) -> int:
    """SSL_CERT_DIR and SSL_CERT_FILE pointed at a store of our own: a directory (with a c_rehash name in it when
    `hashed`) and, in it, a bundle of three roots. Returns the bundle's count."""
    directory = tmp_path / "certs"
    directory.mkdir()
    (directory / ("0123abcd.0" if hashed else "readme.txt")).write_bytes(b"")
    bundle = directory / "ca-certificates.crt"  # in the directory, as update-ca-certificates writes it
    bundle.write_bytes(b"".join(relay_certs(tmp_path / f"ca{i}").ca_file.read_bytes() for i in range(3)))
    monkeypatch.setenv("SSL_CERT_DIR", str(directory))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.setattr(transport.TlsContexts, "_made", {})
    return 3


def test_the_first_look_parses_no_bundle_where_the_store_has_a_hashed_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundle is what costs (~30 ms, a quarter of a cold deploy's instructions); the directory is looked up
    lazily, by subject, when a chain is verified."""
    in_bundle = _system_store(tmp_path, monkeypatch, hashed=True)
    contexts = transport.TlsContexts()
    first, whole = contexts.first(target(None)), contexts.get(target(None))
    assert first is not None and whole is not None and first is not whole
    assert first.cert_store_stats()["x509"] == 0 and whole.cert_store_stats()["x509"] == in_bundle
    assert first.check_hostname and first.verify_mode.name == "CERT_REQUIRED"
    assert first.minimum_version >= transport.ssl.TLSVersion.TLSv1_2
    ca = relay_certs(tmp_path / "extra").ca_file
    with_file = contexts.first(target(ca))
    assert with_file is not None and with_file.cert_store_stats()["x509"] == 1  # tls_ca_file, read now


def test_without_a_hashed_directory_the_first_look_is_the_whole_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fedora's /etc/pki/tls/certs holds bundles, no c_rehash names: nothing stands in for the bundle there."""
    in_bundle = _system_store(tmp_path, monkeypatch, hashed=False)
    first = transport.TlsContexts().first(target(None))
    assert first is not None and first.cert_store_stats()["x509"] == in_bundle
    assert not transport.TlsContexts.second_look(target(None), _refused(20))


def _refused(verify_code: int | None, code: ErrorCode = ErrorCode.SMTP_TLS) -> Failure:
    return Failure(code, Phase.TLS, "relay certificate not trusted", verify_code=verify_code)


def test_only_a_refused_certificate_is_judged_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _system_store(tmp_path, monkeypatch, hashed=True)
    second_look = transport.TlsContexts.second_look
    assert second_look(target(None), _refused(20))  # unable to get local issuer certificate
    assert second_look(target(None), _refused(10))  # expired: a CA of the chain may be, which another replaces
    assert not second_look(target(None), _refused(62))  # host name mismatch: the leaf's own, no anchor changes it
    assert not second_look(target(None), _refused(64))  # IP address mismatch, likewise
    assert not second_look(target(None), None)  # delivered
    assert not second_look(target(None), _refused(None))  # a handshake that failed before any certificate
    assert not second_look(target(None), _refused(20, ErrorCode.SMTP_AUTH))
    assert not second_look(target(None, skip_verify=True), _refused(20))  # nothing was verified


def test_a_bundle_kept_apart_from_the_hashed_directory_gets_no_first_look(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SSL_CERT_FILE naming a bundle elsewhere (a certifi copy): its certificates may shadow the directory's anchors
    in the whole store, so the first look is the whole store, and nothing is judged twice."""
    in_bundle = _system_store(tmp_path, monkeypatch, hashed=True)
    apart = tmp_path / "elsewhere.pem"
    apart.write_bytes((tmp_path / "certs" / "ca-certificates.crt").read_bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(apart))
    first = transport.TlsContexts().first(target(None))
    assert first is not None and first.cert_store_stats()["x509"] == in_bundle
    assert not transport.TlsContexts.second_look(target(None), _refused(20))


def test_without_a_bundle_the_first_look_is_the_whole_store_and_final(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _system_store(tmp_path, monkeypatch, hashed=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-bundle.pem"))
    first = transport.TlsContexts().first(target(None))
    assert first is not None and first.cert_store_stats()["x509"] == 0
    assert not transport.TlsContexts.second_look(target(None), _refused(20))  # the directory was all there is


def test_an_unverified_context_parses_no_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tls_skip_verify consults no anchor, so neither of its contexts pays for the bundle."""
    _system_store(tmp_path, monkeypatch, hashed=True)
    contexts = transport.TlsContexts()
    for made in (contexts.first(target(None, skip_verify=True)), contexts.get(target(None, skip_verify=True))):
        assert made is not None and made.verify_mode.name == "CERT_NONE"
        assert made.cert_store_stats()["x509"] == 0
