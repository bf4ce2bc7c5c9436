"""Bring a 0.1.0 state directory up to date on first use, losing nothing: its journal is sealed and anchored
(journal.py), its pending entries re-validated and re-keyed, or left for `dismiss` with the reason."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from certbot_smtp_dist._internal import spool as sp
from certbot_smtp_dist._internal.journal import Journal
from certbot_smtp_dist._internal.state import StateKeys

log = logging.getLogger("certbot_smtp_dist")


def upgrade(state_dir: Path, config: Path, keys: StateKeys) -> None:
    """Once per state directory: only while it was never keyed (Journal.keyed: its anchor in the credential store,
    which sealing the 0.1.0 journal or any first keyed line creates). Afterwards a format-1 entry can only have
    been planted: it is never taken over, and `status` reports it as rejected. State trouble is logged, never
    raised: a delivery run goes on, and what could not be upgraded stays listed by `status`."""
    journal = Journal(state_dir, keys.journal, keys.journal_anchor)
    try:
        if journal.keyed():
            return
    except OSError as exc:  # not a directory, unreadable: every write to it fails and is reported there
        log.debug("state %s not upgraded: %s", state_dir, exc.strerror or exc)
        return
    try:
        journal.seal_legacy()
    except OSError as exc:
        log.error("cannot seal the 0.1.0 journal in %s: %s", state_dir, exc.strerror or exc)
    spool = sp.Spool(state_dir, keys.spool)
    if not spool.directory.is_dir():
        return
    for path in sorted(spool.directory.glob("*.json")):
        try:
            _upgrade_entry(spool, journal, path, config)
        except OSError as exc:
            log.error("cannot upgrade 0.1.0 spool entry %s: %s", path, exc.strerror or exc)


def _upgrade_entry(spool: sp.Spool, journal: Journal, path: Path, config: Path) -> None:
    try:
        with spool.claim_unverified(path.stem) as data:
            doc = _legacy_doc(data)
            if doc is not None:
                _take_over(spool, journal, path, doc, config)
    except sp.Busy:  # another process holds it; this is the one upgrade, so it stays for `status` and `dismiss`
        log.error("0.1.0 spool entry %s is not taken over: another process holds it; check it, then "
                  "`certbot-smtp-dist dismiss %s`", path, path.stem)


def _legacy_doc(data: bytes | None) -> dict[str, object] | None:
    try:
        doc = json.loads(data) if data is not None else None
    except ValueError:
        return None  # damaged: `status` reports it as rejected
    return doc if isinstance(doc, dict) and doc.get("format") == 1 else None


def _take_over(spool: sp.Spool, journal: Journal, path: Path, doc: dict[str, object], config: Path) -> None:
    try:
        why = _why_not(doc, path, config)
        if why is not None:
            raise sp.Rejected(path, why)
        entry = sp.decode_legacy(doc, path)
    except sp.Rejected as rejected:
        log.error("0.1.0 spool entry %s is not taken over: %s; check it, then `certbot-smtp-dist dismiss %s`",
                  path, rejected.problem, path.stem)
        return
    spool.write(entry)  # re-keyed: format 2, MAC, no config file named
    journal.append({"time": entry.updated, "run": "upgrade", "event": "entry_upgraded", "target": entry.target,
                    "certificate": entry.certificate, "message_id": entry.message_id,
                    "detail": "0.1.0 spool entry re-validated and re-keyed"})
    log.info("0.1.0 spool entry %s (target %s) taken over", entry.id, entry.target)


def _why_not(doc: dict[str, object], path: Path, config: Path) -> str | None:
    """0.1.0 took the config file from the entry: only one naming the configuration in use now is taken over."""
    named = doc.get("config")
    if not isinstance(named, str):
        return "it names no configuration file"
    if os.path.realpath(named) != os.path.realpath(config):
        return f"it was made for configuration {named}, not the one in use ({config})"
    if doc.get("id") != path.stem:
        return "its id does not match its file name"
    return None
