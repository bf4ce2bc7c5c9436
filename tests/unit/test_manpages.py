"""certbot-smtp-dist(1) and certbot-smtp-dist.toml(5): committed in packaging/man, up to date with the parser and
the README's key table, rendered by man(1) and groff without a warning, and listing every command, option and key.

The README's key table is the one text of the key descriptions; here it is held to what config.py accepts, asked of
parse_settings itself (a key is known where it is not reported as unknown), so neither can drift from the other.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import ci

from certbot_smtp_dist._internal import config, manpage
from certbot_smtp_dist._internal.cli import build_parser
from certbot_smtp_dist._internal.config import parse_settings
from certbot_smtp_dist._internal.payload import BUILTIN_FORMATS
from certbot_smtp_dist.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.rst"
MAN_DIR = REPO / "packaging/man"
REGENERATE = "regenerate with `make man`"
ALL_PAGES = sorted(p.name for p in MAN_DIR.glob("*.[1-8]"))  # the generated ones and uacme-ship.1


def readme_keys() -> tuple[manpage.KeyDoc, ...]:
    return manpage.key_table(README.read_text("utf-8"))


def render(page: str) -> str:
    """man(1)'s plain-text rendering (ASCII, no hyphenation or justification, wide), failing on any warning."""
    man = ci.require_tool("man", "apt-get install man-db")
    env = {**os.environ, "LC_ALL": "C", "MANWIDTH": "200", "MAN_KEEP_FORMATTING": ""}
    done = subprocess.run([man, "--warnings=all", "-E", "ascii", "--nh", "--nj", "-l", str(MAN_DIR / page)],
                          capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    return done.stdout


def section(text: str, heading: str) -> str:
    """One top-level section (an unindented heading line) of a rendered page."""
    match = re.search(rf"^{re.escape(heading)}\n(.*?)(?=^\S|\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"no section {heading!r}"
    return match.group(1)


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
             ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases are the same parser
                    seen.add(id(sub))
                    yield (*prefix, name), sub
                    yield from commands(sub, (*prefix, name))


def option_names(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for a in parser._actions for opt in a.option_strings
            if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS}


def known_where(key: str) -> set[str]:
    """Where parse_settings accepts `key`: {'defaults', 'targets'}, a subset, or none (an unknown key)."""
    def reported_unknown(doc: dict[str, Any], where: str) -> bool:
        try:
            parse_settings(doc, Path("/etc/x/config.toml"), {}, {f.name: f for f in BUILTIN_FORMATS})
        except ConfigError as exc:
            return any(p.problem.startswith("unknown key") and str(p).startswith(where + ":")
                       for p in exc.problems)
        return False

    places = set()
    if not reported_unknown({"defaults": {key: "x"}, "targets": {"t": {}}}, f"defaults.{key}"):
        places.add("defaults")
    if not reported_unknown({"targets": {"t": {key: "x"}}}, f"targets.t.{key}"):
        places.add("targets")
    return places


def config_module_keys() -> set[str]:
    """Every key named in config.py's module-level *_KEYS collections (KNOWN_KEYS, RETRY_KEYS, and any added)."""
    found: set[str] = set()
    for name, value in vars(config).items():
        if name.endswith("_KEYS") and isinstance(value, (tuple, frozenset, set)):
            found |= {v for v in value if isinstance(v, str)}
    return found


def test_committed_pages_are_the_generated_ones() -> None:
    generated = manpage.pages(README.read_text("utf-8"))
    assert set(generated) == set(manpage.PAGES)
    stale = [name for name, text in generated.items()
             if not (MAN_DIR / name).is_file() or (MAN_DIR / name).read_text("utf-8") != text]
    assert stale == [], f"{stale} out of date: {REGENERATE}"


def test_man_directory_holds_the_generated_pages_and_uacme_ship() -> None:
    assert ALL_PAGES == sorted((*manpage.PAGES, "uacme-ship.1"))


@pytest.mark.parametrize("page", ALL_PAGES)
def test_groff_renders_the_page_without_a_warning(page: str) -> None:
    groff = ci.require_tool("groff", "apt-get install groff-base")
    done = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", str(MAN_DIR / page)], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize("page", ALL_PAGES)
def test_man_renders_the_page_without_a_warning(page: str) -> None:
    assert page.split(".")[0].upper() in render(page).splitlines()[0]


@pytest.mark.parametrize("page", ALL_PAGES)
def test_pages_are_plain_ascii_man_macros(page: str) -> None:
    text = (MAN_DIR / page).read_text("utf-8")
    assert text.isascii()
    requests = [line.split()[0] for line in text.splitlines() if line.startswith((".", "'"))]
    assert [r for r in requests if r != '.\\"'][0] == ".TH"
    assert set(requests) <= {'.\\"', ".TH", ".SH", ".SS", ".TP", ".PP", ".nf", ".fi", ".B", ".BR"}


def test_every_command_and_option_is_in_the_command_page() -> None:
    parser = build_parser()
    text = render(manpage.PAGES[0])
    global_options = option_names(parser)
    assert global_options <= set(re.findall(r"(?<![\w-])-{1,2}[a-z][\w-]*", section(text, "OPTIONS")))
    body = section(text, "COMMANDS")
    headings = re.findall(r"^   (\S.*)$", body, re.MULTILINE)
    found = list(commands(parser))
    assert headings == [" ".join(words) for words, _sub in found]
    blocks = dict(zip(headings, re.split(r"^   \S.*\n", body, flags=re.MULTILINE)[1:], strict=True))
    for words, sub in found:
        block = blocks[" ".join(words)]
        assert f"certbot-smtp-dist {' '.join(words)}" in block
        for option in option_names(sub) - global_options:
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", block), (words, option)
        for action in sub._actions:
            if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
                assert re.search(rf"^\s+{re.escape(str(action.metavar or action.dest))}\b", block, re.MULTILINE)
    assert "EX_CONFIG" in section(text, "EXIT STATUS")


def test_readme_key_table_names_every_key_config_accepts() -> None:
    listed = [key for row in readme_keys() for key in row.keys]
    assert len(listed) == len(set(listed)), "a key listed twice in README.rst's key table"
    assert config_module_keys() <= set(listed), "a key config.py knows is missing from README.rst's key table"
    assert {key: known_where(key) != set() for key in listed} == dict.fromkeys(listed, True)


def test_readme_says_defaults_only_exactly_where_config_does() -> None:
    scope = {key: row.defaults_only for row in readme_keys() for key in row.keys}
    assert {key: known_where(key) == {"defaults"} for key in scope} == scope
    assert not any(known_where(key) == {"targets"} for key in scope)  # every target key can be a default too


def test_every_key_is_in_the_config_page_under_its_scope() -> None:
    text = render(manpage.PAGES[1])
    sections = {False: section(text, "KEYS"), True: section(text, "[DEFAULTS] KEYS")}
    for row in readme_keys():
        for key in row.keys:
            assert re.search(rf"^       (.*, )?{key}\b", sections[row.defaults_only], re.MULTILINE), key
            assert not re.search(rf"^       (.*, )?{key}\b", sections[not row.defaults_only], re.MULTILINE), key


def test_a_command_without_help_or_with_an_alias_is_listed_once() -> None:
    parser = argparse.ArgumentParser(prog="tool", description="Do things.", epilog="0 fine")
    parser.add_argument("--global-flag", action="store_true", help="everywhere")
    sub = parser.add_subparsers(dest="command")
    quiet = sub.add_parser("quiet")  # no help: argparse keeps no _choices_actions entry for it
    quiet.add_argument("--global-flag", action="store_true", help=argparse.SUPPRESS)
    quiet.add_argument("--only-here", metavar="N", help="its own")
    quiet.add_argument("--hidden", help=argparse.SUPPRESS)
    sub.add_parser("loud", aliases=["noisy"], help="with an alias")
    page = manpage.command_page(parser)
    assert [line for line in page.splitlines() if line.startswith(".SS")] == ['.SS "quiet"', '.SS "loud"']
    quiet_block = page.split('.SS "quiet"')[1].split(".SS")[0]
    assert "\\fB\\-\\-only\\-here\\fR \\fIN\\fR" in quiet_block
    assert "global" not in quiet_block and "hidden" not in quiet_block and "SUPPRESS" not in page


def test_key_table_reads_continuation_lines_and_markup() -> None:
    rule = "============  =========="
    readme = "\n".join(["Configuration", "", rule, "key           meaning", rule,
                        "``a``, ``b``  first",
                        "              line two",
                        "``c``         ``[defaults]`` only: x",
                        rule, "", "after the table"])
    rows = manpage.key_table(readme)
    assert rows == (manpage.KeyDoc(("a", "b"), "first line two"), manpage.KeyDoc(("c",), "``[defaults]`` only: x"))
    assert [row.defaults_only for row in rows] == [False, True]


@pytest.mark.parametrize(("text", "roff"), [
    ("a\\b", "a\\eb"),
    (".TH evil", "\\&.TH evil"),
    ("'br", "\\&'br"),
    ("x\n.SH y", "x\n\\&.SH y"),
    ("--dry-run", "\\-\\-dry\\-run"),
    ("RFC 5321 \u00a74", "RFC 5321 \\[u00A7]4"),
])
def test_escape_keeps_text_out_of_roff_requests(text: str, roff: str) -> None:
    assert manpage.escape(text) == roff


def test_inline_markup_becomes_fonts_and_is_escaped() -> None:
    assert manpage.inline("``a-b`` then *c* and `A lost final reply`_") == (
        "\\fBa\\-b\\fR then \\fIc\\fR and \\(lqA lost final reply\\(rq in README.rst")


def test_main_writes_both_pages(tmp_path: Path) -> None:
    assert manpage.main([str(README), str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(manpage.PAGES)
    assert manpage.main([]) == 64
