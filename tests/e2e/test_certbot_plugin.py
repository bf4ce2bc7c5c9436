"""The certbot installer plugin `smtp-dist`, end to end: real certbot, a loopback pebble CA, aiosmtpd relays.

Each test asserts what the relays received: how many messages, and that the attached chain is byte for byte the
lineage's fullchain.pem with the fingerprint of the certificate certbot just saved.
"""

from __future__ import annotations

import email
import email.policy
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from acmeharness import Certbot, ClientResult, Pebble, free_ports, load_pem_certs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from support.deployenv import relay_target, to_toml
from support.relay import ReceivedMessage, Relay

pytestmark = pytest.mark.e2e

NAME = "test.example.com"
ALT = "www.test.example.com"
PEM_CHAIN_TYPE = "application/pem-certificate-chain"  # RFC 8555 §9.1


# --------------------------------------------------------------------------- helpers


def write_config(path: Path, targets: Mapping[str, tuple[Relay, Mapping[str, Any]]]) -> Path:
    """One target per relay: plaintext on loopback, no AUTH, a short timeout so a dead relay fails fast."""
    tables = {name: relay_target(relay, timeout=5, **extra) for name, (relay, extra) in targets.items()}
    path.write_text(to_toml(tables))
    return path


def plugin_args(config: Path, *extra: str) -> list[str]:
    return ["-i", "smtp-dist", "--smtp-dist-config", str(config), *extra]


def attached_chain(message: ReceivedMessage) -> bytes:
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    chains = [part.get_content() for part in parsed.iter_attachments() if part.get_content_type() == PEM_CHAIN_TYPE]
    assert len(chains) == 1, f"expected one {PEM_CHAIN_TYPE} attachment, got {len(chains)}"
    data = chains[0]
    assert isinstance(data, bytes)
    return data


def fingerprint(pem: bytes) -> bytes:
    return load_pem_certs(pem)[0].fingerprint(hashes.SHA256())


def live_fingerprint(certbot: Certbot, name: str = NAME) -> bytes:
    return fingerprint((certbot.live_dir(name) / "cert.pem").read_bytes())


def assert_carries_live_chain(message: ReceivedMessage, certbot: Certbot, name: str = NAME) -> None:
    """The attachment is fullchain.pem's certificates as canonical PEM (certbot writes them so: byte for byte), and
    its leaf is the lineage's current cert.pem."""
    chain = attached_chain(message)
    live = (certbot.live_dir(name) / "fullchain.pem").read_bytes()
    assert chain == b"".join(c.public_bytes(Encoding.PEM) for c in load_pem_certs(live))
    assert fingerprint(chain) == live_fingerprint(certbot, name)
    assert message.rcpt_tos == ("pki@example.com",)


def renewal_params(certbot: Certbot, name: str = NAME) -> dict[str, str]:
    """`[renewalparams]` of renewal/NAME.conf as a dict (flat key = value lines)."""
    text = certbot.renewal_conf(name).read_text()
    section = text.split("[renewalparams]", 1)[1]
    return dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition("=") for line in section.splitlines() if "=" in line)
    )


def assert_still_attached(certbot: Certbot, config: Path) -> None:
    params = renewal_params(certbot)
    assert params.get("installer") == "smtp-dist", params
    assert params.get("smtp_dist_config") == str(config), params


def certbot_log(certbot: Certbot) -> str:
    return (certbot.logs_dir / "letsencrypt.log").read_text()


def output(result: ClientResult) -> str:
    return f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def certbot(pebble: Pebble, certbot_bin: str, tmp_path: Path, state_dir: Path) -> Certbot:
    """As conftest's, plus a private state directory for the spool and journal (never /var/lib)."""
    return Certbot(pebble, tmp_path / "certbot", certbot_bin=certbot_bin,
                   extra_env={"CERTBOT_SMTP_DIST_STATE_DIR": str(state_dir)})


@pytest.fixture
def relay(relay_factory: Any) -> Relay:
    return relay_factory(mode="plaintext")  # type: ignore[no-any-return]


@pytest.fixture
def second_relay(relay_factory: Any) -> Relay:
    return relay_factory(mode="plaintext")  # type: ignore[no-any-return]


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    directory = tmp_path / "smtp-dist"
    directory.mkdir()
    return directory / "config.toml"


# --------------------------------------------------------------------------- scenarios


def test_1_reconfigure_then_renew_ships_the_new_certificate_once_per_matching_target(
    certbot: Certbot, relay_factory: Any, config_path: Path
) -> None:
    ops, web, elsewhere = (relay_factory(mode="plaintext") for _ in range(3))
    write_config(config_path, {
        "ops": (ops, {}),
        "web": (web, {"certificates": [NAME]}),
        "elsewhere": (elsewhere, {"certificates": ["*.elsewhere.example"]}),
    })
    certbot.certonly(NAME)
    old = live_fingerprint(certbot)

    result = certbot.run("reconfigure", "--cert-name", NAME, *plugin_args(config_path))
    assert "Successfully updated configuration" in result.stdout + result.stderr, output(result)
    assert_still_attached(certbot, config_path)
    # reconfigure checks each matching target's relay (one session, no mail) and sends nothing (it is a dry run).
    assert ops.connections == web.connections == 1
    assert ops.messages == web.messages == []

    certbot.renew()

    new = live_fingerprint(certbot)
    assert new != old
    for relay in (ops, web):
        assert len(relay.messages) == 1
        assert_carries_live_chain(relay.messages[0], certbot)
        assert fingerprint(attached_chain(relay.messages[0])) == new
        assert relay.connections == 2  # renew delivered and checked nothing first
    assert elsewhere.connections == 0


def test_2_run_with_two_names_sends_one_email_per_target(
    certbot: Certbot, relay: Relay, second_relay: Relay, config_path: Path
) -> None:
    write_config(config_path, {"ops": (relay, {}), "web": (second_relay, {})})

    certbot.run("run", *plugin_args(config_path), domains=[NAME, ALT])  # deploy_cert is called once per name

    for r in (relay, second_relay):
        assert len(r.messages) == 1
        assert_carries_live_chain(r.messages[0], certbot)
        assert r.connections == 2  # the relay check before issuance, then the delivery
    assert_still_attached(certbot, config_path)


def test_3_renew_dry_run_sends_nothing(certbot: Certbot, relay: Relay, config_path: Path) -> None:
    write_config(config_path, {"ops": (relay, {})})
    certbot.certonly(NAME)
    certbot.run("reconfigure", "--cert-name", NAME, *plugin_args(config_path))
    assert relay.connections == 1  # reconfigure's relay check (no mail)

    result = certbot.renew("--dry-run")

    assert "simulated renewals succeeded" in result.stdout + result.stderr, output(result)
    assert relay.connections == 1
    assert relay.messages == []
    assert_still_attached(certbot, config_path)


def test_4_relay_down_during_renew_is_logged_not_fatal_and_the_next_renewal_delivers(
    certbot: Certbot, config_path: Path, state_dir: Path
) -> None:
    port = free_ports(1)[0]
    with Relay(None, mode="plaintext", port=port) as relay:
        write_config(config_path, {"ops": (relay, {})})
        certbot.certonly(NAME)
        certbot.run("reconfigure", "--cert-name", NAME, *plugin_args(config_path))
    # The relay is down now; nothing listens on its port.

    down = certbot.renew(check=False)

    assert down.returncode == 0, output(down)
    assert_still_attached(certbot, config_path)
    log = certbot_log(certbot)
    assert "ops: failed SMTP_CONNECT in connect" in log
    assert f"certificate {NAME} was renewed and saved, but was not delivered to target(s) ops" in log
    assert (f"`certbot-smtp-dist retry --config {config_path} --state-dir {state_dir}` (from its timer, or now) "
            "re-sends them") in log
    assert (f"certbot-smtp-dist deploy --config {config_path} --state-dir {state_dir} "
            f"--lineage {certbot.live_dir(NAME)} --target ops") in log

    with Relay(None, mode="plaintext", port=port) as back:
        # The failed delivery was spooled: the retry command ships the certificate renewed while the relay was down.
        # The hinted command, as printed (entries are keyed to the credential store beside that config).
        retry = subprocess.run([str(Path(sys.executable).parent / "certbot-smtp-dist"), "retry",
                                "--config", str(config_path), "--state-dir", str(state_dir)],
                               capture_output=True, text=True)
        assert retry.returncode == 0, retry.stderr
        assert len(back.messages) == 1
        assert_carries_live_chain(back.messages[0], certbot)

        certbot.renew()

        assert len(back.messages) == 2
        assert_carries_live_chain(back.messages[1], certbot)


def test_5_broken_config_during_renew_is_logged_not_fatal_and_nothing_is_detached(
    certbot: Certbot, relay: Relay, config_path: Path
) -> None:
    write_config(config_path, {"ops": (relay, {})})
    certbot.certonly(NAME)
    certbot.run("reconfigure", "--cert-name", NAME, *plugin_args(config_path))
    good = config_path.read_text()
    config_path.write_text("surprise = 1\n" + good.replace(f"port = {relay.port}", 'port = "twenty-five"'))

    broken = certbot.renew(check=False)

    assert broken.returncode == 0, output(broken)
    assert_still_attached(certbot, config_path)
    log = certbot_log(certbot)
    assert f"config {config_path}: targets.ops.port: must be an integer, not str" in log
    assert f"config {config_path}: surprise: unknown top-level key" in log
    assert f"certificate {NAME} was renewed and saved, but was not sent" in log
    assert relay.connections == 1  # only reconfigure's relay check: the broken renewal dialled nothing

    config_path.write_text(good)
    certbot.renew()
    assert len(relay.messages) == 1
    assert_carries_live_chain(relay.messages[0], certbot)


def test_6_a_certificate_no_target_wants_gets_no_email(
    certbot: Certbot, relay: Relay, config_path: Path
) -> None:
    write_config(config_path, {"ops": (relay, {"certificates": ["*.elsewhere.example", "other.example.com"]})})

    certbot.run("run", *plugin_args(config_path), domains=[NAME, ALT])
    certbot.renew()

    assert relay.connections == 0
    assert "ops: skipped" in certbot_log(certbot)
    assert_still_attached(certbot, config_path)


def test_a_relative_config_path_is_saved_absolute_for_renewals(
    certbot: Certbot, relay: Relay, config_path: Path
) -> None:
    """certbot saves --smtp-dist-config as parsed; `certbot renew` runs from cron's or systemd's directory, where a
    relative path names another file (or none): the renewal would read another configuration than the one checked."""
    write_config(config_path, {"ops": (relay, {})})
    relative = os.path.relpath(config_path, certbot.base_dir)  # the harness runs certbot in its base directory
    assert not Path(relative).is_absolute()

    certbot.run("run", "-i", "smtp-dist", "--smtp-dist-config", relative, domains=[NAME])

    assert_still_attached(certbot, config_path)
    assert len(relay.messages) == 1
    certbot.renew()
    assert len(relay.messages) == 2
    assert_carries_live_chain(relay.messages[1], certbot)


def test_a_config_path_hand_edited_into_a_list_is_logged_and_the_certificate_still_renews(
    certbot: Certbot, relay: Relay, config_path: Path
) -> None:
    """configobj reads `a, b` as a list, and certbot casts it with the option's type: the cast must not raise (certbot
    would skip the certificate's renewal), the plugin reports the unusable path instead."""
    write_config(config_path, {"ops": (relay, {})})
    certbot.run("run", *plugin_args(config_path), domains=[NAME])
    old = live_fingerprint(certbot)
    conf = certbot.renewal_conf(NAME)
    conf.write_text(conf.read_text().replace(f"smtp_dist_config = {config_path}",
                                             f"smtp_dist_config = {config_path}, {config_path}"))

    result = certbot.renew(check=False)

    assert result.returncode == 0, output(result)
    assert live_fingerprint(certbot) != old
    assert len(relay.messages) == 1  # run's delivery only
    assert f"certificate {NAME} was renewed and saved, but was not sent" in certbot_log(certbot)


def test_readme_attach_command_for_certbot_before_2_3_attaches_and_ships(
    certbot: Certbot, relay: Relay, config_path: Path
) -> None:
    """Debian 12's certbot 2.1 has no `reconfigure`: the README's command for it, run as written (paths aside), on
    whichever certbot the suite runs (ACME_HARNESS_CERTBOT=/usr/bin/certbot for Debian's)."""
    write_config(config_path, {"ops": (relay, {})})
    certbot.certonly(NAME)
    old = live_fingerprint(certbot)
    readme = (Path(__file__).resolve().parents[2] / "README.rst").read_text("utf-8")
    block = readme.split("certbot before 2.3 (Debian 12 ships 2.1) has no ``reconfigure``", 1)[1]
    block = block.split(".. code-block:: sh\n\n", 1)[1].split("\n\n", 1)[0]
    block = block.replace("\\\n", " ").replace("/etc/letsencrypt/smtp-dist/config.toml", str(config_path))
    argv = shlex.split(block.replace("example.com", NAME))
    assert argv[:2] == ["certbot", "renew"], argv

    certbot.run("renew", *argv[2:])

    assert_still_attached(certbot, config_path)
    assert len(relay.messages) == 1
    assert fingerprint(attached_chain(relay.messages[0])) == live_fingerprint(certbot) != old
    certbot.renew()
    assert len(relay.messages) == 2
    assert_carries_live_chain(relay.messages[1], certbot)


@pytest.fixture
def without_optional_parts(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment in which our package's heavy dependencies cannot be imported (as on a broken install)."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    for module in ("pluggy",):  # our one dependency certbot itself does not import (cryptography it does)
        (blocker / f"{module}.py").write_text(f"raise ImportError('{module} is hidden by the test')\n")
    yield {"PYTHONPATH": str(blocker)}


def test_7_plugins_lists_smtp_dist_and_certificates_works_without_optional_parts(
    certbot: Certbot, without_optional_parts: dict[str, str]
) -> None:
    probe = subprocess.run([sys.executable, "-c", "import pluggy"], env=without_optional_parts,
                           capture_output=True, text=True)
    assert probe.returncode != 0 and "hidden by the test" in probe.stderr, "the blocker must work"

    for env in ({}, without_optional_parts):
        listing = certbot.run("plugins", acme_args=False, env=env)
        lines = listing.stdout.splitlines()
        at = lines.index("* smtp-dist")
        assert lines[at + 1] == "Description: Ship the certificate by email (SMTP) to configured recipients"
        assert "Installer" in lines[at + 2]

    certbot.certonly(NAME)
    listing = certbot.run("certificates", acme_args=False, env=without_optional_parts)
    assert f"Certificate Name: {NAME}" in listing.stdout, output(listing)


def test_8_deploy_hook_without_installer_ships_like_the_plugin(
    certbot: Certbot, relay: Relay, config_path: Path
) -> None:
    write_config(config_path, {"ops": (relay, {})})
    command = f"{Path(sys.executable).parent / 'certbot-smtp-dist'} deploy --config {config_path}"
    certbot.certonly(NAME, args=["--deploy-hook", command])
    assert len(relay.messages) == 1  # certbot runs deploy hooks after certonly, too
    old = live_fingerprint(certbot)

    certbot.renew()

    assert "installer" not in renewal_params(certbot)
    assert len(relay.messages) == 2
    assert_carries_live_chain(relay.messages[1], certbot)
    assert fingerprint(attached_chain(relay.messages[1])) != old


def test_9_readme_uninstall_detaches_the_plugin_and_renewal_keeps_working(
    certbot: Certbot, relay: Relay, config_path: Path
) -> None:
    """The README's uninstall step, run as written on certbot's own renewal file (only its directory differs)."""
    write_config(config_path, {"ops": (relay, {})})
    certbot.certonly(NAME)
    certbot.run("reconfigure", "--cert-name", NAME, *plugin_args(config_path))
    assert_still_attached(certbot, config_path)
    checked = relay.connections  # reconfigure's relay check
    readme = (Path(__file__).resolve().parents[2] / "README.rst").read_text("utf-8")
    uninstall = readme.split("Uninstall\n---------\n", 1)[1].split(".. code-block:: sh\n\n", 1)[1]
    detach = "\n".join(line[4:] for line in uninstall.splitlines()[:2])
    assert detach.startswith("grep -l '^installer = smtp-dist$' /etc/letsencrypt/renewal/*.conf |"), detach

    subprocess.run(["sh", "-c", detach.replace("/etc/letsencrypt", str(certbot.config_dir))], check=True)

    params = renewal_params(certbot)
    assert "installer" not in params and not any(k.startswith("smtp_dist_") for k in params), params
    assert "authenticator" in params  # the rest of certbot's renewal configuration is untouched
    result = certbot.renew()
    assert live_fingerprint(certbot), output(result)
    assert relay.connections == checked and relay.messages == []  # detached: the renewal ships nothing


# --------------------------------------------------------------------------- interactive flows raise


def test_reconfigure_with_a_broken_config_fails_and_changes_nothing(
    certbot: Certbot, relay: Relay, config_path: Path
) -> None:
    # certbot drops an installer whose prepare() raised PluginError here and reports success: we must not.
    config_path.write_text('[targets.ops]\nhost = 3\nfrom_address = "certbot@example.com"\n')
    certbot.certonly(NAME)
    before = certbot.renewal_conf(NAME).read_text()

    result = certbot.run("reconfigure", "--cert-name", NAME, *plugin_args(config_path), check=False)

    assert result.returncode == 1, output(result)
    assert f"smtp-dist: configuration {config_path} is unusable" in result.stderr
    assert "  - targets.ops.host: must be a string, not int" in result.stderr
    assert "  - targets.ops.to: is required" in result.stderr
    assert certbot.renewal_conf(NAME).read_text() == before
    assert relay.connections == 0


def test_install_with_the_relay_down_fails_with_the_reason(certbot: Certbot, config_path: Path) -> None:
    port = free_ports(1)[0]
    with Relay(None, mode="plaintext", port=port) as relay:
        write_config(config_path, {"ops": (relay, {})})
    certbot.certonly(NAME)

    result = certbot.run("install", "--cert-name", NAME, *plugin_args(config_path), acme_args=False, check=False)

    # The relay check in prepare() stops certbot before it installs (saves) anything.
    assert result.returncode == 1, output(result)
    assert "found target(s) that cannot work; nothing was saved" in result.stderr, output(result)
    assert "ops: FAILED SMTP_CONNECT in connect (retryable)" in result.stderr, output(result)


def test_reconfigure_with_a_relay_that_strips_starttls_fails_and_changes_nothing(
    certbot: Certbot, relay_factory: Any, config_path: Path
) -> None:
    stripped = relay_factory(mode="starttls_not_offered")
    write_config(config_path, {"ops": (stripped, {})})
    certbot.certonly(NAME)
    before = certbot.renewal_conf(NAME).read_text()

    result = certbot.run("reconfigure", "--cert-name", NAME, *plugin_args(config_path), check=False)

    assert result.returncode == 1, output(result)
    assert "ops: FAILED SMTP_TLS in tls (not retryable): relay does not advertise STARTTLS" in result.stderr
    assert certbot.renewal_conf(NAME).read_text() == before
    assert stripped.messages == []
