"""What a spool back end offers, by the role each part plays for the stages, and the few
methods whose rules are the same on every back end, written once here over a small hook
each back end implements in its own storage. A back end subclasses `Spool`.

Work a stage takes from the spool (`claim_due`, `claim_received`, `note_retrieving`,
`owed_kvittens`, `inbox_due`, `owing_reports`, `held_reports`) is claimed: a back end
shared by several instances leases it to the one asking, and another instance does not get
it until the lease runs out (its holder died). Within one instance each stage takes its
kind of work in rounds, so it may be given again what it holds itself.
"""

from collections.abc import Callable, Collection
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .records import (
    Conclusion,
    Delivery,
    Envelope,
    InboundMail,
    InboxState,
    NoteChanges,
    OwedKvittens,
    Received,
    RecipientRecord,
    State,
)
from .retention import Purged, Retention
from .tables import (
    TRANSITION_CHANGES,
    Row,
    check_updatable,
    delivery_from,
    merged_notes,
    updatable,
)

if TYPE_CHECKING:  # the registry's, kept in a shared spool
    from ..registry.cache import Cache

# Given a delivery's row as it is now (locked), the changes to write, or None to leave it.
Decide = Callable[[Row], dict[str, Any] | None]


class Housekeeping(Protocol):
    def close(self) -> None: ...
    def discard_partial(self) -> None:
        """At start-up: what a killed bridge left half written (SMTP data, temp files)."""

    def registry_cache(self) -> "Cache | None": ...  # None: the registry's own cache_dir
    def queue_depths(self) -> dict[tuple[str, str], tuple[int, datetime]]: ...
    def disk(self) -> tuple[int, int] | None: ...  # free and total bytes, if on a local disk
    def purge(self, retention: Retention) -> Purged: ...  # see spool.retention


class IngressQueue(Protocol):
    """SMTP ingress: a mail is stored here before its 250."""

    def incoming(self) -> Path: ...  # where DATA too large to hold in memory is written
    def accept(
        self, envelope: Envelope, recipients: list[RecipientRecord], body: bytes | Path
    ) -> str: ...


class OutboundQueue(Protocol):
    """The outbound worker, the kvittens it waits for, and `sdk-bridge queue`."""

    def claim_due(self, limit: int) -> list[Delivery]: ...
    def release_leases(self) -> int: ...
    def update(self, delivery_id: int, **changes: Any) -> None: ...
    def body(self, message_id: str) -> bytes: ...
    def envelope(self, message_id: str) -> Envelope: ...
    def delivery(self, delivery_id: int) -> Delivery: ...
    def by_sdk_message_id(self, sdk_message_id: str) -> Delivery | None:
        """The delivery with this SDK messageId, now or before a resend."""

    def by_mail_message_id(self, mail_message_id: str) -> Delivery | None:
        """The delivery a reply refers to (the newest, for a mail with several recipients)."""

    def deliveries(
        self,
        state: State | None = None,
        *,
        due: datetime | None = None,
        created_before: datetime | None = None,
    ) -> list[Delivery]:
        """In `state` (all: None); with `due` only those whose next attempt or look is due
        by then, with `created_before` only those accepted before then: the stages that
        ask every round read only what they act on."""

    def transition(
        self,
        delivery_id: int,
        from_states: Collection[State],
        *,
        new_sdk_message_id: bool = False,
        when: Callable[[Delivery], bool] | None = None,
        notes: NoteChanges | None = None,
        **changes: Any,
    ) -> Delivery | None:
        """Apply `changes` only if the delivery is still in one of `from_states` (and, as it
        is now, satisfies `when`), atomically; None when it was not (another stage or
        instance moved it first). `notes` are merged into its notes (a None clears one); a
        report owed is leased to this instance, which sends it next. `new_sdk_message_id`
        gives it a new SDK messageId (a new XHE ID and ebMS MessageId) for sending it
        again; the old one still finds it."""
        check_updatable(TRANSITION_CHANGES, changes)

        def decide(row: Row) -> dict[str, Any] | None:
            now = delivery_from(row)
            if now.state not in from_states or (when is not None and not when(now)):
                return None
            return merged_notes(row["notes"], notes, changes)

        report = None if notes is None or "report" not in notes else notes["report"] is not None
        return self._transition(delivery_id, decide, new_sdk_message_id, report)

    def _transition(
        self, delivery_id: int, decide: Decide, new_sdk_message_id: bool, report: bool | None
    ) -> Delivery | None:
        """In one transaction with the row locked: write what `decide` says, if anything;
        `report` True when a report is now owed, False when it was sent."""


class ReportQueue(Protocol):
    """Delivery reports owed to senders, and those the smart host has not taken yet."""

    def owing_reports(self, limit: int = 10) -> list[Delivery]: ...
    def hold_report(self, recipient: str, data: bytes) -> None: ...
    def held_reports(self) -> list[tuple[int, str, bytes]]: ...
    def drop_report(self, report_id: int) -> None: ...


class ReceivedStore(Protocol):
    """What the access point hands over, kept before anything is done with it, and what
    became of it."""

    def note_retrieving(self, message_ids: list[str]) -> list[str]: ...
    def lost_retrieving(self, message_id: str, note: str) -> None: ...
    def forget_retrieving(self, message_id: str) -> None: ...
    def received_states(self, message_ids: list[str]) -> dict[str, str]: ...
    def store_received(self, item: Received, state: str = "new") -> bool:
        """Keep what the access point handed over, durably, before anything else is done
        with it (Digg's P-Mode deletes it there once retrieved). False: already kept (the
        first copy stays as it was); a `lost` record of it is replaced."""

    def import_received(self, item: Received) -> bool: ...
    def received(
        self, state: str = "new", action: str | None = None, *, limit: int | None = None
    ) -> list[Received]:
        """What the access point handed over, in `state` (and of one `action`), oldest
        first; of those waiting for another attempt, only the ones due."""

    def claim_received(
        self, limit: int | None = None, *, kvittens: bool = False, max_bytes: int | None = None
    ) -> list[Received]:
        """The new envelopes due, kvittens or all others (messages), oldest first; with
        `max_bytes`, no more than fit in it (but at least one)."""

    def postpone_received(self, received_id: str, until: datetime) -> None: ...
    def held_received(self) -> list[dict[str, Any]]: ...
    def received_payload(self, received_id: str) -> bytes: ...
    def release_received(self, received_id: str) -> bool: ...
    def delete_received(self, received_id: str) -> bool: ...
    def mark_received(self, received_id: str, state: str, note: str | None = None) -> None: ...

    def conclude_received(
        self,
        received_id: str,
        state: str,
        note: str | None = None,
        *,
        kvittens: tuple[OwedKvittens, bytes] | None = None,
        mail: tuple[InboundMail, bytes] | None = None,
        sdk_message_id: str | None = None,
    ) -> bool:
        """Record what became of a received message in one transaction: its state, the
        kvittens it is owed, the mail for its mailbox and its SDK messageId, which makes a
        later message with that id a duplicate. False, recording nothing, when it was
        concluded before (by an instance that took it over from a slower one, say).

        Raise DuplicateMessage, recording nothing, when the inbox already holds a message
        with this SDK messageId (a copy judged at the same moment, by any instance)."""
        return self._conclude_received(
            received_id, Conclusion(state, note, kvittens, mail, sdk_message_id)
        )

    def _conclude_received(self, received_id: str, conclusion: Conclusion) -> bool: ...


class KvittensOutbox(Protocol):
    """Kvittens we owe senders, until the access point has taken and sent them."""

    def owed_kvittens(self, limit: int = 100) -> list[tuple[OwedKvittens, bytes]]: ...
    def sent_kvittens(self, limit: int = 100) -> list[OwedKvittens]: ...
    def update_kvittens(self, kvittens_id: str, **changes: Any) -> None:
        """state, attempts, next_attempt_at, last_error, transport_id, resends of a
        kvittens we owe."""
        check_updatable(updatable("kvittens_out"), changes)
        self._update_row("kvittens_out", "id", kvittens_id, changes)

    def _update_row(self, table: str, key: str, value: str, changes: dict[str, Any]) -> None:
        """Write `changes` (checked) to the row of `table` whose `key` is `value`, and when."""


class Inbox(Protocol):
    """Accepted messages on their way to a mailbox, and what was judged before."""

    def known_inbound(self, sdk_message_id: str) -> bool:
        """Whether a message with this SDK messageId was judged before (accepted or
        rejected)."""

    def rejected_inbound(self, sdk_message_id: str) -> bool: ...
    def inbox_due(self, limit: int = 16) -> list[InboundMail]: ...
    def inbox(self, state: InboxState | None = None) -> list[InboundMail]: ...
    def inbound_by_mail_message_id(self, mail_message_id: str) -> InboundMail | None: ...
    def inbound_mail(self, sdk_message_id: str) -> bytes: ...
    def update_inbound(self, sdk_message_id: str, **changes: Any) -> None:
        """state, attempts, next_attempt_at, last_error of a mail on its way."""
        check_updatable(updatable("inbox"), changes)
        self._update_row("inbox", "sdk_message_id", sdk_message_id, changes)

    def _update_row(self, table: str, key: str, value: str, changes: dict[str, Any]) -> None: ...


class Spool(
    Housekeeping,
    IngressQueue,
    OutboundQueue,
    ReportQueue,
    ReceivedStore,
    KvittensOutbox,
    Inbox,
    Protocol,
):
    """All of it: what a back end implements (by subclassing this) and the daemon opens."""
