"""A delivery's first session trusts the system store's c_rehash directory alone, looked up by subject, without
parsing the store's bundle (tlspolicy.verified_context with whole_store=False; issue 16: the bundle is a quarter of
a cold deploy's instructions). A relay certificate refused under it is judged again under the whole store, so what
is trusted is exactly what the whole store trusts: an anchor only in the bundle still works, nothing else does."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import ci, pki
from support.deployenv import DeployEnv, relay_target
from support.pki import LineagePaths, RelayPKI

SECOND_LOOK = "judging it again under the whole store"


@pytest.fixture(autouse=True)
def _fresh_tls_contexts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Contexts are made once per process (transport.TlsContexts): each test starts with none, under its own store."""
    from certbot_smtp_dist._internal import transport

    monkeypatch.setattr(transport.TlsContexts, "_made", {})
    yield


def _store(tmp_path: Path, directory: list[pki.Issued], bundle: list[pki.Issued], hashed: bool = True,
           bundle_inside: bool = True) -> dict[str, str]:
    """A system store: a directory of `directory` (plus an unrelated root, so it is never empty), with the links
    update-ca-certificates makes (`openssl rehash`) when `hashed`; and a bundle of `bundle`, written afterwards in
    that directory as update-ca-certificates writes ca-certificates.crt (`bundle_inside`), else beside it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        ci.unavailable("openssl (the command) is needed to build a hashed certificate directory")
    where = tmp_path / "store"
    (where / "certs").mkdir(parents=True)
    for i, ca in enumerate([pki.make_ca("first-look unrelated root"), *directory]):
        pki.write_pem(where / "certs" / f"anchor-{i}.pem", ca)
    if hashed:
        subprocess.run([openssl, "rehash", str(where / "certs")], check=True, capture_output=True, timeout=60)
    bundle_file = pki.write_pem(where / ("certs" if bundle_inside else ".") / "bundle.pem", *bundle)
    return {"SSL_CERT_DIR": str(where / "certs"), "SSL_CERT_FILE": str(bundle_file)}


def _deploy(denv: DeployEnv, lineage: LineagePaths, relay: Any, env: dict[str, str]) -> Any:
    table = relay_target(relay)
    del table["tls_ca_file"]  # the relay's CA only where the store puts it
    denv.write_config({"archive": table})
    return denv.run("deploy", "--lineage", str(lineage.live_dir), "--json", "-v", extra_env=env)


@pytest.mark.parametrize("mode", ["starttls", "smtps"])
@pytest.mark.parametrize(("where", "hashed", "sessions"), [
    ("directory", True, 1),  # found by the first look: one session
    ("bundle", True, 2),  # refused by the first look, trusted by the whole store: a second session delivers
    ("bundle", False, 1),  # no c_rehash directory: the whole store from the start
    ("bundle apart", True, 1),  # a bundle outside the hashed directory (SSL_CERT_FILE): likewise
])
def test_an_anchor_of_the_whole_store_is_trusted_wherever_it_is(
        denv: DeployEnv, lineage: LineagePaths, relay_factory: Callable[..., Any], relay_pki: RelayPKI,
        tmp_path: Path, where: str, hashed: bool, sessions: int, mode: str) -> None:
    relay = relay_factory(mode)
    env = _store(tmp_path, [relay_pki.ca] if where == "directory" else [],
                 [relay_pki.ca] if where.startswith("bundle") else [], hashed, bundle_inside=where != "bundle apart")

    run = _deploy(denv, lineage, relay, env)

    assert run.returncode == 0, run.stdout + run.stderr
    assert run.target("archive")["status"] == "delivered", run.json
    assert len(relay.messages) == 1
    assert relay.connections == sessions, run.stderr
    assert (SECOND_LOOK in run.stderr) is (sessions == 2), run.stderr


@pytest.mark.parametrize("mode", ["starttls", "smtps"])
def test_an_anchor_in_neither_is_refused_after_the_second_look(
        denv: DeployEnv, lineage: LineagePaths, relay_factory: Callable[..., Any], tmp_path: Path, mode: str) -> None:
    """The failure is the whole store's: the same SMTP_TLS refusal as before the first look existed."""
    relay = relay_factory(mode)
    env = _store(tmp_path, [], [pki.make_ca("first-look other root")])

    run = _deploy(denv, lineage, relay, env)

    delivery = run.target("archive")
    assert delivery["status"] != "delivered" and delivery["error_code"] == "SMTP_TLS", run.json
    assert "relay certificate not trusted" in delivery["detail"], delivery
    assert relay.connections == 2 and not relay.messages
    assert SECOND_LOOK in run.stderr


@pytest.mark.parametrize(("cert", "sessions"), [("expired", 2), ("wrong_host", 1)])
def test_a_refusal_the_whole_store_could_change_is_judged_again(
        denv: DeployEnv, lineage: LineagePaths, relay_factory: Callable[..., Any], relay_pki: RelayPKI,
        tmp_path: Path, cert: str, sessions: int) -> None:
    """A refused chain is judged again (more anchors may build another one); a host name mismatch is the leaf's
    own and is final at once. Either way the verdict is the refusal."""
    relay = relay_factory("starttls", cert=cert)
    env = _store(tmp_path, [relay_pki.ca], [])

    run = _deploy(denv, lineage, relay, env)

    delivery = run.target("archive")
    assert delivery["error_code"] == "SMTP_TLS" and "relay certificate not trusted" in delivery["detail"], delivery
    assert relay.connections == sessions and not relay.messages
    assert (SECOND_LOOK in run.stderr) is (sessions == 2)


def _whole_store_verdict(relay: Any, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """What OpenSSL's whole store (bundle and directory, as `check` uses it) says of the smtps relay's certificate,
    from a real handshake in this process."""
    import socket
    import ssl

    from certbot_smtp_dist._internal.tlspolicy import verified_context

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ctx = verified_context(None)
    with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                return "trusted"
        except ssl.SSLCertVerificationError as exc:
            return f"refused {exc.verify_code}"


def test_a_directory_anchor_the_bundle_shadows_is_refused_as_the_whole_store_refuses_it(
        denv: DeployEnv, lineage: LineagePaths, relay_factory: Callable[..., Any], relay_pki: RelayPKI,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bundle kept apart from the directory (SSL_CERT_FILE naming a stale certifi copy, say) holds another
    certificate under the relay CA's name (a root re-keyed or re-issued under the same name): OpenSSL's whole store
    then never asks the directory for that name and refuses the relay, so deploy must too. A bundle outside the
    hashed directory gets no first look (tlspolicy._first_look): the whole store from the first session."""
    relay = relay_factory("smtps")
    namesake = pki.make_ca(relay_pki.ca.cert.subject.rfc4514_string().removeprefix("CN="))
    assert namesake.cert.subject == relay_pki.ca.cert.subject
    env = _store(tmp_path, [relay_pki.ca], [namesake], bundle_inside=False)
    assert _whole_store_verdict(relay, env, monkeypatch) == "refused 20"  # unable to get local issuer certificate
    before = relay.connections  # the verdict's own handshake

    run = _deploy(denv, lineage, relay, env)

    delivery = run.target("archive")
    assert delivery["status"] != "delivered" and delivery["error_code"] == "SMTP_TLS", run.json
    assert not relay.messages
    assert relay.connections - before == 1 and SECOND_LOOK not in run.stderr  # the whole store at once


class _Issued(set[str]):
    """The relay accepts exactly the tokens the endpoint issued (a live view of its list)."""

    def __init__(self, issued: list[str]) -> None:
        super().__init__()
        self.issued = issued

    def __contains__(self, token: object) -> bool:
        return token in self.issued


@pytest.mark.parametrize("mode", ["starttls", "smtps"])
def test_an_oauth_target_judged_again_asks_for_its_token_once(
        denv: DeployEnv, lineage: LineagePaths, relay_pki: RelayPKI, tmp_path: Path, mode: str) -> None:
    """The token is fetched before the first session and serves the second: one request to the endpoint, the
    token sent once, under the whole store's verified TLS, and never in the clear."""
    from support.relay import Bearer, Relay
    from support.spellings import leaks
    from support.tokenendpoint import ClientCredentials, TokenEndpoint

    secret = "cs~first-look-client-secret"
    grant = ClientCredentials("client-id-first-look", secret, "https://outlook.office365.com/.default")
    env = _store(tmp_path, [], [relay_pki.ca])
    with TokenEndpoint(relay_pki, grant) as endpoint:
        bearer = Bearer("certbot@example.com", _Issued(endpoint.tokens))
        with Relay(relay_pki, mode=mode, bearer=bearer) as relay:
            denv.set_credential("m365-app", "smtp_oauth2_client_secret", secret)
            table = relay_target(relay, auth_method="xoauth2", username="certbot@example.com",
                                 oauth2_token_url=endpoint.url, oauth2_client_id=grant.client_id,
                                 oauth2_scope=grant.scope, oauth2_client_secret_credential="m365-app",
                                 oauth2_ca_file=str(endpoint.pki.ca_file), timeout=10)
            del table["tls_ca_file"]
            denv.write_config({"m365": table})
            run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json", "-vv", extra_env=env)

            assert run.target("m365")["status"] == "delivered", run.json
            assert endpoint.requests == 1 and relay.connections == 2 and SECOND_LOOK in run.stderr
            [message] = relay.wait_for_messages(1)
            assert message.tls and bearer.seen is not None and len(bearer.seen) == 1
            assert {s: leaks(s, run.stdout + run.stderr) for s in (secret, endpoint.tokens[0])} == {
                secret: [], endpoint.tokens[0]: []}
