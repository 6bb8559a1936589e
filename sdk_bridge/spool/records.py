"""What the spool keeps, as the stages see it, whichever back end keeps it: the records of
mail on its way out (`Envelope`, `RecipientRecord`, `Delivery` and its `State`), of what
the access point handed over (`Received`), of mail on its way to a mailbox (`InboundMail`,
`InboxState`), of what became of a received message (`Conclusion`) and of kvittens we owe
(`OwedKvittens`). A delivery's `Notes` say what its sender is owed or was told and what
the access point said, beside its state."""

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, TypedDict


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
    notes: "Notes" = field(default_factory=lambda: Notes())

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
class OwedReport:
    """A delivery report the sender is owed and has not been sent yet."""

    event: str  # outbound.outcomes.Event: delivered, failed, rejected, delayed, …
    status: str  # RFC 3463, "5.1.1"
    text: str  # the diagnostic


class NoteChanges(TypedDict, total=False):
    """Notes to change, merged into a delivery's (None clears one): see `Notes`."""

    report: OwedReport | None
    failure_reported: bool | None
    delay_reported: bool | None
    kvittens: str | None
    transport: str | None
    resends: int | None


@dataclass(frozen=True)
class Notes:
    """What happened to a delivery besides its state, kept with it (as JSON), changed only
    with the state it goes with (`Spool.transition`)."""

    report: OwedReport | None = None  # owed to the sender; cleared once the report is sent
    failure_reported: bool = False  # a failure report went out: a later ACCEPTED says so
    delay_reported: bool = False  # one delay warning, whichever instance sweeps first
    kvittens: str | None = None  # ACCEPTED or REJECTED, once one came
    transport: str | None = None  # what the access point last said: ACKNOWLEDGED, …
    resends: int = 0  # times sent again under a new SDK messageId after a SEND_FAILURE

    def merged(self, changes: NoteChanges) -> "Notes":
        """These notes with `changes`; a None puts a note back to its default."""
        defaults = Notes()
        values: dict[str, Any] = {
            name: getattr(defaults, name) if value is None else value
            for name, value in changes.items()
        }
        return dataclasses.replace(self, **values)  # an unknown name raises TypeError

    def to_json(self) -> dict[str, Any]:
        """The notes that differ from the defaults, as stored."""
        stored = {}
        for note in dataclasses.fields(self):
            value = getattr(self, note.name)
            if value != note.default:
                stored[note.name] = dataclasses.asdict(value) if note.name == "report" else value
        return stored

    @classmethod
    def from_json(cls, stored: Mapping[str, Any]) -> "Notes":
        report = stored.get("report")
        return cls(
            report=OwedReport(**report) if report else None,
            failure_reported=bool(stored.get("failure_reported")),
            delay_reported=bool(stored.get("delay_reported")),
            kvittens=stored.get("kvittens"),
            transport=stored.get("transport"),
            resends=int(stored.get("resends", 0)),
        )


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
class Conclusion:
    """What became of a received message, recorded at once (`Spool.conclude_received`)."""

    state: str  # accepted, rejected, quarantined
    note: str | None = None
    kvittens: "tuple[OwedKvittens, bytes] | None" = None  # owed, sealed
    mail: "tuple[InboundMail, bytes] | None" = None  # for its mailbox
    sdk_message_id: str | None = None  # a later message with it is a duplicate


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
