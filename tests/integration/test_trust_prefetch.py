"""deploy loads the system trust store on a thread while it reads the certificate (transport.TlsContexts.prefetch).
A run that ends before its first connection must not leave that thread inside OpenSSL while the process exits."""

from __future__ import annotations

from pathlib import Path

from support.deployenv import DeployEnv
from support.pki import make_ca

RUNS = 6  # each run exits while a slow store would still be loading; bounded


def test_a_run_that_ends_before_connecting_exits_cleanly_while_the_store_loads(denv: DeployEnv,
                                                                                tmp_path: Path) -> None:
    """The thread was a daemon: a certificate unusable at once (exit 65) returned while OpenSSL still parsed the
    store, and the interpreter's exit ran OpenSSL's cleanup under it; the hook died of SIGSEGV (-11, a shell's 139)
    instead of reporting 65. A large store (SSL_CERT_FILE, honoured by the default context) widens the window; no
    hashed directory (SSL_CERT_DIR empty), so that the prefetch's first-look context parses that bundle."""
    store = tmp_path / "store.pem"
    store.write_bytes(make_ca("certbot-smtp-dist slow store").cert_pem() * 4000)
    denv.write_config({"a": {"host": "127.0.0.1", "port": 9, "tls_mode": "starttls",
                             "from_address": "robot@example.com", "to": ["pki@example.com"]}})
    codes = [denv.run_process("deploy", "--lineage", str(tmp_path / "no-such-lineage"),
                              extra_env={"SSL_CERT_FILE": str(store), "SSL_CERT_DIR": ""}).returncode for _ in range(RUNS)]
    assert codes == [65] * RUNS
