"""OAuth 2.0 pieces that need no peer: config keys, the SASL string, the token response and error translation."""

from __future__ import annotations

import base64
import http.client
import inspect
import io
import json
import ssl
import urllib.error
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from certbot_smtp_dist._internal import oauth2
from certbot_smtp_dist._internal.config import parse_settings
from certbot_smtp_dist._internal.payload import BUILTIN_FORMATS
from certbot_smtp_dist._internal.transport import oauthbearer_response, xoauth2_response
from certbot_smtp_dist.errors import ConfigError, ErrorCode
from certbot_smtp_dist.model import AuthMethod, OAuth2Grant, Phase, Secret

FORMATS = {f.name: f for f in BUILTIN_FORMATS}
CREDS = {"relay": "smtp_password", "m365-app": "smtp_oauth2_client_secret"}
OAUTH = {"host": "smtp.office365.com", "from_address": "certbot@example.com", "to": ["pki@example.com"],
         "auth_method": "xoauth2", "username": "certbot@example.com",
         "oauth2_token_url": "https://login.microsoftonline.com/T/oauth2/v2.0/token", "oauth2_client_id": "C",
         "oauth2_scope": "https://outlook.office365.com/.default", "oauth2_client_secret_credential": "m365-app"}
GRANT = OAuth2Grant("https://login.example.net/t/token?x=1", "C", "S", "m365-app")
SECRET = Secret("cs-unit-secret-value")


def parse(table: dict[str, Any]) -> Any:
    return parse_settings({"targets": {"t": table}}, Path("/etc/x/config.toml"), CREDS, FORMATS).targets[0]


def problems(table: dict[str, Any]) -> dict[str | None, str]:
    with pytest.raises(ConfigError) as err:
        parse(table)
    return {p.key: p.problem for p in err.value.problems}


def test_an_oauth_target_parses_into_its_grant() -> None:
    t = parse({**OAUTH, "oauth2_ca_file": "/etc/ssl/certs/ca-certificates.crt"})
    assert t.auth_method is AuthMethod.XOAUTH2 and t.password_credential is None
    assert t.oauth2 == OAuth2Grant(OAUTH["oauth2_token_url"], "C", OAUTH["oauth2_scope"], "m365-app",
                                   ca_file=Path("/etc/ssl/certs/ca-certificates.crt"))


def test_password_credential_beside_an_oauth_method_is_an_error() -> None:
    assert set(problems({**OAUTH, "password_credential": "relay"})) == {"password_credential"}


def test_every_missing_oauth_key_is_reported_at_once() -> None:
    table = {k: v for k, v in OAUTH.items() if not k.startswith("oauth2_") or k.endswith("_credential")}
    assert set(problems(table)) == {"oauth2_token_url", "oauth2_client_id", "oauth2_scope"}


def test_exactly_one_grant_credential() -> None:
    none = {k: v for k, v in OAUTH.items() if not k.endswith("_credential")}
    assert "exactly one of" in problems(none)["oauth2_client_secret_credential"]
    both = {**OAUTH, "oauth2_service_account_credential": "gsa"}
    assert "exactly one of" in problems(both)["oauth2_service_account_credential"]


def test_a_service_account_target_defaults_to_the_key_token_uri_and_the_mail_scope() -> None:
    table = {k: v for k, v in OAUTH.items() if not k.startswith("oauth2_")}
    creds = {**CREDS, "gsa": "smtp_oauth2_service_account"}
    t = parse_settings({"targets": {"t": {**table, "oauth2_service_account_credential": "gsa"}}},
                       Path("/etc/x/config.toml"), creds, FORMATS).targets[0]
    assert t.oauth2 == OAuth2Grant(None, None, "https://mail.google.com/", service_account_credential="gsa")


@pytest.mark.parametrize("url", ["http://login.example.net/token", "https:///token", "ftp://x/y",
                                 "https://x/a\r\nb", "https://[::1/token", "https://x:abc/t", "https://x:99999999/t",
                                 "https://x:0/t"])
def test_the_token_url_must_be_https(url: str) -> None:
    assert set(problems({**OAUTH, "oauth2_token_url": url})) == {"oauth2_token_url"}


@pytest.mark.parametrize("url", ["https://app:pw-in-the-url@login.example.net/t/token",
                                 "https://pw-in-the-url@login.example.net/t/token",
                                 "https://app:pw-in-the-url@login.example.net:8443/t/token?x=1"])
def test_a_token_url_with_userinfo_is_refused_without_quoting_it(url: str) -> None:
    """Secrets never in the config: a password in the URL (RFC 3986 §3.2.1 deprecates user:password) would be
    quoted in every failure, the journal and --json; the refusal itself does not quote it either."""
    found = problems({**OAUTH, "oauth2_token_url": url})
    assert set(found) == {"oauth2_token_url"} and "userinfo" in found["oauth2_token_url"]
    assert "pw-in-the-url" not in found["oauth2_token_url"]


@pytest.mark.parametrize("url", ["http://login.example.net/token?client_secret=pw-in-the-url",
                                 "http://login.example.net/token#client_secret=pw-in-the-url"])
def test_a_refused_token_url_is_not_quoted_past_its_path(url: str) -> None:
    """Attack (the operator's slip): the client secret in the query string of a token URL that is refused for
    another reason (http://). The refusal quoted the URL whole, so the secret reached the ERROR line, the log and a
    blocked entry's detail, as userinfo would have (refused unquoted above). Only scheme, host and path are shown,
    as a failure shows them."""
    found = problems({**OAUTH, "oauth2_token_url": url})
    assert set(found) == {"oauth2_token_url"}
    assert "pw-in-the-url" not in found["oauth2_token_url"] and "login.example.net/token" in found["oauth2_token_url"]


def test_a_failure_never_names_the_userinfo_of_a_token_url() -> None:
    """A service account key's token_uri is not checked by the config: the failure shows host and path only."""
    failure = oauth2.unreachable("https://app:pw-in-the-url@[2001:db8::1]:8443/t/token?x=1", "HTTP 503")
    assert "pw-in-the-url" not in failure.detail and "app" not in failure.detail
    assert "https://[2001:db8::1]:8443/t/token: HTTP 503" in failure.detail


def test_a_client_secret_of_the_wrong_type_is_named() -> None:
    found = problems({**OAUTH, "oauth2_client_secret_credential": "relay"})
    assert found == {"oauth2_client_secret_credential":
                     "credential 'relay' has type smtp_password, expected smtp_oauth2_client_secret"}


def test_oauth_keys_with_a_password_method_are_warned_about() -> None:
    t = parse_settings({"targets": {"t": {**OAUTH, "auth_method": "plain", "password_credential": "relay"}}},
                       Path("/etc/x/config.toml"), CREDS, FORMATS)
    assert {w.key for w in t.warnings} >= {"oauth2_token_url", "oauth2_client_secret_credential"}


def test_xoauth2_initial_response_is_the_documented_format() -> None:
    raw = base64.b64decode(xoauth2_response("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29t"))
    assert raw == b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29t\x01\x01"


def test_the_form_is_the_client_credentials_grant() -> None:
    assert oauth2.form(oauth2.client(GRANT, SECRET), "u", 0) == (b"grant_type=client_credentials&client_id=C&"
                                                  b"client_secret=cs-unit-secret-value&scope=S", (SECRET,))


def _http_error(code: int, body: dict[str, str]) -> urllib.error.HTTPError:
    return urllib.error.HTTPError(GRANT.token_url, code, "x", Message(), io.BytesIO(json.dumps(body).encode()))


@pytest.mark.parametrize("code", [400, 401, 403])
def test_a_refused_grant_is_smtp_auth_with_the_endpoint_words_scrubbed(code: int) -> None:
    exc = _http_error(code, {"error": "invalid_client", "error_description": f"bad {SECRET.reveal()}\nline"})
    failure = oauth2._translate(exc, GRANT.token_url or "", (SECRET,))
    assert (failure.code, failure.phase) == (ErrorCode.SMTP_AUTH, Phase.AUTH)
    assert "invalid_client" in failure.detail and SECRET.reveal() not in failure.detail
    assert "\n" not in failure.detail and "x=1" not in failure.detail  # one line; no query string


@pytest.mark.parametrize("exc", [
    _http_error(500, {"error": "server_error"}), _http_error(503, {}),
    urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")),
    urllib.error.URLError(ssl.SSLCertVerificationError(1, "certificate verify failed")),
    TimeoutError("timed out"), ssl.SSLError(1, "bad record"), http.client.RemoteDisconnected("closed"),
    ValueError("anything else"),
])
def test_everything_else_is_transient_smtp_connect(exc: BaseException) -> None:
    failure = oauth2._translate(exc, GRANT.token_url or "", (SECRET,))
    assert (failure.code, failure.phase) == (ErrorCode.SMTP_CONNECT, Phase.CONNECT)
    assert failure.detail.startswith("no OAuth 2.0 token from https://login.example.net/t/token: ")


@pytest.mark.parametrize("exc", [
    http.client.BadStatusLine("HTTP/1.1 2OO " + "p" * 150 + SECRET.reveal() + "\x1b]0;x\x07\r\n"),
    urllib.error.URLError(f"{'p' * 150}{SECRET.reveal()}\x1b[2J"), OSError(f"{'p' * 160}{SECRET.reveal()}\r\n"),
    urllib.error.URLError(ssl.SSLCertVerificationError(1, f"{'p' * 170}{SECRET.reveal()}\n")),
])
def test_foreign_words_in_a_failure_are_one_scrubbed_printable_line_cut_after_scrubbing(exc: BaseException) -> None:
    """http.client quotes a bad status line as the endpoint sent it: terminal controls, and a secret it echoes,
    which a cut made before scrubbing left half in clear."""
    failure = oauth2._translate(exc, GRANT.token_url or "", (SECRET,))
    assert failure.detail.isprintable() and "***" in failure.detail, failure.detail
    assert SECRET.reveal()[:8] not in failure.detail


def test_with_a_secret_too_short_to_mask_a_failure_still_names_its_kind() -> None:
    exc = urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
    failure = oauth2._translate(exc, GRANT.token_url or "", (Secret("short"),))
    assert "ConnectionRefusedError: " in failure.detail and "withheld" in failure.detail


def test_every_exception_class_of_urllib_http_and_ssl_is_translated() -> None:
    """The boundary is exhaustive: no class of the three libraries escapes as a traceback."""
    modules = (urllib.error, http.client, ssl)
    classes = {cls for module in modules for _, cls in inspect.getmembers(module, inspect.isclass)
               if issubclass(cls, BaseException) and cls.__module__.split(".")[0] in ("urllib", "http", "ssl")}
    assert classes
    for cls in classes:
        try:
            exc = cls(GRANT.token_url, 500, "x", Message(), io.BytesIO(b"")) if cls is urllib.error.HTTPError \
                else cls("x") if cls is not urllib.error.ContentTooShortError else cls("x", b"")
        except TypeError:
            exc = cls.__new__(cls)
        failure = oauth2._translate(exc, GRANT.token_url or "", (SECRET,))
        assert failure.code in (ErrorCode.SMTP_CONNECT, ErrorCode.SMTP_AUTH), cls


@pytest.mark.parametrize(("body", "why"), [
    (b"not json", "not a token response"), (b'{"token_type": "Bearer"}', "not a token response"),
    (b'{"access_token": "t", "token_type": "mac"}', "not a Bearer token"),
])
def test_a_malformed_token_response_is_transient(body: bytes, why: str) -> None:
    with pytest.raises(oauth2.TokenFailure) as err:
        oauth2._parse("https://login.example.net/t/token", body, (SECRET,))
    assert err.value.failure.code is ErrorCode.SMTP_CONNECT and why in err.value.failure.detail


@pytest.mark.parametrize(("length", "kept"), [(oauth2.MAX_TOKEN, True), (oauth2.MAX_TOKEN + 1, False), (60_000, False)])
def test_a_token_longer_than_any_real_one_is_not_a_token(length: int, kept: bool) -> None:
    """A token is scrubbed from every relay text of its session, and making its scrubber costs time on the event
    loop that grows with its length: a 60 000-character token from a hostile endpoint held every other target of
    the run for about ten seconds once the relay refused it (16 KiB: under a second and a half)."""
    body = json.dumps({"access_token": "t" * length, "token_type": "Bearer"}).encode()
    if kept:
        assert oauth2._parse("https://login.example.net/t/token", body, ()).value.reveal() == "t" * length
        return
    with pytest.raises(oauth2.TokenFailure) as err:
        oauth2._parse("https://login.example.net/t/token", body, ())
    assert "not a token response" in err.value.failure.detail


OUTSIDE_B64TOKEN = {
    "non-ascii": "t\u00f6ken-abc", "non-ascii-digit": "abc\u0663", "space": "abc def", "newline": "t\nx",
    "sasl-separator": "abc\x01auth=Bearer other", "comma": "a,b", "padding-first": "=abc", "padding-inside": "ab=c",
    "only-padding": "==", "quote": 'ab"c', "nul": "abc\x00",
}


@pytest.mark.parametrize("token", OUTSIDE_B64TOKEN.values(), ids=OUTSIDE_B64TOKEN.keys())
def test_a_token_outside_the_b64token_syntax_is_smtp_auth_never_quoted(token: str) -> None:
    """RFC 6750 §2.1: a Bearer token is a b64token. Anything else would go into the SASL response as sent (a ^A
    ends an XOAUTH2 field: the endpoint would write the relay's AUTH exchange); the endpoint issued it for this
    grant, so asking again is no cure: SMTP_AUTH, permanent, and the token never quoted."""
    body = json.dumps({"access_token": token, "token_type": "Bearer", "expires_in": 3600}).encode()
    with pytest.raises(oauth2.TokenFailure) as err:
        oauth2._parse("https://login.example.net/t/token?x=1", body, ())
    failure = err.value.failure
    assert (failure.code, failure.phase) == (ErrorCode.SMTP_AUTH, Phase.AUTH)
    assert failure.detail == ("token endpoint https://login.example.net/t/token issued an access token outside RFC "
                              "6750 §2.1's syntax (b64token: ASCII letters, digits and -._~+/, then = padding); not "
                              "sent to the relay")
    assert not oauth2.is_b64token(token)


@pytest.mark.parametrize("token", ["a", "abc", "a-b.c_d~e+f/g==", "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiIxIn0.c2ln",
                                   "ya29.a0AfH6SMB" + "x" * 200 + "=", "9"])
def test_b64tokens_are_accepted(token: str) -> None:
    body = json.dumps({"access_token": token, "token_type": "Bearer"}).encode()
    assert oauth2._parse("https://login.example.net/t/token", body, ()).value.reveal() == token


def test_a_cached_token_outside_the_syntax_is_a_miss_and_dropped(tmp_path: Path) -> None:
    """An older version cached any printable token: one outside b64token is asked for again, never sent."""
    from certbot_smtp_dist._internal.tokencache import TokenCache

    cache, identity = TokenCache(tmp_path, b"k" * 32), ("https://login.example.net/t", "C", "S", "u")
    cache.put(identity, Secret("t\u00f6ken abc"), 3600)
    assert len(list((tmp_path / "oauth2").iterdir())) == 1
    assert cache.get(identity) is None
    assert list((tmp_path / "oauth2").iterdir()) == []
    cache.put(identity, Secret("good.token"), 3600)
    kept = cache.get(identity)
    assert kept is not None and kept.reveal() == "good.token"


def test_a_token_response_parses() -> None:
    body = b'{"access_token": "abc", "token_type": "bearer", "expires_in": "3599"}'
    token = oauth2._parse("https://login.example.net/t/token", body, ())
    assert (token.value.reveal(), token.expires_in) == ("abc", 3599)
    assert "abc" not in repr(token)


@pytest.mark.parametrize(("expires_in", "kept"), [
    ("3599", 3599), (3600, 3600), ("0003600", 3600), (10**400, oauth2.MAX_LIFETIME), ("9" * 5000, oauth2.MAX_LIFETIME),
    (oauth2.MAX_LIFETIME + 1, oauth2.MAX_LIFETIME), ("\u00b2", None), ("\u0663\u0666", None), (-5, None), (0, None),
    ("-5", None), (True, None), (3600.5, None), (None, None),
])
def test_the_lifetime_is_the_endpoints_but_bounded(expires_in: object, kept: int | None) -> None:
    """RFC 6749 §5.1 sets no bound on expires_in; ours is MAX_LIFETIME, and anything not a count of seconds is none."""
    body = json.dumps({"access_token": "abc", "token_type": "Bearer", "expires_in": expires_in}).encode()
    assert oauth2._parse("https://login.example.net/t/token", body, ()).expires_in == kept


def test_oauthbearer_initial_response_is_rfc_7628() -> None:
    # RFC 7628 §4.1's example, with the user escaped as a GS2 saslname (RFC 5801 §4).
    raw = base64.b64decode(oauthbearer_response("user,x=y@example.com", "server.example.com", 143,
                                                "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="))
    assert raw == (b"n,a=user=2Cx=3Dy@example.com,\x01host=server.example.com\x01port=143\x01"
                   b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01")


def test_oauthbearer_is_an_oauth_method() -> None:
    t = parse({**OAUTH, "auth_method": "oauthbearer"})
    assert t.auth_method is AuthMethod.OAUTHBEARER and t.oauth2 is not None and t.password_credential is None


def test_one_token_endpoint_tls_context_per_run() -> None:
    """Loading the system trust store costs more than the token request: one context per trust configuration."""
    assert oauth2.tls_context(GRANT) is oauth2.tls_context(GRANT)


def test_a_service_account_key_is_parsed_once_per_session() -> None:
    """`client` parses the stored key and loads its RSA key once; building the request never reads the secret
    again (it once parsed the JSON about five times and the PEM key once more per fetch)."""
    from dataclasses import replace

    from support.tokenendpoint import service_account_key

    key_json, _ = service_account_key("sa@example.iam.gserviceaccount.com", "https://oauth2.example.net/token")
    grant = OAuth2Grant(None, None, "https://mail.google.com/", service_account_credential="gsa")
    c = replace(oauth2.client(grant, Secret(key_json)), secret=Secret("no longer a key"))
    body, secrets = oauth2.form(c, "u@example.com", 0)
    assert b"grant-type%3Ajwt-bearer" in body and len(secrets) == 3
    assert oauth2.identity(c, "u@example.com")[:2] == ("https://oauth2.example.net/token",
                                                        "sa@example.iam.gserviceaccount.com")


@pytest.mark.parametrize("key", ["this stored key is not JSON at all", '{"client_email": "x"}',
                                 '{"client_email": "x", "private_key": "-----BEGIN", "token_uri": "https://t/"}'])
def test_a_broken_stored_service_account_key_is_smtp_auth(key: str) -> None:
    grant = OAuth2Grant(None, None, "https://mail.google.com/", service_account_credential="gsa")
    with pytest.raises(oauth2.TokenFailure) as err:
        oauth2.client(grant, Secret(key))
    assert (err.value.failure.code, err.value.failure.phase) == (ErrorCode.SMTP_AUTH, Phase.AUTH)
    assert "credentials set gsa" in err.value.failure.detail and "BEGIN" not in err.value.failure.detail


@pytest.mark.parametrize("uri", ["https://oauth2.example.net/tok\x1b[2Jen", "https://oauth2.example.net/a b",
                                 "https://oauth2.example.net/\u2028x"])
def test_a_service_account_token_uri_that_is_not_one_printable_url_is_refused(uri: str) -> None:
    """Attack: the key file is whoever made it's (a third party's, a copy passed around): a token_uri with a
    terminal escape validated as https, was stored, and every failure named it (oauth2._where), so the ERROR
    line, a spooled entry's detail in status and history carried the escape. Refused as the config's
    oauth2_token_url is: by `credentials set`, and by the deploy for a key stored before."""
    from support.tokenendpoint import service_account_key

    key_json, _ = service_account_key("sa@example.iam.gserviceaccount.com", uri)
    assert oauth2.key_problem(key_json) is not None
    grant = OAuth2Grant(None, None, "https://mail.google.com/", service_account_credential="gsa")
    with pytest.raises(oauth2.TokenFailure) as err:
        oauth2.client(grant, Secret(key_json))
    assert (err.value.failure.code, err.value.failure.phase) == (ErrorCode.SMTP_AUTH, Phase.AUTH)
    assert err.value.failure.detail.isprintable()
