"""The durable queue between the stages: one record per (message, recipient).

SMTP ingress stores a message here before it answers 250; the outbound worker takes due
deliveries, and every step it takes is written back, so a restarted bridge resumes where
the killed one stopped. `Spool` is what the stages rely on; `SQLiteSpool` is the embedded
default, and a server-backed store can follow by offering the same methods.
"""

from collections.abc import Collection
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

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


class Spool(Protocol):
    def close(self) -> None: ...

    # SMTP ingress
    def incoming(self) -> Path: ...
    def accept(
        self, envelope: Envelope, recipients: list[RecipientRecord], body: bytes | Path
    ) -> str: ...

    # the outbound worker
    def claim_due(self, limit: int, lease: timedelta) -> list[Delivery]: ...
    def release_leases(self) -> int: ...
    def update(self, delivery_id: int, **changes: Any) -> None: ...
    def transition(
        self,
        delivery_id: int,
        from_states: Collection[State],
        *,
        new_sdk_message_id: bool = False,
        **changes: Any,
    ) -> Delivery | None: ...
    def body(self, message_id: str) -> bytes: ...
    def envelope(self, message_id: str) -> Envelope: ...
    def delivery(self, delivery_id: int) -> Delivery: ...
    def by_sdk_message_id(self, sdk_message_id: str) -> Delivery | None: ...
    def by_mail_message_id(self, mail_message_id: str) -> Delivery | None: ...
    def deliveries(self, state: State | None = None) -> list[Delivery]: ...

    # delivery reports the smart host has not taken yet
    def hold_report(self, recipient: str, data: bytes) -> None: ...
    def held_reports(self) -> list[tuple[int, str, bytes]]: ...
    def drop_report(self, report_id: int) -> None: ...

    # what the access point hands over
    def note_retrieving(self, message_ids: list[str]) -> list[str]: ...
    def forget_retrieving(self, message_id: str) -> None: ...
    def store_received(self, item: Received, state: str = "new") -> bool: ...
    def received(self, state: str = "new", action: str | None = None) -> list[Received]: ...
    def mark_received(self, received_id: str, state: str, note: str | None = None) -> None: ...
    def conclude_received(
        self,
        received_id: str,
        state: str,
        note: str | None = None,
        *,
        kvittens: tuple[OwedKvittens, bytes] | None = None,
        mail: tuple[InboundMail, bytes] | None = None,
    ) -> None: ...

    # kvittens we send
    def owed_kvittens(self, limit: int = 100) -> list[tuple[OwedKvittens, bytes]]: ...
    def update_kvittens(self, kvittens_id: str, **changes: Any) -> None: ...

    # the inbox: accepted messages on their way to a mailbox
    def known_inbound(self, sdk_message_id: str) -> bool: ...
    def inbox_due(self, limit: int = 16) -> list[InboundMail]: ...
    def inbox(self, state: InboxState | None = None) -> list[InboundMail]: ...
    def inbound_by_mail_message_id(self, mail_message_id: str) -> InboundMail | None: ...
    def inbound_mail(self, sdk_message_id: str) -> bytes: ...
    def update_inbound(self, sdk_message_id: str, **changes: Any) -> None: ...


__all__ = [
    "Delivery",
    "Envelope",
    "InboundMail",
    "InboxState",
    "OwedKvittens",
    "Received",
    "RecipientRecord",
    "SQLiteSpool",
    "Spool",
    "State",
]
