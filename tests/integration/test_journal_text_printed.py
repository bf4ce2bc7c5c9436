"""Journal text reaches a terminal made printable: lines written by older versions (or edited) may hold ESC, CR and
other control characters in their text fields, and `history`, `status` and `status --nagios` show each as "?",
never raw (a terminal would act on an escape sequence: retitle the window, clear the screen, hide what follows)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.deployenv import DeployEnv

GENESIS = "0" * 64
ESC = "\x1b"
# A window title, a cleared screen, a carriage return that overwrites the line, a C1 CSI, a BEL, a DEL.
CERT = f"evil{ESC}]0;owned\x07.example.com"
RECIPIENT = f"pki@example.com{ESC}[2J"
DETAIL = f"TCP connect failed\rall fine{ESC}[8m hidden\x9b1m\x7f"
UNWANTED = f"other{ESC}[5m.example.com"


def legacy_journal(state: Path, records: list[dict[str, Any]]) -> None:
    """A journal as 0.1.0 wrote it: `prev` the SHA-256 of the line before, the head its last seq and hash."""
    state.mkdir(mode=0o700)
    prev, lines = GENESIS, []
    for seq, record in enumerate(records, 1):
        body = json.dumps({"seq": seq, **record, "prev": prev}, separators=(",", ":")).encode()
        lines.append(body + b"\n")
        prev = hashlib.sha256(body).hexdigest()
    (state / "journal.jsonl").write_bytes(b"".join(lines))
    (state / "journal.head").write_text(json.dumps({"seq": len(records), "sha256": prev}))


@pytest.fixture
def hostile(denv: DeployEnv, unused_port: int) -> DeployEnv:
    denv.write_config({"up": {"host": "127.0.0.1", "port": unused_port, "tls_mode": "plaintext", "timeout": 2,
                              "from_address": "certbot@example.com", "to": ["pki@example.com"]}})
    denv.set_credential("relay-password", "smtp_password", "a-stored-relay-password")  # the master key
    common = {"run": "deploy", "target": "up", "serial": "3d00d6", "message_id": f"<m{ESC}[31m@example.com>"}
    legacy_journal(denv.state_dir, [
        {"time": "2026-12-01T18:20:37+00:00", "event": "attempt", "outcome": "failed", "certificate": CERT,
         "recipients": [RECIPIENT], "error_code": "SMTP_CONNECT", "detail": DETAIL, **common},
        {"time": "2026-12-01T18:21:37+00:00", "event": "attempt", "outcome": "delivered", "certificate": CERT,
         "recipients": [RECIPIENT], "not_after": "2099-01-01T00:00:00+00:00", **common},
        {"time": f"2026-12-01T18:22:37+00:00{ESC}[1m", "event": "no_target", "run": "deploy",
         "certificate": UNWANTED, "targets": [f"up{ESC}[7m"], "names": [f"x{ESC}[3m.example.com"]},
    ])
    return denv


def shown(text: str) -> bool:
    """Nothing a terminal acts on: every character printable, lines ended by LF alone."""
    return all(c.isprintable() for line in text.split("\n") for c in line)


@pytest.mark.parametrize(("command", "visible"), [
    (("history",), "evil?]0;owned?.example.com"), (("history", "--all"), "evil?]0;owned?.example.com"),
    (("status",), "other?[5m.example.com"), (("status", "--nagios"), "evil?]0;owned?.example.com"),
])
def test_journal_text_is_printed_printable(hostile: DeployEnv, command: tuple[str, ...], visible: str) -> None:
    run = hostile.run(*command)
    assert "Traceback" not in run.stderr, run.stderr
    assert shown(run.stdout), run.stdout
    assert shown(run.stderr), run.stderr
    assert visible in run.stdout  # made visible, not dropped


def test_history_shows_every_text_field_made_printable(hostile: DeployEnv) -> None:
    out = hostile.run("history", "--all").stdout
    assert "to=pki@example.com?[2J" in out and "message_id=<m?[31m@example.com>" in out
    assert "cause: SMTP_CONNECT TCP connect failed: all fine?[8m hidden?1m?" in out  # the CR: a line break
    assert "certificate=other?[5m.example.com" in out


def test_status_notes_show_the_journals_names_made_printable(hostile: DeployEnv) -> None:
    out = hostile.run("status").stdout
    assert "certificate other?[5m.example.com: its last deploy (2026-12-01T18:22:37+00:00?[1m)" in out
    assert "target(s) up?[7m matches x?[3m.example.com" in out


def test_metrics_label_values_are_made_printable(hostile: DeployEnv) -> None:
    """`metrics` (and so the textfile, the same text) escaped only backslash, quote and line feed: the ESC of an
    old journal line reached whoever cats the file. Now "?", as history and status show it; Prometheus' own
    parsers accept the file as before."""
    from support import ci
    from support.promtext import parse

    run = hostile.run("metrics")
    assert run.returncode == 0 and "Traceback" not in run.stderr, run
    assert shown(run.stdout), run.stdout
    name = "certbot_smtp_dist_last_delivered_not_after_timestamp_seconds"
    assert parse(run.stdout).value(name, target="up", certificate="evil?]0;owned?.example.com") == 4070908800
    promtool = ci.require_tool("promtool", "apt-get install prometheus")
    checked = subprocess.run([promtool, "check", "metrics"], input=run.stdout, capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), checked
    ci.require_module("prometheus_client", "pip install prometheus-client (python3-prometheus-client)")
    from prometheus_client.parser import text_string_to_metric_families

    labels = [s.labels for f in text_string_to_metric_families(run.stdout) for s in f.samples if f.name == name]
    assert labels == [{"target": "up", "certificate": "evil?]0;owned?.example.com"}]
