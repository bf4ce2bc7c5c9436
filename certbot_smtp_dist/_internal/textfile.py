"""The metrics of a state directory: read from its journal and spool, and written to `metrics_textfile`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from certbot_smtp_dist._internal import files, metrics
from certbot_smtp_dist._internal import spool as sp
from certbot_smtp_dist._internal.journal import HEAD_FILE, JOURNAL_FILE, SEALED_FILE, Journal
from certbot_smtp_dist._internal.ownership import read_trusted_config
from certbot_smtp_dist._internal.state import StateKeys
from certbot_smtp_dist.model import Settings

log = logging.getLogger("certbot_smtp_dist")


def spool_states(spool: sp.Spool) -> Iterator[tuple[str, str]]:
    """(target, state) per spool entry: a blocked deploy is `blocked`, a rejected file `rejected`, both under
    target `*` (neither belongs to one target; a rejected file's own claims are not trusted)."""
    for item in spool.entries():
        if isinstance(item, sp.Rejected):
            yield metrics.ANY_TARGET, metrics.REJECTED
        elif item.kind == sp.BLOCKED:
            yield metrics.ANY_TARGET, sp.BLOCKED
        else:
            yield item.target, item.state


def text(state: Path, keys: StateKeys, settings: Settings) -> str:
    """The exposition text for `state`: the configured targets, and any the spool still holds entries for, from the
    journal's verified lines; and whether the journal verifies (one pass over it)."""
    from certbot_smtp_dist._internal.unwanted import unwanted

    verdict, records = Journal(state, keys.journal, keys.journal_anchor).audit()
    values = metrics.collect(records, spool_states(sp.Spool(state, keys.spool)), [t.name for t in settings.targets])
    recorded = any((state / name).exists() for name in (JOURNAL_FILE, HEAD_FILE, SEALED_FILE))
    unwanted_now = [(u.certificate, when) for u in unwanted(records) if (when := metrics.epoch(u.time)) is not None]
    return metrics.render(values, verdict.ok if recorded else None,  # nothing recorded yet: no verdict to give
                          unwanted_now)


def refresh(state: Path, keys: StateKeys, settings: Settings) -> None:
    """Rewrite `metrics_textfile` if the configuration names one. Trouble is logged, never raised: the run it
    follows has done its work, and the file's own timestamps show that it went stale."""
    path = settings.metrics_textfile
    if path is None:
        return
    try:
        files.write_public(path, text(state, keys, settings).encode("utf-8"))
    except OSError as exc:  # UnsafePathError included: a symbolic link there is refused
        log.error("cannot write the metrics file %s: %s", path, exc.strerror or exc)


def refresh_after_dismiss(config: Path, state: Path, keys: StateKeys) -> None:
    """After `dismiss`, which loads no settings: learn from the configuration whether a textfile is wanted, and
    rewrite it with the keys the command used. The command checked the configuration's trust already (its keys
    come from the store beside it), so the file is read once, checked on the open descriptor, and the settings
    loaded only when it names the key. A configuration that cannot be used: nothing to add to what others say."""
    from certbot_smtp_dist._internal.loader import load
    from certbot_smtp_dist.errors import SmtpDistError

    try:
        if not _mentions_textfile(read_trusted_config(config)):
            return  # the common case costs a read, not a load of the plugins and credentials
        settings = load(config, trusted=True).settings  # trust-checked by the command, checked again as read
    except (SmtpDistError, OSError) as exc:  # UnsafePathError and AccessError included
        log.debug("metrics file not refreshed: %s", exc)
        return
    refresh(state, keys, settings)


def _mentions_textfile(config_text: bytes) -> bool:
    """Whether the configuration's bytes name the key at all (validated by the full load that follows when so)."""
    from certbot_smtp_dist._internal.config import METRICS_KEY

    return METRICS_KEY.encode() in config_text
