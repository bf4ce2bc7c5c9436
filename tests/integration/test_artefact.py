"""Only what the payload promises leaves, whatever the input files hold, and reading them is bounded: real relays on
loopback, real FIFOs and devices, the real CLI in a cold process where a hang or a memory blow-up could happen."""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support import ci
from support.deployenv import DeployEnv, Run, relay_target
from support.pki import LineagePaths, write_lineage

REPO = Path(__file__).resolve().parents[2]
P12_PASS = "p12-Pass-phrase!"
OPENSSL_TEXT = b"subject=CN = test.example.com\n\n"
TIMEOUT = 5
#: What a cold process spends outside any deadline on a busy two-core machine (start-up, imports, config).
COLD_START = 10.0


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def assert_no_key(raw: bytes, lineage: LineagePaths) -> None:
    """Neither the key's text nor its secret bytes, in the raw message nor in any decoded part, nor inside any PEM
    block of a part. (An EC key's PEM also carries the public point, which the leaf rightly shows: those lines are
    public and not looked for.)"""
    from cryptography.hazmat.primitives import serialization

    public = lineage.leaf.cert_pem()
    key_lines = [ln for ln in lineage.privkey.read_bytes().splitlines()[1:-1] if ln not in public]
    assert key_lines
    key_der = lineage.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    scalar = _private_value(lineage)
    parts = [raw] + [p.get_payload(decode=True) or b"" for p in parse(raw).walk() if not p.is_multipart()]
    for part in parts:
        assert isinstance(part, bytes)
        assert b"PRIVATE KEY" not in part
        assert not any(line in part for line in key_lines)
        assert key_der not in part and scalar not in part
        assert not any(scalar in content for content in _pem_contents(part))


def _private_value(lineage: LineagePaths) -> bytes:
    numbers: Any = lineage.key.private_numbers()
    value = int(getattr(numbers, "private_value", None) or numbers.d)
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _pem_contents(data: bytes) -> list[bytes]:
    """The decoded content of every PEM-looking block (an oracle of its own, not the parser under test)."""
    bodies = re.findall(rb"-----BEGIN [^\n]*?-----(.*?)-----END ", data, re.S)
    return [base64.b64decode(re.sub(rb"\s+", b"", body) + b"==", validate=False) for body in bodies]


def chain_attachment(raw: bytes) -> bytes:
    [part] = [p for p in parse(raw).iter_attachments() if p.get_content_type() == "application/pem-certificate-chain"]
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data


# ------------------------------------------------------------------------------------------- the four input paths

Source = Callable[[LineagePaths, Path], tuple[list[str], dict[str, str], Path | None]]


def _lineage_fullchain_with_key(lin: LineagePaths, tmp: Path) -> tuple[list[str], dict[str, str], Path | None]:
    lin.fullchain.write_bytes(lin.fullchain.read_bytes() + lin.privkey.read_bytes())
    return ["--lineage", str(lin.live_dir)], {}, lin.fullchain


def _one_combined_file(lin: LineagePaths, tmp: Path) -> tuple[list[str], dict[str, str], Path | None]:
    both = tmp / "combined.pem"
    both.write_bytes(lin.privkey.read_bytes() + OPENSSL_TEXT + lin.fullchain.read_bytes())
    both.chmod(0o600)
    return ["--fullchain", str(both), "--key", str(both)], {}, None  # the key file's key is expected there


def _key_inside_cert(lin: LineagePaths, tmp: Path) -> tuple[list[str], dict[str, str], Path | None]:
    cert = tmp / "cert-and-key.pem"
    cert.write_bytes(lin.cert.read_bytes() + lin.privkey.read_bytes())
    return ["--cert", str(cert), "--chain", str(lin.chain), "--key", str(lin.privkey)], {}, cert


def _lego_combined_cert_path(lin: LineagePaths, tmp: Path) -> tuple[list[str], dict[str, str], Path | None]:
    crt = tmp / "certificates" / "test.example.com.crt"
    crt.parent.mkdir()
    crt.write_bytes(lin.fullchain.read_bytes() + lin.privkey.read_bytes())
    env = {"LEGO_CERT_DOMAIN": "test.example.com", "LEGO_CERT_PATH": str(crt), "LEGO_CERT_KEY_PATH": str(lin.privkey)}
    return [], env, crt


SOURCES: dict[str, Source] = {
    "lineage-fullchain-holds-key": _lineage_fullchain_with_key,
    "fullchain-and-key-one-file": _one_combined_file,
    "key-inside-cert": _key_inside_cert,
    "lego-cert-path-holds-key": _lego_combined_cert_path,
}


@pytest.mark.parametrize("how", SOURCES)
def test_pem_never_ships_a_key_found_in_a_certificate_file(denv: DeployEnv, lineage: LineagePaths, relay_factory,
                                                           tmp_path: Path, how: str) -> None:
    relay = relay_factory("starttls")
    denv.write_config({"archive": relay_target(relay)})
    args, env, warned = SOURCES[how](lineage, tmp_path)
    expected_chain = lineage.leaf.cert_pem() + lineage.intermediate.cert_pem()

    run = denv.run("deploy", *args, "--json", extra_env=env)

    assert run.returncode == 0, run.stderr
    [received] = relay.messages
    assert_no_key(received.data, lineage)
    assert chain_attachment(received.data) == expected_chain
    if warned is not None:
        assert f"certificate file {warned} holds a private key" in run.stderr
        assert run.stderr.count(str(warned)) == 1  # logged once
    else:
        assert "WARNING" not in run.stderr

    out = tmp_path / "eml"
    dry = denv.run("deploy", *args, "--dry-run", "--output", str(out), extra_env=env)
    assert dry.returncode == 0, dry.stderr
    eml = (out / "archive.eml").read_bytes()
    assert_no_key(eml, lineage)
    assert chain_attachment(eml) == expected_chain
    assert len(relay.messages) == 1


def test_lego_hook_shim_never_ships_a_key_found_in_lego_cert_path(denv: DeployEnv, lineage: LineagePaths,
                                                                    relay_factory, tmp_path: Path) -> None:
    """hooks/lego-hook as lego runs it: a cold process, `certbot-smtp-dist` found through PATH."""
    relay = relay_factory("starttls")
    denv.write_config({"archive": relay_target(relay)})
    _, lego_env, crt = _lego_combined_cert_path(lineage, tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    command = bin_dir / "certbot-smtp-dist"
    command.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m certbot_smtp_dist "$@"\n')
    command.chmod(0o755)
    env = denv.env({**lego_env, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}"})
    proc = subprocess.run([str(REPO / "hooks" / "lego-hook")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    [received] = relay.messages
    assert_no_key(received.data, lineage)
    assert chain_attachment(received.data) == lineage.leaf.cert_pem() + lineage.intermediate.cert_pem()
    assert f"certificate file {crt} holds a private key" in proc.stderr


def test_the_key_leaves_only_from_the_key_file_and_only_as_asked(denv: DeployEnv, lineage: LineagePaths,
                                                                   relay_factory, tmp_path: Path) -> None:
    """pem_and_key and pkcs12 on one combined file: the key attachment is the key block alone, the chain is the
    certificates alone, and the PKCS#12 holds exactly that key and chain."""
    from cryptography.hazmat.primitives.serialization import pkcs12

    relay = relay_factory("starttls")
    denv.set_credential("p12", "smtp_pkcs12_passphrase", P12_PASS)
    denv.write_config({"clear": relay_target(relay, payload="pem_and_key"),
                       "sealed": relay_target(relay, payload="pkcs12", pkcs12_passphrase_credential="p12",
                                              to=["vault@example.com"])})
    args, _, _ = _one_combined_file(lineage, tmp_path)
    run = denv.run("deploy", *args, "--json")
    assert run.returncode == 0, run.stderr
    by_rcpt = {m.rcpt_tos[0]: parse(m.data) for m in relay.messages}
    clear = {p.get_filename(): p.get_payload(decode=True) for p in by_rcpt["pki@example.com"].iter_attachments()}
    assert clear == {"test.example.com.fullchain.pem": lineage.fullchain.read_bytes(),
                     "test.example.com.key.pem": lineage.privkey.read_bytes()}
    [p12] = [p.get_payload(decode=True) for p in by_rcpt["vault@example.com"].iter_attachments()]
    assert isinstance(p12, bytes)
    key, cert, extra = pkcs12.load_key_and_certificates(p12, P12_PASS.encode())
    assert cert == lineage.leaf.cert and extra == [lineage.intermediate.cert]
    assert key is not None and key.private_numbers() == lineage.key.private_numbers()


# ------------------------------------------------------------------------------------------- the certbot plugin


def _plugin(config: Path, verb: str) -> Any:
    from certbot_smtp_dist.certbot_plugin import Installer

    namespace = SimpleNamespace(smtp_dist_config=str(config), smtp_dist_targets=None, verb=verb, dry_run=False,
                                backup_dir=str(config.parent / "backups"), strict_permissions=False,
                                live_dir=str(config.parent / "live"), certname=None)
    return Installer(namespace, "smtp-dist")


@pytest.mark.parametrize("verb", ["renew", "install"])
def test_certbot_plugin_never_ships_a_key_found_in_a_certificate_file(
        denv: DeployEnv, lineage: LineagePaths, relay_factory, monkeypatch: pytest.MonkeyPatch, verb: str) -> None:
    """The plugin's own entry points (renew_deploy; deploy_cert + save), driven as certbot calls them."""
    ci.require_module("certbot", "pip install certbot, or apt-get install python3-certbot")
    monkeypatch.setenv("CERTBOT_SMTP_DIST_STATE_DIR", str(denv.state_dir))
    relay = relay_factory("starttls")
    denv.write_config({"archive": relay_target(relay)})
    key = lineage.privkey.read_bytes()
    lineage.cert.write_bytes(lineage.cert.read_bytes() + key)
    lineage.fullchain.write_bytes(lineage.fullchain.read_bytes() + key)
    plugin = _plugin(denv.config, verb)
    paths = dict(cert_path=str(lineage.cert), key_path=str(lineage.privkey), chain_path=str(lineage.chain),
                 fullchain_path=str(lineage.fullchain))
    if verb == "renew":
        plugin.renew_deploy(SimpleNamespace(lineagename="test.example.com", **paths))
    else:
        for domain in lineage.names:
            plugin.deploy_cert(domain, **paths)
        plugin.save("Deployed certificate", temporary=False)
    [received] = relay.messages
    assert_no_key(received.data, lineage)
    assert chain_attachment(received.data) == lineage.leaf.cert_pem() + lineage.intermediate.cert_pem()


# ------------------------------------------------------------------------------------------- bounded reads


def run_bounded(denv: DeployEnv, *args: str) -> tuple[Run, float]:
    """A cold process with its address space capped, so that an unbounded read fails fast instead of eating the
    machine, and a hang is cut off by the timeout."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "certbot_smtp_dist", "deploy", *args, "--json"],
                          capture_output=True, text=True, env=denv.env(), timeout=TIMEOUT + 60, preexec_fn=cap)
    return Run(proc.returncode, proc.stdout, proc.stderr), time.monotonic() - started


def _fifo_as_key(lin: LineagePaths) -> tuple[list[str], Path, str]:
    lin.privkey.unlink()
    os.mkfifo(lin.privkey, 0o600)  # nobody ever writes: reading it would wait forever
    return ["--lineage", str(lin.live_dir)], lin.privkey, "FIFO"


def _dev_zero_as_chain(lin: LineagePaths) -> tuple[list[str], Path, str]:
    zero = Path("/dev/zero")
    return ["--cert", str(lin.cert), "--chain", str(zero), "--key", str(lin.privkey)], zero, "character device"


def _junk_after_fullchain(lin: LineagePaths) -> tuple[list[str], Path, str]:
    with lin.fullchain.open("r+b") as f:
        f.truncate(60 * (1 << 20))  # 60 MB of zeros after the chain
    return ["--lineage", str(lin.live_dir)], lin.fullchain, "1 MiB"


def _directory_as_cert(lin: LineagePaths) -> tuple[list[str], Path, str]:
    return ["--cert", str(lin.live_dir), "--key", str(lin.privkey), "--chain", str(lin.chain)], lin.live_dir, \
        "directory"


BAD_INPUTS = {"fifo-key": _fifo_as_key, "dev-zero-chain": _dev_zero_as_chain,
              "60MB-fullchain": _junk_after_fullchain, "directory-cert": _directory_as_cert}


@pytest.mark.parametrize("how", BAD_INPUTS)
def test_unreadable_inputs_are_refused_naming_the_file_within_the_timeout(
        denv: DeployEnv, lineage: LineagePaths, relay_factory, how: str) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay, timeout=TIMEOUT)})
    args, path, why = BAD_INPUTS[how](lineage)
    run, wall = run_bounded(denv, *args)
    assert run.returncode == 65, run.stderr
    detail = run.target("a")["detail"]
    assert str(path) in detail and why in detail
    assert run.target("a")["error_code"] == "SMTP_PAYLOAD"
    assert "Traceback" not in run.stderr and str(path) in run.stderr
    assert relay.connections == 0
    assert wall < TIMEOUT + COLD_START


def test_a_leaf_not_valid_yet_is_refused_with_its_dates(denv: DeployEnv, tmp_path: Path, relay_factory) -> None:
    start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(days=2)
    future = write_lineage(tmp_path / "live" / "future", not_before=start, not_after=start + dt.timedelta(days=90))
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay)})
    run = denv.run("deploy", "--lineage", str(future.live_dir), "--json")
    assert run.returncode == 65
    detail = run.target("a")["detail"]
    assert "not valid yet" in detail
    assert f"{start:%Y-%m-%d %H:%M}" in detail and f"{start + dt.timedelta(days=90):%Y-%m-%d %H:%M}" in detail
    assert relay.connections == 0


# ------------------------------------------------------------------------------------------- the key file on disk


def test_a_key_file_open_to_others_is_warned_about_with_the_fix(denv: DeployEnv, lineage: LineagePaths,
                                                                 relay_factory) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay)})
    lineage.privkey.chmod(0o644)
    run = denv.run("deploy", "--lineage", str(lineage.live_dir))
    assert run.returncode == 0, run.stderr
    assert f"private key file {lineage.privkey} is open to group and others (mode 0644)" in run.stderr
    assert f"chmod 600 {lineage.privkey}" in run.stderr
    lineage.privkey.chmod(0o600)
    assert "private key file" not in denv.run("deploy", "--lineage", str(lineage.live_dir)).stderr


def test_a_key_file_owned_by_another_user_is_warned_about_with_the_fix(denv: DeployEnv, lineage: LineagePaths,
                                                                        relay_factory) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another user (the rule itself: tests/unit/test_inputs.py)")
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay)})
    os.chown(lineage.privkey, 65534, -1)
    run = denv.run("deploy", "--lineage", str(lineage.live_dir))
    assert run.returncode == 0, run.stderr
    assert f"private key file {lineage.privkey} is owned by uid 65534" in run.stderr
    assert f"chown 0 {lineage.privkey}" in run.stderr
