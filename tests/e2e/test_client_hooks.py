"""The shims in `hooks/` for lego, dehydrated, acme.sh and uacme, end to end: a loopback pebble CA, Debian's real lego,
dehydrated and uacme issuing from it, and an aiosmtpd relay recording what was shipped. acme.sh is not packaged for
Debian: its shim runs under a reproduction of acme.sh's deploy-hook helpers instead.

Each delivery test asserts what the relay received: how many messages, that the attached chain is the certificates of
the client's full-chain file (canonical PEM, nothing else), and that its leaf is the certificate the client just
saved. Every hook runs as the client runs it: a cold process found through PATH, configured only through the
environment.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from acmeharness import Dehydrated, Lego, Pebble, Uacme, assert_issued_by_pebble, load_pem_certs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from support import ci
from support.deployenv import DeployEnv, relay_target
from support.pki import LineagePaths, write_lineage
from support.relay import ReceivedMessage, Relay

from certbot_smtp_dist._internal import lineage

pytestmark = pytest.mark.e2e

NAME = "test.example.com"
ALT = "www.test.example.com"
HOOKS = Path(__file__).resolve().parents[2] / "hooks"
VENV_BIN = Path(sys.executable).parent  # where the `certbot-smtp-dist` console script of the package under test is
PEM_CHAIN_TYPE = "application/pem-certificate-chain"  # RFC 8555 §9.1
SECRET = "relay-secret-7f3a"
EX_TEMPFAIL, EX_USAGE = 75, 64
SETTLE = 0.5  # seconds to wait for a message that must not come


# --------------------------------------------------------------------------- helpers


def attachment(message: ReceivedMessage) -> tuple[str, bytes]:
    """(file name, bytes) of the one certificate-chain attachment."""
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    chains = [part for part in parsed.iter_attachments() if part.get_content_type() == PEM_CHAIN_TYPE]
    assert len(chains) == 1, f"expected one {PEM_CHAIN_TYPE} attachment, got {len(chains)}"
    data = chains[0].get_content()
    assert isinstance(data, bytes)
    return str(chains[0].get_filename()), data


def fingerprint(pem: bytes) -> bytes:
    return load_pem_certs(pem)[0].fingerprint(hashes.SHA256())


def assert_shipped(message: ReceivedMessage, fullchain: Path, name: str = NAME) -> bytes:
    """The attachment is the certificates of `fullchain`, each as canonical PEM (the file byte for byte when the
    client writes canonical PEM), named after the certificate; returns the leaf fingerprint."""
    filename, chain = attachment(message)
    assert chain == b"".join(c.public_bytes(Encoding.PEM) for c in load_pem_certs(fullchain.read_bytes()))
    assert filename == f"{name.replace('*', 'wildcard')}.fullchain.pem"
    assert message.rcpt_tos == ("pki@example.com",)
    return fingerprint(chain)


def wait_exactly(relay: Relay, count: int) -> list[ReceivedMessage]:
    """`count` messages have arrived, and no further one arrives shortly after."""
    messages = relay.wait_for_messages(count, timeout=30)
    with pytest.raises(TimeoutError):
        relay.wait_for_messages(count + 1, timeout=SETTLE)
    return messages


def executable(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def run(argv: Sequence[str | os.PathLike[str]], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], env=dict(env), capture_output=True, text=True, timeout=120,
                          check=False)


def output(result: Any) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


class SmtpDist:
    """certbot-smtp-dist configured with one target, as an ACME client's hook sees it: PATH and two variables."""

    def __init__(self, root: Path, target: Mapping[str, Any], secret: str | None = None) -> None:
        self.deploy_env = DeployEnv(root)
        self.deploy_env.write_config({"ops": target})
        if secret is not None:
            self.deploy_env.set_credential("relay", "smtp_password", secret)
        self.config = self.deploy_env.config

    def env(self, **extra: str) -> dict[str, str]:
        return self.deploy_env.env({"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}", **extra})


@pytest.fixture
def relay(relay_factory: Any) -> Relay:
    return relay_factory(mode="plaintext")  # type: ignore[no-any-return]


@pytest.fixture
def smtp_dist(tmp_path: Path, relay: Relay) -> SmtpDist:
    return SmtpDist(tmp_path / "smtp-dist", relay_target(relay, timeout=5))


@pytest.fixture
def down_smtp_dist(tmp_path: Path, unused_port: int) -> SmtpDist:
    """Configured for a relay that is not there: every delivery fails, retryably (connection refused)."""
    target = {"host": "127.0.0.1", "port": unused_port, "tls_mode": "plaintext", "timeout": 2,
              "from_address": "certbot@example.com", "to": ["pki@example.com"]}
    return SmtpDist(tmp_path / "smtp-dist-down", target)


@pytest.fixture
def certificate(tmp_path: Path) -> LineagePaths:
    return write_lineage(tmp_path / "live" / NAME, names=(NAME, ALT))


# --------------------------------------------------------------------------- lego


def test_lego_run_hook_ships_the_certificate_lego_saved(
    pebble: Pebble, lego: Lego, relay: Relay, smtp_dist: SmtpDist
) -> None:
    lego.run(NAME, run_hook=HOOKS / "lego-hook", env=smtp_dist.env())

    (message,) = wait_exactly(relay, 1)
    crt = lego.cert_path(NAME)
    assert len(load_pem_certs(crt.read_bytes())) == 2, "lego's .crt is leaf + issuer: the full chain"
    assert_shipped(message, crt)
    assert_issued_by_pebble(pebble, attachment(message)[1], names=[NAME])


def test_lego_renew_hook_ships_the_renewed_certificate(lego: Lego, relay: Relay, smtp_dist: SmtpDist) -> None:
    lego.run(NAME)
    first = fingerprint(lego.cert_path(NAME).read_bytes())

    lego.renew(NAME, renew_hook=HOOKS / "lego-hook", env=smtp_dist.env())

    (message,) = wait_exactly(relay, 1)
    shipped = assert_shipped(message, lego.cert_path(NAME))
    assert shipped != first, "the renewal must ship the new certificate, not the one it replaced"


def test_bare_deploy_command_is_a_lego_hook_too(
    lego: Lego, relay_factory: Any, tmp_path: Path
) -> None:
    """`--run-hook "certbot-smtp-dist deploy --target ops"`: lego splits on whitespace, no shim, no lineage flags."""
    ops, other = relay_factory(mode="plaintext"), relay_factory(mode="plaintext")
    env = SmtpDist(tmp_path / "smtp-dist", relay_target(ops, timeout=5))
    env.deploy_env.write_config({"ops": relay_target(ops, timeout=5), "other": relay_target(other, timeout=5)})

    lego.run(NAME, run_hook="certbot-smtp-dist deploy --target ops", env=env.env())

    (message,) = wait_exactly(ops, 1)
    assert_shipped(message, lego.cert_path(NAME))
    assert other.connections == 0


LEGO4 = {"LEGO_CERT_DOMAIN": NAME, "LEGO_CERT_PATH": "{fullchain}", "LEGO_CERT_KEY_PATH": "{key}",
         "LEGO_ACCOUNT_EMAIL": "x@example.com"}
LEGO5 = {"LEGO_HOOK_CERT_NAME": "lego5-name", "LEGO_HOOK_CERT_NAME_SANITIZED": "lego5-name",
         "LEGO_HOOK_CERT_DOMAINS": f"{NAME},{ALT}", "LEGO_HOOK_CERT_PATH": "{fullchain}",
         "LEGO_HOOK_CERT_KEY_PATH": "{key}", "LEGO_HOOK_CERT_KEY_TYPE": "EC256"}


@pytest.mark.parametrize("command", ["shim", "bare"])
@pytest.mark.parametrize(("variables", "name"), [(LEGO4, NAME), (LEGO5, "lego5-name")], ids=["lego4", "lego5"])
def test_lego_hook_variables_map_onto_deploy(
    command: str, variables: Mapping[str, str], name: str, certificate: LineagePaths, relay: Relay,
    smtp_dist: SmtpDist,
) -> None:
    """Both lego generations' variables, through the shim and through `certbot-smtp-dist deploy` with no flags."""
    env = smtp_dist.env(**{k: v.format(fullchain=certificate.fullchain, key=certificate.privkey)
                           for k, v in variables.items()})
    argv = [HOOKS / "lego-hook"] if command == "shim" else ["certbot-smtp-dist", "deploy"]

    result = run(argv, env)

    assert result.returncode == 0, output(result)
    (message,) = wait_exactly(relay, 1)
    assert_shipped(message, certificate.fullchain, name)


@pytest.mark.parametrize(
    ("variables", "name"),
    [
        ({"LEGO_CERT_DOMAIN": "a.example", "LEGO_CERT_PATH": "/c", "LEGO_CERT_KEY_PATH": "/k"}, "a.example"),
        ({"LEGO_HOOK_CERT_DOMAINS": "a.example, b.example", "LEGO_HOOK_CERT_PATH": "/c",
          "LEGO_HOOK_CERT_KEY_PATH": "/k"}, "a.example"),
        ({"LEGO_HOOK_CERT_NAME": "mine", "LEGO_HOOK_CERT_DOMAINS": "a.example", "LEGO_HOOK_CERT_PATH": "/c",
          "LEGO_HOOK_CERT_KEY_PATH": "/k", "LEGO_CERT_PATH": "/old", "LEGO_CERT_KEY_PATH": "/old"}, "mine"),
    ],
    ids=["lego4", "lego5-domains", "lego5-name-wins-over-lego4"],
)
def test_from_environment_reads_lego4_and_lego5(variables: Mapping[str, str], name: str) -> None:
    source = lineage.from_environment(variables)
    assert source is not None
    assert (source.fullchain, source.key, source.cert, source.chain, source.name) == (
        Path("/c"), Path("/k"), None, None, name)


def test_lego_hook_outside_lego_is_a_usage_error(relay: Relay, smtp_dist: SmtpDist) -> None:
    result = run([HOOKS / "lego-hook"], smtp_dist.env())
    assert result.returncode == EX_USAGE, output(result)
    assert "LEGO_CERT_PATH" in result.stderr
    assert relay.connections == 0


# --------------------------------------------------------------------------- dehydrated


def test_dehydrated_deploy_cert_ships_and_a_forced_renewal_ships_again(
    pebble: Pebble, dehydrated: Dehydrated, relay: Relay, smtp_dist: SmtpDist
) -> None:
    hook, env = HOOKS / "dehydrated-hook", smtp_dist.env()
    live = dehydrated.cert_dir(NAME)

    dehydrated.cron(NAME, ALT, hook=hook, env=env)
    (first,) = wait_exactly(relay, 1)
    first_fp = assert_shipped(first, live / "fullchain.pem")
    assert fingerprint((live / "cert.pem").read_bytes()) == first_fp
    assert attachment(first)[1].endswith((live / "chain.pem").read_bytes())
    assert_issued_by_pebble(pebble, attachment(first)[1], names=[NAME, ALT])

    dehydrated.cron(NAME, ALT, hook=hook, env=env)  # not due: dehydrated calls unchanged_cert, which ships nothing
    wait_exactly(relay, 1)

    dehydrated.cron(NAME, ALT, hook=hook, env=env, force=True)
    second = wait_exactly(relay, 2)[1]
    assert assert_shipped(second, live / "fullchain.pem") != first_fp


def test_dehydrated_chains_to_the_existing_hook(
    pebble: Pebble, dehydrated_bin: str, relay: Relay, smtp_dist: SmtpDist, tmp_path: Path
) -> None:
    """Set up as documented: HOOK is ours, the user's old hook is named in dehydrated's config."""
    calls = tmp_path / "old-hook.calls"
    old = executable(tmp_path / "old-hook", f'printf "%s\\n" "$*" >> {shlex.quote(str(calls))}\n')
    client = Dehydrated(pebble, tmp_path / "dehydrated", hook=HOOKS / "dehydrated-hook",
                        dehydrated_bin=dehydrated_bin,
                        extra_config=f"export CERTBOT_SMTP_DIST_CHAIN_HOOK={shlex.quote(str(old))}")

    client.cron(NAME, env=smtp_dist.env())

    (message,) = wait_exactly(relay, 1)
    live = client.cert_dir(NAME)
    assert_shipped(message, live / "fullchain.pem")
    handlers = [line.split(" ")[0] for line in calls.read_text().splitlines()]
    for expected in ("startup_hook", "deploy_challenge", "clean_challenge", "deploy_cert", "exit_hook"):
        assert expected in handlers, handlers
    (deploy_cert,) = [line.split(" ") for line in calls.read_text().splitlines() if line.startswith("deploy_cert ")]
    assert deploy_cert[1:6] == [NAME, str(live / "privkey.pem"), str(live / "cert.pem"),
                                str(live / "fullchain.pem"), str(live / "chain.pem")]


DEHYDRATED_OTHER_HANDLERS = [
    ("this_hookscript_is_broken__dehydrated_is_working_fine__please_ignore_unknown_hooks_in_your_script",),
    ("startup_hook",),
    ("deploy_challenge", "a", "b", "c"),
    ("clean_challenge", "a", "b", "c"),
    ("invalid_challenge", NAME, "{{}}"),
    ("request_failure", "500", "oops", "https://127.0.0.1/acme", ""),
    ("generate_csr", NAME, "/nonexistent", NAME),
    ("unchanged_cert", NAME, "{privkey}", "{cert}", "{fullchain}", "{chain}"),
    ("sync_cert", "{privkey}", "{cert}", "{fullchain}", "{chain}", "/nonexistent.csr"),
    ("deploy_ocsp", NAME, "/nonexistent.der", "1700000000"),
    ("exit_hook", ""),
    ("a_handler_from_the_future", "x"),
    (),
]


def test_dehydrated_other_handlers_exit_0_and_send_nothing(
    certificate: LineagePaths, relay: Relay, smtp_dist: SmtpDist
) -> None:
    paths = {"privkey": certificate.privkey, "cert": certificate.cert, "fullchain": certificate.fullchain,
             "chain": certificate.chain}
    for handler in DEHYDRATED_OTHER_HANDLERS:
        argv = [arg.format(**paths) for arg in handler]
        result = run([HOOKS / "dehydrated-hook", *argv], smtp_dist.env())
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), f"{handler}: {output(result)}"
    assert relay.connections == 0


def test_dehydrated_chained_hook_runs_first_with_the_same_argv_and_its_failure_propagates(
    certificate: LineagePaths, relay: Relay, smtp_dist: SmtpDist, tmp_path: Path
) -> None:
    calls = tmp_path / "old-hook.calls"
    old = executable(tmp_path / "old-hook", f"""
for arg in "$@"; do printf '%s\\n' "$arg"; done >> {shlex.quote(str(calls))}
printf -- '--\\n' >> {shlex.quote(str(calls))}
case $1 in
    generate_csr) echo "CSR FROM THE OLD HOOK" ;;
    deploy_cert) exit "${{OLD_HOOK_STATUS:-0}}" ;;
esac
""")
    hook = HOOKS / "dehydrated-hook"
    deploy_cert = ["deploy_cert", NAME, str(certificate.privkey), str(certificate.cert), str(certificate.fullchain),
                   str(certificate.chain), "1700000000"]
    env = smtp_dist.env(CERTBOT_SMTP_DIST_CHAIN_HOOK=str(old))

    csr = run([hook, "generate_csr", NAME, "/certs/x", f"{NAME} {ALT}"], env)
    assert (csr.returncode, csr.stdout) == (0, "CSR FROM THE OLD HOOK\n"), "the old hook's CSR must reach dehydrated"

    failed = run([hook, *deploy_cert], {**env, "OLD_HOOK_STATUS": "7"})
    assert failed.returncode == 7, output(failed)
    assert relay.connections == 0, "nothing is shipped when the existing hook failed"

    shipped = run([hook, *deploy_cert], env)
    assert shipped.returncode == 0, output(shipped)
    (message,) = wait_exactly(relay, 1)
    assert_shipped(message, certificate.fullchain)

    recorded = calls.read_text().split("--\n")[:-1]
    assert [r.splitlines() for r in recorded] == [
        ["generate_csr", NAME, "/certs/x", f"{NAME} {ALT}"], deploy_cert, deploy_cert]


# --------------------------------------------------------------------------- acme.sh

# The acme.sh helpers the deploy hook uses, reduced to their contract: _getdeployconf KEY keeps $KEY from the
# environment, else restores the value saved for the domain; _savedeployconf KEY VALUE saves it (here: into
# $DOMAIN_CONF, so the test can read exactly what acme.sh would keep).
ACME_SH_HARNESS = r"""
_info() { printf 'info: %s\n' "$*" >&2; }
_err() { printf 'err: %s\n' "$*" >&2; }
_debug() { printf 'debug: %s\n' "$*" >&2; }
_getdeployconf() {
  eval "_v=\${$1:-}"
  [ -n "$_v" ] && return 0
  _v=$(sed -n "s/^SAVED_$1=//p" "$DOMAIN_CONF" 2>/dev/null | tail -n 1)
  eval "$1=\$_v"
  export "$1"
}
_savedeployconf() { printf 'SAVED_%s=%s\n' "$1" "$2" >> "$DOMAIN_CONF"; }
. "$DEPLOY_HOOK"
smtp_dist_deploy "$@"
"""


def acme_sh_deploy(certificate: LineagePaths, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return run(["sh", "-c", ACME_SH_HARNESS, "acme.sh", NAME, certificate.privkey, certificate.cert,
                certificate.chain, certificate.fullchain], env)


def test_acme_sh_deploy_hook_ships_and_saves_only_the_config_path(
    certificate: LineagePaths, relay_factory: Any, tmp_path: Path
) -> None:
    relay = relay_factory(mode="plaintext", auth=("acme", SECRET))
    smtp_dist = SmtpDist(tmp_path / "smtp-dist", relay_target(relay, timeout=5), secret=SECRET)
    domain_conf = tmp_path / f"{NAME}.conf"
    common = {"DOMAIN_CONF": str(domain_conf), "DEPLOY_HOOK": str(HOOKS / "acme.sh" / "smtp_dist.sh")}

    issued = acme_sh_deploy(certificate, smtp_dist.env(**common))

    assert issued.returncode == 0, output(issued)
    (message,) = wait_exactly(relay, 1)
    assert_shipped(message, certificate.fullchain)
    assert message.auth_user == "acme"
    assert domain_conf.read_text() == (f"SAVED_CERTBOT_SMTP_DIST_CONFIG={smtp_dist.config}\n"
                                       f"SAVED_CERTBOT_SMTP_DIST_STATE_DIR={smtp_dist.deploy_env.state_dir}\n")
    assert SECRET not in issued.stdout + issued.stderr
    assert "info: " in issued.stderr

    # A renewal from cron: the variables are gone from the environment, acme.sh restores the saved paths.
    renew_env = {k: v for k, v in smtp_dist.env(**common).items() if not k.startswith("CERTBOT_SMTP_DIST_")}
    renewed = acme_sh_deploy(certificate, renew_env)

    assert renewed.returncode == 0, output(renewed)
    assert_shipped(wait_exactly(relay, 2)[1], certificate.fullchain)
    journal = (smtp_dist.deploy_env.state_dir / "journal.jsonl").read_text().splitlines()
    attempts = [json.loads(line) for line in journal if json.loads(line)["event"] == "attempt"]
    assert [a["outcome"] for a in attempts] == ["delivered", "delivered"], "state dir restored"
    assert SECRET not in domain_conf.read_text()


def test_acme_sh_deploy_hook_returns_the_deploy_status(
    certificate: LineagePaths, down_smtp_dist: SmtpDist, tmp_path: Path
) -> None:
    env = down_smtp_dist.env(DOMAIN_CONF=str(tmp_path / "domain.conf"),
                             DEPLOY_HOOK=str(HOOKS / "acme.sh" / "smtp_dist.sh"))
    result = acme_sh_deploy(certificate, env)
    assert result.returncode == EX_TEMPFAIL, output(result)
    assert f"err: certbot-smtp-dist deploy failed with exit status {EX_TEMPFAIL}" in result.stderr


# --------------------------------------------------------------------------- uacme

# Debian's uacme against pebble, through `uacme-ship` as cron would run it (`Uacme` in acmeharness: uacme.sh answers
# http-01, and uacme trusts pebble's API alone). Every exit status uacme documents comes from the real client: 0
# issued, 1 not due for renewal, 2 failure.


def uacme_leaf(uacme: Uacme, ident: str = NAME) -> bytes:
    """The fingerprint of the leaf uacme saved in CONFDIR/IDENT/cert.pem."""
    return fingerprint(uacme.cert_path(ident).read_bytes())


def test_uacme_ship_ships_what_uacme_issued_and_nothing_when_not_due(
    pebble: Pebble, uacme: Uacme, relay: Relay, smtp_dist: SmtpDist
) -> None:
    ship, env = HOOKS / "uacme-ship", smtp_dist.env()
    cert = uacme.cert_path(NAME)

    issued = uacme.issue(NAME, ALT, program=ship, env=env)

    assert issued.returncode == 0, output(issued)
    (first,) = wait_exactly(relay, 1)
    assert len(load_pem_certs(cert.read_bytes())) == 2, "uacme's cert.pem is leaf + issuer: the full chain"
    first_fp = assert_shipped(first, cert)
    assert first_fp == uacme_leaf(uacme), "the certificate uacme just saved, not another"
    assert_issued_by_pebble(pebble, attachment(first)[1], names=[NAME, ALT])

    not_due = uacme.issue(NAME, ALT, program=ship, env=env)  # pebble's certificates last 5 years: not due
    assert not_due.returncode == 1, output(not_due)
    assert "skipping" in not_due.stderr
    wait_exactly(relay, 1)

    forced = uacme.issue(NAME, ALT, force=True, program=ship, env=env)
    assert forced.returncode == 0, output(forced)
    second = wait_exactly(relay, 2)[1]
    assert assert_shipped(second, cert) == uacme_leaf(uacme) != first_fp, "the renewal ships the new certificate"


def test_uacme_ship_ships_nothing_when_uacme_fails(uacme: Uacme, relay: Relay, smtp_dist: SmtpDist) -> None:
    """A certificate from an earlier run is on disk; the renewal fails (nobody answers http-01): uacme exits 2."""
    uacme.issue(NAME, check=True)
    before = uacme_leaf(uacme)

    failed = uacme.issue(NAME, force=True, program=HOOKS / "uacme-ship", env=smtp_dist.env(), serve_http01=False)

    assert failed.returncode == 2, output(failed)
    assert "connection refused" in failed.stderr, "the challenge must have failed, not something else"
    assert uacme_leaf(uacme) == before
    with pytest.raises(TimeoutError):
        relay.wait_for_messages(1, timeout=SETTLE)
    assert relay.connections == 0


def test_uacme_ship_other_subcommands_send_nothing(uacme: Uacme, relay: Relay, smtp_dist: SmtpDist) -> None:
    """new, revoke and -V through the shim, with the real uacme: uacme's status passes through, none ships."""
    ship, env = HOOKS / "uacme-ship", smtp_dist.env()
    new = uacme.new(program=ship, env=env, check=False)
    assert new.returncode == 0, output(new)
    issued = uacme.issue(NAME, program=ship, env=env)
    assert issued.returncode == 0, output(issued)
    wait_exactly(relay, 1)

    revoked = uacme.run("revoke", str(uacme.cert_path(NAME)), program=ship, env=env, check=False)
    assert revoked.returncode == 0, output(revoked)
    version = uacme.run("-V", program=ship, env=env, check=False)
    assert "uacme: version" in version.stderr
    assert version.returncode == uacme.run("-V", env=env, check=False).returncode, "uacme -V's own status (2)"
    wait_exactly(relay, 1)


def test_uacme_ship_delivery_failure_is_the_exit_status(uacme: Uacme, down_smtp_dist: SmtpDist) -> None:
    result = uacme.issue(NAME, program=HOOKS / "uacme-ship", env=down_smtp_dist.env())
    assert result.returncode == EX_TEMPFAIL, output(result)
    assert uacme.cert_path(NAME).is_file(), "uacme issued; the deploy's status is what cron sees"


# The shim's own parsing, with a stand-in for uacme: every way of spelling uacme's options (the real client would need
# a pebble account per spelling and cannot use /u), and `issue CSRFILE`, refused before anything is sent.
FAKE_UACME = """
printf '%s\\n' "$@" > "$FAKE_UACME_ARGV"
exit "$FAKE_UACME_EXIT"
"""


def fake_uacme_env(tmp_path: Path, smtp_dist: SmtpDist, status: int) -> dict[str, str]:
    fake = executable(tmp_path / "fake-uacme", FAKE_UACME)
    return smtp_dist.env(UACME=str(fake), FAKE_UACME_ARGV=str(tmp_path / "uacme.argv"), FAKE_UACME_EXIT=str(status))


@pytest.mark.parametrize(
    ("argv", "confdir", "ident"),
    [
        (["issue", NAME], "/etc/ssl/uacme", NAME),
        (["-vc", "/u", "issue", NAME, ALT], "/u", NAME),
        (["-yvc/u", "issue", NAME], "/u", NAME),
        (["--confdir=/u", "--hook", "/h/c", "-t", "EC", "-l2", "issue", NAME], "/u", NAME),
        (["--confdir", "/u", "-d", "30", "issue", NAME], "/u", NAME),
        (["-h", "hook-c", "issue", NAME], "/etc/ssl/uacme", NAME),
        (["issue", "-c", "/u", NAME], "/u", NAME),  # getopt_long permutes: options may follow the subcommand
        (["-c", "/u", "--", "issue", NAME], "/u", NAME),
        (["-c", "/u", "issue", f"*.{NAME}", NAME], "/u", f"*.{NAME}"),
    ],
)
def test_uacme_ship_finds_confdir_and_identifier(
    argv: list[str], confdir: str, ident: str, smtp_dist: SmtpDist, tmp_path: Path
) -> None:
    """Where uacme keeps the files, for each way of spelling its options; the real uacme is named by $UACME."""
    recorder = executable(tmp_path / "certbot-smtp-dist", f'printf "%s\\n" "$@" > {tmp_path / "deploy.argv"}\n')
    env = fake_uacme_env(tmp_path, smtp_dist, 0)
    env["PATH"] = f"{recorder.parent}{os.pathsep}{env['PATH']}"

    result = run([HOOKS / "uacme-ship", *argv], env)

    assert result.returncode == 0, output(result)
    directory = ident.removeprefix("*.")  # uacme keeps *.example.com in CONFDIR/example.com
    assert (tmp_path / "deploy.argv").read_text().splitlines() == [
        "deploy", "--fullchain", f"{confdir}/{directory}/cert.pem", "--key", f"{confdir}/private/{directory}/key.pem",
        "--name", ident]


def test_uacme_ship_refuses_csr_mode(relay: Relay, smtp_dist: SmtpDist, tmp_path: Path) -> None:
    csr = tmp_path / "example.csr"
    csr.write_text("-----BEGIN CERTIFICATE REQUEST-----\n")
    result = run([HOOKS / "uacme-ship", "issue", csr], fake_uacme_env(tmp_path, smtp_dist, 0))
    assert result.returncode == EX_USAGE, output(result)
    assert "--key" in result.stderr
    assert relay.connections == 0


# --------------------------------------------------------------------------- the shims themselves


SHIMS = ["lego-hook", "dehydrated-hook", "uacme-ship", "acme.sh/smtp_dist.sh"]


@pytest.mark.parametrize("shim", SHIMS)
def test_shims_are_posix_sh_and_carry_no_config_path(shim: str) -> None:
    path = HOOKS / shim
    text = path.read_text()
    assert text.startswith("#!/bin/sh\n")
    code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if "config.toml" in line or "--config" in line], \
        "the configuration comes from $CERTBOT_SMTP_DIST_CONFIG or the default path"
    if shim != "acme.sh/smtp_dist.sh":  # acme.sh sources its deploy hooks: no shell options of their own there
        assert "set -eu" in code
        assert os.access(path, os.X_OK)
    parsed = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True, check=False)
    assert parsed.returncode == 0, parsed.stderr
    shellcheck = ci.require_tool("shellcheck", "apt-get install shellcheck")
    checked = subprocess.run([shellcheck, "-s", "sh", str(path)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout
