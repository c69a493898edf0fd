"""Steps that finish later: the durable handle of a deferred step, and the functions that
complete it from outside the actor system.

A handler that returns :class:`~understudy.actors.handlers.Later` leaves its step waiting: its
ledger row says ``deferred``, committed with what the handler wrote, and the participant answers
the saga only once the step is completed. Whoever finishes the work (a webhook, a person's
approval, a long job), in any process or thread, calls :func:`complete`, :func:`reject` or
:func:`fail` with the participant's database and the step's handle; that records the outcome in
the ledger row, once, and the participant, which looks for completions on a timer while it has
steps waiting, replies to the saga. See docs/deferred.md.

The handle (``StepContext.handle``) is a string, safe in a URL::

    ud1.<base64url of msgpack [participant, key]>.<base64url of a 16-byte MAC>

It names the participant and the idempotency key of the request (so it is unambiguous, and an
error can say which step it is about), and carries a keyed BLAKE2b MAC of those, made with a
random 32-byte secret the participant's database keeps (table ``understudy_secrets``, created
with the ledger). So the same request always gets the same handle (a retry, an external call run
again after a crash: what a handler handed out stays valid), yet nobody can make a handle from a
saga id they guessed: a webhook that takes handles from the outside can trust one it verified.
Completing needs the database anyway; the MAC is what keeps a forged or mistyped handle from
completing someone else's step.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import Any

import attrs

from understudy import codec
from understudy.actors.ledger import (
    ABANDONED,
    APPLIED,
    CANCELLED,
    COMPLETIONS,
    FAILED,
    REJECTED,
    TOMBSTONE,
    Ledger,
    open_ledger,
)
from understudy.errors import CompletionRefused, LedgerError
from understudy.persistence import POSTGRES_SCHEMES

__all__ = ["complete", "fail", "reject"]

#: Seconds between two looks for completions while a participant has steps waiting, unless its
#: ``completion_poll`` option says otherwise. Completions come from people and webhooks: a
#: quarter of a second more is nothing to them, and an idle look is one index probe.
COMPLETION_POLL = 0.25

_VERSION = "ud1"
_MAC_SIZE = 16  # 128 bits: not guessable, and short enough for a URL
_PERSON = b"understudy-hndl"  # BLAKE2b personalisation: these MACs mean handles, nothing else


@attrs.frozen
class PollCompletions:
    """A participant's reminder to itself to look for completed deferred steps."""


class Handles:
    """Makes the handles of one participant's requests (see the module docstring)."""

    def __init__(self, secret: bytes, participant: str) -> None:
        self._secret = secret
        self._participant = participant

    def __call__(self, key: str) -> str:
        body = codec.encode([self._participant, key])
        return f"{_VERSION}.{_b64(body)}.{_b64(_mac(self._secret, body))}"


def complete(
    database: str, handle: str, result: Any = None, *, options: Mapping[str, Any] | None = None
) -> bool:
    """Complete the deferred step ``handle`` names with ``result`` (what its handler would have
    returned: msgpack-encodable), in the participant's ``database`` (its ``database`` option: a
    SQLite path or a PostgreSQL URL; ``options``: ``busy_timeout``, ``connect_timeout``, as the
    participant's). The participant replies ``ok`` to the saga.

    Returns True when it recorded the completion now, False when the same completion was
    recorded before (calling again is safe). Raises :class:`~understudy.errors.CompletionRefused`
    when the step was completed otherwise, was compensated meanwhile (``state`` "cancelled"), or
    is not known; :class:`~understudy.errors.PayloadError` for a result msgpack cannot encode;
    :class:`~understudy.errors.LedgerError` when the database fails."""
    _participant, key = _parse(handle)
    encoded = codec.encode(result, f"result completing step {key!r}")
    return _record(database, handle, APPLIED, encoded, None, options)


def reject(
    database: str,
    handle: str,
    reason: str,
    data: Any = None,
    *,
    options: Mapping[str, Any] | None = None,
) -> bool:
    """Complete the deferred step ``handle`` names with a business refusal, as if its handler
    had raised ``Reject(reason, data=data)``: the participant replies ``rejected`` and the saga
    compensates. Otherwise as :func:`complete`."""
    _participant, key = _parse(handle)
    encoded = None if data is None else codec.encode(data, f"data of the refusal of step {key!r}")
    return _record(database, handle, REJECTED, encoded, str(reason), options)


def fail(
    database: str, handle: str, reason: str, *, options: Mapping[str, Any] | None = None
) -> bool:
    """Complete the deferred step ``handle`` names as failed (the work broke, it did not refuse):
    the participant replies ``error``. The failure is final for the step's key, like any
    recorded outcome: the saga's retries get it again (nothing runs again), so the step fails
    once its retries are spent and the saga compensates. Otherwise as :func:`complete`."""
    _parse(handle)
    return _record(database, handle, FAILED, None, str(reason), options)


def _record(
    database: str,
    handle: str,
    outcome: str,
    result: bytes | None,
    reason: str | None,
    options: Mapping[str, Any] | None,
) -> bool:
    participant, key = _parse(handle)
    ledger = _open(database, options or {})
    try:
        _verify(ledger, handle)
        ledger.begin()
        if ledger.complete(key, participant, handle, outcome, result, reason):
            ledger.commit()
            return True
        row = ledger.row_of(key)
        ledger.rollback()
    finally:
        ledger.close()
    step = f"step {key!r} of participant {participant!r}"
    if row is None:
        raise CompletionRefused(
            f"{step} is not waiting in {ledger.where}: its handler has not deferred it (if the "
            "handle was handed out before the handler's transaction committed, try again)",
            "unknown",
        )
    recorded, stored, stored_reason = row
    if recorded in (CANCELLED, ABANDONED, TOMBSTONE):
        raise CompletionRefused(
            f"{step} was compensated while it waited (its saga gave up on it): this completion "
            "is refused and nothing was recorded; undo what it stands for, if anything",
            "cancelled",
        )
    if recorded in COMPLETIONS:
        if (recorded, _decoded(stored), stored_reason) == (outcome, _decoded(result), reason):
            return False  # the same completion again: it holds already
        raise CompletionRefused(
            f"{step} was completed before as {recorded!r}"
            f"{f' ({stored_reason})' if stored_reason else ''}; this completion "
            f"({outcome!r}) says otherwise and was not recorded: a handle completes once",
            recorded,
        )
    raise CompletionRefused(f"{step} is not waiting for a completion ({recorded})", "unknown")


def _open(database: str, options: Mapping[str, Any]) -> Ledger:
    if not database.startswith(POSTGRES_SCHEMES) and not os.path.exists(database):
        # sqlite3 would create an empty file: a wrong path would then read as "unknown handle".
        raise LedgerError(
            f"ledger {database}: no such file; give the participant's database (its "
            "'database' option)"
        )
    return open_ledger(database, options)


def _verify(ledger: Ledger, handle: str) -> None:
    try:
        secret = ledger.handle_secret()
    except LedgerError as exc:
        if exc.lost:
            raise
        raise LedgerError(
            f"ledger {ledger.where} has no participant's ledger with handles ({exc}): give the "
            "participant's database (its 'database' option)"
        ) from None
    _version, body, mac = handle.split(".")
    if not hmac.compare_digest(_unb64(mac), _mac(secret, _unb64(body))):
        participant, key = _parse(handle)
        raise CompletionRefused(
            f"the handle of step {key!r} of participant {participant!r} was not made with "
            f"{ledger.where}: it is forged, mistyped, or meant for another participant's "
            "database; nothing was recorded",
            "unknown",
        )


def _parse(handle: str) -> tuple[str, str]:
    """(participant, key) of ``handle``; a malformed one raises :class:`CompletionRefused`."""
    try:
        version, body, mac = handle.split(".")
        participant, key = codec.decode(_unb64(body), "handle")
        if version != _VERSION or len(_unb64(mac)) != _MAC_SIZE:
            raise ValueError(version)
        if not isinstance(participant, str) or not isinstance(key, str):
            raise ValueError(body)
    except Exception:
        shown = handle if isinstance(handle, str) and len(handle) < 200 else repr(handle)[:200]
        raise CompletionRefused(
            f"{shown!r} is not a step's handle (one looks like 'ud1.<...>.<...>': pass "
            "StepContext.handle as the handler got it)",
            "unknown",
        ) from None
    return participant, key


def _mac(secret: bytes, body: bytes) -> bytes:
    return hashlib.blake2b(body, key=secret, digest_size=_MAC_SIZE, person=_PERSON).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(text) from exc


def _decoded(value: bytes | None) -> Any:
    return None if value is None else codec.decode(bytes(value), "ledger result")
