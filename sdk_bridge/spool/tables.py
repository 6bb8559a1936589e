"""Records from database rows, for every back end: SQLite hands over JSON and times as
text, PostgreSQL as values; the columns and what they mean are the same."""

import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Protocol

from .records import (
    Delivery,
    Envelope,
    InboundMail,
    InboxState,
    NoteChanges,
    Notes,
    OwedKvittens,
    Received,
    RecipientRecord,
    State,
)


class Row(Protocol):
    """A database row of either back end (sqlite3.Row, psycopg's dict row), by column."""

    def __getitem__(self, column: str) -> Any: ...


_UPDATABLE = frozenset({"state", "attempts", "next_attempt_at", "last_error"})
_KVITTENS_UPDATABLE = _UPDATABLE | {"transport_id", "resends"}
DELIVERY_UPDATABLE = _UPDATABLE | {"conversation_id"}
TRANSITION_CHANGES = DELIVERY_UPDATABLE | {"notes"}  # notes change only with a transition


def updatable(table: str) -> frozenset[str]:
    """The columns the `update_*` methods may change in `table`."""
    return _KVITTENS_UPDATABLE if table == "kvittens_out" else _UPDATABLE


def check_updatable(allowed: frozenset[str], changes: dict[str, Any]) -> None:
    if not changes.keys() <= allowed:
        raise ValueError(f"cannot update {sorted(changes.keys() - allowed)}")


def delivery_filter(
    state: State | None, due: object, created_before: object
) -> tuple[str, tuple[object, ...]]:
    """The WHERE clause of `deliveries(state, due=…, created_before=…)` with %s marks, and
    its arguments; times as the back end stores them."""
    conditions: list[str] = []
    arguments: list[object] = []
    for condition, value in (
        ("state = %s", None if state is None else state.value),
        ("next_attempt_at <= %s", due),
        ("created_at <= %s", created_before),
    ):
        if value is not None:
            conditions.append(condition)
            arguments.append(value)
    return (" WHERE " + " AND ".join(conditions) if conditions else ""), tuple(arguments)


def delivery_from(row: Row) -> Delivery:
    details = _json(row["details"])
    details["notify"] = tuple(details.get("notify", ()))
    return Delivery(
        id=row["id"],
        message_id=row["message_id"],
        recipient=RecipientRecord(**details),
        state=State(row["state"]),
        attempts=row["attempts"],
        next_attempt_at=_time(row["next_attempt_at"]),
        last_error=row["last_error"],
        sdk_message_id=row["sdk_message_id"],
        conversation_id=row["conversation_id"],
        mail_message_id=row["mail_message_id"],
        created_at=_time(row["created_at"]),
        notes=Notes.from_json(_json(row["notes"])),
    )


def received_from(row: Row, payload: bytes) -> Received:
    return Received(
        id=row["id"],
        action=row["action"],
        original_sender=row["original_sender"],
        final_recipient=row["final_recipient"],
        conversation_id=row["conversation_id"],
        payload=payload,
        attempts=row["attempts"],
    )


def inbound_mail_from(row: Row) -> InboundMail:
    return InboundMail(
        sdk_message_id=row["sdk_message_id"],
        received_id=row["received_id"],
        functional_address=row["functional_address"],
        sender=row["sender"],
        conversation_id=row["conversation_id"],
        mail_message_id=row["mail_message_id"],
        reply_references=tuple(tuple(r) for r in _json(row["reply_references"])),
        our_references=tuple(tuple(r) for r in _json(row["our_references"])),
        state=InboxState(row["state"]),
        attempts=row["attempts"],
        last_error=row["last_error"],
        created_at=_time(row["created_at"]).isoformat(),
        content_removed=row["content_removed_at"] is not None,
    )


INBOX_COLUMNS = (
    "sdk_message_id, received_id, functional_address, sender, conversation_id,"
    " mail_message_id, reply_references, our_references, state"
)


def inbox_values(mail: InboundMail, to_json: Callable[[Any], Any]) -> tuple[Any, ...]:
    """A new inbox row's INBOX_COLUMNS, the references as `to_json` stores JSON."""
    return (
        mail.sdk_message_id,
        mail.received_id,
        mail.functional_address,
        mail.sender,
        mail.conversation_id,
        mail.mail_message_id,
        to_json(mail.reply_references),
        to_json(mail.our_references),
        InboxState.DELIVERING.value,
    )


def owed_kvittens_from(row: Row) -> OwedKvittens:
    return OwedKvittens(
        id=row["id"],
        answers=row["answers"],
        receiver=row["receiver"],
        conversation_id=row["conversation_id"],
        accepted=bool(row["accepted"]),
        attempts=row["attempts"],
        transport_id=row["transport_id"],
        resends=row["resends"],
    )


def same_mail(
    earlier_envelope: Any,
    earlier_recipients: Iterable[str],
    envelope: Envelope,
    recipients: list[RecipientRecord],
) -> bool:
    """Whether a stored mail (its envelope column, its recipients) is this one sent again
    as far as the envelope goes: the functional address and user it was sent as, and the
    recipients (the back end's query matched the bytes and the envelope sender)."""
    earlier = _json(earlier_envelope)
    sent_as = (earlier.get("sender_address"), earlier.get("auth_user"))
    return sent_as == (envelope.sender_address, envelope.auth_user) and sorted(
        earlier_recipients
    ) == sorted(r.address for r in recipients)


def merged_notes(stored: Any, notes: NoteChanges | None, changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` with `notes` merged into a row's `stored` ones, as they are to be stored."""
    if notes is None:
        return changes
    return {**changes, "notes": Notes.from_json(_json(stored)).merged(notes).to_json()}


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _time(value: Any) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value
