"""Smoke tests for the loopback ACME harness: each real client gets a cert from pebble."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest
from acmeharness import (
    Certbot,
    Dehydrated,
    Lego,
    Pebble,
    Uacme,
    assert_issued_by_pebble,
    load_pem_certs,
    require_tool,
)

NAME = "test.example.com"
ALT = "www.test.example.com"


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.mark.e2e
def test_pebble_serves_directory_and_issuers(pebble: Pebble) -> None:
    directory = json.loads(pebble.get(pebble.directory_url))
    assert {"newNonce", "newAccount", "newOrder"} <= directory.keys()
    root, inter = pebble.root(), pebble.intermediate()
    assert inter.issuer == root.subject
    inter.verify_directly_issued_by(root)
    assert pebble.running


@pytest.mark.e2e
def test_certbot_certonly_issues(pebble: Pebble, certbot: Certbot) -> None:
    result = certbot.certonly(NAME, ALT)
    live = certbot.live_dir(NAME)
    for name in ("cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"):
        assert (live / name).is_file(), (
            f"{name} missing; certbot said:\n{result.stdout}{result.stderr}"
        )
    leaf = assert_issued_by_pebble(pebble, (live / "cert.pem").read_bytes(), names=[NAME, ALT])
    chain = load_pem_certs((live / "chain.pem").read_bytes())
    assert chain[0].subject == pebble.intermediate().subject
    full = load_pem_certs((live / "fullchain.pem").read_bytes())
    assert full[0] == leaf and full[1:] == chain
    assert certbot.renewal_conf(NAME).is_file()


@pytest.mark.e2e
def test_lego_run_issues_and_runs_hook(pebble: Pebble, lego: Lego, tmp_path: Path) -> None:
    record = tmp_path / "lego-hook.env"
    hook = _script(tmp_path / "hook.sh", f'env | grep "^LEGO_" > "{record}"\n')
    lego.run(NAME, run_hook=hook)

    certs = load_pem_certs(lego.cert_path(NAME).read_bytes())
    assert len(certs) == 2, "lego's NAME.crt should bundle leaf + issuer"
    assert_issued_by_pebble(pebble, lego.cert_path(NAME).read_bytes(), names=[NAME])
    assert certs[1].subject == pebble.intermediate().subject
    assert lego.key_path(NAME).is_file()

    env = dict(line.split("=", 1) for line in record.read_text().splitlines())
    assert env["LEGO_CERT_DOMAIN"] == NAME
    assert Path(env["LEGO_CERT_PATH"]).resolve() == lego.cert_path(NAME).resolve()
    assert Path(env["LEGO_CERT_KEY_PATH"]).resolve() == lego.key_path(NAME).resolve()


@pytest.mark.e2e
def test_dehydrated_issues_and_calls_deploy_cert(
    pebble: Pebble, dehydrated: Dehydrated, tmp_path: Path
) -> None:
    record = tmp_path / "deploy_cert.argv"
    hook = _script(
        tmp_path / "hook.sh",
        f'[ "$1" = deploy_cert ] && printf "%s\\n" "$@" > "{record}"\nexit 0\n',
    )
    dehydrated.cron(NAME, ALT, hook=hook)

    certdir = dehydrated.cert_dir(NAME)
    assert_issued_by_pebble(pebble, (certdir / "cert.pem").read_bytes(), names=[NAME, ALT])
    argv = record.read_text().splitlines()
    assert argv[:6] == [
        "deploy_cert",
        NAME,
        str(certdir / "privkey.pem"),
        str(certdir / "cert.pem"),
        str(certdir / "fullchain.pem"),
        str(certdir / "chain.pem"),
    ]
    assert len(argv) == 7 and argv[6].isdigit()  # TIMESTAMP (unix seconds)
    for path in argv[2:6]:
        assert Path(path).is_file()



@pytest.mark.e2e
def test_uacme_issues_verifying_pebble_tls(pebble: Pebble, uacme: Uacme) -> None:
    """uacme really verifies TLS: outside the namespace that trusts pebble's bundle it refuses pebble's API
    (after three tries, 5 s apart)."""
    outside = subprocess.run(
        [uacme.uacme_bin, "-v", "-a", pebble.directory_url, "-c", str(uacme.confdir), "-y", "new"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert outside.returncode != 0, outside.stderr
    assert "SSL peer certificate" in outside.stderr, outside.stderr  # libcurl: pebble's CA is not trusted

    result = uacme.issue(NAME, ALT, check=True)

    assert "running /usr/share/uacme/uacme.sh begin http-01" in result.stderr
    chain = load_pem_certs(uacme.cert_path(NAME).read_bytes())
    assert len(chain) == 2 and chain[1].subject == pebble.intermediate().subject
    assert_issued_by_pebble(pebble, uacme.cert_path(NAME).read_bytes(), names=[NAME, ALT])
    assert b"PRIVATE KEY" in uacme.key_path(NAME).read_bytes()
    assert uacme.issue(NAME, ALT).returncode == 1, "pebble's certificate is not due for renewal"

@pytest.mark.e2e
def test_certbot_renew_runs_deploy_hook(pebble: Pebble, certbot: Certbot, tmp_path: Path) -> None:
    record = tmp_path / "deploy-hook.env"
    hook = _script(tmp_path / "hook.sh", f'env | grep "^RENEWED_" >> "{record}"\n')
    certbot.certonly(NAME, args=["--deploy-hook", str(hook)])
    first = load_pem_certs((certbot.live_dir(NAME) / "cert.pem").read_bytes())[0]
    certbot.renew()  # renew --force-renewal --no-random-sleep-on-renew; hook stored in renewal conf
    second = assert_issued_by_pebble(pebble, (certbot.live_dir(NAME) / "cert.pem").read_bytes())
    assert second.serial_number != first.serial_number
    lines = record.read_text().splitlines()
    assert lines.count(f"RENEWED_LINEAGE={certbot.live_dir(NAME)}") == 2
    assert f"RENEWED_DOMAINS={NAME}" in lines


@pytest.mark.e2e
def test_lego_renew_runs_renew_hook(pebble: Pebble, lego: Lego, tmp_path: Path) -> None:
    record = tmp_path / "renew-hook.env"
    hook = _script(tmp_path / "hook.sh", f'env | grep "^LEGO_" > "{record}"\n')
    lego.run(NAME)
    first = load_pem_certs(lego.cert_path(NAME).read_bytes())[0]
    lego.renew(NAME, renew_hook=hook)  # --days 9999 --no-random-sleep
    second = assert_issued_by_pebble(pebble, lego.cert_path(NAME).read_bytes())
    assert second.serial_number != first.serial_number
    env = dict(line.split("=", 1) for line in record.read_text().splitlines())
    assert env["LEGO_CERT_DOMAIN"] == NAME
    assert Path(env["LEGO_CERT_PATH"]).resolve() == lego.cert_path(NAME).resolve()


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_missing_tool_fails_in_ci_and_skips_otherwise(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("ACME_HARNESS_LEGO", "/nonexistent/lego")
    with pytest.raises(outcome, match="lego"):
        require_tool("lego")
