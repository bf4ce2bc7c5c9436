"""The eight scenarios of issue 16: each starts its own loopback peers, runs interleaved series, returns table rows."""

from __future__ import annotations

import importlib.util
import shutil
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import instructions
from bench_certbot_plugins import LAUNCHER
from measure import MIB, BenchError, Sample, Stats, Variant, expect_exit, interleave, run_process
from report import Budget, Row, ratio_row, skip_row
from servers import BlackHole, slow_relay
from support import postfix
from support.relay import Relay
from world import (
    P12_PASSPHRASE,
    PASSWORD,
    RECIPIENT,
    SENDER,
    USER,
    Installation,
    World,
    child_env,
    expect_delivered,
    outcomes,
)

BLACKHOLE_TIMEOUT = 4  # seconds: the black-holed target's own `timeout`
SCALE = (1, 10, 100, 500)
LONG_TIMEOUT = 120  # fan-out and scale runs measure throughput, not the per-target deadline


@dataclass(frozen=True, slots=True)
class Context:
    world: World
    runs: int
    warmup: int
    concurrency: int  # the peer's bound in scenario 3
    instructions: bool = False  # scenarios 1, 3, 6 and 7 also count instructions (instructions.py): reference rows


def _series(ctx: Context, variants: Sequence[Variant], *, warmup: int | None = None) -> dict[str, list[Sample]]:
    return interleave(variants, runs=ctx.runs, warmup=ctx.warmup if warmup is None else warmup)


def _client(ctx: Context, script: str, *args: object, env: dict[str, str] | None = None,
            stdin: bytes = b"") -> Callable[[], Sample]:
    argv = ctx.world.client(script, *args)
    return lambda: run_process(argv, env or child_env(), timeout=600, stdin=stdin)


def _counted(scenario: str, measurement: str, subject: int, peer: int, note: str = "") -> Row:
    """A reference row of instruction counts (instructions.py): subject / peer, never judged."""
    return Row(scenario, f"{measurement}, instructions (valgrind)", None, None, subject / peer, None,
               f"reference: {instructions.millions(subject)} vs {instructions.millions(peer)}" + note)


def _auth_relay(ctx: Context) -> Relay:
    return Relay(ctx.world.pki, mode="starttls", auth=(USER, PASSWORD)).start()


# --------------------------------------------------------------------------- 1, 2: one cold deploy


def _curl(ctx: Context, port: int, message: Path) -> Variant | None:
    curl = shutil.which("curl")
    if curl is None:
        return None
    netrc = ctx.world.root / "netrc"  # the password on curl's command line would be visible to every local user
    netrc.touch(mode=0o600)
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    argv = [curl, "--silent", "--show-error", "--ssl-reqd", "--cacert", str(ctx.world.pki.ca_file),
            "--netrc-file", str(netrc), "--login-options", "AUTH=PLAIN", "--mail-from", SENDER,
            "--mail-rcpt", RECIPIENT, "--upload-file", str(message), f"smtp://127.0.0.1:{port}"]
    return Variant("curl", lambda: run_process(argv, child_env(), timeout=60), expect_exit(0))


def _msmtp(ctx: Context, port: int, message: Path) -> Variant | None:
    msmtp = shutil.which("msmtp")
    if msmtp is None:
        return None
    argv = [msmtp, "--host=127.0.0.1", f"--port={port}", "--tls=on", "--tls-starttls=on",
            f"--tls-trust-file={ctx.world.pki.ca_file}", "--auth=plain", f"--user={USER}",
            '--passwordeval=printf %s "$BENCH_SMTP_PASSWORD"', f"--from={SENDER}", RECIPIENT]
    data = message.read_bytes()
    return Variant("msmtp", lambda: run_process(argv, child_env(), timeout=60, stdin=data), expect_exit(0))


def cold(ctx: Context, number: str, payload: str) -> list[Row]:
    extra: dict[str, Any] = {"payload": payload}
    if payload == "pkcs12":
        extra["pkcs12_passphrase_credential"] = "archive-p12"
    relay = _auth_relay(ctx)
    try:
        inst = ctx.world.install(f"s{number}", {"archive": ctx.world.target(relay.port, **extra)})
        message = inst.render()
        smtplib = _client(ctx, "smtp_send.py", "127.0.0.1", relay.port, ctx.world.pki.ca_file, message,
                          SENDER, RECIPIENT, 1)
        floor_argv = ("lib_floor.py", "127.0.0.1", relay.port, ctx.world.pki.ca_file, message, SENDER, RECIPIENT,
                      ctx.world.lineage.live_dir, payload)
        floor_env = child_env({"BENCH_P12_PASSPHRASE": P12_PASSPHRASE})
        lib_floor = _client(ctx, *floor_argv, env=floor_env)
        blocking_floor = _client(ctx, *floor_argv, "smtplib", env=floor_env)
        peers = [Variant("smtplib", smtplib, expect_exit(0)), Variant("floor", lib_floor, expect_exit(0)),
                 Variant("blocking floor", blocking_floor, expect_exit(0))]
        optional = {"curl --ssl-reqd": _curl(ctx, relay.port, message), "msmtp": _msmtp(ctx, relay.port, message)}
        peers += [v for v in optional.values() if v is not None]
        samples = _series(ctx, [Variant("deploy", inst.deploy, expect_delivered(["archive"])), *peers])
        counted = {} if not ctx.instructions else {
            "deploy": instructions.count(inst.argv("--json"), inst.env()),
            "smtplib": instructions.count(ctx.world.client("smtp_send.py", "127.0.0.1", relay.port,
                                                           ctx.world.pki.ca_file, message, SENDER, RECIPIENT, 1),
                                          child_env()),
            "floor": instructions.count(ctx.world.client(*floor_argv), floor_env),
            "blocking floor": instructions.count(ctx.world.client(*floor_argv, "smtplib"), floor_env)}
    finally:
        relay.stop()
    deploy, floor, script = Stats.of(samples["deploy"]), Stats.of(samples["floor"]), Stats.of(samples["smtplib"])
    blocking = Stats.of(samples["blocking floor"])
    what = f"cold deploy, 1 target, {payload}"
    kdf = " (building the PKCS#12 with payload.py's 200,000 KDF rounds is part of it)" if payload == "pkcs12" else ""
    at_floor = floor.wall_s / script.wall_s
    verdict = ("so no deploy built on these libraries fits the budget" if at_floor > 2.0 else
               f"which leaves {2.0 / at_floor:.2f}x that floor for everything of ours")
    why = (f"the libraries' floor alone (bench/clients/lib_floor.py: asyncio and cryptography imported, "
           f"the lineage read and checked, the system store's hashed directory and the CA file trusted, one session; "
           f"none of our code) is {at_floor:.2f}x the smtplib script in this run{kdf}, {verdict}; deploy is "
           f"{deploy.wall_s / floor.wall_s:.2f}x that floor")
    rows = [replace(ratio_row(number, f"{what} / minimal smtplib script", deploy, script, Budget("<=", 2.0)), why=why),
            ratio_row(number, f"{what} / the libraries' floor (bench/clients/lib_floor.py)", deploy, floor, None,
                      "reference: our own share"),
            ratio_row(number, f"the libraries' floor, {payload} / minimal smtplib script", floor, script, None,
                      "reference: what 2x must fit in"),
            ratio_row(number, f"the libraries' floor without asyncio (smtplib's blocking session), {payload} / "
                      "minimal smtplib script", blocking, script, None,
                      "reference: where a deploy that dropped asyncio would start")]
    if counted:
        rows += [_counted(number, f"{what} / minimal smtplib script", counted["deploy"], counted["smtplib"]),
                 _counted(number, f"{what} / the libraries' floor", counted["deploy"], counted["floor"]),
                 _counted(number, f"the libraries' floor, {payload} / minimal smtplib script", counted["floor"],
                          counted["smtplib"]),
                 _counted(number, f"the libraries' floor without asyncio, {payload} / minimal smtplib script",
                          counted["blocking floor"], counted["smtplib"])]
    for label, variant in optional.items():
        if variant is None:
            tool = label.split()[0]
            rows.append(skip_row(number, f"{what} / {label}",
                                 f"{tool} not on PATH: optional peer (Debian: apt-get install {tool})"))
        else:
            rows.append(ratio_row(number, f"{what} / {label}", deploy, Stats.of(samples[variant.name]), None,
                                  "reference, no budget"))
    return rows


def s1_cold_pem(ctx: Context) -> list[Row]:
    return cold(ctx, "1", "pem")


def s2_cold_pkcs12(ctx: Context) -> list[Row]:
    return cold(ctx, "2", "pkcs12")


# --------------------------------------------------------------------------- 3: fan-out


FANOUT_DELAY = 0.01  # seconds per reply on the second relay of scenario 3


def _fanout_install(ctx: Context, relay: Relay, label: str, count: int) -> Installation:
    names = [f"t{i:02d}" for i in range(1, count + 1)]
    return ctx.world.install(label, {n: ctx.world.target(relay.port, timeout=LONG_TIMEOUT) for n in names},
                             defaults={"connections_per_relay": ctx.concurrency})  # the peer's bound


def _fanout(ctx: Context, relay: Relay, label: str, count: int, same_trust: bool = False) -> dict[str, Stats]:
    """`same_trust`: also the gather peer trusting the system store (its hashed directory, as deploy's first look)
    as well as the CA file, as deploy does."""
    inst = _fanout_install(ctx, relay, label, count)
    names = list(inst.targets)
    message = inst.render()
    common = ("127.0.0.1", relay.port, ctx.world.pki.ca_file, message, SENDER, RECIPIENT, count)
    variants = [
        Variant("deploy", inst.deploy, expect_delivered(names)),
        Variant("gather", _client(ctx, "aio_gather.py", *common, ctx.concurrency), expect_exit(0)),
        Variant("sequential", _client(ctx, "smtp_send.py", *common), expect_exit(0)),
    ]
    if same_trust:
        variants.append(Variant("gather+store", _client(ctx, "aio_gather.py", *common, ctx.concurrency,
                                                        env=child_env({"BENCH_SYSTEM_STORE": "1"})), expect_exit(0)))
    samples = _series(ctx, variants)
    return {name: Stats.of(found) for name, found in samples.items()}


def s3_fanout(ctx: Context, count: int = 50) -> list[Row]:
    """On the plain relay, and on one delaying each reply 10 ms, where concurrency can pay at all.

    On loopback with an instant relay even the bounded aiosmtplib peer is no faster than sequential smtplib (the
    relay and the client share two cores), so the sequential speed-up is judged on the delaying relay only.
    """
    relay = _auth_relay(ctx)
    try:
        fast = _fanout(ctx, relay, "s3", count, same_trust=True)
        counted = _fanout_instructions(ctx, relay, count) if ctx.instructions else []
    finally:
        relay.stop()
    delaying = slow_relay(ctx.world.pki, auth=(USER, PASSWORD), delay=FANOUT_DELAY).start()
    try:
        slow = _fanout(ctx, delaying, "s3-slow", count)
    finally:
        delaying.stop()
    where = f"relay delaying each reply {FANOUT_DELAY * 1000:.0f} ms"
    bound = f"aiosmtplib gather (≤ {ctx.concurrency} at once)"
    extra_cpu = (fast["deploy"].cpu_s - fast["gather"].cpu_s) * 1000 / count
    why = (f"on this instant relay every cost is CPU on the same two cores as the relay: deploy spends "
           f"{extra_cpu:.1f} ms of CPU a target more than the peer (its larger cold start, scenario 1, spread over "
           f"the {count}), which sends one pre-rendered message {count} times and keeps nothing, where deploy "
           f"renders {count} messages, writes, fsyncs and removes {count} write-ahead entries and journals every "
           f"attempt, and it trusts the system store (its hashed directory) as well as the CA file (tls_ca_file's "
           f"documented meaning; the "
           f"peer trusts its CA file alone: against the peer trusting both, deploy is "
           f"{fast['deploy'].wall_s / fast['gather+store'].wall_s:.2f}x); on the relay "
           f"delaying each reply {FANOUT_DELAY * 1000:.0f} ms the same fan-out is "
           f"{slow['deploy'].wall_s / slow['gather'].wall_s:.2f}x the peer"
           + (f"; counted in instructions (valgrind), {counted[0].note.removeprefix('reference: ')}" if counted else ""))
    return [
        replace(ratio_row("3", f"deploy, {count} targets / {bound}", fast["deploy"], fast["gather"],
                          Budget("<=", 1.5)), why=why),
        ratio_row("3", f"deploy, {count} targets / {bound}, the peer trusting the system store too", fast["deploy"],
                  fast["gather+store"], None, "reference: deploy's trust for a target with tls_ca_file"),
        Row("3", f"{count} sequential smtplib sessions / deploy, {count} targets (speed-up)", fast["deploy"],
            fast["sequential"], fast["sequential"].wall_s / fast["deploy"].wall_s, None,
            "reference: on this relay even the peer gains "
            f"{fast['sequential'].wall_s / fast['gather'].wall_s:.2f}×"),
        *counted,
        ratio_row("3", f"deploy, {count} targets / {bound}, {where}", slow["deploy"], slow["gather"],
                  Budget("<=", 1.5)),
        Row("3", f"{count} sequential smtplib sessions / deploy, {count} targets (speed-up), {where}",
            slow["deploy"], slow["sequential"], slow["sequential"].wall_s / slow["deploy"].wall_s,
            Budget(">=", 1.7), f"the peer gains {slow['sequential'].wall_s / slow['gather'].wall_s:.2f}×"),
    ]


def _fanout_instructions(ctx: Context, relay: Relay, count: int) -> list[Row]:
    """Instructions of deploy and of the gather peer for `count` targets and for one: the whole ratio, and how it
    splits into what a run costs once (imports, config, certificate, trust store) and what each further target
    adds (render, write-ahead, session, journal)."""
    found: dict[tuple[str, int], int] = {}
    for targets in (count, 1):
        inst = _fanout_install(ctx, relay, f"s3-counted-{targets}", targets)
        message = inst.render()
        found["deploy", targets] = instructions.count(inst.argv("--json"), inst.env())
        found["gather", targets] = instructions.count(ctx.world.client(
            "aio_gather.py", "127.0.0.1", relay.port, ctx.world.pki.ca_file, message, SENDER, RECIPIENT, targets,
            ctx.concurrency), child_env())
    each = {who: (found[who, count] - found[who, 1]) / (count - 1) for who in ("deploy", "gather")}
    split = (f"; one target: {instructions.millions(found['deploy', 1])} vs "
             f"{instructions.millions(found['gather', 1])}; each further target: "
             f"{instructions.millions(each['deploy'])} vs {instructions.millions(each['gather'])}")
    return [_counted("3", f"deploy, {count} targets / aiosmtplib gather", found["deploy", count],
                     found["gather", count], split)]


# --------------------------------------------------------------------------- 4: latency


def s4_latency(ctx: Context, count: int = 20, delay: float = 0.1) -> list[Row]:
    slow = slow_relay(ctx.world.pki, auth=(USER, PASSWORD), delay=delay).start()
    try:
        many = ctx.world.install("s4-many", {f"t{i:02d}": ctx.world.target(slow.port) for i in range(1, count + 1)})
        one = ctx.world.install("s4-one", {"t01": ctx.world.target(slow.port)})
        samples = _series(ctx, [Variant("many", many.deploy, expect_delivered(many.targets)),
                                Variant("one", one.deploy, expect_delivered(one.targets))])
    finally:
        slow.stop()
    return [ratio_row("4", f"deploy, {count} targets / 1 target, relay delaying each reply {delay * 1000:.0f} ms",
                      Stats.of(samples["many"]), Stats.of(samples["one"]), Budget("<=", 1.3))]


# --------------------------------------------------------------------------- 5: a black hole beside healthy targets


def _healthy_time(sample: Sample, names: Sequence[str]) -> float:
    found = outcomes(sample)
    return max(float(found[n]["duration_s"]) for n in names)


def s5_blackhole(ctx: Context, healthy: int = 5) -> list[Row]:
    names = [f"ok{i}" for i in range(1, healthy + 1)]
    relay, hole = _auth_relay(ctx), BlackHole().start()
    try:
        targets = {n: ctx.world.target(relay.port) for n in names}
        without = ctx.world.install("s5-without", targets)
        with_hole = ctx.world.install("s5-with", {
            **targets, "blackhole": ctx.world.target(hole.port, timeout=BLACKHOLE_TIMEOUT)})

        def check_with(sample: Sample) -> None:
            status = outcomes(sample)["blackhole"]["status"]
            if status != "failed":
                raise BenchError(f"the black-holed target ended {status!r}, expected 'failed'")
            expect_delivered(names, exit_status=None)(sample)  # the run fails, for the black hole

        samples = _series(ctx, [Variant("with", with_hole.deploy, check_with),
                                Variant("without", without.deploy, expect_delivered(names))])
    finally:
        relay.stop()
        hole.stop()
    with_s, without_s = Stats.of(samples["with"]), Stats.of(samples["without"])
    slowest_with = statistics.median(_healthy_time(s, names) for s in samples["with"])
    slowest_without = statistics.median(_healthy_time(s, names) for s in samples["without"])
    return [
        Row("5", f"{healthy} healthy targets beside a black hole / alone: slowest healthy duration_s", with_s,
            without_s, slowest_with / slowest_without, Budget("<=", 1.3),
            f"{slowest_with * 1000:.0f} ms vs {slowest_without * 1000:.0f} ms"),
        Row("5", f"whole run with the black hole / its timeout ({BLACKHOLE_TIMEOUT} s)", with_s, None,
            with_s.wall_s / BLACKHOLE_TIMEOUT, Budget("<=", 1.1)),
    ]


# --------------------------------------------------------------------------- 6: certbot plugins


def s6_certbot_plugins(ctx: Context) -> list[Row]:
    what = "`certbot plugins` with the plugin / without it"
    if importlib.util.find_spec("certbot") is None:
        return [skip_row("6", what, "certbot is not installed in this interpreter")]
    work = ctx.world.root / "certbot"

    argv = [ctx.world.python, "-c", LAUNCHER, "plugins", "--config-dir", f"{work}/config", "--work-dir",
            f"{work}/work", "--logs-dir", f"{work}/logs"]

    def env(hide: bool) -> dict[str, str]:
        return child_env({"BENCH_HIDE_SMTP_DIST": "1" if hide else "0"})

    def run(hide: bool) -> Callable[[], Sample]:
        return lambda: run_process(argv, env(hide), timeout=120)

    def listed(expected: bool) -> Callable[[Sample], None]:
        def check(sample: Sample) -> None:
            expect_exit(0)(sample)
            if ("* smtp-dist" in sample.stdout) != expected:
                raise BenchError(f"smtp-dist {'missing from' if expected else 'listed in'} `certbot plugins`")
        return check

    samples = _series(ctx, [Variant("with", run(False), listed(True)), Variant("without", run(True), listed(False))])
    row = ratio_row("6", what, Stats.of(samples["with"]), Stats.of(samples["without"]), Budget("<=", 1.05))
    if not ctx.instructions:
        return [row]
    # The ~30 ms the plugin may add sit inside a ~400 ms run whose wall time swings by more from run to run.
    counted = _counted("6", what, instructions.count(argv, env(False)), instructions.count(argv, env(True)))
    return [replace(row, why=f"counted in instructions (valgrind), {counted.value:.3f}x "
                             f"({counted.note.removeprefix('reference: ')})"), counted]


# --------------------------------------------------------------------------- 7: Postfix, sequential sessions


def _per_session(samples: Sequence[Sample], line: int = 0) -> float:
    """Median over runs of each process's median session (on that output line), the first session left out."""
    medians = []
    for sample in samples:
        times = [float(t) for t in sample.stdout.splitlines()[line].split()]
        medians.append(statistics.median(times[1:] if len(times) > 1 else times))
    return statistics.median(medians)


def s7_postfix(ctx: Context, sessions: int = 8) -> list[Row]:
    what = f"Postfix, {sessions} sequential sessions in one process"
    why = postfix.unavailable()
    if why is not None:
        return [skip_row("7", what, why)]
    world = ctx.world
    with postfix.Postfix(world.pki.valid.cert_file, world.pki.valid.key_file, parent=world.root) as mta:
        rcpt = mta.address("pki")
        target = {"host": "127.0.0.1", "port": mta.port, "tls_mode": "starttls",
                  "tls_ca_file": str(world.pki.ca_file), "auth_method": "none", "from_address": SENDER,
                  "to": [rcpt]}
        inst = world.install("s7", {"archive": target})
        message = inst.render()
        common = ("127.0.0.1", mta.port, world.pki.ca_file, message, SENDER, rcpt, sessions)
        no_auth = child_env({"BENCH_SMTP_USER": ""})  # the instance offers no SASL
        samples = _series(ctx, [
            Variant("deploy", _client(ctx, "deploy_loop.py", sessions, world.lineage.live_dir, env=inst.env()),
                    expect_exit(0)),
            Variant("smtplib", _client(ctx, "smtp_send.py", *common, env=no_auth), expect_exit(0)),
            Variant("aiosmtplib", _client(ctx, "aio_gather.py", *common, 1, env=no_auth), expect_exit(0)),
            # The floor under any asyncio client: the same exchange on asyncio's transports, no library above.
            Variant("asyncio", _client(ctx, "asyncio_min.py", *common, env=no_auth), expect_exit(0)),
        ])
        counted = _session_instructions(ctx, inst, common, no_auth) if ctx.instructions else []
    deploy, smtp, aio, floor = (Stats.of(samples[k]) for k in ("deploy", "smtplib", "aiosmtplib", "asyncio"))
    session, run, smtp_s, aio_s, floor_s = (_per_session(samples["deploy"], 1), _per_session(samples["deploy"], 0),
                                            _per_session(samples["smtplib"]), _per_session(samples["aiosmtplib"]),
                                            _per_session(samples["asyncio"]))

    def ms(value: float) -> str:
        return f"{value * 1000:.1f} ms"

    why = (f"a minimal asyncio client (no SMTP library) is {floor_s / smtp_s:.2f}x smtplib's session in this run, "
           f"and ours (smtpwire, with the transcript, the reply bounds and the classification) "
           f"{session / floor_s:.2f}x that minimal client; bare aiosmtplib is {aio_s / smtp_s:.2f}x. The round "
           f"trips are smtplib's and no stall is left (our TCP_QUICKACK avoids Postfix's delayed-ACK wait after "
           f"TLS 1.3): the gap is CPU. duration_s has 0.1 ms resolution")
    return [
        Row("7", f"{what}: SMTP session (journal's duration_s), deploy / smtplib", deploy, smtp, session / smtp_s,
            Budget("<=", 1.2), f"{ms(session)} vs {ms(smtp_s)}", why=why),
        Row("7", f"{what}: whole `deploy` run / smtplib session", deploy, smtp, run / smtp_s, None,
            f"reference: {ms(run)} vs {ms(smtp_s)}"),
        Row("7", f"{what}: bare aiosmtplib session / smtplib session", aio, smtp, aio_s / smtp_s, None,
            f"reference: {ms(aio_s)} vs {ms(smtp_s)}"),
        Row("7", f"{what}: minimal asyncio client session / smtplib session", floor, smtp, floor_s / smtp_s, None,
            f"reference, the event loop's and asyncio TLS's share: {ms(floor_s)} vs {ms(smtp_s)}"),
        *counted,
    ]


def _session_instructions(ctx: Context, inst: Installation, common: tuple[object, ...],
                          env: dict[str, str]) -> list[Row]:
    """What one further session costs each client in instructions (valgrind): a process making one session
    against one making `sessions` + 1, the difference divided by `sessions`. Where the judged ratio mixes CPU with
    Postfix's round trips, this shows the CPU alone: the SMTP libraries' and ours. For `deploy` only a whole run
    can be counted (deploy_loop.py), so its row holds the whole further run, session included."""
    *head, sessions = common
    more = int(str(sessions)) + 1

    def each(script: str, *tail: object, argv: Callable[[int], list[object]] | None = None,
             run_env: dict[str, str] = env) -> float:
        made = [instructions.count(ctx.world.client(script, *(argv(n) if argv else (*head, n, *tail))), run_env)
                for n in (1, more)]
        return (made[1] - made[0]) / (more - 1)

    smtp = each("smtp_send.py")
    aio = each("aio_gather.py", 1)
    floor = each("asyncio_min.py")
    run = each("deploy_loop.py", argv=lambda n: [n, inst.world.lineage.live_dir], run_env=inst.env())
    what = "Postfix, one further session in one process"
    return [
        _counted("7", f"{what}, bare aiosmtplib / smtplib", int(aio), int(smtp),
                 f"; the minimal asyncio client needs {instructions.millions(floor)}: the rest is aiosmtplib's own "
                 f"per-command work"),
        _counted("7", f"{what}, minimal asyncio client / smtplib", int(floor), int(smtp)),
        _counted("7", "Postfix, one further whole `deploy` run in one process (deploy_loop.py, its session included) "
                 "/ smtplib session", int(run), int(smtp),
                 "; the run's config, certificate checks, render, write-ahead and journal"),
    ]


# --------------------------------------------------------------------------- 8: scale


def s8_scale(ctx: Context) -> list[Row]:
    relay = _auth_relay(ctx)
    delivered: dict[int, list[int]] = {n: [] for n in SCALE}
    try:
        installs = {n: ctx.world.install(f"s8-{n}", {f"t{i:03d}": ctx.world.target(relay.port, timeout=LONG_TIMEOUT)
                                                     for i in range(1, n + 1)}) for n in SCALE}

        def count(n: int) -> Callable[[Sample], None]:
            def check(sample: Sample) -> None:
                found = outcomes(sample)  # raises when no report came out at all
                delivered[n].append(sum(1 for t in found.values() if t.get("status") == "delivered"))
            return check

        samples = _series(ctx, [Variant(str(n), installs[n].deploy, count(n)) for n in SCALE], warmup=0)
    finally:
        relay.stop()
    stats = {n: Stats.of(samples[str(n)]) for n in SCALE}
    rows = [Row("8", f"deploy, {n} targets / 1 target (growth)", stats[n], stats[1], stats[n].wall_s / stats[1].wall_s,
                None, f"{(stats[n].rss_bytes - stats[1].rss_bytes) / MIB / max(n - 1, 1):.2f} MiB a target")
            for n in SCALE[1:]]
    top, below = SCALE[-1], SCALE[-2]
    rows += [
        Row("8", f"wall, {top} targets / {below} targets (linear: {top // below})", stats[top], stats[below],
            stats[top].wall_s / stats[below].wall_s, Budget("<=", top / below)),
        Row("8", f"peak RSS at {top} targets", stats[top], None, stats[top].rss_bytes / MIB, Budget("<", 100, " MiB"),
            unit=" MiB"),
        Row("8", f"targets delivered at {top} (worst run)", stats[top], None, float(min(delivered[top])),
            Budget(">=", top, ""), unit=""),
    ]
    return rows


SCENARIOS: dict[str, tuple[Callable[[Context], list[Row]], int]] = {
    # name: (function, default timed runs per variant)
    "1": (s1_cold_pem, 15),
    "2": (s2_cold_pkcs12, 15),
    "3": (s3_fanout, 9),  # 5 runs read 1.47x to 1.66x on one tree within the hour: more for a steadier median
    "4": (s4_latency, 5),
    "5": (s5_blackhole, 5),
    "6": (s6_certbot_plugins, 20),
    "7": (s7_postfix, 7),
    "8": (s8_scale, 3),
}
