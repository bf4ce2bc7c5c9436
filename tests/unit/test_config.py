"""Config validation: every problem reported at once, each with its target and key; nothing dialled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.exposed import EXPOSURES, Exposure, exposed_file

from certbot_smtp_dist._internal.config import parse_settings
from certbot_smtp_dist._internal.payload import BUILTIN_FORMATS
from certbot_smtp_dist.errors import ConfigError
from certbot_smtp_dist.model import AuthMethod, TlsMode

FORMATS = {f.name: f for f in BUILTIN_FORMATS}
CREDS = {"relay": "smtp_password", "p12": "smtp_pkcs12_passphrase"}
BASE = {"host": "smtp.example.com", "from_address": "certbot@example.com", "to": ["pki@example.com"]}


def problems(targets: dict[str, Any], defaults: dict[str, Any] | None = None, **doc: Any) -> set[tuple[Any, Any]]:
    raw: dict[str, Any] = {"targets": targets, **doc}
    if defaults is not None:
        raw["defaults"] = defaults
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, Path("/etc/x/config.toml"), CREDS, FORMATS)
    return {(p.target, p.key) for p in err.value.problems}


def ok(table: dict[str, Any], **kw: Any) -> Any:
    return parse_settings({"targets": {"t": table}, **kw}, Path("/etc/x/config.toml"), CREDS, FORMATS).targets[0]


def test_defaults_and_ports_per_mode() -> None:
    t = ok(BASE)
    assert (t.tls_mode, t.port, t.auth_method, t.payload, t.timeout) == (TlsMode.STARTTLS, 587, AuthMethod.NONE, "pem", 30)
    assert ok({**BASE, "tls_mode": "smtps"}).port == 465
    assert ok({**BASE, "tls_mode": "plaintext", "host": "127.0.0.1"}).port == 25


def test_defaults_table_applies_to_every_target() -> None:
    s = parse_settings({"defaults": {"host": "relay.internal", "from_address": "a@example.com"},
                        "targets": {"a": {"to": ["x@example.com"]}, "b": {"to": ["y@example.com"], "port": 2525}}},
                       Path("c.toml"), CREDS, FORMATS)
    assert [(t.name, t.host, t.port) for t in s.targets] == [("a", "relay.internal", 587), ("b", "relay.internal", 2525)]


def test_every_problem_reported_at_once() -> None:
    found = problems({
        "a": {**BASE, "port": 70000, "colour": "blue", "timeout": 0},
        "b": {**BASE, "to": ["not an address"], "subject_prefix": "X\r\nBcc: evil@example.com"},
        "c": {**BASE, "tls_mode": "plaintext", "auth_method": "plain", "username": "u", "password_credential": "relay"},
    })
    assert found == {("a", "port"), ("a", "colour"), ("a", "timeout"), ("b", "to"), ("b", "subject_prefix"),
                     ("c", "auth_method")}


@pytest.mark.parametrize(("table", "key"), [
    ({"port": "25"}, "port"),
    ({"port": True}, "port"),
    ({"tls_skip_verify": "yes"}, "tls_skip_verify"),
    ({"tls_mode": "tls"}, "tls_mode"),
    ({"auth_method": "cram-md5"}, "auth_method"),
    ({"timeout": 601}, "timeout"),
    ({"from_address": "Robot <r@example.com>"}, "from_address"),
    ({"from_name": "Robot\nInjected: 1"}, "from_name"),
    ({"from_name": "x" * 129}, "from_name"),
    ({"to": []}, "to"),
    ({"to": [f"u{i}@example.com" for i in range(51)]}, "to"),
    ({"cc": ["a@example.com, b@example.com"]}, "cc"),
    ({"bcc": ["a@@example.com"]}, "bcc"),
    ({"payload": "der"}, "payload"),
    ({"payload": "pkcs12"}, "pkcs12_passphrase_credential"),
    ({"payload": "pkcs12", "pkcs12_passphrase_credential": "relay"}, "pkcs12_passphrase_credential"),
    ({"auth_method": "plain", "username": "u"}, "password_credential"),
    ({"auth_method": "plain", "password_credential": "relay"}, "username"),
    ({"auth_method": "login", "username": "u", "password_credential": "missing"}, "password_credential"),
    ({"auth_method": "login", "username": "u", "password_credential": "p12"}, "password_credential"),
    ({"tls_mode": "plaintext", "payload": "pem_and_key"}, "payload"),
    ({"tls_ca_file": "/nonexistent/ca.pem"}, "tls_ca_file"),
    ({"certificates": "example.com"}, "certificates"),
    ({"subject_prefix": "A\rB"}, "subject_prefix"),
])
def test_single_problem_named_by_target_and_key(table: dict[str, Any], key: str) -> None:
    assert problems({"pki": {**BASE, **table}}) == {("pki", key)}


def test_an_empty_certificates_filter_is_refused_not_read_as_every_certificate() -> None:
    """Attack: `certificates = []` (a target switched off by emptying its filter, or a template's empty list)
    matched every certificate, so its key went to this target's recipients at every renewal. A list of globs
    with none in it matches no name: refused, in a target and in [defaults], pointing at ["*"] for every one."""
    assert problems({"pki": {**BASE, "certificates": []}}) == {("pki", "certificates")}
    assert problems({"pki": BASE}, defaults={"certificates": []}) == {(None, "defaults.certificates")}
    with pytest.raises(ConfigError, match=r'\["\*"\]'):
        parse_settings({"targets": {"t": {**BASE, "certificates": []}}}, Path("/etc/x/config.toml"), CREDS, FORMATS)
    assert ok({**BASE, "certificates": ["*"]}).matches(("example.com",))
    assert not ok({**BASE, "certificates": ["a.example"]}).matches(("example.com",))


def test_missing_required_keys() -> None:
    assert problems({"t": {}}) == {("t", "host"), ("t", "from_address"), ("t", "to")}


def test_file_level_problems() -> None:
    assert (None, "targets") in problems({})
    assert (None, "extra") in problems({"t": BASE}, extra=1)
    assert (None, "defaults.colour") in problems({"t": BASE}, defaults={"colour": 1})


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.9.9", "::1", "localhost", "LOCALHOST"])
def test_plaintext_with_auth_and_key_allowed_on_loopback(host: str) -> None:
    t = ok({**BASE, "host": host, "tls_mode": "plaintext", "auth_method": "plain", "username": "u",
            "password_credential": "relay", "payload": "pem_and_key"})
    assert t.tls_mode is TlsMode.PLAINTEXT


@pytest.mark.parametrize("host", ["10.0.0.1", "128.0.0.1", "localhost.example.com", "relay", "::2"])
def test_plaintext_with_auth_refused_off_loopback(host: str) -> None:
    table = {**BASE, "host": host, "tls_mode": "plaintext", "auth_method": "plain", "username": "u",
             "password_credential": "relay"}
    assert problems({"t": table}) == {("t", "auth_method")}


def test_special_use_domains_accepted() -> None:
    t = ok({**BASE, "to": ["pki@mail.internal"], "cc": ["ops@corp.local"], "bcc": ["root@localhost"],
            "from_address": "robot@[127.0.0.1]"})
    assert t.envelope_recipients == ("pki@mail.internal", "ops@corp.local", "root@localhost")


def test_pkcs12_passphrase_in_defaults_is_harmless_for_pem() -> None:
    s = parse_settings({"defaults": {"pkcs12_passphrase_credential": "p12"}, "targets": {"a": BASE}},
                       Path("c.toml"), CREDS, FORMATS)
    assert s.targets[0].payload_credential is None


def test_error_message_names_target_and_key() -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({"targets": {"archive": {**BASE, "port": 0}}}, Path("/etc/c.toml"), CREDS, FORMATS)
    assert "targets.archive.port: 0 is out of range" in str(err.value)
    assert "/etc/c.toml" in str(err.value)


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\t"])
@pytest.mark.parametrize("key", ["subject_prefix", "from_name"])
def test_unicode_line_separators_in_header_values_are_config_errors(key: str, sep: str) -> None:
    assert problems({"t": {**BASE, key: f"PROD{sep}Bcc: thief@example.net"}}) == {("t", key)}


def test_tls_ca_file_must_hold_a_certificate(tmp_path: Path) -> None:
    from support.pki import make_ca

    garbage, good, folder = tmp_path / "garbage.pem", tmp_path / "ca.pem", tmp_path / "dir"
    garbage.write_text("not a certificate")
    good.write_bytes(make_ca("Relay CA").cert_pem())
    folder.mkdir()
    for bad in (garbage, folder, tmp_path / "missing.pem"):
        assert problems({"t": {**BASE, "tls_ca_file": str(bad)}}) == {("t", "tls_ca_file")}
    assert ok({**BASE, "tls_ca_file": str(good)}).tls_ca_file == good


@pytest.mark.parametrize("how", EXPOSURES)
def test_a_tls_ca_file_others_could_replace_is_a_config_error(tmp_path: Path, how: Exposure) -> None:
    """Whoever can swap tls_ca_file chooses whom the relay connection trusts (a man in the middle then reads the
    AUTH password and the mail, a private key with some payloads): the config file's rule (ownership.py) holds for
    it, as for an S/MIME recipient certificate. It was only checked to hold a certificate."""
    from support.pki import make_ca

    named = exposed_file(tmp_path, "ca.pem", make_ca("Relay CA").cert_pem(), how)
    open_dir = tmp_path / "open"
    try:
        with pytest.raises(ConfigError) as err:
            parse_settings({"targets": {"t": {**BASE, "tls_ca_file": str(named)}}}, Path("/etc/x/config.toml"),
                           CREDS, FORMATS)
    finally:
        open_dir.chmod(0o755)
    found = {(p.target, p.key): p.problem for p in err.value.problems}
    assert list(found) == [("t", "tls_ca_file")], found
    assert "writable by group or others" in found["t", "tls_ca_file"], found


def test_a_tls_ca_file_named_through_a_link_others_could_repoint_is_a_config_error(tmp_path: Path) -> None:
    """A link to a link: the CA file and the link named are in closed directories, the link in between in one
    anyone can write. Whoever repoints that hop chooses the anchor; only the first and last directories were
    checked, so it was accepted."""
    from support.pki import make_ca

    first, hop, last = (tmp_path / n for n in ("first", "hop", "last"))
    for directory in (first, hop, last):
        directory.mkdir(mode=0o755)
    ca = last / "ca.pem"
    ca.write_bytes(make_ca("Relay CA").cert_pem())
    ca.chmod(0o644)
    (hop / "ca.pem").symlink_to(ca)
    named = first / "ca.pem"
    named.symlink_to(hop / "ca.pem")
    table = {"targets": {"t": {**BASE, "tls_ca_file": str(named)}}}
    assert parse_settings(table, Path("/etc/x/config.toml"), CREDS, FORMATS).targets[0].tls_ca_file == named
    hop.chmod(0o777)  # no sticky bit: anyone may replace the link in it
    try:
        with pytest.raises(ConfigError) as err:
            parse_settings(table, Path("/etc/x/config.toml"), CREDS, FORMATS)
    finally:
        hop.chmod(0o755)
    found = {(p.target, p.key): p.problem for p in err.value.problems}
    assert list(found) == [("t", "tls_ca_file")], found
    assert str(hop) in found["t", "tls_ca_file"] and "writable by group or others" in found["t", "tls_ca_file"]


def test_the_distros_trust_store_and_a_relative_tls_ca_file_pass_the_ownership_rule(tmp_path: Path) -> None:
    """The rule must not refuse what a legitimate setup names: the distro's bundle, one of its hashed links (a link
    to a link into /usr/share/ca-certificates, all root's), and a file beside the config named relatively."""
    from support.pki import make_ca

    store = Path("/etc/ssl/certs")
    if not (store / "ca-certificates.crt").is_file():
        pytest.skip("no Debian-style /etc/ssl/certs here")
    hashed = sorted(p for p in store.glob("*.0") if p.is_symlink() and p.resolve().is_file())[:1]
    (tmp_path / "ca.pem").write_bytes(make_ca("Relay CA").cert_pem())
    for value in [str(store / "ca-certificates.crt"), *map(str, hashed), "ca.pem", "./ca.pem"]:
        table = {"targets": {"t": {**BASE, "tls_ca_file": value}}}
        assert parse_settings(table, tmp_path / "config.toml", CREDS, FORMATS).targets[0].tls_ca_file is not None


@pytest.mark.parametrize("key", ["tls_ca_file", "oauth2_ca_file"])
def test_a_ca_file_that_is_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path, key: str) -> None:
    """Attack: a CA file key naming a FIFO (or a device that blocks on read, /dev/kmsg) passed the ownership rule
    (ours, closed to others) and OpenSSL's open waited for a writer that never came: every config load, so every
    deploy and the ACME client behind it, hung. Only a regular file is handed to OpenSSL."""
    import os
    import threading

    fifo = tmp_path / "ca.pem"
    os.mkfifo(fifo, 0o600)
    extra = {"auth_method": "xoauth2", "username": "u@example.com", "oauth2_token_url": "https://login.example/t",
             "oauth2_client_id": "c", "oauth2_scope": "s", "oauth2_client_secret_credential": "oauth"}
    table = {**BASE, key: str(fifo), **(extra if key == "oauth2_ca_file" else {})}
    found: list[Any] = []

    def load() -> None:
        try:
            parse_settings({"targets": {"t": table}}, tmp_path / "config.toml",
                           {**CREDS, "oauth": "smtp_oauth2_client_secret"}, FORMATS)
        except ConfigError as exc:
            found.extend((p.key, p.problem) for p in exc.problems)

    loading = threading.Thread(target=load, daemon=True)
    loading.start()
    loading.join(10)
    if loading.is_alive():  # let the blocked open go (it then reads an empty file), so the test run can end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        loading.join(10)
        pytest.fail(f"loading the config waited on the FIFO named by {key}")
    assert [k for k, _ in found] == [key], found
    assert "FIFO" in found[0][1], found


def test_retry_policy_from_defaults() -> None:
    from datetime import timedelta

    settings = parse_settings({"defaults": {"retry_attempts": 5, "retry_max_age": 2.5}, "targets": {"t": BASE}},
                              Path("/etc/x/config.toml"), CREDS, FORMATS)
    assert settings.retry.attempts == 5 and settings.retry.max_age == timedelta(days=2.5)
    default = parse_settings({"targets": {"t": BASE}}, Path("/etc/x/config.toml"), CREDS, FORMATS)
    assert default.retry.attempts == 3 and default.retry.max_age == timedelta(days=5)
    assert default.retry.connections_per_relay == 20
    bounded = parse_settings({"defaults": {"connections_per_relay": 2}, "targets": {"t": BASE}},
                             Path("/etc/x/config.toml"), CREDS, FORMATS)
    assert bounded.retry.connections_per_relay == 2


@pytest.mark.parametrize(("key", "value"), [
    ("retry_attempts", 0), ("retry_attempts", 11), ("retry_attempts", True), ("retry_attempts", "3"),
    ("retry_max_age", 0), ("retry_max_age", 31), ("retry_max_age", "5d"), ("retry_max_age", False),
    ("connections_per_relay", 0), ("connections_per_relay", 101), ("connections_per_relay", 2.5),
    ("connections_per_relay", True),
])
def test_retry_policy_bad_values_are_keyed(key: str, value: Any) -> None:
    assert problems({"t": BASE}, {key: value}) == {(None, f"defaults.{key}")}


def test_retry_policy_only_in_defaults() -> None:
    assert problems({"t": {**BASE, "retry_attempts": 2}}) == {("t", "retry_attempts")}


@pytest.mark.parametrize("nested", ["a = " + "[" * 5000 + "]" * 5000, "a = " + "{b=" * 5000 + "1" + "}" * 5000])
def test_toml_nested_past_the_parsers_recursion_is_unusable_configuration_not_a_crash(tmp_path: Path,
                                                                                       nested: str) -> None:
    """Attack: a config nested thousands deep (arrays or inline tables) made tomllib raise RecursionError, which
    nothing caught: a traceback and exit 1 where every other unparseable config is 78, the renewal blocked for
    retry. `credentials delete` crashed the same way after deleting, where it reads the config for users."""
    from support.deployenv import DeployEnv

    from certbot_smtp_dist._internal.config import credential_users, load_settings

    config = tmp_path / "config.toml"
    config.write_text(nested + "\n")
    config.chmod(0o600)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config, {}, FORMATS)
    assert credential_users(config, "relay") == []
    env = DeployEnv(tmp_path / "cli")
    env.config.write_text(nested + "\n")
    env.config.chmod(0o600)
    run = env.run("check")
    assert run.returncode == 78 and "not valid TOML" in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_a_problem_naming_a_key_a_target_or_a_path_of_control_characters_is_one_printable_line() -> None:
    """Attack: a TOML quoted key or target name, or a path value, may hold any character ("to\\u001b]0;x\\u0007",
    a line break): each problem quoted it raw, so the ERROR line, a blocked entry's detail in status and history,
    and the log gained a line or terminal escape of the config's choosing. Each problem is one printable line
    (non-printables as "?"); --json keeps the key as written."""
    doc = {"colour\nINFO: forged": 1,
           "defaults": {"ho\x1b[2Jst": "x"},
           "targets": {"t\r\nx": {**BASE},
                       "t": {**BASE, "to\x1b]0;title\x07": ["a@example.com"], "tls_ca_file": "/nonexistent/\n.pem",
                             "password_credential": "a\nb", "auth_method": "plain", "username": "u"}}}
    with pytest.raises(ConfigError) as err:
        parse_settings(doc, Path("/etc/x/config.toml"), CREDS, FORMATS)
    lines = [str(p) for p in err.value.problems]
    assert len(lines) >= 6, lines
    assert all(line.isprintable() for line in lines), lines
    assert str(err.value).count("\n") == len(lines)  # the head, then one line per problem
    assert any(p.key == "to\x1b]0;title\x07" for p in err.value.problems)  # as written, for --json


@pytest.mark.parametrize(("key", "extra"), [
    ("password_credential", {"auth_method": "plain", "username": "u"}),
    ("pkcs12_passphrase_credential", {"payload": "pkcs12"}),
])
def test_a_secret_written_where_a_credential_name_belongs_is_never_repeated(key: str, extra: dict[str, Any]) -> None:
    """Attack (on the operator's own mistake): the password itself in `password_credential`. The problem quoted it
    and suggested `credentials set 'THE-PASSWORD' ...`: the secret in the ERROR line, the log, a blocked entry's
    detail in status and history, and on the command line the hint offered (shell history, ps), for a name
    `credentials set` refuses anyway. A value that is no credential name is refused without being repeated."""
    secret = "Tr0ub4dor&3 horse!"
    with pytest.raises(ConfigError) as err:
        parse_settings({"targets": {"t": {**BASE, **extra, key: secret}}}, Path("/etc/x/config.toml"), CREDS, FORMATS)
    assert [(p.target, p.key) for p in err.value.problems] == [("t", key)]
    text = str(err.value)
    assert "Tr0ub4dor" not in text and "horse" not in text, text
    assert "not a credential name" in text, text
