"""Write certbot-smtp-dist(1) from the argparse parser and certbot-smtp-dist.toml(5) from the README's key table.

Neither page has text of its own beyond a frame: options and commands come from the parser that prints `--help`,
keys and their meaning from README.rst's Configuration table (the one source a test checks against config.py).
Regenerate with `make man` (run by nobody at build time, so a package build needs nothing but the tree).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

PAGES = ("certbot-smtp-dist.1", "certbot-smtp-dist.toml.5")
_INLINE = re.compile(r"``(?P<lit>.+?)``|\*(?P<em>[^*]+?)\*|`(?P<ref>[^`]+?)`_")
_TABLE_HEAD = re.compile(r"^key\s+meaning$")


@dataclass(frozen=True, slots=True)
class KeyDoc:
    """One row of the README's key table: the keys it names and what they mean (reStructuredText inline)."""

    keys: tuple[str, ...]
    meaning: str

    @property
    def defaults_only(self) -> bool:
        return self.meaning.startswith("``[defaults]`` only")


def key_table(readme: str) -> tuple[KeyDoc, ...]:
    """The rows of the simple table headed `key  meaning`, continuation lines joined with single spaces."""
    lines = readme.splitlines()
    head = next(i for i, line in enumerate(lines) if _TABLE_HEAD.match(line) and lines[i - 1].startswith("===="))
    rule = lines[head - 1]
    split = rule.index(" ") + rule[rule.index(" "):].index("=")  # where the meaning column starts
    rows: list[tuple[str, list[str]]] = []
    for line in lines[head + 2:]:
        if line.startswith("===="):
            break
        left, right = line[:split].strip(), line[split:].strip()
        if left:
            rows.append((left, [right]))
        elif rows:
            rows[-1][1].append(right)
    return tuple(KeyDoc(tuple(re.findall(r"``([a-z0-9_]+)``", left)), " ".join(p for p in parts if p))
                 for left, parts in rows)


def escape(text: str) -> str:
    """Plain text as roff: backslashes and minus signs escaped, no line that starts a request."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    out = "".join(ch if ord(ch) < 128 else f"\\[u{ord(ch):04X}]" for ch in out)  # groff reads ASCII only
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in out.split("\n"))


def inline(rst: str) -> str:
    """The README's inline markup as roff fonts: ``literal`` bold, *emphasis* italic, `Section`_ quoted."""
    parts: list[str] = []
    pos = 0
    for match in _INLINE.finditer(rst):
        parts.append(escape(rst[pos:match.start()]))
        if match.group("lit") is not None:
            parts.append(f"\\fB{escape(match.group('lit'))}\\fR")
        elif match.group("em") is not None:
            parts.append(f"\\fI{escape(match.group('em'))}\\fR")
        else:
            parts.append(f"\\(lq{escape(match.group('ref'))}\\(rq in README.rst")
        pos = match.end()
    parts.append(escape(rst[pos:]))
    return "".join(parts)


def _metavar(action: argparse.Action) -> str | None:
    if action.nargs == 0:
        return None
    if isinstance(action.metavar, str):
        name = action.metavar
    elif action.choices is not None:
        name = "{" + ",".join(str(c) for c in action.choices) + "}"
    else:
        name = action.dest.upper() if action.option_strings else action.dest
    if action.nargs == "+":
        return f"{name} [{name} ...]"
    if action.nargs == "?":
        return f"[{name}]"
    if action.nargs == "*":
        return f"[{name} ...]"
    return name


def _tag(action: argparse.Action) -> str:
    meta = _metavar(action)
    names = ", ".join(f"\\fB{escape(opt)}\\fR" for opt in action.option_strings)
    if not names:
        return f"\\fI{escape(meta or action.dest)}\\fR"
    return names + (f" \\fI{escape(meta)}\\fR" if meta else "")


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {**vars(action), "default": action.default}
    return escape(text)


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}  # only those with help
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # an alias names the same parser again
                    seen.add(id(sub))
                    yield name, helps.get(name, ""), sub


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
             ) -> Iterator[tuple[tuple[str, ...], str, argparse.ArgumentParser]]:
    """Every command, nested ones too, as (words, help, parser), depth first in the order of `--help`."""
    for name, help_text, sub in _subcommands(parser):
        words = (*prefix, name)
        yield words, help_text, sub
        yield from commands(sub, words)


def own_actions(parser: argparse.ArgumentParser, global_options: frozenset[str]
                ) -> Iterator[tuple[str | None, argparse.Action]]:
    """The options and arguments of one command, with their group's title when it is one of the command's own;
    -h and the global options repeated on every command are left out (they are described once)."""
    for index, group in enumerate(parser._action_groups):
        title = group.title if index >= 2 else None  # the first two are argparse's positional/optional groups
        for action in group._group_actions:
            if action.help == argparse.SUPPRESS:  # hidden in --help, hidden here
                continue
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if action.option_strings and set(action.option_strings) <= global_options:
                continue
            yield title, action


def _option_list(actions: Iterator[tuple[str | None, argparse.Action]]) -> list[str]:
    out: list[str] = []
    shown: str | None = None
    for title, action in actions:
        if title is not None and title != shown:
            out += [".PP", f"\\fI{escape(title)}\\fR:"]
            shown = title
        out += [".TP", _tag(action), _help(action) or "\\&"]
    return out


def _sentence(text: str, upper: bool) -> str:
    """A help phrase as a sentence (first letter up, full stop) or a NAME line (first letter down, none)."""
    first = text[:1].upper() if upper else text[:1].lower()
    return first + text[1:].rstrip(".") + ("." if upper and text else "")


def _epilog_block(text: str) -> list[str]:
    return [".PP", ".nf", escape(text), ".fi"]


def command_page(parser: argparse.ArgumentParser) -> str:
    prog = parser.prog
    globals_ = frozenset(opt for action in parser._actions for opt in action.option_strings)
    out = [f'.TH {escape(prog.upper())} 1 "" "{escape(prog)}" "User Commands"',
           ".SH NAME", f"{escape(prog)} \\- {escape(_sentence(parser.description or '', upper=False))}",
           ".SH SYNOPSIS", f"\\fB{escape(prog)}\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGUMENTS\\fR]",
           ".SH DESCRIPTION", escape(parser.description or ""),
           ".PP", "The configuration file is described in", ".BR certbot\\-smtp\\-dist.toml (5).",
           ".SH OPTIONS", "These options are accepted before or after the command."]
    shown = (a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS)
    out += _option_list((None, a) for a in shown if not isinstance(a, argparse._HelpAction))
    out += [".SH COMMANDS"]
    for words, help_text, sub in commands(parser):
        has_sub = any(True for _ in _subcommands(sub))
        out += [f'.SS "{escape(" ".join(words))}"',
                f"\\fB{escape(prog)} {escape(' '.join(words))}\\fR"
                + (" \\fIACTION\\fR" if has_sub else " [\\fIOPTIONS\\fR]"),
                ".PP", escape(_sentence(help_text, upper=True))]
        out += _option_list(own_actions(sub, globals_))
        if sub.epilog and sub.epilog != parser.epilog:
            out += _epilog_block(sub.epilog)
    out += [".SH EXIT STATUS", ".nf", escape(parser.epilog or ""), ".fi",
            ".SH SEE ALSO", ".BR certbot\\-smtp\\-dist.toml (5),", ".BR certbot (1),",
            "and README.rst, the user manual, in the package's documentation."]
    return "\n".join(out) + "\n"


def _key_entries(rows: Sequence[KeyDoc]) -> list[str]:
    out: list[str] = []
    for row in rows:
        out += [".TP", ", ".join(f"\\fB{escape(key)}\\fR" for key in row.keys), inline(row.meaning)]
    return out


def config_page(rows: Sequence[KeyDoc], default_path: str) -> str:
    name = "certbot-smtp-dist.toml"
    out = [f'.TH {escape(name.upper())} 5 "" "certbot-smtp-dist" "File Formats"',
           ".SH NAME", f"{escape(name)} \\- configuration of certbot\\-smtp\\-dist",
           ".SH SYNOPSIS", escape(default_path),
           ".SH DESCRIPTION",
           f"TOML, at {escape(default_path)} unless \\fB\\-\\-config\\fR \\fIFILE\\fR or",
           "\\fB$CERTBOT_SMTP_DIST_CONFIG\\fR says otherwise.",
           "One \\fB[targets.\\fR\\fINAME\\fR\\fB]\\fR table per target; an optional \\fB[defaults]\\fR table",
           "supplies any key to every target. Every problem is reported at once, as",
           "\\fBtargets.\\fR\\fINAME\\fR\\fB.\\fR\\fIKEY\\fR or \\fBdefaults.\\fR\\fIKEY\\fR, and nothing is sent.",
           ".SH KEYS",
           "Each key may be set per target or in \\fB[defaults]\\fR."]
    out += _key_entries([row for row in rows if not row.defaults_only])
    out += [".SH \"[DEFAULTS] KEYS\"", "These keys are only accepted in the \\fB[defaults]\\fR table."]
    out += _key_entries([row for row in rows if row.defaults_only])
    out += [".SH FILES", ".TP", escape(default_path), "the default configuration file",
            ".SH SEE ALSO", ".BR certbot\\-smtp\\-dist (1),",
            "and README.rst, the user manual, in the package's documentation."]
    return "\n".join(out) + "\n"


def pages(readme: str) -> dict[str, str]:
    """Both pages, by file name, from this package's parser and the given README text."""
    from certbot_smtp_dist._internal.cli import build_parser
    from certbot_smtp_dist._internal.config import DEFAULT_CONFIG

    return {PAGES[0]: command_page(build_parser()), PAGES[1]: config_page(key_table(readme), str(DEFAULT_CONFIG))}


def main(argv: Sequence[str]) -> int:
    """`python -m certbot_smtp_dist._internal.manpage README.rst OUTDIR`: (re)write both pages in OUTDIR."""
    if len(argv) != 2:
        print("usage: python -m certbot_smtp_dist._internal.manpage README.rst OUTDIR", file=sys.stderr)
        return 64
    readme, outdir = Path(argv[0]), Path(argv[1])
    for name, text in pages(readme.read_text("utf-8")).items():
        (outdir / name).write_text(text, "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
