"""A hostile relay on loopback echoes the password in every spelling it can think of; none of them gets out.

Each case runs the real `deploy --json` against the scriptable fault server and reads back everything the run wrote:
the JSON document, the human lines on stderr, the journal and the spool entries in the state directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.deployenv import DeployEnv, Run
from support.pki import LineagePaths
from support.spellings import USER, encodings, leaks

from certbot_smtp_dist._internal import scrub

pytestmark = pytest.mark.timeout(60)

PW = "pw-Fault-7Qx!never-leaks"
EX_UNAVAILABLE, EX_TEMPFAIL = 69, 75
FORMS = ("plain", "upper", "swapped", "hex", "HEX", "percent", "percent-lower", "percent-all", "b64",
         "b64-plain-blob", "b64-authzid-blob", "b64-offset-2", "b64-urlsafe", "utf16le-percent")


def target(port: int, **overrides: Any) -> dict[str, Any]:
    table: dict[str, Any] = {"host": "127.0.0.1", "port": port, "tls_mode": "plaintext", "timeout": 2,
                             "from_address": "certbot@example.com", "to": ["pki@example.com"],
                             "auth_method": "plain", "username": USER, "password_credential": "relay"}
    table.update(overrides)
    return table


def deploy(denv: DeployEnv, lineage: LineagePaths, table: dict[str, Any], password: str = PW) -> Run:
    denv.set_credential("relay", "smtp_password", password)
    denv.write_config({"relay": table})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    assert "Traceback" not in run.stderr, run.stderr
    return run


def written(denv: DeployEnv, run: Run) -> dict[str, str]:
    """Everything the run wrote that people or programs read: stdout (JSON), stderr (human lines), state files."""
    out = {"--json output": run.stdout, "human output": run.stderr}
    for path in sorted(denv.state_dir.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(denv.state_dir))] = path.read_text(errors="replace")
    return out


def spool_entries(denv: DeployEnv) -> list[Path]:
    spool = denv.state_dir / "spool"
    return sorted(spool.glob("*.json")) if spool.is_dir() else []


def spooled_for_retry(denv: DeployEnv) -> list[str]:
    """The spool entries `retry` would send again (state "pending")."""
    return [p.name for p in spool_entries(denv) if json.loads(p.read_text())["state"] == "pending"]


def echo(form: str, split: str) -> str:
    """A 454 to AUTH that echoes the password spelled as `form`, on one line or split across two."""
    spelled = encodings(PW)[form]
    half = len(spelled) // 2
    if split == "one line":
        return f"454 4.7.0 temporary failure for {USER}: you sent {spelled}, try later"
    continuation = "454-4.7.0 " if split == "codes on each line" else "454-"
    return "\n".join([f"454-4.7.0 temporary failure for {USER}: you sent {spelled[:half]}",
                      f"{continuation}{spelled[half:]}", "454 4.7.0 try later"])


@pytest.mark.parametrize("split", ["one line", "across lines", "codes on each line"])
@pytest.mark.parametrize("form", FORMS)
def test_echoed_password_leaves_no_trace(denv: DeployEnv, lineage: LineagePaths, fault_server, form: str,
                                         split: str) -> None:
    server = fault_server(auth_replies={"PLAIN": echo(form, split)})
    run = deploy(denv, lineage, target(server.port))
    t = run.target("relay")
    assert (t["status"], t["error_code"], t["smtp_code"]) == ("failed", "SMTP_TRANSIENT", 454)
    assert run.returncode == EX_TEMPFAIL
    assert scrub.MASK in t["detail"] and "temporary failure" in t["detail"] and "try later" in t["detail"]
    assert spooled_for_retry(denv), "a retryable failure is spooled: its entry must be checked too"
    for where, text in written(denv, run).items():
        assert leaks(PW, text) == [], f"{form} ({split}) leaked into {where}"
        if not form.startswith("b64"):  # a base64 blob's username part is no secret; the other forms are all secret
            spelled = encodings(PW)[form]
            assert spelled[: len(spelled) // 2] not in text and spelled[len(spelled) // 2:] not in text, where


def test_echo_in_a_refusal_leaves_no_trace(denv: DeployEnv, lineage: LineagePaths, fault_server) -> None:
    upper = encodings(PW)["upper"]
    server = fault_server(rcpt_replies={"gone@example.com": f"450-4.2.1 mailbox of {upper[:10]}\n450 4.2.1 "
                                                             f"{upper[10:]} is busy"})
    run = deploy(denv, lineage, target(server.port, to=["ok@example.com", "gone@example.com"]))
    t = run.target("relay")
    assert t["status"] == "partial"
    message = t["refused_recipients"]["gone@example.com"]["message"]
    assert scrub.MASK in message and "is busy" in message
    for where, text in written(denv, run).items():
        assert leaks(PW, text) == [] and upper[:10] not in text and upper[10:] not in text, where


@pytest.mark.parametrize("password", ["3", "ab", "Secret7"])
def test_a_short_password_withholds_the_relay_text(denv: DeployEnv, lineage: LineagePaths, fault_server,
                                                   password: str) -> None:
    """Masking a short secret reveals it (0.1.0: `535 ***3*** ***.7.8` for the password "5"): withhold instead."""
    server = fault_server(auth_replies={"PLAIN": f"535 5.7.8 bad credentials 123 4.5.6 ab {password} Secret7"},
                          rcpt_replies={"gone@example.com": f"550 5.1.1 no such user {password}"})
    run = deploy(denv, lineage, target(server.port), password=password)
    t = run.target("relay")
    assert (t["error_code"], t["smtp_code"], t["enhanced_status"]) == ("SMTP_AUTH", 535, "5.7.8")
    assert t["detail"] == f"535 5.7.8 {scrub.WITHHELD}"
    assert run.returncode == EX_UNAVAILABLE
    for where, text in written(denv, run).items():
        assert scrub.MASK not in text and "bad credentials" not in text, where


def test_a_long_550_stays_permanent_and_is_not_spooled(denv: DeployEnv, lineage: LineagePaths,
                                                       fault_server) -> None:
    """0.1.0 turned a 550 too long to read into a retryable failure: retried, spooled, re-sent."""
    server = fault_server(replies={"MAIL": "550 5.7.1 " + "rejected " * 1200})
    run = deploy(denv, lineage, target(server.port, timeout=5))
    t = run.target("relay")
    assert (t["status"], t["error_code"], t["retryable"], t["phase"]) == ("failed", "SMTP_PERMANENT", False, "mail")
    assert "too long" in t["detail"]
    assert run.returncode == EX_UNAVAILABLE
    assert t["attempts"] == 1 and server.connections == 1
    assert spooled_for_retry(denv) == []


def test_a_long_readable_reply_is_scrubbed_then_cut(denv: DeployEnv, lineage: LineagePaths, fault_server) -> None:
    """The password straddles the cut at 400 characters: cutting first would leave its first half behind."""
    server = fault_server(replies={"MAIL": "550 5.7.1 " + "x" * 370 + PW + "y" * 2000})
    run = deploy(denv, lineage, target(server.port))
    t = run.target("relay")
    assert (t["error_code"], t["retryable"], t["smtp_code"]) == ("SMTP_PERMANENT", False, 550)
    assert len(t["detail"]) == scrub.MAX_TEXT and t["detail"].endswith("...")
    assert PW[:8] not in t["detail"] and scrub.MASK in t["detail"]
    assert spooled_for_retry(denv) == []


def test_a_long_451_is_transient_by_its_code_and_its_text_is_not_kept(denv: DeployEnv, lineage: LineagePaths,
                                                                       fault_server) -> None:
    """RFC 5321 §4.2.1: the first digit decides. the client drops the over-long reply's text; the code is read
    off the wire, so a long 451 is retried (and spooled), never made permanent; its text is still never stored."""
    server = fault_server(replies={"MAIL": "451 4.3.0 " + "greylisted " * 1000})
    run = deploy(denv, lineage, target(server.port, timeout=5))
    t = run.target("relay")
    assert (t["error_code"], t["retryable"], t["phase"], t["smtp_code"]) == ("SMTP_TRANSIENT", True, "mail", 451), t
    assert "too long" in t["detail"] and "greylisted" not in t["detail"]
    assert run.returncode == 75
    assert len(spooled_for_retry(denv)) == 1
    assert "greylisted" not in "".join(p.read_text() for p in denv.state_dir.rglob("*.json*") if p.is_file())
