"""Fault injection: every way a relay can misbehave ends as documented facts, with nothing delivered and nothing leaked.

Each case runs `certbot-smtp-dist deploy --json` against the scriptable fault server on loopback
(tests/support/faultsmtp.py) and asserts the whole outcome: status, error code, retryable flag, phase, reply code,
enhanced status code, exit status, what the relay received, and that the relay password shows up nowhere.
"""

from __future__ import annotations

import base64
import shutil
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest
from support import ci
from support.deployenv import DeployEnv, Run
from support.faultscript import STALL, Reply
from support.faultsmtp import FaultServer
from support.pki import LineagePaths, RelayPKI

from certbot_smtp_dist._internal import tlspolicy

pytestmark = pytest.mark.timeout(60)

USER = "robot"
PW = "pw-Fault-7Qx!never-leaks"
#: Every spelling of the password a careless client or a hostile relay could echo (RFC 4616 PLAIN, LOGIN).
PW_FORMS = (PW, base64.b64encode(PW.encode()).decode(), base64.b64encode(f"\0{USER}\0{PW}".encode()).decode())
EX_UNAVAILABLE, EX_TEMPFAIL = 69, 75
#: A stalled target reports a duration within [timeout - EARLY_SLACK, timeout + DEADLINE_SLACK]: the relay was
#: really waited for until the deadline (0.1 s: timer granularity, duration_s rounded to milliseconds), and the
#: deadline, an asyncio timeout, held (1 s: event-loop scheduling latency on a busy two-core machine).
EARLY_SLACK, DEADLINE_SLACK = 0.1, 1.0

Facts = tuple[str, str, bool, str, int | None, str | None]  # status, error_code, retryable, phase, smtp, enhanced


def facts(t: dict[str, Any]) -> Facts:
    return (t["status"], t["error_code"], t["retryable"], t["phase"], t["smtp_code"], t["enhanced_status"])


def failed(code: str, phase: str, smtp: int | None = None, enhanced: str | None = None) -> Facts:
    retryable = code in ("SMTP_TRANSIENT", "SMTP_CONNECT")
    return ("failed", code, retryable, phase, smtp, enhanced)


def fault_target(port: int, *, auth: bool = True, **overrides: Any) -> dict[str, Any]:
    """A plaintext target on loopback that logs in with AUTH PLAIN, so the password is in play in every case."""
    table: dict[str, Any] = {"host": "127.0.0.1", "port": port, "tls_mode": "plaintext", "timeout": 2,
                             "from_address": "certbot@example.com", "to": ["pki@example.com"]}
    if auth:
        table.update(auth_method="plain", username=USER, password_credential="relay")
    table.update(overrides)
    return table


def tls_target(port: int, pki: RelayPKI, **overrides: Any) -> dict[str, Any]:
    return fault_target(port, tls_mode="starttls", tls_ca_file=str(pki.ca_file), **overrides)


def deploy(denv: DeployEnv, lineage: LineagePaths, table: dict[str, Any]) -> tuple[Run, dict[str, Any]]:
    """One deploy to one target named "relay"; checks what must hold for every fault, whatever it is."""
    denv.set_credential("relay", "smtp_password", PW)
    denv.write_config({"relay": table})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    assert_clean(denv, run)
    return run, run.target("relay")


def assert_clean(denv: DeployEnv, run: Run) -> None:
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode in (0, EX_UNAVAILABLE, EX_TEMPFAIL), (run.returncode, run.stderr)
    state = [p.read_text(errors="replace") for p in denv.state_dir.rglob("*") if p.is_file()]
    for form in PW_FORMS:
        assert form not in run.stdout and form not in run.stderr, "relay password leaked to the output"
        assert all(form not in text for text in state), "relay password leaked to the state directory"


def expected_exit(expected: Facts) -> int:
    return EX_TEMPFAIL if expected[2] else EX_UNAVAILABLE


def commands(server: FaultServer) -> list[str]:
    assert server.wait_idle(), "fault server still busy after deploy returned"
    return server.client_commands


# ---------------------------------------------------------------------------------------------- reply-code faults


@dataclass(frozen=True)
class Case:
    script: dict[str, Any]
    expected: Facts
    target: dict[str, Any] = field(default_factory=dict)


GREETING_421 = "421 4.3.2 Service shutting down"
REPLY_CASES: dict[str, Case] = {
    # Greeting (RFC 5321 §3.1, §4.2.5).
    "greeting-421": Case({"replies": {"greeting": GREETING_421}}, failed("SMTP_TRANSIENT", "connect", 421, "4.3.2")),
    "greeting-554": Case({"replies": {"greeting": "554 5.3.2 No SMTP service here"}},
                         failed("SMTP_PERMANENT", "connect", 554, "5.3.2")),
    "greeting-421-no-enhanced": Case({"replies": {"greeting": "421 Too busy"}},
                                     failed("SMTP_TRANSIENT", "connect", 421, None)),
    # AUTH (RFC 4954 §6).
    "auth-535": Case({"auth_replies": {"PLAIN": "535 5.7.8 Authentication credentials invalid"}},
                     failed("SMTP_AUTH", "auth", 535, "5.7.8")),
    "auth-534": Case({"auth_replies": {"PLAIN": "534 5.7.9 Authentication mechanism is too weak"}},
                     failed("SMTP_AUTH", "auth", 534, "5.7.9")),
    "auth-454": Case({"auth_replies": {"PLAIN": "454 4.7.0 Temporary authentication failure"}},
                     failed("SMTP_TRANSIENT", "auth", 454, "4.7.0")),
    # MAIL FROM.
    "mail-451": Case({"replies": {"MAIL": "451 4.3.0 Local error in processing"}},
                     failed("SMTP_TRANSIENT", "mail", 451, "4.3.0")),
    "mail-452": Case({"replies": {"MAIL": "452 4.3.1 Insufficient system storage"}},
                     failed("SMTP_TRANSIENT", "mail", 452, "4.3.1")),
    "mail-550": Case({"replies": {"MAIL": "550 5.7.1 Sender rejected"}}, failed("SMTP_PERMANENT", "mail", 550, "5.7.1")),
    "mail-552": Case({"replies": {"MAIL": "552 5.3.4 Message size exceeds fixed limit"}},
                     failed("SMTP_PERMANENT", "mail", 552, "5.3.4")),
    "mail-553": Case({"replies": {"MAIL": "553 5.1.8 Sender address syntax rejected"}},
                     failed("SMTP_VALIDATION", "mail", 553, "5.1.8")),
    # DATA: the reply to DATA itself (instead of 354) and the reply after the final "." (RFC 5321 §4.1.1.4).
    "data-451": Case({"replies": {"DATA": "451 4.3.0 Try again later"}}, failed("SMTP_TRANSIENT", "data", 451, "4.3.0")),
    "data-end-451": Case({"replies": {"DATA_END": "451 4.3.0 Queue write error"}},
                         failed("SMTP_TRANSIENT", "data", 451, "4.3.0")),
    "data-552": Case({"replies": {"DATA": "552 5.3.4 Too big"}}, failed("SMTP_PERMANENT", "data", 552, "5.3.4")),
    "data-end-552": Case({"replies": {"DATA_END": "552 5.3.4 Message too big for system"}},
                         failed("SMTP_PERMANENT", "data", 552, "5.3.4")),
    "data-554": Case({"replies": {"DATA": "554 5.5.1 No valid recipients"}},
                     failed("SMTP_PERMANENT", "data", 554, "5.5.1")),
    "data-end-554": Case({"replies": {"DATA_END": "554 5.7.1 Message rejected as spam"}},
                         failed("SMTP_PERMANENT", "data", 554, "5.7.1")),
    # 421 in the middle of the session closes it (RFC 5321 §3.8): never a per-recipient refusal.
    "mail-421": Case({"replies": {"MAIL": GREETING_421}}, failed("SMTP_TRANSIENT", "mail", 421, "4.3.2")),
    "rcpt-421": Case({"replies": {"RCPT": GREETING_421}}, failed("SMTP_TRANSIENT", "rcpt", 421, "4.3.2")),
    "data-end-421": Case({"replies": {"DATA_END": GREETING_421}}, failed("SMTP_TRANSIENT", "data", 421, "4.3.2")),
    # A connection dropped, a reply without a code or silence after the final ".": `uncertain`, in
    # test_uncertain.py (a message that fits in the socket buffers is all sent, "." included, before the drop).
}


@pytest.mark.parametrize("case", REPLY_CASES.values(), ids=REPLY_CASES.keys())
def test_reply_faults(denv: DeployEnv, lineage: LineagePaths, fault_server, case: Case) -> None:
    server = fault_server(**case.script)
    run, t = deploy(denv, lineage, fault_target(server.port, **{"timeout": 3, **case.target}))
    assert facts(t) == case.expected, t["detail"]
    assert run.returncode == expected_exit(case.expected)
    assert server.messages == []
    assert t["refused_recipients"] == {}
    if case.expected[4] is not None:  # the relay's reply, verbatim but one line, is in the detail
        assert str(case.expected[4]) in t["detail"]
    # Only retryable failures are tried again (3 s leave room for at least one retry); a permanent one costs one
    # session.
    sent = commands(server)
    assert server.connections == t["attempts"]
    assert (t["attempts"] > 1) if case.expected[2] else (t["attempts"] == 1)
    if case.expected[3] == "auth":
        assert "MAIL" not in sent
        if case.expected[1] == "SMTP_AUTH":  # a rejected login is never retried, with any mechanism
            assert [(a.mechanism, a.username) for a in server.auth_attempts] == [("PLAIN", USER)]
    if case.expected[3] == "mail":
        assert "RCPT" not in sent


# ---------------------------------------------------------------------------------------------- stalls, trickle


STALL_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "greeting": ({"replies": {"greeting": STALL}}, "connect"),
    "after-ehlo": ({"replies": {"EHLO": STALL}}, "connect"),
    # Silence after the final "." is `uncertain`: test_uncertain.py.
    # One byte per second: every byte resets no timer of ours, the session deadline still holds.
    "trickle-greeting": ({"replies": {"greeting": Reply.text("220 fault.test ESMTP but very slowly", trickle=1.0)}},
                         "connect"),
    "trickle-ehlo": ({"replies": {"EHLO": Reply.text("250-fault.test", "250-8BITMIME", "250 AUTH PLAIN",
                                                     trickle=1.0)}}, "connect"),
}


@pytest.mark.parametrize(("script", "phase"), STALL_CASES.values(), ids=STALL_CASES.keys())
def test_stalled_relay_is_abandoned_at_the_deadline(denv: DeployEnv, lineage: LineagePaths, fault_server,
                                                    script: dict[str, Any], phase: str) -> None:
    server = fault_server(**script)
    run, t = deploy(denv, lineage, fault_target(server.port, timeout=2))
    assert facts(t) == failed("SMTP_TRANSIENT", phase)
    assert "deadline" in t["detail"] and "2.0s" in t["detail"]
    assert 2 - EARLY_SLACK <= t["duration_s"] <= 2 + DEADLINE_SLACK
    assert run.returncode == EX_TEMPFAIL
    assert server.messages == []
    # The stalled session used up the whole budget: no time left to retry. A relay silent at the greeting is also
    # asked once, on a connection of its own, whether it speaks TLS first (it does not: no hint, same outcome).
    assert server.connections == (2 if script == {"replies": {"greeting": STALL}} else 1)


#: An EHLO reply of ~75 KiB in short continuation lines: each line is legal, the whole is more than any client needs.
EHLO_FLOOD = ("250-fault.test", *(f"250-X-FLOOD-{i:05d} {'x' * 60}" for i in range(1000)), "250 8BITMIME")


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "inside-tls"])
def test_a_reply_of_endless_continuation_lines_is_cut_at_a_bound(denv: DeployEnv, lineage: LineagePaths,
                                                                 fault_server, relay_pki: RelayPKI,
                                                                 tls: bool) -> None:
    """A reply is read up to 32 KiB in all (smtpwire.MAX_REPLY): a hostile relay sending continuation lines without
    end does not grow the client's buffer until the deadline (0.1.0 on Debian's aiosmtplib 2.0 did). The session
    ends at the bound, as a reply too long to read (RFC 5321 §4.5.3.1.5: 512 octets a line)."""
    server = fault_server(tls_context=relay_pki.server_context() if tls else None, tls_on_connect=tls,
                          replies={"EHLO": Reply.text(*EHLO_FLOOD)})
    table = fault_target(server.port, timeout=5)
    if tls:  # implicit TLS (RFC 8314 §3.3): the flood comes inside the encrypted session
        table.update(tls_mode="smtps", tls_ca_file=str(relay_pki.ca_file))
    run, t = deploy(denv, lineage, table)
    assert (t["status"], t["error_code"], t["retryable"], t["phase"]) == ("failed", "SMTP_PERMANENT", False,
                                                                          "connect"), t
    assert "too long" in t["detail"] and "FLOOD" not in t["detail"]
    assert run.returncode == EX_UNAVAILABLE
    assert "MAIL" not in server.client_commands and server.messages == []


def test_a_greeting_of_endless_continuation_lines_is_cut_at_the_same_bound(denv: DeployEnv, lineage: LineagePaths,
                                                                             fault_server) -> None:
    """The greeting is read by the same reader: the bound holds there too."""
    server = fault_server(replies={"greeting": Reply.text(*(f"220-{line[4:]}" for line in EHLO_FLOOD[:-1]),
                                                          "220 fault.test ESMTP")})
    run, t = deploy(denv, lineage, fault_target(server.port, timeout=5))
    assert (t["status"], t["error_code"], t["retryable"], t["phase"]) == ("failed", "SMTP_PERMANENT", False,
                                                                          "connect"), t
    assert "too long" in t["detail"] and "FLOOD" not in t["detail"]
    assert "EHLO" not in " ".join(server.client_commands) and server.messages == []


@pytest.mark.parametrize("stage", ["MAIL", "RCPT", "DATA"])
def test_a_relay_stalling_inside_tls_is_abandoned_at_the_session_deadline(
        denv: DeployEnv, lineage: LineagePaths, fault_server, relay_pki: RelayPKI, stage: str) -> None:
    """Past the greeting, the session's own deadline is the only timer (no timer per reply):
    a relay silent inside TLS still ends the session at `timeout`, as a transient failure of that phase."""
    server = fault_server(tls_context=relay_pki.server_context(), replies={stage: STALL})
    run, t = deploy(denv, lineage, tls_target(server.port, relay_pki, timeout=2))
    assert facts(t) == failed("SMTP_TRANSIENT", stage.lower())
    assert "deadline" in t["detail"] and "2.0s" in t["detail"]
    assert 2 - EARLY_SLACK <= t["duration_s"] <= 2 + DEADLINE_SLACK
    assert run.returncode == EX_TEMPFAIL
    assert server.messages == []


# ---------------------------------------------------------------------------------------------- TLS


def test_starttls_stripped_sends_nothing_in_clear(denv: DeployEnv, lineage: LineagePaths, fault_server,
                                                  relay_pki: RelayPKI) -> None:
    server = fault_server(tls_context=relay_pki.server_context(), advertise_starttls=False)
    run, t = deploy(denv, lineage, tls_target(server.port, relay_pki))
    assert facts(t) == failed("SMTP_TLS", "tls")
    assert "does not advertise STARTTLS" in t["detail"]
    assert run.returncode == EX_UNAVAILABLE
    assert commands(server) == ["EHLO", "QUIT"]  # no STARTTLS to ask for: nothing but a goodbye in clear
    assert server.messages == [] and server.auth_attempts == [] and server.connections == 1


def test_starttls_answered_454_is_transient(denv: DeployEnv, lineage: LineagePaths, fault_server,
                                            relay_pki: RelayPKI) -> None:
    server = fault_server(tls_context=relay_pki.server_context(),
                          replies={"STARTTLS": "454 4.7.0 TLS not available due to temporary reason"})
    run, t = deploy(denv, lineage, tls_target(server.port, relay_pki))
    assert facts(t) == failed("SMTP_TRANSIENT", "tls", 454, "4.7.0")
    assert run.returncode == EX_TEMPFAIL
    assert server.connections > 1
    sent = commands(server)
    assert "AUTH" not in sent and "MAIL" not in sent
    assert server.messages == []


TLS_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "handshake-close": ({"tls_action": "close"}, "TLS handshake"),
    "handshake-garbage": ({"tls_action": "garbage"}, "TLS handshake"),
    "expired-cert": ({"cert": "expired"}, "expired"),
    "wrong-host": ({"cert": "wrong_host"}, "mismatch"),  # issued for wrong.example.net, dialled as 127.0.0.1
    # The asyncio peer resets the connection without flushing its protocol_version alert (CPython's sslproto does
    # not), so the client sees a reset; a real TLS 1.0 relay's alert reads "TLS handshake failed: ...". SMTP_TLS both.
    "tls1.0-1.1-only": ({"legacy": True}, "TLS handshake"),
}


@pytest.mark.parametrize(("knobs", "detail"), TLS_CASES.values(), ids=TLS_CASES.keys())
def test_tls_failures_send_nothing(denv: DeployEnv, lineage: LineagePaths, fault_server, relay_pki: RelayPKI,
                                   knobs: dict[str, Any], detail: str) -> None:
    if knobs.get("legacy"):
        ctx = relay_pki.cert("valid").server_context(minimum_version=ssl.TLSVersion.TLSv1,
                                                     maximum_version=ssl.TLSVersion.TLSv1_1, seclevel0=True)
    else:
        ctx = relay_pki.server_context(knobs.get("cert", "valid"))
    server = fault_server(tls_context=ctx, tls_action=knobs.get("tls_action", "handshake"), handshake_timeout=2)
    run, t = deploy(denv, lineage, tls_target(server.port, relay_pki))
    assert facts(t) == failed("SMTP_TLS", "tls")
    assert detail in t["detail"]
    assert run.returncode == EX_UNAVAILABLE
    # A refused chain is judged again in a session of its own, under the whole system store (TlsContexts.second_look:
    # the first looked anchors up in the store's hashed directory alone); the same two commands, nothing more.
    sessions = 2 if knobs.get("cert") == "expired" and tlspolicy.lookup_differs() else 1
    assert server.connections == sessions
    assert commands(server) == ["EHLO", "STARTTLS"] * sessions  # nothing after a failed handshake, in clear or not
    assert server.messages == [] and server.auth_attempts == []


@pytest.mark.parametrize(("auth", "phase"), [(False, "mail"), (True, "auth")])
def test_relay_demanding_starttls_from_plaintext_client(denv: DeployEnv, lineage: LineagePaths, fault_server,
                                                        auth: bool, phase: str) -> None:
    """RFC 3207 §4: `530 5.7.0 Must issue a STARTTLS command first` is a TLS problem, whichever command gets it."""
    server = fault_server(require_tls=True)
    run, t = deploy(denv, lineage, fault_target(server.port, auth=auth))
    assert facts(t) == failed("SMTP_TLS", phase, 530, "5.7.0")
    assert "Must issue a STARTTLS command first" in t["detail"]
    assert run.returncode == EX_UNAVAILABLE
    assert server.connections == 1 and server.messages == []


def test_auth_mechanism_not_offered(denv: DeployEnv, lineage: LineagePaths, fault_server) -> None:
    server = fault_server(ehlo_extensions=("8BITMIME", "AUTH PLAIN"))
    run, t = deploy(denv, lineage, fault_target(server.port, auth_method="login"))
    assert facts(t) == failed("SMTP_AUTH", "auth")
    assert "does not offer AUTH LOGIN" in t["detail"]
    assert run.returncode == EX_UNAVAILABLE
    sent = commands(server)
    assert "AUTH" not in sent and "MAIL" not in sent
    assert server.auth_attempts == [] and server.messages == []


# ---------------------------------------------------------------------------------------------- connect


def test_connection_refused(denv: DeployEnv, lineage: LineagePaths, unused_port: int) -> None:
    run, t = deploy(denv, lineage, fault_target(unused_port))
    assert facts(t) == failed("SMTP_CONNECT", "connect")
    assert "TCP connect failed" in t["detail"]
    assert t["attempts"] > 1
    assert run.returncode == EX_TEMPFAIL


def _netns_prefix() -> list[str]:
    """`unshare` into a new network namespace (only a downed `lo`), so no DNS query can leave the machine."""
    unshare = shutil.which("unshare")
    candidates = [[unshare, "--net", "--"], [unshare, "--net", "--map-root-user", "--"]] if unshare else []
    for prefix in candidates:
        probe = subprocess.run([*prefix, sys.executable, "-c", "pass"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return prefix
    ci.unavailable("needs `unshare --net` (root or user namespaces) to resolve names without network traffic")


def test_host_that_does_not_resolve(denv: DeployEnv, lineage: LineagePaths) -> None:
    prefix = _netns_prefix()
    denv.set_credential("relay", "smtp_password", PW)
    denv.write_config({"relay": fault_target(587, auth=False, host="relay.invalid", tls_mode="starttls")})
    proc = subprocess.run([*prefix, sys.executable, "-m", "certbot_smtp_dist", "deploy", "--lineage",
                           str(lineage.live_dir), "--json"], capture_output=True, text=True, env=denv.env(), timeout=60)
    run = Run(proc.returncode, proc.stdout, proc.stderr)
    assert_clean(denv, run)
    t = run.target("relay")
    assert facts(t) == failed("SMTP_CONNECT", "connect")
    assert "cannot resolve" in t["detail"]
    assert run.returncode == EX_TEMPFAIL


# ---------------------------------------------------------------------------------------------- recipients


@pytest.mark.parametrize(("reply", "code", "exit_status"), [
    ("550 5.1.1 No such user", "SMTP_PERMANENT", EX_UNAVAILABLE),
    ("450 4.2.1 Mailbox busy", "SMTP_TRANSIENT", EX_TEMPFAIL),
])
def test_some_recipients_refused_is_partial(denv: DeployEnv, lineage: LineagePaths, fault_server, reply: str,
                                            code: str, exit_status: int) -> None:
    server = fault_server(rcpt_replies={"gone@example.com": reply})
    run, t = deploy(denv, lineage, fault_target(server.port, to=["ok@example.com", "gone@example.com"],
                                                cc=["cc@example.com"]))
    smtp, enhanced, text = int(reply[:3]), reply.split()[1], reply.split(" ", 2)[2]
    assert facts(t) == ("partial", code, code == "SMTP_TRANSIENT", "rcpt", smtp, enhanced)
    assert t["refused_recipients"] == {"gone@example.com": {"smtp_code": smtp, "enhanced_status": enhanced,
                                                            "message": text}}
    assert run.returncode == exit_status
    # Delivered once to the others; a retry (4xx only) goes to the refused recipient alone and sends no DATA.
    [message] = server.messages
    assert message.rcpt_tos == ("ok@example.com", "cc@example.com")
    assert commands(server).count("DATA") == 1
    assert "gone@example.com" in run.stderr


def test_all_recipients_refused(denv: DeployEnv, lineage: LineagePaths, fault_server) -> None:
    server = fault_server(replies={"RCPT": "550 5.1.1 No such user"})
    run, t = deploy(denv, lineage, fault_target(server.port, to=["a@example.com", "b@example.com"]))
    assert facts(t) == failed("SMTP_PERMANENT", "rcpt", 550, "5.1.1")
    assert set(t["refused_recipients"]) == {"a@example.com", "b@example.com"}
    assert run.returncode == EX_UNAVAILABLE
    assert server.messages == [] and "DATA" not in commands(server)
    assert server.connections == 1


# ---------------------------------------------------------------------------------------------- malformed replies


MALFORMED_CASES: dict[str, tuple[dict[str, Any], Facts]] = {
    # A multi-line reply whose lines disagree on the code: the last line's code is the reply's (RFC 5321 §4.2.1
    # requires the same code on every line). A 251 to EHLO is no 250: the relay is broken, not busy.
    "ehlo-mismatched-multiline": ({"replies": {"EHLO": "250-fault.test\n251 b"}},
                                  failed("SMTP_PERMANENT", "connect", 251, None)),
    "greeting-line-without-code": ({"replies": {"greeting": "220-fault.test\nhello there"}},
                                   failed("SMTP_TRANSIENT", "connect")),
    "mail-garbage": ({"replies": {"MAIL": "OK, sure, go ahead"}}, failed("SMTP_TRANSIENT", "mail")),
    "ehlo-binary-garbage": ({"replies": {"EHLO": "\x00\x7f\u00ff\u2603"}}, failed("SMTP_TRANSIENT", "connect")),
    # The last line decides the code; the enhanced code is only read from the start of the reply text, which here
    # is the first line's "fine" (RFC 2034 §3 wants it on every line), so there is none.
    "mail-mismatched-multiline": ({"replies": {"MAIL": "250-fine\n550 5.7.1 not fine"}},
                                  failed("SMTP_PERMANENT", "mail", 550, None)),
    # Lines that disagree are classed by the most severe (classify.code_of_lines): a refusal on any line is one.
    # The last line alone says 451 (retried until the attempts ran out, then spooled) or 250 (sent).
    "mail-refused-then-transient": ({"replies": {"MAIL": "550-5.7.1 refused\n451 4.3.0 try later"}},
                                    failed("SMTP_PERMANENT", "mail", 550, "5.7.1")),
    # Before the final "." nothing is handed over: a 2yz line does not make the reply uncertain (test_uncertain.py).
    "mail-transient-then-accepted": ({"replies": {"MAIL": "451-4.3.0 busy\n250 2.1.0 ok"}},
                                     failed("SMTP_TRANSIENT", "mail", 451, "4.3.0")),
    "rcpt-refused-then-accepted": ({"replies": {"RCPT": "550-5.1.1 no such user\n250 2.1.5 ok"}},
                                   failed("SMTP_PERMANENT", "rcpt", 550, "5.1.1")),
    "ehlo-refused-then-accepted": ({"replies": {"EHLO": "554-5.7.1 go away\n250 fault.test"}},
                                   failed("SMTP_PERMANENT", "connect", 554, "5.7.1")),
}


@pytest.mark.parametrize(("script", "expected"), MALFORMED_CASES.values(), ids=MALFORMED_CASES.keys())
def test_malformed_replies_are_classified(denv: DeployEnv, lineage: LineagePaths, fault_server,
                                          script: dict[str, Any], expected: Facts) -> None:
    server = fault_server(**script)
    run, t = deploy(denv, lineage, fault_target(server.port))
    assert facts(t) == expected, t["detail"]
    assert run.returncode == expected_exit(expected)
    assert server.messages == []


@pytest.mark.parametrize(("stage", "reply", "expected"), [
    # The last line's code is read off its first three octets, as every SMTP library reads it; a line counts as a
    # reply line only with a space or "-" after the code (RFC 5321 §4.2), so the 250- lines alone do. A refusal
    # read off the last line must not be overruled by them (it once was: delivered, and the relay had refused). The same
    # replies to the final "." are `uncertain` (test_uncertain.py: CONTRADICTORY).
    ("RCPT", "250-2.1.5 fine\n550\t5.1.1 no such user", failed("SMTP_PERMANENT", "rcpt", 550)),
    ("MAIL", "250-2.1.0 fine\n 55 5.7.1 refused", failed("SMTP_PERMANENT", "mail", 55)),
])
def test_a_reply_read_as_a_refusal_is_never_made_a_success(
    denv: DeployEnv, lineage: LineagePaths, fault_server, stage: str, reply: str, expected: Facts
) -> None:
    server = fault_server(replies={stage: reply})
    run, t = deploy(denv, lineage, fault_target(server.port))
    assert facts(t) == expected, t["detail"]
    assert run.returncode == EX_UNAVAILABLE
    assert t["attempts"] == 1 and server.connections == 1 and server.messages == []


def test_replies_past_the_one_read_do_not_reclass_it(denv: DeployEnv, lineage: LineagePaths, fault_server) -> None:
    """A relay that sends more whole replies than the one asked for: the codes of the first classify the first, the
    reply read. A scan of 0.2 dropped the oldest, so the 250 to the final dot was classed by a later 451:
    retried, a second copy sent to a relay that had taken the message."""
    server = fault_server(replies={"DATA_END": "250 2.0.0 queued\n451 4.3.0 a\n451 4.3.0 b\n451 4.3.0 c\n451 4.3.0 d"})
    run, t = deploy(denv, lineage, fault_target(server.port))
    assert (t["status"], t["error_code"], t["attempts"]) == ("delivered", None, 1), t["detail"]
    assert run.returncode == 0
    assert server.connections == 1


@pytest.mark.parametrize(("reply", "expected"), [
    # The first line is over-long: the reply's text is dropped; the starts of its lines are still read.
    ("451-4.3.0 " + "x" * 9000 + "\n550 5.7.1 refused", failed("SMTP_PERMANENT", "mail", 550)),
    ("550-5.7.1 " + "x" * 9000 + "\n451 4.3.0 later", failed("SMTP_PERMANENT", "mail", 550)),
    ("451-4.3.0 " + "x" * 9000 + "\n451 4.3.0 later", failed("SMTP_TRANSIENT", "mail", 451)),
])
def test_an_over_long_reply_whose_lines_disagree_is_classed_by_the_most_severe(
    denv: DeployEnv, lineage: LineagePaths, fault_server, reply: str, expected: Facts
) -> None:
    """The same rule as for a reply read whole: a 451 first line no longer makes a refusal retryable."""
    server = fault_server(replies={"MAIL": reply})
    run, t = deploy(denv, lineage, fault_target(server.port))
    assert facts(t) == expected, t["detail"]
    assert "too long" in t["detail"] and "x" * 20 not in t["detail"]
    assert run.returncode == expected_exit(expected)
    assert server.messages == []


# ---------------------------------------------------------------------------------------------- in-run retry


def test_retryable_failure_then_success_within_the_run(denv: DeployEnv, lineage: LineagePaths,
                                                       fault_server) -> None:
    server = fault_server(replies={"MAIL": "451 4.3.0 Try again later"}, faulty_connections=2)
    run, t = deploy(denv, lineage, fault_target(server.port, timeout=20))
    assert (t["status"], t["error_code"], t["attempts"]) == ("delivered", None, 3)
    assert run.returncode == 0
    assert server.connections == 3
    [message] = server.messages
    assert message.auth_user == USER and t["message_id"].encode() in message.data


def test_retryable_failure_is_retried_up_to_the_attempt_limit(denv: DeployEnv, lineage: LineagePaths,
                                                              fault_server) -> None:
    server = fault_server(replies={"greeting": GREETING_421})
    run, t = deploy(denv, lineage, fault_target(server.port, timeout=20))
    assert facts(t) == failed("SMTP_TRANSIENT", "connect", 421, "4.3.2")
    assert t["attempts"] == 3 and server.connections == 3
    assert run.returncode == EX_TEMPFAIL


def test_permanent_failure_is_attempted_once(denv: DeployEnv, lineage: LineagePaths, fault_server) -> None:
    server = fault_server(replies={"MAIL": "550 5.7.1 Sender rejected"}, faulty_connections=1)
    run, t = deploy(denv, lineage, fault_target(server.port, timeout=20))
    assert facts(t) == failed("SMTP_PERMANENT", "mail", 550, "5.7.1")
    assert t["attempts"] == 1 and server.connections == 1  # the relay would have taken it next time: not our call
    assert run.returncode == EX_UNAVAILABLE


# ---------------------------------------------------------------------------------------------- exit status


@pytest.mark.parametrize(("second", "exit_status"), [
    ("452 4.3.1 Insufficient system storage", EX_TEMPFAIL),
    ("550 5.7.1 Sender rejected", EX_UNAVAILABLE),
])
def test_exit_status_is_tempfail_only_when_every_failure_is_retryable(
    denv: DeployEnv, lineage: LineagePaths, fault_server, second: str, exit_status: int
) -> None:
    busy = fault_server(replies={"MAIL": "451 4.3.0 Try again later"})
    other = fault_server(replies={"MAIL": second})
    denv.set_credential("relay", "smtp_password", PW)
    denv.write_config({"busy": fault_target(busy.port), "other": fault_target(other.port)})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    assert_clean(denv, run)
    assert run.target("busy")["retryable"] is True
    assert run.target("other")["retryable"] is (exit_status == EX_TEMPFAIL)
    assert run.returncode == exit_status
    assert busy.messages == [] and other.messages == []


@pytest.mark.parametrize("script", [
    {"replies": {"MAIL": "550 5.7.1 sender rejected"}},
    {"rcpt_replies": {"pki@example.com": "550 5.1.1 no such user"}},
    {"auth_replies": {"PLAIN": "535 5.7.8 bad credentials"}},
    {"ehlo_extensions": ("8BITMIME",), "advertise_starttls": False, "_starttls": True},
], ids=["mail-550", "all-rcpt-550", "auth-535", "starttls-stripped"])
def test_refused_session_ends_with_quit(denv: DeployEnv, lineage: LineagePaths, fault_server,
                                        script: dict[str, Any]) -> None:
    """RFC 5321 §4.1.1.10: a client ends the session with QUIT, also after a refusal."""
    starttls = script.pop("_starttls", False)
    server = fault_server(**script)
    table = fault_target(server.port, auth="auth_replies" in script)
    if starttls:
        table["tls_mode"] = "starttls"
    run, t = deploy(denv, lineage, table)
    assert t["status"] == "failed"
    assert server.wait_idle()
    assert server.client_commands[-1] == "QUIT"
    assert not server.accepted


def test_stalled_session_gets_no_quit(denv: DeployEnv, lineage: LineagePaths, fault_server) -> None:
    server = fault_server(replies={"MAIL": STALL})
    run, t = deploy(denv, lineage, fault_target(server.port, auth=False, timeout=2))
    assert t["error_code"] == "SMTP_TRANSIENT" and t["phase"] == "mail"
    assert server.wait_idle()
    assert "QUIT" not in server.client_commands


def test_a_relay_stalling_on_quit_after_taking_the_message_is_a_delivery(denv: DeployEnv, lineage: LineagePaths,
                                                                          fault_server) -> None:
    """RFC 5321 §4.1.1.4: the 250 to the final "." is the delivery. A QUIT that stalls to the deadline afterwards
    must not turn it into a retryable failure, whichever timer (the greeting's or the session's) fires first: a
    spooled failure would be sent again by the next `retry`."""
    server = fault_server(replies={"QUIT": STALL})
    run, t = deploy(denv, lineage, fault_target(server.port, timeout=2))
    assert (t["status"], t["error_code"]) == ("delivered", None), t
    assert run.returncode == 0
    assert len(server.messages) == 1 and server.connections == 1
    assert denv.run("status", "--allow-empty").returncode == 0  # nothing spooled for a second copy
