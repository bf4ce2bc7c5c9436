"""OAuth 2.0 end to end on loopback: an HTTPS token endpoint and an aiosmtpd relay that speaks AUTH XOAUTH2."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.deployenv import DeployEnv, Run, relay_target
from support.pki import LineagePaths, RelayPKI
from support.relay import Bearer, Relay
from support.spellings import leaks
from support.tokenendpoint import (
    Answer,
    ClientCredentials,
    ServiceAccountGrant,
    TokenEndpoint,
    service_account_key,
)

SECRET = "cs~Oauth2-client-secret-never-leaks"
MAILBOX = "certbot@example.com"
GRANT = ClientCredentials("client-id-1234", SECRET, "https://outlook.office365.com/.default")


@pytest.fixture
def endpoint(relay_pki: RelayPKI) -> Iterator[TokenEndpoint]:
    with TokenEndpoint(relay_pki, GRANT) as ep:
        yield ep


class _Tokens(set[str]):
    """The relay accepts exactly the tokens the endpoint issued, as it would ask the identity provider."""

    def __init__(self, endpoint: TokenEndpoint) -> None:
        super().__init__()
        self.endpoint = endpoint

    def __contains__(self, token: object) -> bool:
        return token in self.endpoint.tokens


@pytest.fixture
def bearer(endpoint: TokenEndpoint) -> Bearer:
    return Bearer(MAILBOX, _Tokens(endpoint))


@pytest.fixture
def relay(relay_pki: RelayPKI, bearer: Bearer) -> Iterator[Relay]:
    with Relay(relay_pki, mode="starttls", bearer=bearer) as r:
        yield r


def oauth_target(relay: Relay, endpoint: TokenEndpoint, **overrides: Any) -> dict[str, Any]:
    table = relay_target(relay, auth_method="xoauth2", username=MAILBOX, oauth2_token_url=endpoint.url,
                         oauth2_client_id=GRANT.client_id, oauth2_scope=GRANT.scope,
                         oauth2_client_secret_credential="m365-app", oauth2_ca_file=str(endpoint.pki.ca_file),
                         timeout=10)
    return {**table, **overrides}


def deploy(denv: DeployEnv, lineage: LineagePaths, *extra: str) -> Run:
    return denv.run("deploy", "--lineage", str(lineage.live_dir), "--json", "-vv", *extra)


def configure(denv: DeployEnv, relay: Relay, endpoint: TokenEndpoint) -> None:
    denv.set_credential("m365-app", "smtp_oauth2_client_secret", SECRET)
    denv.write_config({"m365": oauth_target(relay, endpoint)})


def at_rest(denv: DeployEnv) -> str:
    """Every file the runs left behind, except the encrypted credentials and the master key."""
    texts = []
    for path in sorted(denv.root.rglob("*")):
        if path.is_file() and path.suffix != ".cred" and path.name != "master.key":
            texts.append(path.read_bytes().decode("latin-1"))
    return "\n".join(texts)


def no_leak(run: Run, denv: DeployEnv, secrets: list[str]) -> None:
    text = run.stdout + run.stderr + at_rest(denv)
    assert {s: leaks(s, text) for s in secrets} == {s: [] for s in secrets}


def test_client_credentials_deliver_with_xoauth2(denv: DeployEnv, lineage: LineagePaths, relay: Relay,
                                                 endpoint: TokenEndpoint, bearer: Bearer) -> None:
    configure(denv, relay, endpoint)
    run = deploy(denv, lineage)
    assert run.returncode == 0, run.stderr
    assert run.target("m365")["status"] == "delivered"
    assert endpoint.requests == 1 and endpoint.problems == []
    [message] = relay.wait_for_messages(1)
    assert message.auth_user == MAILBOX and message.tls
    # The exact XOAUTH2 initial response (RFC 4954 §4 initial response; Google's and Microsoft's format).
    assert bearer.seen == [f"user={MAILBOX}\x01auth=Bearer {endpoint.tokens[0]}\x01\x01".encode()]
    assert "AUTH XOAUTH2 ***" in run.stderr
    no_leak(run, denv, [SECRET, endpoint.tokens[0]])


def test_refused_grant_is_smtp_auth_and_the_relay_is_never_contacted(
        denv: DeployEnv, lineage: LineagePaths, relay: Relay, endpoint: TokenEndpoint) -> None:
    configure(denv, relay, endpoint)
    endpoint.answer = Answer(401, {"error": "invalid_client",
                                   "error_description": f"AADSTS7000215: invalid secret {SECRET}"})
    run = deploy(denv, lineage)
    assert run.returncode == 69, run.stderr
    failed = run.target("m365")
    assert failed["status"] == "failed" and failed["error_code"] == "SMTP_AUTH"
    assert "invalid_client" in failed["detail"] and "AADSTS7000215" in failed["detail"]
    assert relay.connections == 0 and relay.messages == []
    no_leak(run, denv, [SECRET])


@pytest.mark.parametrize("token", ["t\u00f6ken-from-the-endpoint", "tok abc.def", "tok\x01auth=Bearer injected"],
                         ids=["non-ascii", "space", "sasl-separator"])
def test_a_token_outside_the_b64token_syntax_is_smtp_auth_and_never_sent(
        denv: DeployEnv, lineage: LineagePaths, relay: Relay, endpoint: TokenEndpoint, token: str) -> None:
    """RFC 6750 §2.1: the endpoint's token is refused before the relay is dialled, as a failure a retry cannot
    cure (not spooled as transient), never quoted, never cached."""
    configure(denv, relay, endpoint)
    endpoint.answer = Answer(200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600})
    run = deploy(denv, lineage)
    assert run.returncode == 69, run.stderr
    failed = run.target("m365")
    assert (failed["status"], failed["error_code"]) == ("failed", "SMTP_AUTH"), failed
    assert "outside RFC 6750 §2.1's syntax" in failed["detail"] and "not sent to the relay" in failed["detail"]
    assert relay.connections == 0 and relay.messages == [] and cache_files(denv) == []
    retry = denv.run("retry")  # a failed entry is left for a human (exit 69): not asked again
    assert (retry.returncode, endpoint.requests, relay.connections) == (69, 1, 0), retry
    no_leak(run, denv, [SECRET, token])


def test_endpoint_down_is_spooled_and_retry_delivers_once_it_is_back(
        denv: DeployEnv, lineage: LineagePaths, relay: Relay, endpoint: TokenEndpoint) -> None:
    configure(denv, relay, endpoint)
    endpoint.stop()
    run = deploy(denv, lineage)
    assert run.returncode == 75, run.stderr
    failed = run.target("m365")
    assert failed["error_code"] == "SMTP_CONNECT" and "no OAuth 2.0 token" in failed["detail"]
    assert relay.connections == 0
    endpoint.start()  # same port: the spooled target's token URL is valid again
    retry = denv.run("retry", "--json")
    assert retry.returncode == 0, retry.stderr
    assert len(relay.wait_for_messages(1)) == 1 and endpoint.requests == 1
    no_leak(retry, denv, [SECRET, *endpoint.tokens])


def test_endpoint_5xx_is_transient(denv: DeployEnv, lineage: LineagePaths, relay: Relay,
                                   endpoint: TokenEndpoint) -> None:
    configure(denv, relay, endpoint)
    endpoint.answer = Answer(503, {"error": "temporarily_unavailable"})
    run = deploy(denv, lineage)
    assert run.returncode == 75, run.stderr
    assert run.target("m365")["error_code"] == "SMTP_CONNECT" and relay.connections == 0


def test_relay_refusing_the_token_is_smtp_auth_after_the_empty_challenge_answer(
        denv: DeployEnv, lineage: LineagePaths, relay: Relay, endpoint: TokenEndpoint, bearer: Bearer) -> None:
    configure(denv, relay, endpoint)
    bearer.refuse = True
    run = deploy(denv, lineage)
    assert run.returncode == 69, run.stderr
    failed = run.target("m365")
    # 535, not 501: the client answered the 334 error challenge with the empty line XOAUTH2 prescribes.
    assert failed["error_code"] == "SMTP_AUTH" and failed["smtp_code"] == 535
    assert len(relay.auth_attempts) == 1 and relay.messages == []
    no_leak(run, denv, [SECRET, *endpoint.tokens])


def test_token_endpoint_with_an_untrusted_certificate_is_refused(
        denv: DeployEnv, lineage: LineagePaths, relay: Relay, endpoint: TokenEndpoint, tmp_path: Path) -> None:
    denv.set_credential("m365-app", "smtp_oauth2_client_secret", SECRET)
    target = oauth_target(relay, endpoint)
    del target["oauth2_ca_file"]  # the system store does not know the test CA
    denv.write_config({"m365": target})
    run = deploy(denv, lineage)
    assert run.returncode == 75, run.stderr
    assert "certificate" in run.target("m365")["detail"]
    assert endpoint.problems == [] and endpoint.tokens == [] and relay.connections == 0


def test_xoauth2_not_offered_is_smtp_auth(denv: DeployEnv, lineage: LineagePaths, relay_pki: RelayPKI,
                                          endpoint: TokenEndpoint) -> None:
    with Relay(relay_pki, mode="starttls", auth=("u", "p")) as plain_only:
        denv.set_credential("m365-app", "smtp_oauth2_client_secret", SECRET)
        target = oauth_target(plain_only, endpoint)
        del target["password_credential"]
        denv.write_config({"m365": target})
        run = deploy(denv, lineage)
    assert run.returncode == 69, run.stderr
    assert "does not offer AUTH XOAUTH2" in run.target("m365")["detail"]
    no_leak(run, denv, [SECRET, *endpoint.tokens])


def test_credentials_set_stores_a_client_secret(denv: DeployEnv) -> None:
    run = denv.run("credentials", "set", "m365-app", "--type", "smtp_oauth2_client_secret", stdin=SECRET + "\n")
    assert run.returncode == 0, run.stderr
    listed = denv.run("credentials", "list")
    assert "m365-app" in listed.stdout and "smtp_oauth2_client_secret" in listed.stdout
    assert SECRET not in listed.stdout + listed.stderr + run.stdout + run.stderr
    assert base64.b64encode(SECRET.encode()).decode() not in at_rest(denv)


GSA_EMAIL = "certbot-relay@test-project.iam.gserviceaccount.com"


def test_service_account_jwt_bearer_delivers_with_xoauth2(denv: DeployEnv, lineage: LineagePaths,
                                                          relay_pki: RelayPKI) -> None:
    with TokenEndpoint(relay_pki, ClientCredentials("", "", "")) as ep:
        key_json, public = service_account_key(GSA_EMAIL, ep.url)
        ep.expect = ServiceAccountGrant(public, GSA_EMAIL, MAILBOX, "https://mail.google.com/")
        with Relay(relay_pki, mode="smtps", bearer=Bearer(MAILBOX, _Tokens(ep))) as relay:
            stored = denv.run("credentials", "set", "gsa", "--type", "smtp_oauth2_service_account",
                              stdin=key_json + "\n")  # the key file as is: many lines
            assert stored.returncode == 0, stored.stderr
            target = relay_target(relay, auth_method="xoauth2", username=MAILBOX,
                                  oauth2_service_account_credential="gsa", oauth2_ca_file=str(relay_pki.ca_file),
                                  timeout=10)  # token URL and scope: the key's token_uri, Google's mail scope
            denv.write_config({"workspace": target})
            run = deploy(denv, lineage)
            assert run.returncode == 0, run.stderr
            assert ep.problems == [] and ep.requests == 1 and len(ep.assertions) == 1
            [message] = relay.wait_for_messages(1)
            assert message.auth_user == MAILBOX
    private_key = json.loads(key_json)["private_key"]
    no_leak(run, denv, [ep.tokens[0], ep.assertions[0], private_key.splitlines()[1]])


@pytest.mark.parametrize("missing", ["client_email", "private_key", "token_uri"])
def test_credentials_set_refuses_a_service_account_key_without_a_field(denv: DeployEnv, missing: str) -> None:
    key_json, _ = service_account_key(GSA_EMAIL, "https://oauth2.example.net/token")
    doc = json.loads(key_json)
    del doc[missing]
    run = denv.run("credentials", "set", "gsa", "--type", "smtp_oauth2_service_account", stdin=json.dumps(doc))
    assert run.returncode == 65
    assert f"has no {missing}" in run.stderr and "BEGIN PRIVATE KEY" not in run.stderr
    assert "gsa" not in denv.run("credentials", "list").stdout


def test_credentials_set_still_refuses_a_nul_in_a_service_account_key(denv: DeployEnv) -> None:
    key_json, _ = service_account_key(GSA_EMAIL, "https://oauth2.example.net/token")
    run = denv.run("credentials", "set", "gsa", "--type", "smtp_oauth2_service_account",
                   stdin=key_json.replace('"k1"', '"k\x001"'))
    assert run.returncode == 65 and "NUL" in run.stderr


@pytest.mark.parametrize("refuse", [False, True])
def test_oauthbearer_wire_format_and_challenge_answer(denv: DeployEnv, lineage: LineagePaths, relay: Relay,
                                                      endpoint: TokenEndpoint, bearer: Bearer,
                                                      refuse: bool) -> None:
    denv.set_credential("m365-app", "smtp_oauth2_client_secret", SECRET)
    denv.write_config({"m365": oauth_target(relay, endpoint, auth_method="oauthbearer")})
    bearer.refuse = refuse
    run = deploy(denv, lineage)
    # RFC 7628 §3.1: GS2 header, host, port, auth, each ended by ^A.
    assert bearer.seen == [f"n,a={MAILBOX},\x01host=127.0.0.1\x01port={relay.port}\x01auth=Bearer "
                           f"{endpoint.tokens[0]}\x01\x01".encode()]
    assert "AUTH OAUTHBEARER ***" in run.stderr
    if refuse:  # 535, not 501: the client answered the error challenge with a single ^A (RFC 7628 §3.2.3)
        assert run.returncode == 69 and run.target("m365")["smtp_code"] == 535
    else:
        assert run.returncode == 0, run.stderr
        assert relay.wait_for_messages(1)[0].auth_user == MAILBOX
    no_leak(run, denv, [SECRET, endpoint.tokens[0]])


def cache_files(denv: DeployEnv) -> list[Path]:
    return sorted((denv.state_dir / "oauth2").glob("*.token")) if (denv.state_dir / "oauth2").is_dir() else []


def test_a_second_run_uses_the_cached_token(denv: DeployEnv, lineage: LineagePaths, relay: Relay,
                                            endpoint: TokenEndpoint) -> None:
    configure(denv, relay, endpoint)
    first, second = deploy(denv, lineage), deploy(denv, lineage, "--force")
    assert (first.returncode, second.returncode) == (0, 0), second.stderr
    assert endpoint.requests == 1 and len(relay.wait_for_messages(2)) == 2
    [entry] = cache_files(denv)
    assert entry.stat().st_mode & 0o777 == 0o600 and entry.parent.stat().st_mode & 0o777 == 0o700
    no_leak(second, denv, [SECRET, endpoint.tokens[0]])  # the cache holds the token sealed, never in clear


def test_two_targets_sharing_a_grant_ask_once(denv: DeployEnv, lineage: LineagePaths, relay: Relay,
                                              endpoint: TokenEndpoint) -> None:
    denv.set_credential("m365-app", "smtp_oauth2_client_secret", SECRET)
    denv.write_config({"a": oauth_target(relay, endpoint), "b": oauth_target(relay, endpoint, to=["b@example.com"])})
    run = deploy(denv, lineage)
    assert run.returncode == 0, run.stderr
    assert endpoint.requests == 1 and len(relay.wait_for_messages(2)) == 2


def test_a_token_the_relay_refuses_is_dropped_from_the_cache(denv: DeployEnv, lineage: LineagePaths, relay: Relay,
                                                             endpoint: TokenEndpoint, bearer: Bearer) -> None:
    configure(denv, relay, endpoint)
    assert deploy(denv, lineage).returncode == 0 and len(cache_files(denv)) == 1
    bearer.refuse = True
    assert deploy(denv, lineage, "--force").returncode == 69
    assert cache_files(denv) == [] and endpoint.requests == 1
    bearer.refuse = False
    assert deploy(denv, lineage, "--force").returncode == 0
    assert endpoint.requests == 2  # the next run asked again


def test_a_short_lived_token_is_not_cached(denv: DeployEnv, lineage: LineagePaths, relay: Relay,
                                           endpoint: TokenEndpoint) -> None:
    endpoint.expires_in = 299  # less than the 5-minute margin
    configure(denv, relay, endpoint)
    assert deploy(denv, lineage).returncode == 0 and deploy(denv, lineage, "--force").returncode == 0
    assert endpoint.requests == 2 and cache_files(denv) == []


def test_a_dry_run_asks_no_token_and_dials_no_relay(denv: DeployEnv, lineage: LineagePaths, relay: Relay,
                                                    endpoint: TokenEndpoint) -> None:
    configure(denv, relay, endpoint)
    run = deploy(denv, lineage, "--dry-run")
    assert run.returncode == 0, run.stderr
    assert endpoint.requests == 0 and relay.connections == 0
    no_leak(run, denv, [SECRET])


def test_check_fetches_a_token_as_deploy_does_and_sends_no_mail(denv: DeployEnv, relay: Relay,
                                                                endpoint: TokenEndpoint, bearer: Bearer) -> None:
    configure(denv, relay, endpoint)

    run = denv.run("check", "--json", "-vv")

    assert run.returncode == 0, run.stdout + run.stderr
    doc = run.target("m365")
    assert doc["auth"] == "accepted" and "XOAUTH2" in doc["ehlo_after_tls"]["auth"]
    assert endpoint.requests == 1 and relay.auth_successes == 1 and relay.messages == []
    tokens = list(endpoint.tokens)
    assert tokens and {s: leaks(s, run.stdout + run.stderr) for s in (SECRET, *tokens)} == {
        s: [] for s in (SECRET, *tokens)}

    bearer.refuse = True
    refused = denv.run("check", "--json")
    assert refused.returncode == 69 and refused.target("m365")["error_code"] == "SMTP_AUTH"
    assert refused.target("m365")["auth"] == "refused"


def test_waiting_for_another_targets_token_fetch_respects_the_deadline(
        denv: DeployEnv, lineage: LineagePaths, relay: Relay, endpoint: TokenEndpoint) -> None:
    """Two targets share a grant; the endpoint stalls. The second waits for the first one's fetch, but only until
    its own deadline, and never starts a fetch of its own with the full timeout after that wait (which once held
    the run for twice the timeout)."""
    endpoint.stall = 30
    denv.set_credential("m365-app", "smtp_oauth2_client_secret", SECRET)
    denv.write_config({"a": oauth_target(relay, endpoint, timeout=3),
                       "b": oauth_target(relay, endpoint, timeout=3, to=["b@example.com"])})
    started = time.monotonic()
    run = deploy(denv, lineage)
    elapsed = time.monotonic() - started
    assert run.returncode == 75, run.stderr
    details = sorted(run.target(t)["detail"] for t in ("a", "b"))
    assert all(run.target(t)["error_code"] == "SMTP_CONNECT" for t in ("a", "b"))
    # One fetch had the deadline; the other target waited for it, and had nothing left for a fetch of its own.
    waited = [d for d in details if "another target was fetching the same token" in d or "within 0." in d]
    assert len(waited) == 1, details
    assert elapsed < 3 * 2 - 0.5, elapsed  # bounded by the deadline (3 s), with slack; never twice the timeout
    assert relay.connections == 0


def test_a_broken_stored_service_account_key_is_a_credential_problem_not_retried(
        denv: DeployEnv, lineage: LineagePaths, relay: Relay, endpoint: TokenEndpoint) -> None:
    """A key stored before `credentials set` checked keys (or damaged since) can never sign an assertion: SMTP_AUTH,
    a failed target for a human, never SMTP_CONNECT spooled for retry forever; the endpoint is not asked."""
    key_json, _ = service_account_key(GSA_EMAIL, endpoint.url)
    broken = json.dumps({**json.loads(key_json), "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n"})
    store_unchecked(denv, "gsa", "smtp_oauth2_service_account", broken)
    denv.write_config({"workspace": relay_target(
        relay, auth_method="xoauth2", username=MAILBOX, oauth2_service_account_credential="gsa",
        oauth2_ca_file=str(endpoint.pki.ca_file), timeout=10)})
    run = deploy(denv, lineage)
    assert run.returncode == 69, run.stderr
    failed = run.target("workspace")
    assert (failed["status"], failed["error_code"]) == ("failed", "SMTP_AUTH"), failed
    assert "credentials set gsa" in failed["detail"] and "not an unencrypted PEM private key" in failed["detail"]
    assert endpoint.requests == 0 and relay.connections == 0
    assert "AAAA" not in run.stdout + run.stderr


def store_unchecked(denv: DeployEnv, name: str, type_: str, secret: str) -> None:
    """A credential file as a version before today's checks wrote it: the store's own format, no validation."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from certbot_smtp_dist._internal import credentials

    denv.set_credential("unrelated", "smtp_password", "unrelated-password-1")  # makes the master key
    store = credentials.CredentialStore(denv.config_dir, environ={})
    master, data_key = AESGCM(store._master_key(create=False)), AESGCM.generate_key(bit_length=256)
    aad = credentials._aad(name, type_)
    n1, n2 = os.urandom(12), os.urandom(12)
    doc = {"format": 1, "name": name, "type": type_, "cipher": "AES-256-GCM",
           "wrapped_key": credentials._b64(n1 + master.encrypt(n1, data_key, aad)),
           "ciphertext": credentials._b64(n2 + AESGCM(data_key).encrypt(n2, secret.encode(), aad))}
    path = store._path(name)
    path.write_text(json.dumps(doc))
    path.chmod(0o600)


def test_a_fifo_planted_as_a_token_cache_entry_never_hangs_the_run(
        denv: DeployEnv, lineage: LineagePaths, relay: Relay, endpoint: TokenEndpoint) -> None:
    """The cache is read cheaply and boundedly, off the event loop: a FIFO in its place (open(2) on it blocks
    until a writer comes) is a miss, the endpoint is asked again, and the run ends in time."""
    configure(denv, relay, endpoint)
    assert deploy(denv, lineage).returncode == 0
    [entry] = cache_files(denv)
    entry.unlink()
    os.mkfifo(entry, 0o600)
    try:
        run = denv.run_process("deploy", "--lineage", str(lineage.live_dir), "--json", "--force", timeout=40)
    except subprocess.TimeoutExpired:
        pytest.fail("the run hung on a FIFO in the token cache")
    assert run.returncode == 0, run.stderr
    assert endpoint.requests == 2 and len(relay.wait_for_messages(2)) == 2
    assert "token cache entry" in run.stderr and "unusable" in run.stderr


@pytest.mark.parametrize("expires_in", [10**400, "9" * 400, "\u00b2"], ids=["int", "digits", "superscript"])
def test_an_absurd_lifetime_from_the_endpoint_neither_breaks_the_run_nor_outlives_the_run_after(
        denv: DeployEnv, lineage: LineagePaths, relay: Relay, endpoint: TokenEndpoint, expires_in: object) -> None:
    """A hostile or broken endpoint's expires_in past what a float holds (RFC 6749 §5.1 sets no bound)."""
    configure(denv, relay, endpoint)
    token = "tok-absurd-lifetime-" + "y" * 24
    endpoint.tokens.append(token)
    endpoint.answer = Answer(200, {"access_token": token, "token_type": "Bearer", "expires_in": expires_in})
    run = deploy(denv, lineage)
    assert run.returncode == 0, run.stderr
    assert run.target("m365")["status"] == "delivered" and len(relay.wait_for_messages(1)) == 1
    no_leak(run, denv, [SECRET, token])


@pytest.mark.parametrize("status_line", [
    b"HTTP/1.1 2OO echo \x1b]0;owned\x07\r\n\r\n", b"echo\x1b[2J\r\n\r\n", b"HTTP/1.1 99999 echo\r\n\r\n",
    b"HTTP/1.1 2OO " + b"p" * 150 + b"echo\r\n\r\n",  # the secret where the detail used to be cut, unscrubbed
], ids=["controls", "bare", "status", "cut"])
def test_a_status_line_quoting_the_secret_is_scrubbed_and_printable(
        denv: DeployEnv, lineage: LineagePaths, relay: Relay, endpoint: TokenEndpoint, status_line: bytes) -> None:
    """http.client puts an unparseable status line, the endpoint's own bytes, into its exception text: an endpoint
    that quotes the client secret there, or writes terminal controls, reaches the failure like a relay's reply."""
    configure(denv, relay, endpoint)
    endpoint.raw = status_line
    run = deploy(denv, lineage)
    assert run.returncode == 75, run.stderr
    failed = run.target("m365")
    assert failed["error_code"] == "SMTP_CONNECT" and "BadStatusLine" in failed["detail"], failed
    assert "\x1b" not in run.stderr and "\x07" not in run.stderr
    assert failed["detail"].isprintable(), failed
    assert endpoint.requests >= 1 and relay.connections == 0
    no_leak(run, denv, [SECRET])
    assert SECRET[:16] not in run.stdout + run.stderr + at_rest(denv)


@pytest.mark.parametrize("scheme", ["http", "file"])
def test_a_stored_key_whose_token_uri_is_not_https_is_never_used(
        denv: DeployEnv, lineage: LineagePaths, relay: Relay, tmp_path: Path, scheme: str) -> None:
    """`credentials set` refuses a key whose token_uri is not https:// (key_problem); one stored before that check,
    or altered since, must not send its signed assertion in clear (RFC 6749 §3.2: TLS), nor read a local file as a
    token response: a credential problem for a human (SMTP_AUTH), never a request."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    received: list[bytes] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5)
                data = conn.recv(65536)
                if data:  # not the test's own wake-up below
                    received.append(data)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    uri = (f"http://127.0.0.1:{listener.getsockname()[1]}/token" if scheme == "http"
           else (tmp_path / "token.json").as_uri())
    (tmp_path / "token.json").write_text(json.dumps({"access_token": "local-file-token-1234", "token_type": "Bearer"}))
    key_json, _ = service_account_key(GSA_EMAIL, uri)
    store_unchecked(denv, "gsa", "smtp_oauth2_service_account", key_json)
    denv.write_config({"workspace": relay_target(relay, auth_method="xoauth2", username=MAILBOX,
                                                 oauth2_service_account_credential="gsa", timeout=10)})
    try:
        run = deploy(denv, lineage)
    finally:
        with contextlib.suppress(OSError), socket.create_connection(listener.getsockname(), timeout=5):
            pass  # wakes the accept: nothing came
        thread.join(25)
        listener.close()
    assert received == [] and relay.connections == 0
    failed = run.target("workspace")
    assert run.returncode == 69 and (failed["status"], failed["error_code"]) == ("failed", "SMTP_AUTH"), failed
    assert "https" in failed["detail"] and "credentials set gsa" in failed["detail"]


def test_a_password_in_the_token_url_is_refused_and_never_repeated(
        denv: DeployEnv, lineage: LineagePaths, relay: Relay, endpoint: TokenEndpoint) -> None:
    """A mistaken config: the secret in the URL's userinfo. Refused before any request, and not quoted: not in the
    refusal, nor (as it was) in every failure, the journal and --json."""
    denv.set_credential("m365-app", "smtp_oauth2_client_secret", SECRET)
    url = endpoint.url.replace("https://", "https://app:pw-in-the-url@")
    denv.write_config({"m365": oauth_target(relay, endpoint, oauth2_token_url=url)})
    run = deploy(denv, lineage)
    assert run.returncode == 78, run.stderr
    assert "oauth2_token_url" in run.stderr and "userinfo" in run.stderr
    assert "pw-in-the-url" not in run.stdout + run.stderr + at_rest(denv).replace(url, "")
    assert endpoint.requests == 0 and relay.connections == 0
