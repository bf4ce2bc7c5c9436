"""`deploy --dry-run --output DIR` that cannot write ends in one clear line and its sysexits status, never a traceback."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import ci
from support.deployenv import DeployEnv, Run
from support.pki import LineagePaths

pytestmark = pytest.mark.timeout(60)

EX_CANTCREAT, EX_IOERR = 73, 74


def dry_run(denv: DeployEnv, lineage: LineagePaths, output: Path, *extra: str) -> Run:
    denv.write_config({"relay": {"host": "127.0.0.1", "port": 25, "tls_mode": "plaintext",
                                 "from_address": "certbot@example.com", "to": ["pki@example.com"]}})
    return denv.run("deploy", "--lineage", str(lineage.live_dir), "--dry-run", "--output", str(output), *extra)


def assert_one_clear_line(run: Run, *words: str) -> None:
    errors = [line for line in run.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr
    assert all(w in errors[0] for w in ("--output", *words)), errors[0]


def test_output_that_is_a_file_cannot_be_created(denv: DeployEnv, lineage: LineagePaths, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a directory\n")
    run = dry_run(denv, lineage, taken)
    assert run.returncode == EX_CANTCREAT
    assert_one_clear_line(run, "cannot create directory", str(taken))
    assert taken.read_text() == "not a directory\n"


def test_output_below_a_file_cannot_be_created(denv: DeployEnv, lineage: LineagePaths, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    run = dry_run(denv, lineage, tmp_path / "file" / "eml", "--json")
    assert run.returncode == EX_CANTCREAT
    assert_one_clear_line(run, "cannot create directory", "Not a directory")
    assert "cannot create directory" in json.loads(run.stdout)["output_error"]  # --json: still one document


def _private_mount_prefix(where: Path) -> list[str]:
    """`unshare` into a new mount namespace, where a tiny tmpfs can be mounted and vanishes with the process."""
    unshare = shutil.which("unshare")
    for prefix in ([unshare, "--mount", "--"], [unshare, "--mount", "--map-root-user", "--"]) if unshare else ():
        probe = subprocess.run([*prefix, "mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(where)],
                               capture_output=True, timeout=30)
        if probe.returncode == 0:
            return prefix
    ci.unavailable("needs `unshare --mount` and tmpfs (root or user namespaces) to fill a disk safely")


def test_disk_full_is_an_io_error(denv: DeployEnv, lineage: LineagePaths, tmp_path: Path) -> None:
    """A 4 KiB tmpfs, filled up, in a private mount namespace: nothing outside the process sees it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    prefix = _private_mount_prefix(disk)
    denv.write_config({"relay": {"host": "127.0.0.1", "port": 25, "tls_mode": "plaintext",
                                 "from_address": "certbot@example.com", "to": ["pki@example.com"]}})
    deploy = [sys.executable, "-m", "certbot_smtp_dist", "deploy", "--lineage", str(lineage.live_dir), "--dry-run",
              "--output", str(disk / "eml")]
    script = (f"mount -t tmpfs -o size=4k tmpfs {shlex.quote(str(disk))} && "
              f"(dd if=/dev/zero of={shlex.quote(str(disk / 'fill'))} bs=1k count=64 2>/dev/null; true) && "
              f"exec {shlex.join(deploy)}")
    proc = subprocess.run([*prefix, "sh", "-c", script], capture_output=True, text=True, env=denv.env(), timeout=60)
    run = Run(proc.returncode, proc.stdout, proc.stderr)
    assert run.returncode == EX_IOERR, run.stderr
    assert_one_clear_line(run, "cannot write", "relay.eml", "No space left on device")
    assert list(disk.iterdir()) == []  # the tmpfs went with the namespace; the real directory was never written


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's link needs root to make")
def test_output_through_another_users_link_is_refused(denv: DeployEnv, lineage: LineagePaths, sticky: Path,
                                                      tmp_path: Path) -> None:
    """A link of another user's in a directory everyone may write (/tmp) would let them choose where root writes the
    rendered message, which may hold the private key: refused as deploy refuses such a lineage (exit 77), nothing
    made or written behind it."""
    chosen = tmp_path / "their-choice"
    chosen.mkdir()
    link = sticky / "out"
    link.symlink_to(chosen)
    os.chown(link, 65534, -1, follow_symlinks=False)
    run = dry_run(denv, lineage, link / "eml")
    assert run.returncode == 77, run.stderr
    assert "refusing to trust" in run.stderr and str(link) in run.stderr and "Traceback" not in run.stderr
    assert list(chosen.iterdir()) == []
    root_link = sticky / "ours"  # root's own link there is root's to re-point: followed as before
    root_link.symlink_to(chosen)
    assert dry_run(denv, lineage, root_link / "eml").returncode == 0
    assert [p.name for p in (chosen / "eml").iterdir()] == ["relay.eml"]
