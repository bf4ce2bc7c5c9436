"""A Ctrl-C ending a command (exit 130) says so in one line; `status`, a monitoring check, answers UNKNOWN (3)
in its own format, naming the command once."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from certbot_smtp_dist._internal import cli, cli_state


def _interrupted(_: argparse.Namespace) -> int:
    raise KeyboardInterrupt


@pytest.fixture(autouse=True)
def _logging_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """cli.main would point the package's logger at this test's captured stderr, for every later test."""
    monkeypatch.setattr(cli, "setup_logging", lambda *_: None)


@pytest.mark.parametrize(("options", "line"), [
    (["--nagios"], "SMTP-DIST UNKNOWN - status: interrupted"),  # it read "status: status: interrupted"
    ([], "UNKNOWN: certbot-smtp-dist status: interrupted"),
])
def test_an_interrupted_status_is_unknown_naming_the_command_once(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 options: list[str], line: str) -> None:
    monkeypatch.setattr(cli_state, "cmd_status", _interrupted)
    assert cli.main(["status", *options]) == 3
    assert capsys.readouterr().out.splitlines() == [line]


def test_an_interrupted_status_json_is_one_unknown_document(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli_state, "cmd_status", _interrupted)
    assert cli.main(["status", "--json"]) == 3
    assert json.loads(capsys.readouterr().out) == {"status": "UNKNOWN", "problem": "interrupted", "entries": []}


# The console script's own process, with a real SIGINT raised at the first call of argparse's parse_known_args:
# the Ctrl-C arrives while the command line is being parsed, before any command began.
_CTRL_C_WHILE_PARSING = """
import argparse, signal, sys
from certbot_smtp_dist._internal import cli

def trace(frame, event, arg):
    if event == "call" and frame.f_code is argparse.ArgumentParser.parse_known_args.__code__:
        sys.settrace(None)
        signal.raise_signal(signal.SIGINT)
    return None

sys.argv[0] = "certbot-smtp-dist"
sys.settrace(trace)
sys.exit(cli.main())
"""


def _ctrl_c_while_parsing(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CERTBOT_SMTP_DIST_STATE_DIR": str(tmp_path / "state"),
           "CERTBOT_SMTP_DIST_CONFIG": str(tmp_path / "config.toml")}
    return subprocess.run([sys.executable, "-c", _CTRL_C_WHILE_PARSING, *argv], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


@pytest.mark.parametrize(("argv", "out"), [
    (["status", "--nagios"], ["SMTP-DIST UNKNOWN - status: interrupted"]),
    (["status"], ["UNKNOWN: certbot-smtp-dist status: interrupted"]),
    (["--state-dir", "status", "-v", "status", "--json"],
     ['{"status": "UNKNOWN", "problem": "interrupted", "entries": []}']),
])
def test_a_status_interrupted_while_its_arguments_are_parsed_is_unknown(tmp_path: Path, argv: list[str],
                                                                        out: list[str]) -> None:
    """`status` is a monitoring check (Nagios plugin convention, README): exit 3 and its one UNKNOWN line, in the
    format asked for, as when interrupted later; never 130, which a monitoring system reads as no known state."""
    done = _ctrl_c_while_parsing(tmp_path, *argv)
    assert (done.returncode, done.stdout.splitlines(), done.stderr) == (3, out, ""), done


def test_another_command_interrupted_while_its_arguments_are_parsed_still_exits_130(tmp_path: Path) -> None:
    done = _ctrl_c_while_parsing(tmp_path, "history", "--all")
    assert (done.returncode, done.stdout, done.stderr) == (130, "", "certbot-smtp-dist: error: interrupted\n"), done
