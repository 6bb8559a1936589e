"""What the spool keeps, as the stages see it, whichever back end keeps it: the records of
mail on its way out (`Envelope`, `RecipientRecord`, `Delivery` and its `State`), of what
the access point handed over (`Received`), of mail on its way to a mailbox (`InboundMail`,
`InboxState`) and of kvittens we owe (`OwedKvittens`)."""

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol


class Row(Protocol):
    """A database row of either back end (sqlite3.Row, psycopg's dict row), by column."""

    def __getitem__(self, column: str) -> Any: ...


_UPDATABLE = frozenset({"state", "attempts", "next_attempt_at", "last_error"})
_KVITTENS_UPDATABLE = _UPDATABLE | {"transport_id", "resends"}


def updatable(table: str) -> frozenset[str]:
    """The columns the `update_*` methods may change in `table` (both back ends)."""
    return _KVITTENS_UPDATABLE if table == "kvittens_out" else _UPDATABLE


class State(StrEnum):
    QUEUED = "queued"  # waiting for (another) submission attempt
    SUBMITTED = "submitted"  # the access point has it; waiting for the kvittens
    DELIVERED = "delivered"  # kvittens ACCEPTED
    FAILED = "failed"  # given up or REJECTED; the sender has a DSN
    HELD = "held"  # stopped by an administrator (`queue hold`) until released
    DELETED = "deleted"  # dropped by an administrator before it reached the access point


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    client: str = ""  # "ip:port"
    helo: str = ""
    auth_user: str | None = None
    envid: str | None = None  # RFC 3461 ENVID
    ret: str | None = None  # RFC 3461 RET: FULL or HDRS
    mail_message_id: str | None = None  # the Message-ID header
    sender_address: str | None = None  # our functional address that sends it


@dataclass(frozen=True)
class RecipientRecord:
    address: str  # the RCPT TO address
    organisation_id: str
    functional_address: str
    orcpt: str | None = None
    notify: tuple[str, ...] = ()  # NEVER, SUCCESS, FAILURE, DELAY


@dataclass(frozen=True)
class Delivery:
    id: int
    message_id: str
    recipient: RecipientRecord
    state: State
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    sdk_message_id: str
    conversation_id: str | None
    mail_message_id: str | None
    created_at: datetime
    notes: dict[str, Any] = field(default_factory=dict)

    def ids(self) -> dict[str, Any]:
        """The ids a log event about it carries, so one message can be followed: the queue
        id, the SDK messageId (also its ebMS MessageId) and the mail's Message-ID."""
        return {
            "queue_id": self.id,
            "sdk_id": self.sdk_message_id,
            "ebms_id": self.sdk_message_id,
            "message_id": self.mail_message_id,
        }


@dataclass(frozen=True)
class Received:
    """An envelope the access point handed over (a kvittens, or a message for us)."""

    id: str
    action: str
    original_sender: str
    final_recipient: str
    conversation_id: str | None
    payload: bytes
    attempts: int = 0  # rounds it already waited


class InboxState(StrEnum):
    DELIVERING = "delivering"  # waiting for (another) attempt at the mailbox
    DELIVERED = "delivered"
    FAILED = "failed"  # the mailbox refused for good; kept for an administrator


@dataclass(frozen=True)
class InboundMail:
    """An SDK message accepted for one of our functional addresses, mapped to mail."""

    sdk_message_id: str
    received_id: str  # the ebMS MessageId
    functional_address: str
    sender: str  # the sending organisation
    conversation_id: str
    mail_message_id: str  # without angle brackets
    # Reference ids (root, extension, label), both carried by a reply (B1.3.3): the
    # sender's own, returned to it; and those it gave for us, our case in the reply.
    reply_references: tuple[tuple[str, str, str | None], ...] = ()
    our_references: tuple[tuple[str, str, str | None], ...] = ()
    state: InboxState = InboxState.DELIVERING
    attempts: int = 0
    last_error: str | None = None
    created_at: str = ""  # when it was accepted (ISO 8601)
    content_removed: bool = False  # its mail is gone (retention): nothing to deliver

    def ids(self) -> dict[str, Any]:
        """The ids a log event about it carries (see Delivery.ids)."""
        return {
            "sdk_id": self.sdk_message_id,
            "ebms_id": self.received_id,
            "message_id": self.mail_message_id,
        }


@dataclass(frozen=True)
class OwedKvittens:
    """A sealed kvittens for the access point; kept until it has taken it."""

    id: str  # the kvittens ID, also its ebMS MessageId
    answers: str  # the ebMS MessageId of the message it answers
    receiver: str
    conversation_id: str | None
    accepted: bool
    attempts: int = 0
    # The access point's MessageId of its latest hand-over: the kvittens ID, or after a
    # SEND_FAILURE a new one for the same envelope (B1.4.7 §5.3.7.3: the transport id is
    # the transfer's own, and exactly the same message may be sent again).
    transport_id: str | None = None
    resends: int = 0

    @property
    def ebms_id(self) -> str:
        return self.transport_id or self.id


def owed_kvittens_from(row: Row) -> OwedKvittens:
    """An OwedKvittens from a kvittens_out row of either back end."""
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
