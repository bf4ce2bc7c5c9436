"""A resolver that never answers must not hold the hook past its deadline (the ACME client waits on us).

Runs the deploy in a private network and mount namespace whose resolv.conf points at a UDP blackhole on its own
loopback, so no query leaves the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from support.deployenv import DeployEnv
from support.pki import LineagePaths

INNER = textwrap.dedent("""\
    set -eu
    ip link set lo up
    printf 'nameserver 127.0.0.1\\noptions timeout:5 attempts:2\\n' > "$ROOT/resolv.conf"
    mount --bind "$ROOT/resolv.conf" /etc/resolv.conf
    exec "$PYTHON" "$ROOT/inner.py"
""")

INNER_PY = textwrap.dedent("""\
    import os, socket, subprocess, sys, threading, time
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", 53))   # swallow every query, answer none
    threading.Thread(target=lambda: [hole.recvfrom(4096) for _ in iter(int, 1)], daemon=True).start()
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "certbot_smtp_dist", "deploy", "--lineage", os.environ["LIVE"],
                           "--json"], capture_output=True, text=True, timeout=120)
    sys.stdout.write(proc.stdout)
    sys.stderr.write("WALL %.2f\\n" % (time.monotonic() - started))
    sys.exit(proc.returncode)
""")


# The lookups of a run hosted in another interpreter (the certbot plugin): their waiters give up at their deadlines,
# the run ends, and the interpreter exits with the resolver still busy. UTS namespace: a host name that is no FQDN.
HOSTED = textwrap.dedent("""\
    set -eu
    ip link set lo up
    hostname mends-short
    printf 'nameserver 127.0.0.1\\noptions timeout:3 attempts:1\\n' > "$ROOT/resolv.conf"
    mount --bind "$ROOT/resolv.conf" /etc/resolv.conf
    exec "$PYTHON" "$ROOT/hosted.py" "$@"
""")

HOSTED_PY = textwrap.dedent("""\
    import socket, subprocess, sys, threading
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", 53))   # swallow every query, answer none
    threading.Thread(target=lambda: [hole.recvfrom(4096) for _ in iter(int, 1)], daemon=True).start()
    proc = subprocess.run([sys.executable, "-c", sys.argv[1]], capture_output=True, text=True, timeout=60)
    sys.stdout.write(proc.stdout + proc.stderr)
    sys.exit(proc.returncode)
""")

RUN = textwrap.dedent("""\
    import asyncio, atexit, threading
    from certbot_smtp_dist._internal import greeting, transport

    async def run():
        try:
            await asyncio.wait_for(transport._resolve("relay.blackhole.example", 25), 0.3)
        except asyncio.TimeoutError:
            print("RESOLVE abandoned")
        print("NAME", await greeting.local_name("127.0.0.1"))

    asyncio.run(run())
    # atexit runs once the interpreter has joined the threads it waits for: a lookup thread it left running is one
    # that is still inside the C library while the interpreter and the C runtime tear down.
    atexit.register(lambda: print("LEFT", sorted(t.name for t in threading.enumerate()
                                                 if t.is_alive() and t is not threading.main_thread())))
""")


def _namespaces_usable() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True)
    return probe.returncode == 0


def _in_namespace(denv: DeployEnv, lineage: LineagePaths, tmp_path: Path, shell: str, python: str,
                  timeout: float = 180, **extra: str) -> subprocess.CompletedProcess[str]:
    """`shell` run as inner.sh in new network and mount namespaces, with `python` beside it as inner.py."""
    (tmp_path / "inner.sh").write_text(shell)
    (tmp_path / "inner.py").write_text(python)
    env = denv.env({"ROOT": str(tmp_path), "PYTHON": sys.executable, "LIVE": str(lineage.live_dir), **extra})
    return subprocess.run(["unshare", "--net", "--mount", "sh", str(tmp_path / "inner.sh")], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_blackholed_resolver_is_abandoned_at_the_deadline(denv: DeployEnv, lineage: LineagePaths,
                                                          tmp_path: Path) -> None:
    from support.ci import require

    require(_namespaces_usable(), "needs unshare --net --mount and ip (root)")
    denv.write_config({"t": {"host": "relay.blackhole.example", "port": 2525, "tls_mode": "plaintext",
                             "timeout": 2, "from_address": "c@example.com", "to": ["a@example.com"]}})
    proc = _in_namespace(denv, lineage, tmp_path, INNER, INNER_PY)
    target = json.loads(proc.stdout)["targets"][0]
    assert (target["error_code"], target["phase"], target["retryable"]) == ("SMTP_CONNECT", "connect", True)
    assert "resolve" in target["detail"]
    wall = float(proc.stderr.rsplit("WALL ", 1)[1].split()[0])
    # The resolver would keep the process for 10 s (timeout:5 attempts:2); the deadline is 2 s. The slack covers
    # interpreter start-up on a busy machine, and stays well below the resolver's 10 s.
    assert wall < 2 + 5, proc.stderr
    assert proc.returncode == 75


def test_connect_timeout_to_a_literal_address_is_not_called_a_resolver_failure(
        denv: DeployEnv, lineage: LineagePaths) -> None:
    """A listener whose accept queue is full drops SYNs: the TCP connect stalls with no DNS involved."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue; later SYNs are dropped and connect() waits
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
        denv.write_config({"t": {"host": "127.0.0.1", "port": listener.getsockname()[1], "tls_mode": "plaintext",
                                 "timeout": 2, "from_address": "c@example.com", "to": ["a@example.com"]}})
        target = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json").target("t")
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
    assert (target["error_code"], target["phase"], target["retryable"]) == ("SMTP_CONNECT", "connect", True)
    assert "TCP connect" in target["detail"] and "resolve" not in target["detail"]


def test_a_hosting_interpreter_exits_only_after_the_lookups_it_abandoned(tmp_path: Path) -> None:
    """A daemon thread inside getaddrinfo when the interpreter exits runs under C-level cleanup at exit (as the
    trust-store prefetch thread did inside OpenSSL, and crashed the process): the lookup threads are no daemons, so
    an interpreter that hosts us waits for them, for as long as the resolver takes (3 s here), however early the
    run gave up on them (0.3 s, and greeting's LOOKUP_WAIT)."""
    from support.ci import require

    require(_namespaces_usable(), "needs unshare --net --mount --uts and ip (root)")
    (tmp_path / "hosted.sh").write_text(HOSTED)
    (tmp_path / "hosted.py").write_text(HOSTED_PY)
    import certbot_smtp_dist

    env = {**os.environ, "ROOT": str(tmp_path), "PYTHON": sys.executable,
           "PYTHONPATH": str(Path(certbot_smtp_dist.__file__).parents[1])}
    proc = subprocess.run(["unshare", "--net", "--mount", "--uts", "sh", str(tmp_path / "hosted.sh"), RUN],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "RESOLVE abandoned" in lines and "NAME [127.0.0.1]" in lines, proc.stdout
    assert "LEFT []" in lines, proc.stdout


# Every command that dials a relay, in turn, with the resolver still busy when each run ends (abandon.end_process
# ends the process with os._exit): what each wrote (stdout, the spool, the journal, the metrics file) is read back.
COMMANDS_PY = textwrap.dedent("""\
    import json, os, socket, subprocess, sys, threading, time
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", 53))   # swallow every query, answer none
    threading.Thread(target=lambda: [hole.recvfrom(4096) for _ in iter(int, 1)], daemon=True).start()
    prom = os.environ["PROM"]
    runs = []
    for args in (["deploy", "--lineage", os.environ["LIVE"], "--json"], ["retry", "--json"], ["check", "--json"],
                 ["status", "--json"]):
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "certbot_smtp_dist", "-v", *args], capture_output=True,
                              text=True, timeout=120)
        metrics = open(prom).read() if os.path.exists(prom) else None
        runs.append({"args": args, "code": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
                     "wall": time.monotonic() - started, "metrics": metrics})
    print(json.dumps(runs))
""")


def test_every_command_ended_by_end_process_keeps_its_output_state_and_status(
        denv: DeployEnv, lineage: LineagePaths, tmp_path: Path) -> None:
    """deploy, retry and check each end with a lookup abandoned at the 2 s deadline still inside the resolver
    (10 s): the process ends at once (os._exit), and nothing of the run is lost: its JSON on stdout, its log lines,
    its exit status, the spool entry and journal lines it wrote, the metrics file it rewrote."""
    from support.ci import require

    require(_namespaces_usable(), "needs unshare --net --mount and ip (root)")
    prom_dir = tmp_path / "node-exporter"
    prom_dir.mkdir()
    prom = prom_dir / "certbot_smtp_dist.prom"
    denv.write_config({"t": {"host": "relay.blackhole.example", "port": 2525, "tls_mode": "plaintext",
                             "timeout": 2, "from_address": "c@example.com", "to": ["a@example.com"]}},
                      defaults={"metrics_textfile": str(prom)})
    proc = _in_namespace(denv, lineage, tmp_path, INNER, COMMANDS_PY, timeout=300, PROM=str(prom))
    assert proc.returncode == 0, proc.stderr
    deploy, retry, check, status = json.loads(proc.stdout)
    for run in (deploy, retry, check):
        # The resolver keeps a lookup for 10 s; the run's deadline is 2 s: the process did not wait for it.
        assert run["wall"] < 2 + 5, run
        assert "Traceback" not in run["stderr"], run["stderr"]
    for run in (deploy, retry):
        assert run["code"] == 75, run
        target = json.loads(run["stdout"])["targets"][0]
        assert (target["error_code"], target["retryable"]) == ("SMTP_CONNECT", True) and "resolve" in target["detail"]
        assert "resolve" in run["stderr"]  # the run's log lines, flushed before the end
        assert 'certbot_smtp_dist_spool_entries{target="t",state="pending"} 1' in run["metrics"], run["metrics"]
    assert deploy["metrics"] != retry["metrics"]  # retry rewrote it (its attempt's time), after deploy had
    checked = json.loads(check["stdout"])
    assert check["code"] != 0 and "resolve" in json.dumps(checked), check
    assert status["code"] == 1, status
    entries = json.loads(status["stdout"])["entries"]
    assert [(e["target"], e["state"], e["attempts"]) for e in entries] == [("t", "pending", 2)], entries
    assert denv.run("journal", "verify").returncode == 0
    history = denv.run("history", "--json", "--all")
    assert history.returncode == 0, history.stderr
    records = [(h.get("run"), h.get("attempt")) for h in json.loads(history.stdout)["history"]]
    assert ("deploy", 1) in records and ("retry", 2) in records, records


PLUGIN_PY = textwrap.dedent("""\
    import os, sys, threading
    from pathlib import Path
    from certbot_smtp_dist._internal import abandon, certbot_adapter, cli
    from certbot_smtp_dist.model import LineageSource
    stuck = threading.Event()
    abandon.start(lambda: stuck.wait(3), "resolve-stuck")  # a lookup still under way when the run ends
    live = Path(os.environ["LIVE"])
    options = certbot_adapter.Options(Path(os.environ["CERTBOT_SMTP_DIST_CONFIG"]), (),
                                      Path(os.environ["CERTBOT_SMTP_DIST_STATE_DIR"]))
    source = LineageSource(live / "cert.pem", live / "privkey.pem", live / "chain.pem", live / "fullchain.pem",
                           lineage_dir=live)
    shipment = certbot_adapter.ship(options, source)
    print("shipped", shipment.report is not None and shipment.report.exit_status)
    print("main", cli.main(["status"]))  # a caller that owns the process: main returns
    sys.stdout.flush()
    sys.exit(7)
""")


def test_the_certbot_plugin_path_and_a_hosted_main_never_end_the_process(
        denv: DeployEnv, lineage: LineagePaths, tmp_path: Path, unused_port: int) -> None:
    """abandon.end_process is for the command's own process only: certbot's (the plugin), or any caller of main()
    with its own argv, goes on after the run, with a lookup still under way, and exits as it chooses."""
    import certbot_smtp_dist

    denv.write_config({"t": {"host": "127.0.0.1", "port": unused_port, "tls_mode": "plaintext", "timeout": 2,
                             "from_address": "c@example.com", "to": ["a@example.com"]}})
    env = denv.env({"LIVE": str(lineage.live_dir), "PYTHONPATH": str(Path(certbot_smtp_dist.__file__).parents[1])})
    proc = subprocess.run([sys.executable, "-c", PLUGIN_PY], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 7, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert (lines[0], lines[-1]) == ("shipped 75", "main 1"), proc.stdout + proc.stderr  # status: 1, pending


# "localhost" answered by the name service with an address that is not loopback (no entry in /etc/hosts, a search
# domain's wildcard record): 10.77.0.1 on this namespace's own lo, where a listener takes whatever is sent.
ELSEWHERE = textwrap.dedent("""\
    set -eu
    ip link set lo up
    ip addr add 10.77.0.1/32 dev lo
    printf '10.77.0.1 localhost\\n' > "$ROOT/hosts"
    mount --bind "$ROOT/hosts" /etc/hosts
    exec "$PYTHON" "$ROOT/inner.py"
""")

ELSEWHERE_PY = textwrap.dedent("""\
    import os, socket, subprocess, sys, threading
    listener = socket.socket()
    listener.bind(("10.77.0.1", 2525))
    listener.listen(8)
    received = []
    def serve():
        while True:
            conn, _ = listener.accept()
            conn.settimeout(5)
            conn.sendall(b"220 elsewhere ESMTP\\r\\n")
            data = b""
            try:
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                    if data.endswith(b"\\r\\n"):
                        line = data.rsplit(b"\\r\\n", 2)[-2]
                        if line == b"DATA":
                            conn.sendall(b"354 go\\r\\n")
                        elif line == b"QUIT":
                            conn.sendall(b"221 bye\\r\\n")
                            break
                        elif not data.endswith(b"\\r\\n.\\r\\n") or line == b".":
                            conn.sendall(b"250 ok\\r\\n")
            except OSError:
                pass
            received.append(data)
    threading.Thread(target=serve, daemon=True).start()
    proc = subprocess.run([sys.executable, "-m", "certbot_smtp_dist", "deploy", "--lineage", os.environ["LIVE"],
                           "--json"], capture_output=True, text=True, timeout=120)
    sys.stdout.write(proc.stdout)
    sys.stderr.write("RECEIVED %d DATA %s\\n" % (len(received), b"\\r\\nDATA\\r\\n" in b"".join(received)))
    sys.exit(proc.returncode)
""")


def test_localhost_is_only_ever_a_loopback_address(denv: DeployEnv, lineage: LineagePaths, tmp_path: Path) -> None:
    """Attack: the name `localhost` exempts a target from TLS (config: a key or password may travel in plaintext
    to loopback, decided without DNS), but the connection asked the name service, whose answer for it may be any
    address (no entry in /etc/hosts, a search domain's wildcard): the private key went there in clear. RFC 6761
    §6.3: localhost is loopback; an answer that is not is never connected to."""
    from support.ci import require

    require(_namespaces_usable(), "needs unshare --net --mount and ip (root)")
    denv.write_config({"t": {"host": "localhost", "port": 2525, "tls_mode": "plaintext", "timeout": 5,
                             "payload": "pem_and_key", "from_address": "c@example.com", "to": ["a@example.com"]}})
    proc = _in_namespace(denv, lineage, tmp_path, ELSEWHERE, ELSEWHERE_PY)
    target = json.loads(proc.stdout)["targets"][0]
    assert "RECEIVED 0 DATA False" in proc.stderr, (proc.stderr, target)  # before: 1, True (delivered)
    assert (target["error_code"], target["phase"], target["retryable"]) == ("SMTP_CONNECT", "connect", True)
    assert "loopback" in target["detail"], target["detail"]
