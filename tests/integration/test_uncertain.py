"""A reply lost after the final "." of DATA: the message may be queued, so it is `uncertain`, never a triple send.

RFC 5321 §4.1.1.4 makes the relay responsible for a message once it has sent 250 to the final "."; when that reply
is lost (RFC 1047: the relay may have queued it, §4.5.3.2 gives it 10 minutes to say so), the client cannot know.
Each case runs `deploy --json` against the scriptable fault server on loopback and counts, server-side, how many
times the final "." arrived: that is how many copies a relay that queues before replying would deliver.
"""

from __future__ import annotations

import email
import email.policy
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
    assert t["smtp_code"] is None  # nothing the relay said: aiosmtplib 2.x's 500 for a long line is its own
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
