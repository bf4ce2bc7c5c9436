"""A Ctrl-C ending a command (exit 130) says so in one line; `status`, a monitoring check, answers UNKNOWN (3)
in its own format, naming the command once."""

from __future__ import annotations

import argparse
import json

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
