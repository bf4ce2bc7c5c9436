"""The extension contract: hooks through which payload formats, message transformations and delivery observers are
registered.

Built-in behaviour is registered through these same hooks (``_internal/payload.py``, ``_internal/smime.py``). External plugins expose a
module or object with ``@hookimpl`` functions under the entry-point group ``certbot_smtp_dist``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from certbot_smtp_dist.model import (
        CertificateFacts,
        DeliveryResult,
        Message,
        PayloadFormat,
        Target,
    )

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
        clear (refused over plaintext to a non-loopback relay, warned on every run, unless the target's messages
        are S/MIME-encrypted). A format that needs a secret declares its ``credential_type`` and, optionally, the
        ``credential_key`` that names it in the configuration (default ``pkcs12_passphrase_credential``): the
        config parser checks that key and ``credentials set --type`` accepts that type, with no change to either.
    Ordering: all implementations are called; results are merged. Exceptions propagate and abort the run before
    anything is sent (a broken extension must not silently drop a format). Added in 0.1.0.
    """


@hookspec
def smtp_dist_message(target: Target, facts: CertificateFacts, message: Message) -> Message | None:
    """Transform one target's rendered message into the message to send (sign it, encrypt it, add a header).

    :param target: the validated target the message is for (its ``smime`` policy, recipients, relay).
    :param facts: the certificate the message carries.
    :param message: the message as rendered, or as the previous implementation returned it: RFC 5322 bytes with
        CR LF line ends in ``data``, and its envelope. Frozen: return a new one (``dataclasses.replace``).
    :return: the message to pass on, or None to leave it unchanged. Keep ``message_id`` and the envelope; set
        ``signed`` / ``encrypted_to`` (recipient certificate fingerprints) when the implementation signs or
        encrypts, for the journal.
    Ordering: the implementations form a chain, each given the previous one's result, in pluggy's call order
    (``tryfirst`` first, ``trylast`` last, otherwise the last registered first). The built-in S/MIME
    implementation is ``trylast``, so its signature and envelope cover what the other implementations did.
    Hook wrappers are not called. Runs once per target and delivery (a ``retry`` renders and transforms again,
    with the same Message-ID), before anything is dialled and within the target's ``timeout``; a ``--dry-run``
    writes the transformed message. An exception fails that target alone with SMTP_PAYLOAD (its text is shown
    only for a :class:`~certbot_smtp_dist.errors.PayloadError`; otherwise the exception type), never the
    others; so does a returned message with a ``Bcc`` header field (blind copies live in the envelope only), or
    with another ``message_id``, ``envelope_from`` or ``envelope_to``.
    Added after 0.1.0 (unreleased).
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
