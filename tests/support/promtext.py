"""A strict parser of Prometheus' text exposition format 0.0.4, from its grammar (neither promtool nor
prometheus_client is available here; this is stricter than either on what our output must look like).

Rules checked: every line ends with a line feed, the text too; no blank line; `# HELP name text` and
`# TYPE name type` at most once per family, before its samples; a family's samples contiguous; metric and label names
from their character classes; label values quoted with only \\\\, \\" and \\n escapes; no duplicate label name in a
sample nor duplicate series; values are Go floats (or NaN, +Inf, -Inf); an optional integer timestamp.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
VALUE = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?|Inf|NaN)"
_HELP = re.compile(rf"# HELP ({METRIC_NAME}) ((?:[^\\\n]|\\[\\n])*)")
_TYPE = re.compile(rf"# TYPE ({METRIC_NAME}) (counter|gauge|histogram|summary|untyped)")
_PAIR = re.compile(rf"({LABEL_NAME})=({LABEL_VALUE})")
_SAMPLE = re.compile(rf"({METRIC_NAME})(?:\{{((?:{LABEL_NAME}={LABEL_VALUE})(?:,{LABEL_NAME}={LABEL_VALUE})*,?)?\}})?"
                     rf" ({VALUE})(?: (-?[0-9]+))?")

Labels = frozenset[tuple[str, str]]


class ExpositionError(ValueError):
    pass


@dataclass
class Exposition:
    helps: dict[str, str] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def series(self, name: str) -> dict[Labels, float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}


def _unescape(quoted: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), quoted[1:-1])


def parse(text: str) -> Exposition:
    if not text.endswith("\n"):
        raise ExpositionError("does not end with a line feed")
    out = Exposition()
    done: set[str] = set()  # families whose samples are over
    current: str | None = None
    for number, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {number}: {line!r}"
        if line.startswith("#"):
            found = _HELP.fullmatch(line) or _TYPE.fullmatch(line)
            if found is None:
                if line.startswith(("# HELP", "# TYPE")):
                    raise ExpositionError(f"{where}: malformed HELP or TYPE")
                continue  # a plain comment
            name = found.group(1)
            table = out.helps if line.startswith("# HELP") else out.types
            if name in table or name in done or name == current:
                raise ExpositionError(f"{where}: HELP/TYPE repeated or after the family's samples")
            table[name] = found.group(2)
            continue
        sample = _SAMPLE.fullmatch(line)
        if sample is None:
            raise ExpositionError(f"{where}: not a sample line")
        name = sample.group(1)
        if name != current:
            if name in done:
                raise ExpositionError(f"{where}: samples of {name} are not contiguous")
            if current is not None:
                done.add(current)
            current = name
        pairs = [(k, _unescape(v)) for k, v in _PAIR.findall(sample.group(2) or "")]
        if len({k for k, _ in pairs}) != len(pairs):
            raise ExpositionError(f"{where}: a label name repeated")
        key = (name, frozenset(pairs))
        if key in out.samples:
            raise ExpositionError(f"{where}: duplicate series")
        out.samples[key] = float(sample.group(3))
    return out
