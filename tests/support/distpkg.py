"""Helpers of the packaging tests: where the tree is, what setup.cfg requires, and Debian's own tools.

Outside CI a missing tool (dpkg-buildpackage, rpmspec, Debian's python3 or certbot) skips the tests; under CI it
fails them, by the rule every suite shares (``support.ci``).
"""

from __future__ import annotations

import configparser
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from support import ci

REPO = Path(__file__).resolve().parents[2]
# Debian's own interpreter and tools, whatever interpreter runs the suite (a venv, pyenv).
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# What both distribution packages install from the tree besides the Python package, as the README promises
# ("Other ACME clients", the retry timer): (file in the tree, installed path, mode). {unitdir} is
# /lib/systemd/system on Debian 12 and /usr/lib/systemd/system on Fedora and EL.
SHIPPED = (
    ("hooks/uacme-ship", "/usr/bin/uacme-ship", 0o755),
    ("hooks/lego-hook", "/usr/share/certbot-smtp-dist/hooks/lego-hook", 0o755),
    ("hooks/dehydrated-hook", "/usr/share/certbot-smtp-dist/hooks/dehydrated-hook", 0o755),
    ("hooks/acme.sh/smtp_dist.sh", "/usr/share/certbot-smtp-dist/hooks/acme.sh/smtp_dist.sh", 0o644),
    ("packaging/systemd/certbot-smtp-dist-retry.service", "{unitdir}/certbot-smtp-dist-retry.service", 0o644),
    ("packaging/systemd/certbot-smtp-dist-retry.timer", "{unitdir}/certbot-smtp-dist-retry.timer", 0o644),
)
# Configuration (with the credential store) and delivery state: 0700, as the tool itself creates them.
PRIVATE_DIRS = ("/etc/letsencrypt/smtp-dist", "/var/lib/certbot-smtp-dist")


def require_tool(name: str, hint: str) -> str:
    """Debian's own `name` (on SYSTEM_PATH, not the venv's), or skip/fail (``support.ci``) naming `hint`."""
    return ci.require_tool(name, hint, path=SYSTEM_PATH)


def run(argv: Sequence[str | Path], *, timeout: float = 60, env: Mapping[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command with its output captured; a non-zero exit fails the test and shows the output."""
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=cwd, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, argv))} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                    f"\n--- stderr\n{proc.stderr[-4000:]}", pytrace=False)
    return proc


def code_version() -> str:
    """``certbot_smtp_dist.__version__`` as written in the tree (not as installed in the running interpreter)."""
    text = (REPO / "certbot_smtp_dist" / "__init__.py").read_text("utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    assert match, "no __version__ in certbot_smtp_dist/__init__.py"
    return match.group(1)


def runtime_floors() -> dict[str, str]:
    """setup.cfg's unconditional install_requires as {name: lower bound}: what every package must require."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg", encoding="utf-8")
    floors: dict[str, str] = {}
    for line in cfg["options"]["install_requires"].strip().splitlines():
        if ";" in line:  # environment markers (tomli on Python < 3.11): not a dependency on Debian 12 or Fedora
            continue
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)\s*", line)
        assert match, f"setup.cfg install_requires line not understood: {line!r}"
        floors[match.group(1).lower()] = match.group(2)
    return floors
