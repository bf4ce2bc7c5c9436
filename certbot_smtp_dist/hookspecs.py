"""The extension contract: hooks through which payload formats and delivery observers are registered.

Built-in behaviour is registered through these same hooks (``_internal/payload.py``). External plugins expose a
module or object with ``@hookimpl`` functions under the entry-point group ``certbot_smtp_dist``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from certbot_smtp_dist.model import CertificateFacts, DeliveryResult, PayloadFormat

PROJECT = "certbot_smtp_dist"
ENTRY_POINT_GROUP = "certbot_smtp_dist"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def smtp_dist_payload_formats() -> list[PayloadFormat]:  # type: ignore[empty-body]
    """Return the payload formats this plugin provides.

    :return: a list of :class:`~certbot_smtp_dist.model.PayloadFormat`; their ``name`` is what a target's
        ``payload`` key selects. Two plugins registering the same name is a configuration error. The security
        rules read each format's declarations, never its name: ``build`` sees the private key only if the format
        declares ``ships_private_key``, and one that does without ``key_encrypted`` is treated as shipping it in
        clear (refused over plaintext to a non-loopback relay, warned on every run).
    Ordering: all implementations are called; results are merged. Exceptions propagate and abort the run before
    anything is sent (a broken extension must not silently drop a format). Added in 0.1.0.
    """


@hookspec
def smtp_dist_delivery_finished(facts: CertificateFacts, result: DeliveryResult) -> None:
    """Observe the final outcome of one target's delivery (after retries within the run).

    :param facts: the certificate that was (or was not) shipped.
    :param result: the target's result, including failure facts.
    Called once per selected target, skipped ones included, after every target of the run finished (outside the
    event loop: a slow observer delays no delivery), by `deploy`, the certbot plugin and `retry`. Not called when
    nothing could be attempted (configuration or certificate unusable). Exceptions are logged and swallowed: an
    observer can never change an outcome or hide another observer's call. Added in 0.1.0.
    """
