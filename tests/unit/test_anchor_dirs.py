"""SSL_CERT_DIR as OpenSSL reads it (by_dir.c, add_cert_dir): a ':'-separated list of hashed directories, read in
order, empty entries and repeats skipped; the system store (anchors.system_store) finds what the handshake finds,
on real files in tmp directories, and reads at most anchors.MAX_CERT_DIRS of a list."""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

import pytest
from support import memtls, pki

from certbot_smtp_dist._internal import anchors


def hash_file(directory: Path, ca: pki.Issued, n: int = 0) -> Path:
    """Where c_rehash puts `ca` in `directory`: <subject hash>.<n>."""
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(anchors.canonical(ca.cert.subject.public_bytes())).digest()
    path = directory / f"{int.from_bytes(digest[:4], 'little'):08x}.{n}"
    path.write_bytes(ca.cert_pem())
    return path


def found(ca: pki.Issued) -> list[object]:
    return list(anchors.system_store(thorough=False).candidates(ca.cert.subject.public_bytes()))


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-bundle.pem"))
    return monkeypatch


def test_every_directory_of_the_list_is_read_in_order(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first, second = pki.make_ca("anchor-dirs first"), pki.make_ca("anchor-dirs second")
    hash_file(tmp_path / "a", first)
    hash_file(tmp_path / "b", second)
    env.setenv("SSL_CERT_DIR", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert found(first) == [first.cert] and found(second) == [second.cert]
    # OpenSSL's get_cert_by_subject reads the next directory only on a miss: the first holding the name answers.
    twin = pki.make_ca("anchor-dirs first")  # same name, other key
    hash_file(tmp_path / "b", twin)
    assert found(first) == [first.cert]
    env.setenv("SSL_CERT_DIR", f"{tmp_path / 'b'}:{tmp_path / 'a'}")
    assert found(first) == [twin.cert]


def test_a_missing_or_unreadable_entry_is_passed_over(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = pki.make_ca("anchor-dirs behind a gap")
    hash_file(tmp_path / "b", ca)
    (tmp_path / "file").write_bytes(b"not a directory")
    env.setenv("SSL_CERT_DIR", f"{tmp_path / 'none'}::{tmp_path / 'file'}:{tmp_path / 'b'}:")
    assert found(ca) == [ca.cert]


def test_the_list_is_split_as_openssl_splits_it() -> None:
    assert anchors.cert_dirs("") == ()
    assert anchors.cert_dirs("::/x::/y:/x:") == (Path("/x"), Path("/y"))
    assert anchors.cert_dirs("/etc/ssl/certs") == (Path("/etc/ssl/certs"),)


def test_a_list_of_thousands_is_capped(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A hostile or mistaken environment: at most MAX_CERT_DIRS directories are looked in, whatever the list."""
    many = [str(tmp_path / f"d{i}") for i in range(5000)]
    assert len(anchors.cert_dirs(":".join(many))) == anchors.MAX_CERT_DIRS
    assert len(anchors.cert_dirs(":" * 100_000 + many[0])) <= anchors.MAX_CERT_DIRS  # empty entries are bounded
    late, early = pki.make_ca("anchor-dirs past the cap"), pki.make_ca("anchor-dirs within the cap")
    hash_file(Path(many[anchors.MAX_CERT_DIRS]), late)
    hash_file(Path(many[anchors.MAX_CERT_DIRS - 1]), early)
    env.setenv("SSL_CERT_DIR", ":".join(many))
    assert found(early) == [early.cert] and found(late) == []


def test_set_but_empty_reads_no_directory_as_openssl(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """X509_LOOKUP_add_dir takes a set variable even when empty (then no directory); so does ssl's
    get_default_verify_paths. The bundle is still read."""
    ca = pki.make_ca("anchor-dirs in the bundle")
    env.setenv("SSL_CERT_DIR", "")
    env.setenv("SSL_CERT_FILE", str(pki.write_pem(tmp_path / "bundle.pem", ca)))
    store = anchors.system_store()
    assert store.capaths == () and store.cafile == tmp_path / "bundle.pem"
    assert ssl.get_default_verify_paths().capath is None
    assert found(ca) == [ca.cert]
    env.setenv("SSL_CERT_FILE", "")
    assert anchors.system_store().cafile is None


def test_the_handshake_and_the_store_agree_on_a_list(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The oracle: OpenSSL itself, loading the default paths under the same environment, verifies a relay whose CA
    is only in the second directory of the list; anchors finds that CA there too."""
    relay = pki.relay_certs(tmp_path / "relay")
    hash_file(tmp_path / "b", relay.ca)
    (tmp_path / "a").mkdir()
    env.setenv("SSL_CERT_DIR", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert memtls.handshake(relay.server_context(), ssl.create_default_context(), "localhost") is None
    assert found(relay.ca) == [relay.ca.cert]
    env.setenv("SSL_CERT_DIR", str(tmp_path / "a"))
    refused = memtls.handshake(relay.server_context(), ssl.create_default_context(), "localhost")
    assert isinstance(refused, ssl.SSLCertVerificationError), refused
    assert found(relay.ca) == []
