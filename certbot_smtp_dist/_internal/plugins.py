"""Build the pluggy plugin manager (never at import time) and read the registries it yields."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable

import pluggy

from certbot_smtp_dist import hookspecs
from certbot_smtp_dist.errors import ConfigError, ConfigProblem, PayloadError
from certbot_smtp_dist.model import CertificateFacts, DeliveryResult, Message, PayloadFormat, Target

log = logging.getLogger(__name__)


def make_manager(load_entry_points: bool = True, extra: tuple[object, ...] = ()) -> pluggy.PluginManager:
    from certbot_smtp_dist._internal.payload import BuiltinPayloads
    from certbot_smtp_dist._internal.smime import SmimeHook

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(BuiltinPayloads(), name="builtin-payloads")
    pm.register(SmimeHook(), name="builtin-smime")
    for plugin in extra:
        pm.register(plugin)
    if load_entry_points and _may_declare(hookspecs.ENTRY_POINT_GROUP):
        pm.load_setuptools_entrypoints(hookspecs.ENTRY_POINT_GROUP)
    return pm


def _may_declare(group: str) -> bool:
    """False only when no distribution importlib.metadata would find can declare an entry point in `group`.

    pluggy's scan imports importlib.metadata and parses every distribution's entry points (~10 ms of a cold
    deploy hook, which almost never has an extension installed). This reads the same files, on the same search
    path, and only looks for the group's section header: a superset test (any doubt answers True, and pluggy then
    scans as before), so what is loaded never changes. Nothing is cached, so nothing another user wrote is trusted.
    """
    from importlib.machinery import PathFinder

    if any(f is not PathFinder and hasattr(f, "find_distributions") for f in sys.meta_path):
        return True  # another finder lists distributions of its own
    for entry in sys.path:
        if not isinstance(entry, str):
            return True  # a pathlib.Path someone put on the path: importlib.metadata reads it, pluggy decides
        root = entry or "."  # importlib.metadata reads "" as the working directory, as imports do
        try:
            names = os.listdir(root)
        except NotADirectoryError:
            return True  # a zip archive on the path: its distributions are not listed here
        except OSError:
            continue  # importlib.metadata skips what it cannot list, too
        infos = [n for n in names if n.lower().endswith((".dist-info", ".egg-info"))]
        if root.lower().endswith(".egg"):
            infos += [n for n in names if n.lower() == "egg-info"]
        for info in infos:
            try:
                with open(os.path.join(root, info, "entry_points.txt"), "rb") as fh:
                    if _has_header(fh.read(), group):
                        return True
            except (FileNotFoundError, NotADirectoryError):
                continue  # no entry points at all, or an .egg-info file (PKG-INFO only)
            except OSError:
                return True  # unreadable: pluggy's scan decides, as before
    return False


def _has_header(data: bytes, group: str) -> bool:
    """Whether importlib.metadata may read a `group` section header in this entry_points.txt: it splits the text
    with str.splitlines() (a lone carriage return, a form feed, U+2028 end a line too), strips each line with
    str.strip() (Unicode spaces too) and names the section by the line stripped of brackets at both ends. A line
    that starts with "[" after that strip and holds the group's name is a header here (a superset); text that is
    not UTF-8 defers to pluggy."""
    if group.encode() not in data:
        return False
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return any(line.strip().startswith("[") and group in line for line in text.splitlines())


def payload_formats(pm: pluggy.PluginManager) -> dict[str, PayloadFormat]:
    formats: dict[str, PayloadFormat] = {}
    problems: list[ConfigProblem] = []
    for batch in pm.hook.smtp_dist_payload_formats():
        for fmt in batch:
            if fmt.name in formats:
                problems.append(ConfigProblem(None, "payload", f"payload format {fmt.name!r} is registered twice"))
            formats[fmt.name] = fmt
    if problems:
        raise ConfigError(problems)
    return formats


MessageHook = Callable[[Target, CertificateFacts, Message], Message]
# Compiled on first use (re's cache): only a message a hook changed is checked.
_HEADER_END = rb"\r?\n\r?\n"
_BCC_FIELD = rb"(?im)^bcc[ \t]*:"


def message_hook(pm: pluggy.PluginManager) -> MessageHook:
    """The `smtp_dist_message` implementations as one chain (hookspecs.py gives the contract). Raises PayloadError
    naming the implementation that failed; the pipeline fails that target alone."""
    # pluggy calls the list from its end: tryfirst implementations sit last, trylast ones first.
    chain = [impl for impl in reversed(pm.hook.smtp_dist_message.get_hookimpls())
             if not (impl.hookwrapper or getattr(impl, "wrapper", False))]

    def apply(target: Target, facts: CertificateFacts, message: Message) -> Message:
        for impl in chain:
            try:
                changed = _call(impl, target=target, facts=facts, message=message)
            except PayloadError as exc:
                raise PayloadError(f"message hook {impl.plugin_name}: {exc}") from exc
            except Exception as exc:  # an extension's defect fails its target, never the run
                # Its text and traceback stay out of logs and results: they may quote the message or the key.
                raise PayloadError(f"message hook {impl.plugin_name} failed ({type(exc).__name__})") from exc
            if changed is not None:
                message = _checked(impl.plugin_name, message, changed)
        return message

    return apply


def _checked(name: str, before: Message, changed: object) -> Message:
    """What a message hook returned, if it keeps the contract (hookspecs.py); PayloadError otherwise."""
    if not isinstance(changed, Message):
        raise PayloadError(f"message hook {name} returned {type(changed).__name__}, not a Message")
    if (changed.message_id, changed.envelope_from, changed.envelope_to) != (
            before.message_id, before.envelope_from, before.envelope_to):
        # The spool and `retry` rely on the Message-ID; the envelope is what the configuration checked.
        raise PayloadError(f"message hook {name} changed the Message-ID or the envelope")
    if re.search(_BCC_FIELD, re.split(_HEADER_END, changed.data, maxsplit=1)[0]):
        # RFC 5322 §3.6.3: the blind copies live in the envelope only; one message goes to all.
        raise PayloadError(f"message hook {name} added a Bcc field: every recipient would see who was blind-copied")
    return changed


def _call(impl: pluggy.HookImpl, **kwargs: object) -> object:
    """One implementation, given only the arguments it declares: pluggy lets it take a subset of the spec's."""
    return impl.function(**{name: kwargs[name] for name in impl.argnames})


def notify_finished(pm: pluggy.PluginManager, facts: CertificateFacts, result: DeliveryResult) -> None:
    for impl in pm.hook.smtp_dist_delivery_finished.get_hookimpls():
        try:
            _call(impl, facts=facts, result=result)
        except Exception:
            log.exception("observer %s failed on target %s (ignored)", impl.plugin_name, result.target)


def notify_all(pm: pluggy.PluginManager, facts: CertificateFacts, results: list[DeliveryResult]) -> None:
    """Observers run after every target finished, outside the event loop: a slow one delays nobody's delivery."""
    for result in results:
        notify_finished(pm, facts, result)
