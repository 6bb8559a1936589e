"""`sdk-bridge queue`: the spool as an administrator steers it, like postqueue/postsuper.

Both directions are listed: outbound deliveries (one per mail and SDK recipient, named by
their number) and inbound mail on its way to a mailbox (named by its SDK messageId).
Every change goes through the spool's own transactions, from the states it may come
from, so the commands are safe while the daemon runs: a delivery the worker took a moment
ago is simply not changed, and the command says so.
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..spool import Delivery, InboundMail, InboxState, NoteChanges, OwedReport, Spool, State

WAITING = {State.QUEUED, State.HELD}  # not yet with the access point


class QueueError(Exception):
    """The entry does not exist, or is not in a state the command can change."""


@dataclass(frozen=True)
class Entry:
    direction: str  # "out" or "in"
    id: str  # outbound: the delivery number; inbound: the SDK messageId
    state: str
    attempts: int
    sender: str
    recipient: str
    sdk_message_id: str
    last_error: str | None
    created: str
    details: dict[str, Any]


def entries(spool: Spool, state: str | None = None) -> list[Entry]:
    found = [_outbound(d, spool) for d in spool.deliveries()]
    found += [_inbound(m) for m in spool.inbox()]
    return [e for e in found if state is None or e.state == state]


def find(spool: Spool, entry_id: str) -> Entry:
    """By delivery number or SDK messageId (outbound, or inbound mail)."""
    delivery = _delivery(spool, entry_id)
    if delivery is not None:
        return _outbound(delivery, spool)
    mail = next((m for m in spool.inbox() if m.sdk_message_id == entry_id), None)
    if mail is None:
        raise QueueError(f"{entry_id}: no such entry in the queue")
    return _inbound(mail)


def retry(spool: Spool, entry_id: str) -> str:
    """Try now rather than at the next scheduled attempt."""
    delivery = _delivery(spool, entry_id)
    if delivery is not None:
        if spool.transition(delivery.id, {State.QUEUED}, next_attempt_at=_now()) is None:
            raise QueueError(f"{entry_id}: only a queued delivery can be retried")
        return f"{entry_id}: will be tried at once"
    mail = _inbox_entry(spool, entry_id)
    if mail.state is InboxState.DELIVERED:
        raise QueueError(f"{entry_id}: already delivered to its mailbox")
    if mail.content_removed:
        raise QueueError(f"{entry_id}: its mail was removed after the retention time")
    spool.update_inbound(mail.sdk_message_id, state=InboxState.DELIVERING, next_attempt_at=_now())
    return f"{entry_id}: will be put into its mailbox at once"


def retry_all(spool: Spool) -> str:
    count = 0
    for delivery in spool.deliveries(State.QUEUED):
        count += spool.transition(delivery.id, {State.QUEUED}, next_attempt_at=_now()) is not None
    for mail in spool.inbox(InboxState.DELIVERING):
        spool.update_inbound(mail.sdk_message_id, next_attempt_at=_now())
        count += 1
    return f"{count} entries will be tried at once"


def hold(spool: Spool, entry_id: str) -> str:
    _change(spool, entry_id, {State.QUEUED}, "only a queued delivery can be held", State.HELD)
    return f"{entry_id}: held; `queue release` lets it go"


def release(spool: Spool, entry_id: str) -> str:
    _change(spool, entry_id, {State.HELD}, "it is not held", State.QUEUED, next_attempt_at=_now())
    return f"{entry_id}: released, tried at once"


def delete(spool: Spool, entry_id: str) -> str:
    """Drop a delivery that has not reached the access point, without telling its sender."""
    _change(
        spool, entry_id, WAITING, "only a queued or held delivery can be deleted", State.DELETED
    )
    return f"{entry_id}: deleted (its sender was not told; `queue bounce` tells)"


def bounce(spool: Spool, entry_id: str) -> str:
    """Fail a delivery and owe its sender a failure report (sent by the running daemon)."""
    reason = "returned to the sender by the administrator"
    notes = NoteChanges(report=OwedReport("failed", "5.0.0", reason), failure_reported=True)
    _change(
        spool,
        entry_id,
        WAITING | {State.SUBMITTED},
        "only a delivery still on its way can be bounced",
        State.FAILED,
        last_error=reason,
        notes=notes,
    )
    return f"{entry_id}: failed; the daemon sends its sender a delivery report"


def _change(
    spool: Spool, entry_id: str, allowed: set[State], refusal: str, state: State, **more: Any
) -> None:
    delivery = _delivery(spool, entry_id)
    if delivery is None:
        raise QueueError(f"{entry_id}: no such outbound delivery")
    if spool.transition(delivery.id, allowed, state=state, **more) is None:
        raise QueueError(f"{entry_id}: {refusal} (it is {spool.delivery(delivery.id).state})")


def _delivery(spool: Spool, entry_id: str) -> Delivery | None:
    if entry_id.isdigit():
        try:
            return spool.delivery(int(entry_id))
        except KeyError:
            return None
    return spool.by_sdk_message_id(entry_id)


def _inbox_entry(spool: Spool, entry_id: str) -> InboundMail:
    mail = next((m for m in spool.inbox() if m.sdk_message_id == entry_id), None)
    if mail is None:
        raise QueueError(f"{entry_id}: no such entry in the queue")
    return mail


def _outbound(delivery: Delivery, spool: Spool) -> Entry:
    details: dict[str, Any] = {
        "conversation_id": delivery.conversation_id,
        "message_id": delivery.mail_message_id,
        "organisation": delivery.recipient.organisation_id,
        "functional_address": delivery.recipient.functional_address,
        "notify": list(delivery.recipient.notify),
        "next_attempt_at": delivery.next_attempt_at.isoformat(timespec="seconds"),
        "notes": delivery.notes.to_json(),
    }
    envelope = spool.envelope(delivery.message_id)
    details.update(
        client=envelope.client,
        helo=envelope.helo,
        auth_user=envelope.auth_user,
        envid=envelope.envid,
        spool_id=delivery.message_id,
    )
    return Entry(
        direction="out",
        id=str(delivery.id),
        state=str(delivery.state),
        attempts=delivery.attempts,
        sender=envelope.mail_from,
        recipient=delivery.recipient.address,
        sdk_message_id=delivery.sdk_message_id,
        last_error=delivery.last_error,
        created=delivery.created_at.isoformat(timespec="seconds"),
        details=details,
    )


def _inbound(mail: InboundMail) -> Entry:
    return Entry(
        direction="in",
        id=mail.sdk_message_id,
        state=str(mail.state),
        attempts=mail.attempts,
        sender=mail.sender,
        recipient=mail.functional_address,
        sdk_message_id=mail.sdk_message_id,
        last_error=mail.last_error,
        created=mail.created_at,
        details={
            "ebms_id": mail.received_id,
            "conversation_id": mail.conversation_id,
            "message_id": mail.mail_message_id,
            "content_removed": mail.content_removed,
        },
    )


def _now() -> datetime:
    return datetime.now(UTC)
