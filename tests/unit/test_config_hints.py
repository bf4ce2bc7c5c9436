"""Config hints for the classic mistakes: typos, keys that do nothing, ports that do not match the TLS mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from certbot_smtp_dist._internal.config import DEFAULT_CONFIG, parse_settings
from certbot_smtp_dist._internal.payload import BUILTIN_FORMATS, build_pem
from certbot_smtp_dist.errors import ConfigError, ConfigProblem
from certbot_smtp_dist.model import PayloadFormat, Settings

# Two extension formats beside the built-ins: the rule must read what a format declares, not its name.
EXTENSIONS = (PayloadFormat("sealed", "an extension that takes a passphrase", build_pem,
                            credential_type="smtp_pkcs12_passphrase"),
              PayloadFormat("pkcs12_lite", "an extension named like pkcs12 that takes none", build_pem))
FORMATS = {f.name: f for f in (*BUILTIN_FORMATS, *EXTENSIONS)}
CREDS = {"relay": "smtp_password", "p12": "smtp_pkcs12_passphrase"}
BASE = {"host": "smtp.example.com", "from_address": "certbot@example.com", "to": ["pki@example.com"]}
PATH = Path("/etc/x/config.toml")


def settings(targets: dict[str, Any], defaults: dict[str, Any] | None = None, path: Path = PATH) -> Settings:
    doc: dict[str, Any] = {"targets": targets}
    if defaults is not None:
        doc["defaults"] = defaults
    return parse_settings(doc, path, CREDS, FORMATS)


def errors(targets: dict[str, Any], defaults: dict[str, Any] | None = None,
           path: Path = PATH) -> tuple[ConfigProblem, ...]:
    with pytest.raises(ConfigError) as err:
        settings(targets, defaults, path)
    return err.value.problems


def warned(table: dict[str, Any], defaults: dict[str, Any] | None = None) -> list[str]:
    return [str(w) for w in settings({"t": {**BASE, **table}}, defaults).warnings]


def test_unknown_key_gets_did_you_mean() -> None:
    (problem,) = errors({"t": {**BASE, "from_adress": "x@example.com"}})
    assert str(problem) == "targets.t.from_adress: unknown key; did you mean 'from_address'?"


def test_unknown_key_far_from_any_known_key_gets_no_guess() -> None:
    (problem,) = errors({"t": {**BASE, "colour": "blue"}})
    assert str(problem) == "targets.t.colour: unknown key"


def test_top_level_typo_gets_did_you_mean() -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({"target": {"t": BASE}, "targets": {"t": BASE}}, PATH, CREDS, FORMATS)
    assert "target: unknown top-level key (expected [defaults] and [targets.NAME]); did you mean 'targets'?" \
        in str(err.value)


def test_defaults_typo_reported_once_under_the_key_written() -> None:
    found = errors({"pki-archive": {"to": ["a@example.com"]}, "ops": {"to": ["b@example.com"]}},
                   defaults={"host": "relay.example.com", "from_address": "c@example.com",
                             "from_adress": "c@example.com"})
    assert [str(p) for p in found] == ["defaults.from_adress: unknown key; did you mean 'from_address'?"]


def test_a_misspelled_required_key_is_one_problem_not_two() -> None:
    table = {k: v for k, v in BASE.items() if k != "from_address"}
    (problem,) = errors({"t": {**table, "from_adress": "c@example.com"}})
    assert str(problem) == "targets.t.from_adress: unknown key; did you mean 'from_address'?"
    found = errors({"a": {"to": ["a@example.com"]}, "b": {"to": ["b@example.com"]}},
                   defaults={"host": "relay.example.com", "from_adress": "c@example.com"})
    assert [str(p) for p in found] == ["defaults.from_adress: unknown key; did you mean 'from_address'?"]


def test_bad_defaults_value_reported_once_under_defaults() -> None:
    found = errors({"a": {"to": ["a@example.com"]}, "b": {"to": ["b@example.com"]}},
                   defaults={"host": "relay.example.com", "from_address": "c@example.com", "port": 70000})
    assert [(p.target, p.key) for p in found] == [(None, "defaults.port")]


def test_target_overriding_a_default_is_reported_under_the_target() -> None:
    found = errors({"a": {"to": ["a@example.com"], "port": 0}, "b": {"to": ["b@example.com"]}},
                   defaults={"host": "relay.example.com", "from_address": "c@example.com", "port": 587})
    assert [(p.target, p.key) for p in found] == [("a", "port")]


def test_missing_credential_in_defaults_reported_once() -> None:
    found = errors({"a": {"to": ["a@example.com"]}, "b": {"to": ["b@example.com"]}},
                   defaults={**BASE, "auth_method": "plain", "username": "u", "password_credential": "relay2"})
    assert [(p.target, p.key) for p in found] == [(None, "defaults.password_credential")]


@pytest.mark.parametrize(("path", "suffix"), [
    (Path("/x/config.toml"), " --config /x/config.toml"),
    (Path("/srv/my configs/c.toml"), " --config '/srv/my configs/c.toml'"),
    (DEFAULT_CONFIG, ""),
])
def test_credential_hint_carries_the_config_path(path: Path, suffix: str) -> None:
    (problem,) = errors({"t": {**BASE, "auth_method": "plain", "username": "u", "password_credential": "relay2"}},
                        path=path)
    assert problem.problem.endswith(
        f"run: certbot-smtp-dist credentials set relay2 --type smtp_password{suffix}")


@pytest.mark.parametrize(("table", "expected"), [
    ({"port": 465}, "targets.t.port: port 465 speaks implicit TLS (RFC 8314), but tls_mode = 'starttls': "
                    "the relay will not greet; set tls_mode = \"smtps\""),
    ({"port": 587, "tls_mode": "smtps"}, "targets.t.port: port 587 speaks plaintext first (STARTTLS, RFC 3207), "
                                         "but tls_mode = 'smtps': the handshake will meet a plaintext greeting; "
                                         "set tls_mode = \"starttls\""),
])
def test_port_that_does_not_match_the_tls_mode_is_a_warning(table: dict[str, Any], expected: str) -> None:
    assert warned(table) == [expected]


@pytest.mark.parametrize("table", [{}, {"port": 2525}, {"tls_mode": "smtps"}, {"port": 465, "tls_mode": "smtps"},
                                   {"port": 25}])
def test_matching_or_unusual_ports_are_not_warned(table: dict[str, Any]) -> None:
    assert warned(table) == []


@pytest.mark.parametrize(("table", "key", "why"), [
    ({"pkcs12_passphrase_credential": "p12"}, "pkcs12_passphrase_credential", "payload = 'pem' takes no passphrase"),
    ({"password_credential": "relay"}, "password_credential", "auth_method = 'none'"),
    ({"password_credential": "never-stored"}, "password_credential", "auth_method = 'none'"),
    ({"username": "robot"}, "username", "auth_method = 'none'"),
    ({"host": "127.0.0.1", "tls_mode": "plaintext", "tls_skip_verify": True}, "tls_skip_verify",
     "tls_mode = 'plaintext'"),
])
def test_keys_for_another_payload_or_auth_method_are_warnings(table: dict[str, Any], key: str, why: str) -> None:
    assert warned(table) == [f"targets.t.{key}: is ignored: {why}"]


@pytest.mark.parametrize(("payload", "warned_about"), [("pkcs12", False), ("sealed", False), ("pem", True),
                                                     ("pem_and_key", True), ("pkcs12_lite", True)])
def test_a_passphrase_is_ignored_by_what_the_format_declares(payload: str, warned_about: bool) -> None:
    assert warned({"payload": payload, "pkcs12_passphrase_credential": "p12"}) == (
        [f"targets.t.pkcs12_passphrase_credential: is ignored: payload = {payload!r} takes no passphrase"]
        if warned_about else [])


def test_an_ignored_key_set_to_its_harmless_value_is_not_warned() -> None:
    assert warned({"host": "127.0.0.1", "tls_mode": "plaintext", "tls_skip_verify": False}) == []


def test_unused_keys_from_defaults_are_not_warned() -> None:
    # A [defaults] value serves the targets that use it; the others are not wrong for ignoring it.
    assert warned({}, defaults={"pkcs12_passphrase_credential": "p12", "username": "robot"}) == []


def test_port_warning_from_defaults_reported_once() -> None:
    s = settings({"a": {"to": ["a@example.com"]}, "b": {"to": ["b@example.com"]}},
                 defaults={"host": "relay.example.com", "from_address": "c@example.com", "port": 465})
    assert [(w.target, w.key) for w in s.warnings] == [(None, "defaults.port")]
