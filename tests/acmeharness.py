"""Loopback ACME test harness: a throwaway pebble CA plus runners for real ACME clients.

Everything binds to 127.0.0.1 on dynamically chosen free ports; nothing leaves the machine.

Typical use (see ``tests/e2e/conftest.py`` for the pytest fixtures)::

    with Pebble(tmp_path / "pebble") as pebble:
        cb = Certbot(pebble, tmp_path / "certbot")
        cb.certonly("test.example.com")
        leaf = cb.live_dir("test.example.com") / "cert.pem"
        assert_issued_by_pebble(pebble, leaf.read_bytes())

Pebble keeps all state in memory, so every :class:`Pebble` instance is a fresh CA with a
freshly generated root and intermediate.

Name resolution: ``pebble-challtestsrv -defaultIPv4 127.0.0.1 -defaultIPv6 ""`` answers every
A query with 127.0.0.1 and no AAAA, and pebble uses it as its DNS server, so any test name
(``test.example.com``, ``www.test.example.com``) validates against 127.0.0.1 on
:attr:`Pebble.http01_port` (pebble's ``httpPort``).
"""

from __future__ import annotations

import atexit
import functools
import http.server
import json
import os
import random
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography import x509
from support import ci

__all__ = [
    "ACME_TOOLS",
    "Certbot",
    "ClientError",
    "ClientResult",
    "Dehydrated",
    "HarnessError",
    "Lego",
    "Pebble",
    "Uacme",
    "assert_issued_by_pebble",
    "find_tool",
    "free_ports",
    "in_ci",
    "load_pem_certs",
    "require_tool",
    "run_certbot",
    "run_dehydrated",
    "run_lego",
    "serve_directory",
    "write_api_tls",
]

LOOPBACK = "127.0.0.1"
DEFAULT_CLIENT_TIMEOUT = 180.0
TEST_EMAIL = "x@example.com"

# Tools the e2e suite may need; name -> human hint for skip/fail messages.
ACME_TOOLS: dict[str, str] = {
    "pebble": "apt-get install pebble",
    "pebble-challtestsrv": "apt-get install pebble",
    "lego": "apt-get install lego",
    "dehydrated": "apt-get install dehydrated",
    "uacme": "apt-get install uacme",
    "unshare": "apt-get install util-linux",
    "certbot": "pip install certbot (into the test venv)",
    "openssl": "apt-get install openssl",
    "keytool": "apt-get install openjdk-17-jre-headless",
}


class HarnessError(RuntimeError):
    """The harness itself (pebble, ports, helper server) failed."""


# --------------------------------------------------------------------------- tools


def in_ci() -> bool:
    """True when running under CI (``CI=true``/``1``/``yes``, any case): missing tools then fail tests.

    The rule lives in ``support.ci``, shared with the unit, integration and packaging tests.
    """
    return ci.in_ci()


def find_tool(name: str) -> str | None:
    """Locate an executable.

    ``certbot`` is special: ``$ACME_HARNESS_CERTBOT`` if set, else the ``certbot`` next to
    ``sys.executable`` (the test venv, where the plugin under test is installed), else
    ``shutil.which("certbot")``. Every tool can be overridden with
    ``$ACME_HARNESS_<NAME>`` (upper-case, ``-`` -> ``_``).
    """
    override = os.environ.get("ACME_HARNESS_" + name.upper().replace("-", "_"))
    if override:
        return override if os.access(override, os.X_OK) else None
    if name == "certbot":
        sibling = Path(sys.executable).parent / "certbot"
        if os.access(sibling, os.X_OK):
            return str(sibling)
    return shutil.which(name)


def require_tool(name: str) -> str:
    """Return the tool's path, or skip the test (outside CI) / fail it (under CI, see :func:`in_ci`)."""
    path = find_tool(name)
    if path is None:
        hint = ACME_TOOLS.get(name, "")
        ci.unavailable(f"required tool {name!r} not found" + (f" ({hint})" if hint else ""))
    return path


# --------------------------------------------------------------------------- ports


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _try_bind(port: int, udp: bool) -> list[socket.socket]:
    """Bind TCP (and UDP) on 127.0.0.1:port; return the held sockets or [] if taken."""
    held: list[socket.socket] = []
    kinds = [socket.SOCK_STREAM] + ([socket.SOCK_DGRAM] if udp else [])
    try:
        for kind in kinds:
            s = socket.socket(socket.AF_INET, kind)
            held.append(s)
            s.bind((LOOPBACK, port))
            port = s.getsockname()[1]  # port 0 -> the kernel's pick, reused for UDP
        return held
    except OSError:
        for s in held:
            s.close()
        return []


def free_ports(count: int, *, udp_too: Sequence[int] = ()) -> list[int]:
    """Return ``count`` distinct free TCP ports on 127.0.0.1.

    Ports are drawn at random from 20000 up to the start of the kernel's ephemeral range
    (normally 32768), so they never collide with ports other tests get by binding port 0,
    nor with outgoing connections' local ports. Indices listed in ``udp_too`` are also
    checked free for UDP (DNS). All sockets are held until every port is chosen, so the ports
    are distinct; after they are closed a small race remains (``Pebble.start`` retries).
    """
    low, high = 20000, min(_ephemeral_low(), 32768)
    rng = random.SystemRandom()
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _attempt in range(2000):
            if len(ports) == count:
                break
            port = rng.randrange(low, high) if high - low > 1000 else 0
            if port in ports:
                continue
            socks = _try_bind(port, udp=len(ports) in udp_too)
            if not socks:
                continue
            held += socks
            ports.append(socks[0].getsockname()[1])
        if len(ports) != count:
            raise HarnessError(f"could not find {count} free loopback ports")
        return ports
    finally:
        for s in held:
            s.close()


def _port_open(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- TLS for pebble's API


def write_api_tls(
    directory: Path, *, names: Sequence[str] = ("localhost",)
) -> tuple[Path, Path, Path]:
    """Create a throwaway CA and a TLS cert for ``localhost``/127.0.0.1/::1.

    Returns ``(ca_cert_path, server_cert_path, server_key_path)``. The CA file is the bundle
    clients must trust to talk to pebble's ACME and management API.
    """
    from support.pki import issue, make_ca

    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca("acmeharness throwaway API CA")
    server = issue(ca, common_name=names[0], sans=names, ip_sans=("127.0.0.1", "::1"))
    ca_path, cert_path, key_path = directory / "api-ca.pem", directory / "api-cert.pem", directory / "api-key.pem"
    ca_path.write_bytes(ca.cert_pem())
    cert_path.write_bytes(server.cert_pem())
    key_path.write_bytes(server.key_pem())
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


def load_pem_certs(data: bytes | str) -> list[x509.Certificate]:
    """Parse every certificate in a PEM blob (leaf first, as ACME servers send them)."""
    if isinstance(data, str):
        data = data.encode()
    return x509.load_pem_x509_certificates(data)


# --------------------------------------------------------------------------- pebble


def _terminate(proc: subprocess.Popen[Any] | None, grace: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no output file>"
    return "\n".join(text.splitlines()[-lines:])


class Pebble:
    """A running pebble + pebble-challtestsrv pair on loopback.

    Attributes available after :meth:`start`:

    * ``directory_url`` -- ``https://127.0.0.1:PORT/dir``
    * ``ca_bundle`` -- PEM file trusting pebble's API TLS cert (use for REQUESTS_CA_BUNDLE,
      LEGO_CA_CERTIFICATES, curl ``--cacert``)
    * ``http01_port`` -- port pebble's VA dials for HTTP-01 (clients must listen there on
      127.0.0.1)
    * ``tls_port`` -- pebble's ``tlsPort`` (TLS-ALPN-01), unused by the bundled runners
    * ``management_url`` -- ``https://127.0.0.1:PORT``
    """

    def __init__(
        self,
        workdir: Path,
        *,
        pebble_bin: str | None = None,
        challtestsrv_bin: str | None = None,
        startup_timeout: float = 30.0,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.pebble_bin = pebble_bin or find_tool("pebble") or "pebble"
        self.challtestsrv_bin = (
            challtestsrv_bin or find_tool("pebble-challtestsrv") or "pebble-challtestsrv"
        )
        self.startup_timeout = startup_timeout
        # Deterministic by default: never reject nonces, never sleep in the VA, never reuse
        # authorizations (so every order really exercises the HTTP-01 challenge).
        self.env_overrides = {
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
            "PEBBLE_AUTHZREUSE": "0",
            **(extra_env or {}),
        }
        self._pebble: subprocess.Popen[bytes] | None = None
        self._chall: subprocess.Popen[bytes] | None = None
        self._logs: list[Any] = []
        self.acme_port = self.management_port = self.http01_port = 0
        self.tls_port = self.dns_port = self.chall_mgmt_port = 0
        self.ca_bundle = Path()
        self.pebble_log = self.workdir / "pebble.log"
        self.challtestsrv_log = self.workdir / "challtestsrv.log"

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> Pebble:  # noqa: PYI034 - py3.10 target, no typing.Self
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def directory_url(self) -> str:
        return f"https://{LOOPBACK}:{self.acme_port}/dir"

    @property
    def management_url(self) -> str:
        return f"https://{LOOPBACK}:{self.management_port}"

    @property
    def running(self) -> bool:
        return (
            self._pebble is not None
            and self._pebble.poll() is None
            and self._chall is not None
            and self._chall.poll() is None
        )

    def start(self, attempts: int = 3) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca_bundle, cert, key = write_api_tls(self.workdir / "api-tls")
        last: Exception | None = None
        for _ in range(attempts):
            try:
                self._start_once(cert, key)
                atexit.register(self.stop)
                return
            except HarnessError as exc:  # typically a port race: retry on fresh ports
                last = exc
                self.stop()
        assert last is not None
        raise last

    def _start_once(self, cert: Path, key: Path) -> None:
        (
            self.acme_port,
            self.management_port,
            self.http01_port,
            self.tls_port,
            self.dns_port,
            self.chall_mgmt_port,
        ) = free_ports(6, udp_too=(4,))
        config = {
            "pebble": {
                "listenAddress": f"{LOOPBACK}:{self.acme_port}",
                "managementListenAddress": f"{LOOPBACK}:{self.management_port}",
                "certificate": str(cert),
                "privateKey": str(key),
                "httpPort": self.http01_port,
                "tlsPort": self.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        config_path = self.workdir / "pebble-config.json"
        config_path.write_text(json.dumps(config, indent=2))

        env = {**os.environ, **self.env_overrides}
        chall_log = open(self.challtestsrv_log, "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(chall_log)
        self._chall = subprocess.Popen(
            [
                self.challtestsrv_bin,
                "-management",
                f"{LOOPBACK}:{self.chall_mgmt_port}",
                "-dns01",
                f"{LOOPBACK}:{self.dns_port}",
                "-defaultIPv4",
                LOOPBACK,
                "-defaultIPv6",
                "",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ],
            stdin=subprocess.DEVNULL,
            stdout=chall_log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._wait(
            lambda: _port_open(self.chall_mgmt_port),
            self._chall,
            self.challtestsrv_log,
            "pebble-challtestsrv",
        )

        pebble_log = open(self.pebble_log, "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(pebble_log)
        self._pebble = subprocess.Popen(
            [
                self.pebble_bin,
                "-config",
                str(config_path),
                "-dnsserver",
                f"{LOOPBACK}:{self.dns_port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=pebble_log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
        )
        self._wait(self._directory_ready, self._pebble, self.pebble_log, "pebble")

    def _wait(self, ready: Any, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise HarnessError(
                    f"{what} exited with status {proc.returncode} during startup; output:\n{_tail(log)}"
                )
            if ready():
                return
            time.sleep(0.1)
        raise HarnessError(
            f"{what} did not become ready within {self.startup_timeout}s; output:\n{_tail(log)}"
        )

    def _directory_ready(self) -> bool:
        try:
            doc = json.loads(self.get(self.directory_url, timeout=2))
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return "newOrder" in doc

    def stop(self) -> None:
        """Terminate pebble and challtestsrv (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        atexit.unregister(self.stop)
        _terminate(self._pebble)
        _terminate(self._chall)
        for f in self._logs:
            f.close()
        self._logs.clear()

    # -- talking to pebble ------------------------------------------------------

    @functools.cached_property
    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def get(self, url: str, *, timeout: float = 10) -> bytes:
        """GET a URL on pebble's ACME or management API (TLS verified against ``ca_bundle``)."""
        with urllib.request.urlopen(url, timeout=timeout, context=self._ssl_context) as resp:
            data: bytes = resp.read()
            return data

    def root_pem(self, index: int = 0) -> bytes:
        """PEM of pebble's issuing root (management API ``/roots/INDEX``)."""
        return self.get(f"{self.management_url}/roots/{index}")

    def intermediate_pem(self, index: int = 0) -> bytes:
        """PEM of pebble's intermediate (management API ``/intermediates/INDEX``)."""
        return self.get(f"{self.management_url}/intermediates/{index}")

    def root(self, index: int = 0) -> x509.Certificate:
        return load_pem_certs(self.root_pem(index))[0]

    def intermediate(self, index: int = 0) -> x509.Certificate:
        return load_pem_certs(self.intermediate_pem(index))[0]

    def write_issuer_bundle(self, path: Path) -> Path:
        """Write intermediate + root PEM to ``path`` (e.g. for ``openssl verify -untrusted``)."""
        path.write_bytes(self.intermediate_pem() + self.root_pem())
        return path

    def cert_status(self, serial: int) -> dict[str, Any]:
        """Management API ``/cert-status-by-serial/HEX``."""
        result: dict[str, Any] = json.loads(
            self.get(f"{self.management_url}/cert-status-by-serial/{serial:x}")
        )
        return result

    def client_env(self) -> dict[str, str]:
        """Environment entries that make the clients trust pebble's API."""
        return {
            "REQUESTS_CA_BUNDLE": str(self.ca_bundle),
            "LEGO_CA_CERTIFICATES": str(self.ca_bundle),
        }

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.pebble_log, lines)


def assert_issued_by_pebble(
    pebble: Pebble, pem: bytes | str, *, names: Iterable[str] = ()
) -> x509.Certificate:
    """Assert the first cert in ``pem`` was signed by pebble's current intermediate.

    Checks issuer name, the signature (intermediate -> leaf, root -> intermediate) and, if
    given, that every name in ``names`` is among the leaf's DNS SANs. Returns the leaf.
    """
    leaf = load_pem_certs(pem)[0]
    inter = pebble.intermediate()
    root = pebble.root()
    assert leaf.issuer == inter.subject, (
        f"leaf issuer {leaf.issuer} != pebble intermediate {inter.subject}"
    )
    leaf.verify_directly_issued_by(inter)
    inter.verify_directly_issued_by(root)
    wanted = set(names)
    if wanted:
        sans = set(
            leaf.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value.get_values_for_type(x509.DNSName)
        )
        assert wanted <= sans, (
            f"names {sorted(wanted - sans)} missing from leaf SANs {sorted(sans)}"
        )
    return leaf


# --------------------------------------------------------------------------- running clients


class ClientResult(subprocess.CompletedProcess):  # type: ignore[type-arg]
    """CompletedProcess (text stdout/stderr) plus ``duration`` in seconds."""

    def __init__(
        self, args: list[str], returncode: int, stdout: str, stderr: str, duration: float
    ) -> None:
        super().__init__(args, returncode, stdout, stderr)
        self.duration = duration


class ClientError(AssertionError):
    """An ACME client exited non-zero (or timed out) while ``check=True``.

    An AssertionError subclass so pytest shows it as a test failure with the full output.
    """

    def __init__(self, message: str, result: ClientResult | None = None) -> None:
        super().__init__(message)
        self.result = result


def _run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None,
    timeout: float,
    check: bool,
    pebble: Pebble | None,
    input: str | None = None,
) -> ClientResult:
    """Run a client in its own process group; kill the whole group on timeout/interrupt."""
    cmd = [str(c) for c in cmd]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
    )
    timed_out = False
    try:
        stdout, stderr = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _killpg(proc)
        stdout, stderr = proc.communicate()
    except BaseException:
        _killpg(proc)
        proc.wait()
        raise
    result = ClientResult(cmd, proc.returncode, stdout, stderr, time.monotonic() - start)
    if check and (timed_out or proc.returncode != 0):
        why = (
            f"timed out after {timeout}s" if timed_out else f"exited with status {proc.returncode}"
        )
        msg = (
            f"{shlex.join(cmd)}\n{why} after {result.duration:.1f}s\n"
            f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        )
        if pebble is not None:
            msg += f"\n--- pebble log (tail) ---\n{pebble.log_tail()}"
        raise ClientError(msg, result)
    return result


def _killpg(proc: subprocess.Popen[Any]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _client_env(pebble: Pebble, extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(pebble.client_env())
    env.update(extra or {})
    return env


def _run_http01(cmd: Sequence[str], webroot: Path | None, pebble: Pebble, **kw: Any) -> ClientResult:
    """`_run`, with `webroot` served on pebble's http-01 port meanwhile when it is given (dehydrated, uacme)."""
    if webroot is None:
        return _run(cmd, pebble=pebble, **kw)
    with serve_directory(webroot, pebble.http01_port):
        return _run(cmd, pebble=pebble, **kw)


class Certbot:
    """Runs certbot against pebble with its own config/work/logs dirs under ``base_dir``.

    ``run(subcommand, *args)`` builds::

        certbot SUBCOMMAND --non-interactive --server URL --config-dir D/config
                --work-dir D/work --logs-dir D/logs
                [--standalone --http-01-port P --http-01-address 127.0.0.1
                 --agree-tos --register-unsafely-without-email]   # ACME-talking subcommands
                [--no-random-sleep-on-renew]                      # renew only
                [-d NAME ...] ARGS...
    """

    ACME_SUBCOMMANDS = frozenset({"certonly", "run", "renew", "reconfigure"})

    def __init__(
        self,
        pebble: Pebble,
        base_dir: Path,
        *,
        certbot_bin: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_CLIENT_TIMEOUT,
    ) -> None:
        self.pebble = pebble
        self.base_dir = Path(base_dir)
        self.certbot_bin = (
            certbot_bin or find_tool("certbot") or str(Path(sys.executable).parent / "certbot")
        )
        self.extra_env = dict(extra_env or {})
        self.timeout = timeout
        self.config_dir = self.base_dir / "config"
        self.work_dir = self.base_dir / "work"
        self.logs_dir = self.base_dir / "logs"

    def command(
        self,
        subcommand: str,
        *args: str | os.PathLike[str],
        domains: Sequence[str] = (),
        acme_args: bool | None = None,
    ) -> list[str]:
        cmd = [
            self.certbot_bin,
            subcommand,
            "--non-interactive",
            "--server",
            self.pebble.directory_url,
            "--config-dir",
            str(self.config_dir),
            "--work-dir",
            str(self.work_dir),
            "--logs-dir",
            str(self.logs_dir),
        ]
        if acme_args is None:
            acme_args = subcommand in self.ACME_SUBCOMMANDS
        if acme_args:
            cmd += [
                "--standalone",
                "--http-01-port",
                str(self.pebble.http01_port),
                "--http-01-address",
                LOOPBACK,
                "--agree-tos",
                "--register-unsafely-without-email",
            ]
        if subcommand == "renew":
            cmd.append("--no-random-sleep-on-renew")
        for d in domains:
            cmd += ["-d", d]
        cmd += [str(a) for a in args]
        return cmd

    def run(
        self,
        subcommand: str,
        *args: str | os.PathLike[str],
        domains: Sequence[str] = (),
        acme_args: bool | None = None,
        check: bool = True,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ClientResult:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        return _run(
            self.command(subcommand, *args, domains=domains, acme_args=acme_args),
            env=_client_env(self.pebble, {**self.extra_env, **(env or {})}),
            cwd=self.base_dir,
            timeout=timeout or self.timeout,
            check=check,
            pebble=self.pebble,
        )

    def certonly(self, *domains: str, args: Sequence[str] = (), **kw: Any) -> ClientResult:
        return self.run("certonly", *args, domains=domains, **kw)

    def renew(self, *args: str, force: bool = True, **kw: Any) -> ClientResult:
        extra = ["--force-renewal", *args] if force else list(args)
        return self.run("renew", *extra, **kw)

    def live_dir(self, cert_name: str) -> Path:
        return self.config_dir / "live" / cert_name

    def renewal_conf(self, cert_name: str) -> Path:
        return self.config_dir / "renewal" / f"{cert_name}.conf"


class Lego:
    """Runs lego (HTTP-01 via its built-in server on 127.0.0.1:http01_port) against pebble.

    Files land in ``PATH/certificates/NAME.crt`` (leaf + issuer unless ``--no-bundle``),
    ``NAME.key``, ``NAME.issuer.crt``, ``NAME.json``. lego splits hook strings on whitespace
    and execs them directly (no shell); hooks get ``LEGO_ACCOUNT_EMAIL``, ``LEGO_CERT_DOMAIN``,
    ``LEGO_CERT_PATH``, ``LEGO_CERT_KEY_PATH`` (+ ``LEGO_CERT_PEM_PATH``/``LEGO_CERT_PFX_PATH``
    with ``--pem``/``--pfx``).
    """

    def __init__(
        self,
        pebble: Pebble,
        path: Path,
        *,
        email: str = TEST_EMAIL,
        lego_bin: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_CLIENT_TIMEOUT,
    ) -> None:
        self.pebble = pebble
        self.path = Path(path)
        self.email = email
        self.lego_bin = lego_bin or find_tool("lego") or "lego"
        self.extra_env = dict(extra_env or {})
        self.timeout = timeout

    def command(
        self, subcommand: str, domains: Sequence[str], *args: str, global_args: Sequence[str] = ()
    ) -> list[str]:
        cmd = [
            self.lego_bin,
            "--server",
            self.pebble.directory_url,
            "--email",
            self.email,
            "--accept-tos",
            "--http",
            "--http.port",
            f"{LOOPBACK}:{self.pebble.http01_port}",
            "--path",
            str(self.path),
            *global_args,
        ]
        for d in domains:
            cmd += ["-d", d]
        return [*cmd, subcommand, *args]

    def _exec(
        self, cmd: list[str], check: bool, timeout: float | None, env: Mapping[str, str] | None
    ) -> ClientResult:
        self.path.mkdir(parents=True, exist_ok=True)
        return _run(
            cmd,
            env=_client_env(self.pebble, {**self.extra_env, **(env or {})}),
            cwd=self.path,
            timeout=timeout or self.timeout,
            check=check,
            pebble=self.pebble,
        )

    def run(
        self,
        *domains: str,
        run_hook: str | os.PathLike[str] | None = None,
        args: Sequence[str] = (),
        global_args: Sequence[str] = (),
        check: bool = True,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ClientResult:
        extra = list(args)
        if run_hook is not None:
            extra += ["--run-hook", str(run_hook)]
        return self._exec(
            self.command("run", domains, *extra, global_args=global_args), check, timeout, env
        )

    def renew(
        self,
        *domains: str,
        renew_hook: str | os.PathLike[str] | None = None,
        days: int = 9999,
        args: Sequence[str] = (),
        global_args: Sequence[str] = (),
        check: bool = True,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ClientResult:
        extra = ["--days", str(days), "--no-random-sleep", *args]
        if renew_hook is not None:
            extra += ["--renew-hook", str(renew_hook)]
        return self._exec(
            self.command("renew", domains, *extra, global_args=global_args), check, timeout, env
        )

    def cert_path(self, domain: str) -> Path:
        return self.path / "certificates" / f"{domain.replace('*', '_')}.crt"

    def key_path(self, domain: str) -> Path:
        return self.path / "certificates" / f"{domain.replace('*', '_')}.key"

    def issuer_path(self, domain: str) -> Path:
        return self.path / "certificates" / f"{domain.replace('*', '_')}.issuer.crt"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_directory(
    root: Path, port: int, host: str = LOOPBACK
) -> Iterator[http.server.ThreadingHTTPServer]:
    """Serve ``root`` over plain HTTP on host:port in a background thread for the block."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    deadline = time.monotonic() + 10
    while True:
        try:
            server = http.server.ThreadingHTTPServer((host, port), handler)
            break
        except OSError as exc:  # port may still be held briefly by a previous client
            if time.monotonic() > deadline:
                raise HarnessError(f"cannot bind {host}:{port} for HTTP-01: {exc}") from exc
            time.sleep(0.2)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=f"http01-{port}", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class Dehydrated:
    """Runs dehydrated against pebble with a private config in ``basedir``.

    HTTP-01 tokens are written to ``basedir/webroot/.well-known/acme-challenge`` and served by
    a Python HTTP server on 127.0.0.1:http01_port for the duration of each ``cron`` call.
    The hook (if any) is called ``HOOK deploy_cert DOMAIN KEYFILE CERTFILE FULLCHAINFILE
    CHAINFILE TIMESTAMP`` (plus the other dehydrated hook events).
    Certs land in ``basedir/certs/DOMAIN/{cert,chain,fullchain,privkey}.pem`` (symlinks).
    """

    def __init__(
        self,
        pebble: Pebble,
        basedir: Path,
        *,
        hook: str | os.PathLike[str] | None = None,
        dehydrated_bin: str | None = None,
        extra_config: str = "",
        extra_env: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_CLIENT_TIMEOUT,
    ) -> None:
        self.pebble = pebble
        self.basedir = Path(basedir)
        self.hook = hook
        self.dehydrated_bin = dehydrated_bin or find_tool("dehydrated") or "dehydrated"
        self.extra_config = extra_config
        self.extra_env = dict(extra_env or {})
        self.timeout = timeout
        self.webroot = self.basedir / "webroot"
        self.wellknown = self.webroot / ".well-known" / "acme-challenge"
        self.config_path = self.basedir / "config"
        self._registered = False
        self.write_config()

    def write_config(self) -> Path:
        self.wellknown.mkdir(parents=True, exist_ok=True)
        settings = {
            "CA": self.pebble.directory_url,
            "CHALLENGETYPE": "http-01",
            "BASEDIR": str(self.basedir),
            "WELLKNOWN": str(self.wellknown),
            "CURL_OPTS": f"--cacert {self.pebble.ca_bundle}",
            "CONTACT_EMAIL": TEST_EMAIL,
            "CONFIG_D": "",
            "HOOK": str(self.hook) if self.hook is not None else "",
        }
        body = "".join(f"{k}={shlex.quote(v)}\n" for k, v in settings.items())
        self.config_path.write_text("# written by acmeharness\n" + body + self.extra_config + "\n")
        return self.config_path

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        serve_http01: bool = False,
    ) -> ClientResult:
        cmd = [self.dehydrated_bin, "--config", str(self.config_path), *args]
        envd = _client_env(self.pebble, {**self.extra_env, **(env or {})})

        return _run_http01(cmd, self.webroot if serve_http01 else None, self.pebble, env=envd, cwd=self.basedir,
                           timeout=timeout or self.timeout, check=check)

    def register(self, **kw: Any) -> ClientResult:
        result = self.run("--register", "--accept-terms", **kw)
        self._registered = result.returncode == 0
        return result

    def cron(
        self,
        *domains: str,
        force: bool = False,
        hook: str | os.PathLike[str] | None = None,
        args: Sequence[str] = (),
        **kw: Any,
    ) -> ClientResult:
        """``dehydrated -c -d NAME... [--force] [--hook HOOK]`` (registers first if needed)."""
        if not self._registered:
            self.register()
        extra: list[str] = ["--cron"]
        for d in domains:
            extra += ["--domain", d]
        if force:
            extra.append("--force")
        if hook is not None:
            extra += ["--hook", str(hook)]
        return self.run(*extra, *args, serve_http01=True, **kw)

    def cert_dir(self, domain: str) -> Path:
        return self.basedir / "certs" / domain


class Uacme:
    """Runs Debian's uacme against pebble, with its confdir in ``confdir``.

    HTTP-01 is answered by uacme's own hook, ``/usr/share/uacme/uacme.sh``: it writes the key
    authorization into ``$UACME_CHALLENGE_PATH`` (``webroot/.well-known/acme-challenge``),
    served by a Python HTTP server on 127.0.0.1:http01_port for the duration of each
    ``issue``; it declines dns-01 and tls-alpn-01, so uacme moves on to http-01.

    Trusting pebble: uacme has no CA option and no insecure mode, and Debian builds it on
    libcurl-gnutls, which reads neither ``CURL_CA_BUNDLE`` nor ``SSL_CERT_FILE``, only the
    compiled-in ``/etc/ssl/certs``. So every command runs in a private mount namespace
    (``unshare --mount``; ``--map-root-user`` too when not root) where ``/etc/ssl/certs`` is a
    directory holding pebble's bundle alone: uacme verifies pebble's TLS for real, and trusts
    nothing else. :meth:`available` says whether this machine allows that.

    Certificates land in ``confdir/IDENT/cert.pem`` (the full chain) and the keys in
    ``confdir/private/IDENT/key.pem``; the account key in ``confdir/private/key.pem``.
    Exit status of ``issue``: 0 issued, 1 not due for renewal (``-d``, default 30 days), 2
    failure.
    """

    HOOK = "/usr/share/uacme/uacme.sh"

    def __init__(
        self,
        pebble: Pebble,
        basedir: Path,
        *,
        uacme_bin: str | None = None,
        timeout: float = DEFAULT_CLIENT_TIMEOUT,
    ) -> None:
        self.pebble = pebble
        self.basedir = Path(basedir)
        self.uacme_bin = uacme_bin or find_tool("uacme") or "uacme"
        self.timeout = timeout
        self.confdir = self.basedir / "uacme"
        self.webroot = self.basedir / "webroot"
        self.challenge_path = self.webroot / ".well-known" / "acme-challenge"
        self.trust_dir = self.basedir / "ssl-certs"
        self._registered = False

    def trusting_pebble(self) -> list[str]:
        """The argv prefix running a command where ``/etc/ssl/certs`` holds pebble's bundle alone."""
        self.trust_dir.mkdir(parents=True, exist_ok=True)
        (self.trust_dir / "ca-certificates.crt").write_bytes(self.pebble.ca_bundle.read_bytes())
        user = [] if os.geteuid() == 0 else ["--map-root-user"]
        bind = 'mount --bind "$0" /etc/ssl/certs && exec "$@"'
        return ["unshare", *user, "--mount", "sh", "-c", bind, str(self.trust_dir)]

    def available(self) -> str | None:
        """None when uacme can be made to trust pebble here, else why not."""
        try:
            result = subprocess.run(
                [*self.trusting_pebble(), "true"], capture_output=True, text=True, timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"cannot run unshare: {exc}"
        if result.returncode != 0:
            return f"no private mount namespace for uacme's CA store: {result.stderr.strip()}"
        return None

    def command(self, *args: str, program: str | os.PathLike[str] | None = None) -> list[str]:
        """``[unshare ...] PROGRAM -v -a URL -c CONFDIR ARGS...`` (PROGRAM: uacme, or a wrapper
        such as ``uacme-ship``, which then finds uacme through ``$UACME``)."""
        return [
            *self.trusting_pebble(),
            str(program or self.uacme_bin),
            "--verbose",
            "--acme-url",
            self.pebble.directory_url,
            "--confdir",
            str(self.confdir),
            *args,
        ]

    def run(
        self,
        *args: str,
        program: str | os.PathLike[str] | None = None,
        check: bool = True,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        serve_http01: bool = False,
    ) -> ClientResult:
        self.challenge_path.mkdir(parents=True, exist_ok=True)
        envd = _client_env(
            self.pebble,
            {"UACME": self.uacme_bin, "UACME_CHALLENGE_PATH": str(self.challenge_path), **(env or {})},
        )

        return _run_http01(self.command(*args, program=program), self.webroot if serve_http01 else None,
                           self.pebble, env=envd, cwd=self.basedir, timeout=timeout or self.timeout, check=check)

    def new(self, **kw: Any) -> ClientResult:
        """``uacme --yes new``: the account key and account (pebble's terms accepted)."""
        result = self.run("--yes", "new", **kw)
        self._registered = result.returncode == 0
        return result

    def issue(
        self,
        *names: str,
        force: bool = False,
        program: str | os.PathLike[str] | None = None,
        serve_http01: bool = True,
        check: bool = False,
        **kw: Any,
    ) -> ClientResult:
        """``PROGRAM [--force] --hook uacme.sh issue NAME...`` (creates the account first if
        needed). ``check`` defaults to False: statuses 1 and 2 are outcomes, not errors."""
        if not self._registered:
            self.new()
        args = ["--force"] if force else []
        return self.run(
            *args, "--hook", self.HOOK, "issue", *names, program=program, check=check,
            serve_http01=serve_http01, **kw,
        )

    def cert_path(self, ident: str) -> Path:
        return self.confdir / ident.removeprefix("*.") / "cert.pem"

    def key_path(self, ident: str) -> Path:
        return self.confdir / "private" / ident.removeprefix("*.") / "key.pem"


# --------------------------------------------------------------------------- one-shot helpers


def run_certbot(
    pebble: Pebble,
    base_dir: Path,
    subcommand: str = "certonly",
    *args: str,
    domains: Sequence[str] = (),
    certbot_bin: str | None = None,
    **kw: Any,
) -> ClientResult:
    """One-shot: ``Certbot(pebble, base_dir).run(subcommand, *args, domains=domains)``."""
    return Certbot(pebble, base_dir, certbot_bin=certbot_bin).run(
        subcommand, *args, domains=domains, **kw
    )


def run_lego(
    pebble: Pebble,
    path: Path,
    subcommand: str,
    *domains: str,
    hook: str | os.PathLike[str] | None = None,
    lego_bin: str | None = None,
    **kw: Any,
) -> ClientResult:
    """One-shot: lego ``run`` (hook -> ``--run-hook``) or ``renew`` (hook -> ``--renew-hook``)."""
    lego = Lego(pebble, path, lego_bin=lego_bin)
    if subcommand == "run":
        return lego.run(*domains, run_hook=hook, **kw)
    if subcommand == "renew":
        return lego.renew(*domains, renew_hook=hook, **kw)
    raise ValueError(f"unsupported lego subcommand {subcommand!r}")


def run_dehydrated(
    pebble: Pebble,
    basedir: Path,
    *domains: str,
    hook: str | os.PathLike[str] | None = None,
    force: bool = False,
    dehydrated_bin: str | None = None,
    **kw: Any,
) -> ClientResult:
    """One-shot: write config, register, ``dehydrated -c -d NAME... [--force]``."""
    return Dehydrated(pebble, basedir, hook=hook, dehydrated_bin=dehydrated_bin).cron(
        *domains, force=force, **kw
    )
