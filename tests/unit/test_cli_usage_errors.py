"""A usage error is exit 64 with the usage on stderr, except for `status`, a monitoring check: UNKNOWN (3) and one
line in its own format (Nagios plugin guidelines), as for an interrupt while its arguments are parsed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HINT = " (see certbot-smtp-dist status --help)"


def _run(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """The console script's own process: argparse's error ends it, not a caller's try."""
    env = {**os.environ, "CERTBOT_SMTP_DIST_STATE_DIR": str(tmp_path / "state"),
           "CERTBOT_SMTP_DIST_CONFIG": str(tmp_path / "config.toml")}
    return subprocess.run([sys.executable, "-m", "certbot_smtp_dist", *argv], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


@pytest.mark.parametrize(("argv", "line"), [
    (["status", "--bogus"], f"UNKNOWN: certbot-smtp-dist status: usage error: unrecognized arguments: --bogus{HINT}"),
    (["status", "--nagios", "--bogus"],
     f"SMTP-DIST UNKNOWN - status: usage error: unrecognized arguments: --bogus{HINT}"),
    (["status", "--nagios", "--warn-days", "x"],
     f"SMTP-DIST UNKNOWN - status: usage error: argument --warn-days: invalid int value: 'x'{HINT}"),
    (["--config", "status", "status", "--nagios", "--crit-days"],
     f"SMTP-DIST UNKNOWN - status: usage error: argument --crit-days: expected one argument{HINT}"),
    (["status", "--bogus\x1b[2J|perf=1"],  # one printable line, no perfdata smuggled in
     f"UNKNOWN: certbot-smtp-dist status: usage error: unrecognized arguments: --bogus?[2J|perf=1{HINT}"),
    (["status", "--nagios", "--bogus|perf=1"],
     f"SMTP-DIST UNKNOWN - status: usage error: unrecognized arguments: --bogus/perf=1{HINT}"),
])
def test_a_status_usage_error_is_unknown_in_one_line(tmp_path: Path, argv: list[str], line: str) -> None:
    done = _run(tmp_path, *argv)
    assert (done.returncode, done.stdout.splitlines(), done.stderr) == (3, [line], ""), done


def test_a_status_json_usage_error_is_one_unknown_document(tmp_path: Path) -> None:
    done = _run(tmp_path, "status", "--json", "--bogus")
    assert (done.returncode, done.stderr) == (3, ""), done
    assert json.loads(done.stdout) == {"status": "UNKNOWN", "entries": [],
                                       "problem": f"usage error: unrecognized arguments: --bogus{HINT}"}


@pytest.mark.parametrize("argv", [["deploy", "--bogus"], ["history", "--bogus"], ["bogus"], ["journal"]])
def test_other_commands_usage_errors_still_exit_64_with_their_usage(tmp_path: Path, argv: list[str]) -> None:
    done = _run(tmp_path, *argv)
    assert (done.returncode, done.stdout) == (64, ""), done
    assert done.stderr.startswith("usage: certbot-smtp-dist") and "error: " in done.stderr, done
    assert "UNKNOWN" not in done.stderr
