"""What an ACME client hands the hook shims (a domain, a lineage path) is text someone else chose: it reaches our
log lines, `status`, `history` and `status --nagios` only as one printable line. The shims run as the clients run
them: a cold process, `certbot-smtp-dist` found through PATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support.deployenv import DeployEnv, Run
from support.pki import LineagePaths, write_lineage

REPO = Path(__file__).resolve().parents[2]
FORGED = "certbot-smtp-dist: INFO: relay: delivered to 1 recipient(s)"
# A line break, a terminal escape (clear screen), a Nagios perfdata bar and a Unicode line separator.
HOSTILE = f"example.com\n{FORGED}\x1b[2J|x\u2028OK: all fine"


def shim(denv: DeployEnv, tmp_path: Path, hook: str, *args: str, env: dict[str, str] | None = None) -> Run:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    command = bin_dir / "certbot-smtp-dist"
    command.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m certbot_smtp_dist "$@"\n')
    command.chmod(0o755)
    full = denv.env({**(env or {}), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}"})
    proc = subprocess.run([str(REPO / "hooks" / hook), *args], capture_output=True, text=True, env=full,
                          timeout=120)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def down(port: int) -> dict[str, object]:
    return {"host": "127.0.0.1", "port": port, "tls_mode": "plaintext", "timeout": 2,
            "from_address": "c@example.com", "to": ["pki@example.com"]}


def assert_one_printable_line_each(text: str) -> None:
    for line in text.splitlines():
        assert line.isprintable(), line
        assert not line.startswith(FORGED), line


def test_a_hostile_domain_from_dehydrated_forges_no_line_of_a_blocked_deploy(denv: DeployEnv, tmp_path: Path,
                                                                             unused_port: int) -> None:
    """deploy_cert's DOMAIN with a line break and controls, on a deploy that is blocked (the key does not match):
    the name the journal and the spool keep is the safe one the mail's attachments are named by."""
    denv.write_config({"relay": down(unused_port)})
    bad: LineagePaths = write_lineage(tmp_path / "live" / "bad.example.com", key_mismatch=True)
    run = shim(denv, tmp_path, "dehydrated-hook", "deploy_cert", HOSTILE, str(bad.privkey), str(bad.cert),
               str(bad.fullchain), str(bad.chain), "1700000000")
    assert run.returncode == 65, run.stderr
    assert "is blocked" in run.stderr
    assert_one_printable_line_each(run.stderr)
    for args in (("status",), ("status", "--nagios"), ("history", "--all")):
        shown = denv.run_process(*args)
        assert "Traceback" not in shown.stderr, shown.stderr
        assert "certificate" in shown.stdout, shown.stdout
        assert_one_printable_line_each(shown.stdout)
        assert "example.com_certbot-smtp-dist" in shown.stdout, shown.stdout  # the safe name, as attachments say


def test_a_path_with_a_line_break_from_lego_is_refused_before_any_file_is_named(denv: DeployEnv, tmp_path: Path,
                                                                               unused_port: int) -> None:
    """LEGO_CERT_PATH naming a directory whose name holds a line break: every message about that file would name
    it, so a line of the log, `status` and `history` of the path's choosing. Refused as a usage error, escaped."""
    denv.write_config({"relay": down(unused_port)})
    where = tmp_path / f"lego\n{FORGED}"
    run = shim(denv, tmp_path, "lego-hook", env={"LEGO_CERT_PATH": str(where / "example.com.crt"),
                                                 "LEGO_CERT_KEY_PATH": str(where / "example.com.key"),
                                                 "LEGO_CERT_DOMAIN": "example.com"})
    assert run.returncode == 64, run.stderr
    assert "holds a control or line-separator character" in run.stderr and "\\n" in run.stderr
    assert_one_printable_line_each(run.stderr)
    for args in (("status",), ("history", "--all")):
        shown = denv.run_process(*args)
        assert "Traceback" not in shown.stderr, shown.stderr
        assert_one_printable_line_each(shown.stdout + shown.stderr)


def test_dehydrated_file_arguments_with_controls_are_refused(denv: DeployEnv, tmp_path: Path,
                                                             unused_port: int) -> None:
    denv.write_config({"relay": down(unused_port)})
    good: LineagePaths = write_lineage(tmp_path / "live" / "test.example.com")
    run = shim(denv, tmp_path, "dehydrated-hook", "deploy_cert", "test.example.com", f"{good.privkey}\x1b[2J",
               str(good.cert), str(good.fullchain), str(good.chain), "1700000000")
    assert run.returncode == 64, run.stderr
    assert "the key file's path" in run.stderr and "\\x1b" in run.stderr
    assert_one_printable_line_each(run.stderr)
