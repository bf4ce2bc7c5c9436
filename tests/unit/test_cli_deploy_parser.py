"""`deploy` first on the command line (every hook's call) is parsed by a parser holding only that subcommand
(issue 16: the other subcommands' modules cost a cold hook their import); it must parse, fail and print help
exactly as the whole parser does."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import pytest

from certbot_smtp_dist._internal import cli

ARGVS = [
    ["deploy"], ["deploy", "--bogus"], ["deploy", "--target"], ["deploy", "--help"], ["deploy", "-h"],
    ["deploy", "--log-format", "xml"], ["deploy", "extra"], ["deploy", "--version"],
    ["deploy", "-vv", "--config", "c.toml", "--state-dir", "s", "--lineage", "d", "--target", "a", "--target", "b",
     "--json", "--force"],
    ["deploy", "--dry-run", "--output", "o", "--fullchain", "f", "--key", "k", "--name", "n", "-q",
     "--log-format", "json"],
]


def parsed(only: str | None, argv: list[str]) -> tuple[Any, ...]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = vars(cli.build_parser(only=only).parse_args(argv))
            code = None
        except cli.BadCommandLine as exc:  # said by main(), in its command's format
            args, code = {"error": exc.text}, exc.code
        except SystemExit as exc:
            args, code = {}, exc.code
    return code, out.getvalue(), err.getvalue(), args


@pytest.mark.parametrize("argv", ARGVS, ids=" ".join)
def test_the_deploy_parser_parses_as_the_whole_one(argv: list[str]) -> None:
    assert parsed("deploy", argv) == parsed(None, argv)


def test_main_takes_the_deploy_parser_only_for_deploy_first(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str | None] = []
    real = cli.build_parser

    def spy(only: str | None = None) -> Any:
        asked.append(only)
        return real(only)

    monkeypatch.setattr(cli, "build_parser", spy)
    for argv in (["deploy", "--help"], ["--config", "c.toml", "deploy", "--help"], ["status", "--help"]):
        with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()):
            cli.main(argv)
    assert asked == ["deploy", None, None]
