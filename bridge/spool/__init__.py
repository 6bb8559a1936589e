"""The durable queue between the stages: one record per (message, recipient).

SMTP ingress stores a message here before it answers 250; the outbound worker takes due
deliveries, and every step it takes is written back, so a restarted bridge resumes where
the killed one stopped. `Spool` is what the stages rely on; `SQLiteSpool` is the embedded
default, and other back ends are plugins offering the same methods (group sdk_bridge.spools).

Work a stage takes from the spool (`claim_due`, `claim_received`, `note_retrieving`,
`owed_kvittens`, `inbox_due`, `owing_reports`, `held_reports`) is claimed: a back end
shared by several instances leases it to the one asking, and another instance does not get
it until the lease runs out (its holder died). Within one instance each stage takes its
kind of work in rounds, so it may be given again what it holds itself.
"""

import sqlite3
from collections.abc import Callable, Collection
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import DuplicateMessage, SpoolFull, SpoolUnavailable
from .sqlite import (
    Delivery,
    Envelope,
    InboundMail,
    InboxState,
    OwedKvittens,
    Received,
    RecipientRecord,
    SQLiteSpool,
    State,
)

if TYPE_CHECKING:  # the registry's, kept in a shared spool
    from ..registry.cache import Cache

# What the stages treat as "the spool cannot do it now": the SQLite default's own errors,
# and what any other back end raises.
STORAGE_ERRORS = (OSError, sqlite3.Error, SpoolUnavailable)


class Spool(Protocol):
    def close(self) -> None: ...
    def discard_partial(self) -> None: ...
    def registry_cache(self) -> "Cache | None": ...  # None: the registry's own cache_dir

    # SMTP ingress
    def incoming(self) -> Path: ...
    def accept(
        self, envelope: Envelope, recipients: list[RecipientRecord], body: bytes | Path
    ) -> str: ...

    # the outbound worker
    def claim_due(self, limit: int) -> list[Delivery]: ...
    def release_leases(self) -> int: ...
    def update(self, delivery_id: int, **changes: Any) -> None: ...
    def transition(
        self,
        delivery_id: int,
        from_states: Collection[State],
        *,
        new_sdk_message_id: bool = False,
        when: Callable[[Delivery], bool] | None = None,
        **changes: Any,
    ) -> Delivery | None: ...
    def body(self, message_id: str) -> bytes: ...
    def envelope(self, message_id: str) -> Envelope: ...
    def delivery(self, delivery_id: int) -> Delivery: ...
    def by_sdk_message_id(self, sdk_message_id: str) -> Delivery | None: ...
    def by_mail_message_id(self, mail_message_id: str) -> Delivery | None: ...
    def deliveries(self, state: State | None = None) -> list[Delivery]: ...
    def owing_reports(self, limit: int = 10) -> list[Delivery]: ...

    # delivery reports the smart host has not taken yet
    def hold_report(self, recipient: str, data: bytes) -> None: ...
    def held_reports(self) -> list[tuple[int, str, bytes]]: ...
    def drop_report(self, report_id: int) -> None: ...

    # what the access point hands over
    def note_retrieving(self, message_ids: list[str]) -> list[str]: ...
    def lost_retrieving(self, message_id: str, note: str) -> None: ...
    def forget_retrieving(self, message_id: str) -> None: ...
    def stored_received(self, message_ids: list[str]) -> set[str]: ...
    def store_received(self, item: Received, state: str = "new") -> bool: ...
    def import_received(self, item: Received) -> bool: ...
    def received(
        self, state: str = "new", action: str | None = None, *, limit: int | None = None
    ) -> list[Received]: ...
    def claim_received(
        self,
        limit: int | None = None,
        *,
        action: str | None = None,
        other_than: str | None = None,
        max_bytes: int | None = None,
    ) -> list[Received]: ...
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
    ) -> bool: ...

    # kvittens we send
    def owed_kvittens(self, limit: int = 100) -> list[tuple[OwedKvittens, bytes]]: ...
    def update_kvittens(self, kvittens_id: str, **changes: Any) -> None: ...

    # the inbox: accepted messages on their way to a mailbox
    def queue_depths(self) -> dict[tuple[str, str], tuple[int, datetime]]: ...
    def known_inbound(self, sdk_message_id: str) -> bool: ...
    def rejected_inbound(self, sdk_message_id: str) -> bool: ...
    def inbox_due(self, limit: int = 16) -> list[InboundMail]: ...
    def inbox(self, state: InboxState | None = None) -> list[InboundMail]: ...
    def inbound_by_mail_message_id(self, mail_message_id: str) -> InboundMail | None: ...
    def inbound_mail(self, sdk_message_id: str) -> bytes: ...
    def update_inbound(self, sdk_message_id: str, **changes: Any) -> None: ...


__all__ = [
    "STORAGE_ERRORS",
    "Delivery",
    "DuplicateMessage",
    "Envelope",
    "InboundMail",
    "InboxState",
    "OwedKvittens",
    "Received",
    "RecipientRecord",
    "SQLiteSpool",
    "Spool",
    "SpoolFull",
    "SpoolUnavailable",
    "State",
]
