"""Kvittens for what we sent: verified, matched to the delivery, and turned into outcomes.

A kvittens counts only when its signature verifies against the answering organisation's
CertPub signing certificate (looked up under the kvittens document id, refreshed once
before concluding it does not match), it names a message we sent to that organisation,
and its HandlingServiceID is that organisation's functional address (not ours). Anything
else is ignored, logged and kept for an administrator. ACCEPTED delivers; REJECTED fails
the delivery, unless an ACCEPTED came first; an ACCEPTED after a failure report tells the
sender it was delivered after all.
"""

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import structlog

from ..registry.client import Registry
from ..registry.errors import RegistryError, RegistryUnavailable
from ..sdk.names import DOCUMENT_ID_SCHEME, KVITTENS_DOCUMENT_ID
from ..sdk.sealing import Opened, Receiver, open_envelope
from ..sdk.verdict import Outcome
from ..spool import Delivery, Received, Spool, State

log = structlog.get_logger(__name__)

KVITTENS_ACTION = f"{DOCUMENT_ID_SCHEME}::{KVITTENS_DOCUMENT_ID}"


class Event(StrEnum):
    """What the sender is told about (a DSN, where NOTIFY asks for it)."""

    DELIVERED = "delivered"
    DELIVERED_AFTER_ALL = "delivered-after-all"  # after an earlier failure report
    FAILED = "failed"
    REJECTED = "rejected"  # failed, by the receiving organisation's kvittens
    DELAYED = "delayed"


# (delivery, event, RFC 3463 status, diagnostic text) -> sent
Notify = Callable[[Delivery, Event, str, str], Awaitable[None]]


class Receipts:
    def __init__(
        self,
        organisation_id: str,
        spool: Spool,
        registry: Registry,
        trust_anchors: list,
        notify: Notify,
    ) -> None:
        self.organisation_id = organisation_id
        self.spool = spool
        self.registry = registry
        self.trust_anchors = trust_anchors
        self.notify = notify

    async def process_pending(self) -> None:
        """Every stored kvittens not yet dealt with; business messages are left for the
        inbound path."""
        items = await asyncio.to_thread(self.spool.received, "new")
        for item in items:
            if item.action == KVITTENS_ACTION:
                await self.process(item)

    async def process(self, item: Received) -> None:
        try:
            opened = await self._open(item)
        except RegistryUnavailable as e:
            log.warning("kvittens waits: the registry cannot answer", id=item.id, error=str(e))
            return
        problem = self._problem(item, opened)
        if problem:
            log.warning("kvittens ignored", id=item.id, sender=item.original_sender, why=problem)
            await asyncio.to_thread(self.spool.mark_received, item.id, "ignored", problem)
            return
        assert opened.kvittens is not None
        delivery = await asyncio.to_thread(self.spool.by_sdk_message_id, opened.kvittens.refers_to)
        assert delivery is not None
        if opened.kvittens.accepted:
            await self._accepted(delivery)
        else:
            line = opened.kvittens.lines[0]
            await self._rejected(delivery, f"{line.reason} {line.detail or '-'}: {line.text}")
        await asyncio.to_thread(self.spool.mark_received, item.id, "done", None)

    async def _open(self, item: Received) -> Opened:
        opened = None
        for refresh in (False, True):  # once more with fresh certificates before concluding
            try:
                published = await asyncio.to_thread(
                    self.registry.certpub.signing_certificates,
                    item.original_sender,
                    refresh=refresh,
                )
            except RegistryUnavailable:
                raise
            except RegistryError as e:  # not registered, no valid certificate
                published = ()
                log.warning("no signing certificate for the kvittens sender", error=str(e))
            receiver = Receiver(
                sender_signing_certs=list(published),
                trust_anchors=self.trust_anchors,
                our_parties={self.organisation_id},
            )
            opened = await asyncio.to_thread(open_envelope, item.payload, receiver)
            if opened.verdict.outcome is Outcome.ACCEPTED or "CertPub" not in opened.verdict.text:
                return opened
        assert opened is not None
        return opened

    def _problem(self, item: Received, opened: Opened) -> str | None:
        if opened.verdict.outcome is not Outcome.ACCEPTED:
            return opened.verdict.line()
        if not opened.is_kvittens or opened.kvittens is None or opened.header is None:
            return "not a kvittens"
        kvittens = opened.kvittens
        delivery = self.spool.by_sdk_message_id(kvittens.refers_to)
        if delivery is None:
            return "it names no message we sent"
        recipient = delivery.recipient
        if kvittens.sender != recipient.organisation_id or item.original_sender != kvittens.sender:
            return "it comes from another organisation than the message went to"
        if opened.header.handling_service_id not in (None, recipient.functional_address):
            return "its HandlingServiceID is not the functional address the message went to"
        return None

    async def _accepted(self, delivery: Delivery) -> None:
        notes = {**delivery.notes, "kvittens": "ACCEPTED"}
        await asyncio.to_thread(self.spool.update, delivery.id, state=State.DELIVERED, notes=notes)
        event = (
            Event.DELIVERED_AFTER_ALL if delivery.notes.get("failure_reported") else Event.DELIVERED
        )
        log.info("delivered", id=delivery.sdk_message_id, outcome=str(event))
        await self.notify(delivery, event, "2.0.0", "ACCEPTED by the receiving organisation")

    async def _rejected(self, delivery: Delivery, reason: str) -> None:
        if delivery.state is State.DELIVERED:  # REJECTED never overrides an ACCEPTED
            log.info("late REJECTED ignored after ACCEPTED", id=delivery.sdk_message_id)
            return
        notes = {**delivery.notes, "kvittens": "REJECTED", "failure_reported": True}
        await asyncio.to_thread(
            self.spool.update, delivery.id, state=State.FAILED, last_error=reason, notes=notes
        )
        log.warning("rejected by the receiver", id=delivery.sdk_message_id, reason=reason)
        await self.notify(delivery, Event.REJECTED, "5.6.0", f"REJECTED {reason}")

    async def sweep(self, delay_warning: timedelta, lifetime: timedelta) -> None:
        """Deliveries that take long: one delay report each; submitted ones without a
        kvittens fail at the end of their lifetime (queued ones are failed by the worker)."""
        now = datetime.now(UTC)
        for delivery in await asyncio.to_thread(self.spool.deliveries, State.QUEUED):
            if now - delivery.created_at > delay_warning and not delivery.notes.get(
                "delay_reported"
            ):
                notes = {**delivery.notes, "delay_reported": True}
                await asyncio.to_thread(self.spool.update, delivery.id, notes=notes)
                reason = f"not yet handed to the access point: {delivery.last_error or 'waiting'}"
                await self.notify(delivery, Event.DELAYED, "4.4.1", reason)
        for delivery in await asyncio.to_thread(self.spool.deliveries, State.SUBMITTED):
            age = now - delivery.created_at
            if age > lifetime:
                notes = {**delivery.notes, "failure_reported": True}
                reason = "no kvittens from the receiving organisation in time"
                await asyncio.to_thread(
                    self.spool.update,
                    delivery.id,
                    state=State.FAILED,
                    last_error=reason,
                    notes=notes,
                )
                await self.notify(delivery, Event.FAILED, "5.4.7", reason)
            elif age > delay_warning and not delivery.notes.get("delay_reported"):
                notes = {**delivery.notes, "delay_reported": True}
                await asyncio.to_thread(
                    self.spool.update, delivery.id, state=State.SUBMITTED, notes=notes
                )
                await self.notify(
                    delivery,
                    Event.DELAYED,
                    "4.4.1",
                    "no kvittens from the receiving organisation yet",
                )
