"""A reply lost after the final "." of DATA: the message may be queued, so it is `uncertain`, never a triple send.

RFC 5321 §4.1.1.4 makes the relay responsible for a message once it has sent 250 to the final "."; when that reply
is lost (RFC 1047: the relay may have queued it, §4.5.3.2 gives it 10 minutes to say so), the client cannot know.
Each case runs `deploy --json` against the scriptable fault server on loopback and counts, server-side, how many
times the final "." arrived: that is how many copies a relay that queues before replying would deliver.
"""

from __future__ import annotations

import email
import email.policy
import json
from typing import Any

import pytest
from support.deployenv import DeployEnv, Run
from support.faultscript import CLOSE, STALL, Reply, Script
from support.faultsmtp import FaultServer
from support.pki import LineagePaths

pytestmark = pytest.mark.timeout(60)

EX_TEMPFAIL = 75
TIMEOUT = 4  # room for two more in-run attempts, had the first one not been uncertain
EARLY_SLACK, DEADLINE_SLACK = 0.1, 1.0  # as in test_faults.py

#: After the final ".": the relay closes, answers something that is no reply, answers 100 kB, or says nothing.
LOST_REPLIES: dict[str, dict[str, Any]] = {
    "closed": {"replies": {"DATA_END": CLOSE}},
    "unparseable": {"replies": {"DATA_END": Reply.text("queued, probably", then="continue")}},
    "oversized": {"replies": {"DATA_END": "250 2.0.0 " + "x" * 100_000}},
    "deadline": {"replies": {"DATA_END": STALL}},
}


def target(port: int, **overrides: Any) -> dict[str, Any]:
    table: dict[str, Any] = {"host": "127.0.0.1", "port": port, "tls_mode": "plaintext", "timeout": TIMEOUT,
                             "from_address": "certbot@example.com", "to": ["pki@example.com", "ops@example.com"]}
    table.update(overrides)
    return table


def deploy(denv: DeployEnv, lineage: LineagePaths, server: FaultServer, **overrides: Any) -> tuple[Run, dict[str, Any]]:
    denv.write_config({"relay": target(server.port, **overrides)})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    assert "Traceback" not in run.stderr, run.stderr
    assert server.wait_idle(), "fault server still busy after deploy returned"
    return run, run.target("relay")


def _says_250(script: dict[str, Any]) -> bool:
    end = script.get("replies", {}).get("DATA_END")
    return isinstance(end, str) and end.startswith("250")


def message_id(data: bytes) -> str:
    return str(email.message_from_bytes(data, policy=email.policy.default)["Message-ID"])


@pytest.mark.parametrize("script", LOST_REPLIES.values(), ids=LOST_REPLIES.keys())
def test_lost_final_reply_is_uncertain_and_sent_once(denv: DeployEnv, lineage: LineagePaths, fault_server,
                                                      script: dict[str, Any]) -> None:
    server = fault_server(**script)
    run, t = deploy(denv, lineage, server)
    assert run.returncode == EX_TEMPFAIL
    assert (t["status"], t["error_code"], t["retryable"], t["phase"]) == ("uncertain", "SMTP_TRANSIENT", True, "data")
    assert t["smtp_code"] is None  # nothing the relay said: a reply too long to read has no code
    assert 'final "."' in t["detail"] and "may have accepted" in t["detail"]
    # Exactly one copy reached the relay, one session, one attempt: never re-sent within the run.
    [copy] = server.data_ends
    assert server.connections == 1 and t["attempts"] == 1
    assert message_id(copy.data) == t["message_id"]
    assert set(copy.rcpt_tos) == {"pki@example.com", "ops@example.com"}
    assert len(server.messages) == (1 if _says_250(script) else 0)  # the relay's view: queued once, at most
    assert "relay: uncertain SMTP_TRANSIENT in data: " in run.stderr
    assert t["message_id"] in run.stderr


def test_deadline_after_the_dot_is_uncertain_at_the_deadline(denv: DeployEnv, lineage: LineagePaths,
                                                             fault_server) -> None:
    server = fault_server(replies={"DATA_END": STALL})
    run, t = deploy(denv, lineage, server, timeout=2)
    assert t["status"] == "uncertain" and "2.0s deadline" in t["detail"]
    assert 2 - EARLY_SLACK <= t["duration_s"] <= 2 + DEADLINE_SLACK
    assert run.returncode == EX_TEMPFAIL and len(server.data_ends) == 1


def test_drop_after_the_whole_message_was_handed_over_is_uncertain(denv: DeployEnv, lineage: LineagePaths,
                                                                   fault_server) -> None:
    """The relay drops the connection after 100 bytes of the message; the message (a few kB) had already gone
    into the socket, final "." included, so the client cannot tell this from a relay that queued it and died."""
    server = fault_server(drop_data_after=100)
    run, t = deploy(denv, lineage, server)
    assert run.returncode == EX_TEMPFAIL
    assert t["status"] == "uncertain" and t["attempts"] == 1 and server.connections == 1


# ------------------------------------------------------------------------------ before the dot: retried as before


BEFORE_THE_DOT: dict[str, dict[str, Any]] = {
    "closed-at-data": {"replies": {"DATA": CLOSE}},
    "data-451": {"replies": {"DATA": "451 4.3.0 Try again later"}},
    "closed-at-rcpt": {"replies": {"RCPT": CLOSE}},
    "dot-answered-451": {"replies": {"DATA_END": "451 4.3.0 Queue write error"}},  # a reply: it is not queued
}


@pytest.mark.parametrize("script", BEFORE_THE_DOT.values(), ids=BEFORE_THE_DOT.keys())
def test_failure_with_a_reply_or_before_the_dot_is_retried_in_the_run(denv: DeployEnv, lineage: LineagePaths,
                                                                      fault_server, script: dict[str, Any]) -> None:
    server = fault_server(Script(**script, faulty_connections=1))
    run, t = deploy(denv, lineage, server)
    assert run.returncode == 0, t
    assert t["status"] == "delivered" and t["attempts"] == 2 and server.connections == 2
    [delivered] = server.messages
    assert message_id(delivered.data) == t["message_id"]
    assert len(server.data_ends) == (2 if "DATA_END" in script["replies"] else 1)


# ------------------------------------------------------------------------------ a contradictory final reply


#: Replies to the final "." whose lines disagree (RFC 5321 §4.2.1 wants one code): one line takes the message, another
#: does not; the code the reply is classed by (its most severe line's, or its last line's) stays its smtp_code.
CONTRADICTORY: dict[str, tuple[str, int]] = {
    "451-then-250": ("451-4.3.0 queue busy\n250 2.0.0 queued", 451),
    "250-then-451": ("250-2.0.0 queued\n451 4.3.0 queue write error", 451),
    "550-then-250": ("550-5.7.1 rejected by policy\n250 2.0.0 queued", 550),
    "250-then-554": ("250-2.0.0 queued\n554 5.7.1 rejected", 554),
    # the last line's code is read off its first three octets; the wire scan takes a line for a reply line
    # only with a space or "-" after the code (RFC 5321 §4.2), so it saw the 250- line alone.
    "250-then-550-tab": ("250-2.0.0 fine\n550\t5.7.1 refused", 550),
    "250-then-no-code": ("250-2.0.0 fine\n 55 5.7.1 refused", 55),
}


@pytest.mark.parametrize(("reply", "code"), CONTRADICTORY.values(), ids=CONTRADICTORY.keys())
def test_a_contradictory_final_reply_is_uncertain_and_sent_once(denv: DeployEnv, lineage: LineagePaths,
                                                                 fault_server, reply: str, code: int) -> None:
    """Classed by its most severe line, a `451-`/`250` reply was retried at once (a second copy to a relay that may
    have queued the first) and a `550-`/`250` one reported refused: the relay may have taken it, as when its reply
    is lost."""
    server = fault_server(replies={"DATA_END": reply})
    run, t = deploy(denv, lineage, server)
    assert run.returncode == EX_TEMPFAIL, run.stderr
    assert (t["status"], t["error_code"], t["retryable"], t["phase"]) == ("uncertain", "SMTP_TRANSIENT", True, "data")
    assert t["smtp_code"] == code and t["enhanced_status"] is None
    assert "contradictory reply to the final" in t["detail"] and "may have accepted" in t["detail"]
    assert server.connections == 1 and t["attempts"] == 1 and len(server.data_ends) == 1
    assert "relay: uncertain SMTP_TRANSIENT in data: contradictory" in run.stderr
    assert server.wait_idle() and server.client_commands[-1] == "QUIT"  # ended politely (RFC 5321 §4.1.1.10)


@pytest.mark.parametrize(("reply", "code"), [CONTRADICTORY["451-then-250"], CONTRADICTORY["550-then-250"]],
                         ids=["451-then-250", "550-then-250"])
def test_retry_resends_a_contradictory_final_reply_once(denv: DeployEnv, lineage: LineagePaths, fault_server,
                                                        reply: str, code: int) -> None:
    server = fault_server(replies={"DATA_END": reply})
    _, t = deploy(denv, lineage, server)
    [attempt] = [r for r in journal(denv) if r["event"] == "attempt"]
    assert (attempt["outcome"], attempt["smtp_code"], attempt["message_id"]) == ("uncertain", code, t["message_id"])
    assert "contradictory" in attempt["detail"]
    [row] = entries(denv)
    assert (row["state"], row["resend_due"], row["message_id"]) == ("uncertain", True, t["message_id"])
    assert denv.run("status").returncode == 1  # WARNING: `retry` takes care of it

    again = denv.run("retry", "--json")  # the relay contradicts itself again: one re-send, then a human
    assert again.returncode == EX_TEMPFAIL and again.target("relay")["status"] == "uncertain"
    assert server.wait_idle() and len(server.data_ends) == 2
    [row] = entries(denv)
    assert (row["state"], row["resend_due"]) == ("uncertain", False)
    assert denv.run("status").returncode == 2 and denv.run("retry").returncode == 0
    assert server.wait_idle() and len(server.data_ends) == 2  # never a third copy by itself
    assert {message_id(m.data) for m in server.data_ends} == {t["message_id"]}
    assert denv.run("journal", "verify").returncode == 0


def test_a_contradictory_final_reply_keeps_the_rcpt_refusals(denv: DeployEnv, lineage: LineagePaths,
                                                             fault_server) -> None:
    server = fault_server(Script(rcpt_replies={"ops@example.com": "550 5.1.1 no such user"},
                                 replies={"DATA_END": CONTRADICTORY["250-then-451"][0]}))
    run, t = deploy(denv, lineage, server)
    assert run.returncode == EX_TEMPFAIL and t["status"] == "uncertain"
    assert t["refused_recipients"]["ops@example.com"]["smtp_code"] == 550
    [copy] = server.data_ends
    assert copy.rcpt_tos == ("pki@example.com",)


def test_a_contradictory_final_reply_is_printable_and_bounded(denv: DeployEnv, lineage: LineagePaths,
                                                              fault_server) -> None:
    """Its text is the relay's, as any reply's: one printable line, cut at scrub.MAX_TEXT (400) characters."""
    server = fault_server(replies={"DATA_END": "451-4.3.0 \x1b[31mbusy\x07 " + "y" * 3000 + "\n250 2.0.0 queued"})
    run, t = deploy(denv, lineage, server)
    assert t["status"] == "uncertain" and run.returncode == EX_TEMPFAIL
    assert t["detail"].isprintable() and "\x1b" not in run.stderr and "\x07" not in run.stderr
    assert len(t["detail"]) <= 400 and "y" * 400 not in run.stderr
    assert t["detail"].startswith('contradictory reply to the final "." (lines 250 and 451;')
    assert "the relay may have accepted the message" in t["detail"] and "4.3.0 ?[31mbusy? y" in t["detail"]


def test_a_contradictory_rcpt_reply_keeps_the_severity_rule(denv: DeployEnv, lineage: LineagePaths,
                                                            fault_server) -> None:
    """transport._converse: a RCPT reply hands nothing over, so its most severe line decides; the recipient is
    deferred, the other has the message, and only the deferred one is sent it again."""
    server = fault_server(Script(rcpt_replies={"ops@example.com": "250-2.1.5 ok\n451 4.2.1 later"},
                                 faulty_connections=1))
    _, t = deploy(denv, lineage, server)
    assert (t["status"], t["error_code"], t["attempts"]) == ("delivered", None, 2), t["detail"]
    assert [m.rcpt_tos for m in server.data_ends] == [("pki@example.com",), ("ops@example.com",)]


# ------------------------------------------------------------------------------ spool, retry, status, journal


def entries(denv: DeployEnv) -> list[dict[str, Any]]:
    status = denv.run("status", "--json")
    return list(status.json["entries"])


def journal(denv: DeployEnv) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (denv.state_dir / "journal.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("script", LOST_REPLIES.values(), ids=LOST_REPLIES.keys())
def test_retry_resends_an_uncertain_delivery_once_with_the_same_message_id(
        denv: DeployEnv, lineage: LineagePaths, fault_server, script: dict[str, Any]) -> None:
    server = fault_server(**script)
    _, t = deploy(denv, lineage, server, timeout=2)
    assert t["status"] == "uncertain"
    [attempt] = [r for r in journal(denv) if r["event"] == "attempt"]
    assert (attempt["outcome"], attempt["message_id"]) == ("uncertain", t["message_id"])
    [row] = entries(denv)
    assert (row["state"], row["resend_due"], row["message_id"]) == ("uncertain", True, t["message_id"])
    status = denv.run("status")
    assert status.returncode == 1  # WARNING: `retry` takes care of it
    assert status.stdout.startswith("UNCERTAIN: ") and "`retry` re-sends it once" in status.stdout

    server.script = Script()  # the relay answers again
    retry = denv.run("retry", "--json")
    assert retry.returncode == 0, retry.stderr
    assert server.wait_idle()
    first, again = server.data_ends
    assert message_id(again.data) == message_id(first.data) == t["message_id"]
    assert again.rcpt_tos == first.rcpt_tos
    assert entries(denv) == [] and denv.run("status").returncode == 0
    assert denv.run("retry").returncode == 0 and len(server.data_ends) == 2  # done: never a third copy
    assert denv.run("journal", "verify").returncode == 0
    assert [r["outcome"] for r in json.loads(denv.run("history", "--json").stdout)["history"]] == \
        ["uncertain", "delivered"]


def test_a_second_lost_reply_waits_for_a_human(denv: DeployEnv, lineage: LineagePaths, fault_server) -> None:
    server = fault_server(replies={"DATA_END": CLOSE})
    deploy(denv, lineage, server)
    first_retry = denv.run("retry", "--json")
    assert first_retry.returncode == EX_TEMPFAIL and first_retry.target("relay")["status"] == "uncertain"
    assert server.wait_idle() and len(server.data_ends) == 2
    [row] = entries(denv)
    assert (row["state"], row["resend_due"]) == ("uncertain", False)
    status = denv.run("status")
    assert status.returncode == 2 and "retry --include-uncertain" in status.stdout  # CRITICAL: needs a human
    assert denv.run("retry").returncode == 0
    assert server.connections == 2 and len(server.data_ends) == 2  # not by itself, however often retry runs
    assert denv.run("dismiss", row["id"]).returncode == 0
    assert entries(denv) == [] and denv.run("status").returncode == 0
    assert journal(denv)[-1]["event"] == "dismissed"


@pytest.mark.parametrize("when", ["from-the-start", "set-after-the-fact"])
def test_resend_uncertain_false_waits_for_include_uncertain(denv: DeployEnv, lineage: LineagePaths, fault_server,
                                                            when: str) -> None:
    server = fault_server(replies={"DATA_END": CLOSE})
    _, t = deploy(denv, lineage, server, resend_uncertain=when != "from-the-start")
    if when == "set-after-the-fact":
        denv.write_config({"relay": target(server.port, resend_uncertain=False)})
    server.script = Script()
    assert denv.run("retry").returncode == 0
    assert server.connections == 1 and len(server.data_ends) == 1  # nothing re-sent
    [row] = entries(denv)
    assert (row["state"], row["resend_due"]) == ("uncertain", False)
    assert denv.run("status").returncode == 2
    retry = denv.run("retry", "--include-uncertain", "--json")
    assert retry.returncode == 0 and retry.target("relay")["status"] == "delivered"
    assert server.wait_idle()
    assert [message_id(m.data) for m in server.data_ends] == [t["message_id"]] * 2
    assert entries(denv) == []


def test_resend_goes_only_to_recipients_not_known_to_have_it(denv: DeployEnv, lineage: LineagePaths,
                                                             fault_server) -> None:
    """Session 1: pki takes it (250), ops is busy (450). Session 2, for ops only, loses the final reply."""
    server = fault_server(Script(rcpt_replies={"ops@example.com": "450 4.2.1 busy"}, faulty_connections=1,
                                 later=Script(replies={"DATA_END": CLOSE}, faulty_connections=1)))
    _, t = deploy(denv, lineage, server, timeout=10)
    assert t["status"] == "uncertain" and t["attempts"] == 2
    [row] = entries(denv)
    assert row["recipients"] == ["ops@example.com"]
    assert denv.run("retry").returncode == 0
    assert server.wait_idle()
    pki, ops = ("pki@example.com",), ("ops@example.com",)
    assert [m.rcpt_tos for m in server.data_ends] == [pki, ops, ops]  # pki got it once, ever
    assert {message_id(m.data) for m in server.data_ends} == {t["message_id"]}
