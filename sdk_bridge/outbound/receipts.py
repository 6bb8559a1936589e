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
from datetime import UTC, datetime, timedelta

import structlog
from cryptography import x509

from ..registry.client import Registry
from ..registry.errors import RegistryUnavailable
from ..retrieval.opening import open_received
from ..runtime import counters
from ..runtime.concurrently import each
from ..sdk.sealing import Opened, Receiver
from ..sdk.verdict import Outcome
from ..spool import Delivery, Received, Spool, State
from .outcomes import Event, Notify, settle, settled, tell

log = structlog.get_logger(__name__)


class Receipts:
    def __init__(
        self,
        organisation_id: str,
        spool: Spool,
        registry: Registry,
        trust_anchors: list[x509.Certificate],
        notify: Notify | None,
    ) -> None:
        self.organisation_id = organisation_id
        self.spool = spool
        self.registry = registry
        self.trust_anchors = trust_anchors
        self.notify = notify

    async def process_pending(self) -> None:
        """Every stored kvittens not yet dealt with; business messages are left for the
        inbound path. They are verified several at once (and retrieved so, which leaves
        their order to chance), then settled the ACCEPTED ones first: an ACCEPTED and a
        duplicate's REJECTED for one message must leave it delivered, with no failure
        report sent in between."""
        items = await asyncio.to_thread(self.spool.claim_received, kvittens=True)
        opened: dict[str, Opened] = {}

        async def verify(item: Received) -> None:
            try:
                opened[item.id] = await self._open(item)
            except RegistryUnavailable as e:
                log.warning("kvittens waits: the registry cannot answer", id=item.id, error=str(e))

        await each(items, verify)
        verified = [item for item in items if item.id in opened]
        verified.sort(key=lambda item: not _accepted(opened[item.id]))  # stable: arrival order
        for item in verified:
            await self._settle(item, opened[item.id])

    async def _settle(self, item: Received, opened: Opened) -> None:
        tell(self.notify, await asyncio.to_thread(self._settle_now, item, opened))

    def _settle_now(self, item: Received, opened: Opened) -> Delivery | None:
        """Match, settle, and mark the kvittens dealt with: spool work in one thread hop.
        The delivery settled, if any."""
        delivery, problem = self._match(item, opened)
        if delivery is None:
            log.warning("kvittens ignored", id=item.id, sender=item.original_sender, why=problem)
            self.spool.mark_received(item.id, "ignored", problem)
            return None
        assert opened.kvittens is not None
        if opened.kvittens.accepted:
            updated = self._accepted(delivery)
        else:
            line = opened.kvittens.lines[0]
            updated = self._rejected(delivery, f"{line.reason} {line.detail or '-'}", line.text)
        self.spool.mark_received(item.id, "done", None)
        return updated

    async def _open(self, item: Received) -> Opened:
        receiver = Receiver(trust_anchors=self.trust_anchors, our_parties={self.organisation_id})
        return await open_received(item, self.registry, receiver)

    def _match(self, item: Received, opened: Opened) -> tuple[Delivery | None, str]:
        """The delivery a verified kvittens settles, or None and why it settles nothing."""
        if opened.verdict.outcome is not Outcome.ACCEPTED:
            return None, opened.verdict.line()
        if not opened.is_kvittens or opened.kvittens is None or opened.header is None:
            return None, "not a kvittens"
        kvittens = opened.kvittens
        delivery = self.spool.by_sdk_message_id(kvittens.refers_to)
        if delivery is None:
            return None, "it names no message we sent"
        recipient = delivery.recipient
        if kvittens.sender != recipient.organisation_id or item.original_sender != kvittens.sender:
            return None, "it comes from another organisation than the message went to"
        if opened.header.handling_service_id not in (None, recipient.functional_address):
            return None, "its HandlingServiceID is not the functional address the message went to"
        return delivery, ""

    def _accepted(self, delivery: Delivery) -> Delivery | None:
        after_failure = delivery.notes.failure_reported
        event = Event.DELIVERED_AFTER_ALL if after_failure else Event.DELIVERED
        updated = settled(
            self.spool,
            delivery,
            {State.QUEUED, State.SUBMITTED, State.FAILED},  # not twice: DELIVERED is final
            event,
            "2.0.0",
            "ACCEPTED by the receiving organisation",
            state=State.DELIVERED,
            notes={"kvittens": "ACCEPTED"},
        )
        if updated:
            log.info("delivered", **delivery.ids(), outcome=str(event))
            counters.OUTBOUND.labels("delivered").inc()
        return updated

    def _rejected(self, delivery: Delivery, code: str, text: str) -> Delivery | None:
        reason = f"{code}: {text}"
        updated = settled(
            self.spool,
            delivery,
            {State.QUEUED, State.SUBMITTED},  # never over an ACCEPTED, nor a second failure
            Event.REJECTED,
            "5.6.0",
            f"REJECTED {reason}",
            state=State.FAILED,
            last_error=reason,
            notes={"kvittens": "REJECTED"},
        )
        if updated:
            log.warning("rejected by the receiver", **delivery.ids(), reason=reason)
            counters.OUTBOUND.labels("rejected").inc()
            counters.OUTBOUND_REJECTED.labels(code).inc()
        return updated

    async def sweep(self, delay_warning: timedelta, lifetime: timedelta) -> None:
        """Deliveries that take long: one delay report each; submitted ones without a
        kvittens fail at the end of their lifetime (queued ones are failed by the worker)."""
        now = datetime.now(UTC)
        old = now - min(delay_warning, lifetime)  # younger ones have nothing to sweep
        for state in (State.QUEUED, State.SUBMITTED):
            for delivery in await asyncio.to_thread(
                self.spool.deliveries, state, created_before=old
            ):
                age = now - delivery.created_at
                if state is State.SUBMITTED and age > lifetime:
                    reason = "no kvittens from the receiving organisation in time"
                    await settle(
                        self.spool,
                        self.notify,
                        delivery,
                        {state},
                        Event.FAILED,
                        "5.4.7",
                        reason,
                        state=State.FAILED,
                        last_error=reason,
                    )
                elif age > delay_warning and not delivery.notes.delay_reported:
                    waiting = delivery.last_error or "waiting"
                    reason = (
                        "no kvittens from the receiving organisation yet"
                        if state is State.SUBMITTED
                        else f"not yet handed to the access point: {waiting}"
                    )
                    await settle(
                        self.spool, self.notify, delivery, {state}, Event.DELAYED, "4.4.1", reason
                    )


def _accepted(opened: Opened) -> bool:
    return opened.kvittens is not None and opened.kvittens.accepted
