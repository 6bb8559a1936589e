"""The outbound worker: spool -> SDK message -> encrypted, signed envelope -> access point.

Each delivery's SDK messageId is fixed when the mail is accepted and doubles as the XHE ID
and the ebMS MessageId, so a resubmission after a crash is refused by the access point as
a duplicate instead of sent twice, and counts as submitted. RSA work runs in a crypto
worker, off the event loop.
"""

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from cryptography import x509

from ..mapping.premapped import Premapped
from ..mapping.to_sdk import MappedMail, business_message, map_mail, parse_mail
from ..plugin import (
    AccessPoint,
    DuplicateSubmission,
    PermanentFailure,
    Submission,
    TemporaryFailure,
)
from ..registry.client import Registry
from ..registry.errors import NotFound, RegistryUnavailable
from ..runtime import counters, workers
from ..runtime.backoff import pause
from ..sdk import message as msg
from ..sdk.keys import KeyPair
from ..sdk.names import MESSAGE_ACTION
from ..sdk.sealing import seal_message
from ..spool import Delivery, Spool, State
from .outcomes import Event, Notify, settle

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class OutboundSettings:
    organisation_id: str
    lifetime: timedelta = timedelta(days=5)
    first_retry: timedelta = timedelta(seconds=30)
    max_retry: timedelta = timedelta(hours=1)
    batch: int = 16  # deliveries taken from the spool at a time
    # A submitted message's status is first asked this long after (transport.follow): a
    # kvittens usually comes first, and proves more.
    first_look: timedelta = timedelta(0)
    secrecy_tags: tuple[str, ...] = ("[sekretess]",)
    # Our functional addresses' own mailboxes (casefolded): mail written from one of them
    # names no person as its writer.
    shared_mailboxes: frozenset[str] = frozenset()


class Worker:
    def __init__(
        self,
        settings: OutboundSettings,
        spool: Spool,
        registry: Registry,
        access_point: AccessPoint,
        signer: KeyPair,
        crypto: workers.CryptoWorkers | None = None,
        notify: Notify | None = None,
        premapped: Premapped | None = None,
    ) -> None:
        self.settings = settings
        self.premapped = premapped  # what ingress mapped already
        self.spool = spool
        self.registry = registry
        self.access_point = access_point
        self.signer = signer
        self.crypto = crypto
        self.notify = notify  # tells the sender (a DSN)

    async def round(self) -> bool:
        """Deliver what is due, a batch at a time; whether any was (more may be waiting)."""
        if self.premapped is not None:
            self.premapped.expire()
        due = await asyncio.to_thread(self.spool.claim_due, self.settings.batch)
        results = await asyncio.gather(*(self.deliver(d) for d in due), return_exceptions=True)
        for delivery, result in zip(due, results, strict=True):
            if isinstance(result, Exception):  # a bug; its lease makes it due again
                log.error("delivery attempt crashed", **delivery.ids(), error=repr(result))
        return bool(due)

    async def deliver(self, delivery: Delivery) -> None:
        """One attempt; every outcome is written back to the spool."""
        try:
            submitted_id = await self._attempt(delivery)
        except DuplicateSubmission:
            log.info("access point already had it: counted as submitted", **delivery.ids())
            await self._submitted(delivery)
        except NotFound as e:
            await self._fail(delivery, _text(e), "5.1.1")
        except PermanentFailure as e:
            counters.ACCESS_POINT_ERRORS.labels("submit").inc()
            await self._fail(delivery, _text(e), "5.4.4")
        except msg.InvalidMessage as e:
            await self._fail(delivery, _text(e), "5.6.0")
        except (TemporaryFailure, RegistryUnavailable, OSError, workers.BrokenWorker) as e:
            if isinstance(e, TemporaryFailure):
                counters.ACCESS_POINT_ERRORS.labels("submit").inc()
            await self._retry(delivery, _text(e))
        except Exception as e:  # a bug: keep the mail, say so loudly, try again later
            log.exception("delivery attempt failed unexpectedly", **delivery.ids())
            await self._retry(delivery, f"internal error: {type(e).__name__}")
        else:
            log.info("submitted", **{**delivery.ids(), "ebms_id": submitted_id})
            counters.OUTBOUND.labels("submitted").inc()
            waited = (datetime.now(UTC) - delivery.created_at).total_seconds()
            counters.LATENCY.labels("submit").observe(waited)
            await self._submitted(delivery)

    async def _attempt(self, delivery: Delivery) -> str:
        business, certificates = await asyncio.to_thread(self._prepare, delivery)
        conversation = business.conversation_id
        recipient = delivery.recipient
        size = sum(len(f.content) for d in business.documents for f in d.files)
        sealed = await workers.run(
            self.crypto, _seal, business, self.signer, certificates[-1], size=size
        )
        del business  # its attachments, while the envelope goes to the access point
        return await self.access_point.submit(
            Submission(
                message_id=delivery.sdk_message_id,
                payload=sealed,
                action=MESSAGE_ACTION,
                original_sender=self.settings.organisation_id,
                final_recipient=recipient.organisation_id,
                conversation_id=conversation,
            )
        )

    def _prepare(
        self, delivery: Delivery
    ) -> tuple[msg.BusinessMessage, tuple[x509.Certificate, ...]]:
        """The SDK message and the recipient's encryption certificates, in one thread hop
        (mapping may parse, the certificates may be asked of a registry); the conversation
        mapping found is kept with the delivery, for replies."""
        business = self._map(delivery)
        if business.conversation_id != delivery.conversation_id:
            self.spool.update(delivery.id, conversation_id=business.conversation_id)
        certificates = self.registry.certpub.encryption_certificates(
            delivery.recipient.organisation_id,
            refresh=delivery.attempts > 0,  # a retry looks again: the certificate may have rolled
        )
        return business, certificates

    def _map(self, delivery: Delivery) -> msg.BusinessMessage:
        """The SDK message for one delivery (run in a thread)."""
        envelope = self.spool.envelope(delivery.message_id)
        mapped = self.premapped.take(delivery.message_id) if self.premapped else None
        if mapped is None:
            body = self.spool.body(delivery.message_id)
            mapped = map_mail(parse_mail(body), secrecy_tags=self.settings.secrecy_tags, raw=body)
        ref_to, conversation, returned, ours = self._thread(mapped, delivery)
        recipient = delivery.recipient
        return business_message(
            mapped,
            message_id=delivery.sdk_message_id,
            conversation_id=conversation,
            ref_to_message_id=ref_to,
            sender=msg.Party(
                self.settings.organisation_id,
                msg.Attention(envelope.sender_address or "", references=ours),
            ),
            recipient=msg.Party(
                recipient.organisation_id,
                msg.Attention(recipient.functional_address, references=returned),
            ),
            shared_mailboxes=self.settings.shared_mailboxes,
        )

    def _thread(
        self, mapped: MappedMail, delivery: Delivery
    ) -> tuple[str | None, str, tuple[msg.Reference, ...], tuple[msg.Reference, ...]]:
        """refToMessageId, conversationId, and the references a reply carries: the
        recipient's and ours.

        A reply continues the SDK conversation of the mail it answers: one we received, or
        one we sent. Answering one we received, it returns the sender's reference ids and
        gives ours as they were given to us (B1.3.3). Mail clients drop our X-SDK headers,
        so the answered Message-ID is looked up instead.
        """
        for mail_id in mapped.thread_ids:
            received = self.spool.inbound_by_mail_message_id(mail_id)
            if received is not None and received.sender == delivery.recipient.organisation_id:
                return (
                    received.sdk_message_id,
                    received.conversation_id,
                    _references(received.reply_references),
                    _references(received.our_references),
                )
            earlier = self.spool.by_mail_message_id(mail_id)
            if earlier is not None and earlier.id != delivery.id:
                conversation = earlier.conversation_id or earlier.sdk_message_id
                return earlier.sdk_message_id, conversation, (), ()
        return None, delivery.conversation_id or delivery.sdk_message_id, (), ()

    async def _retry(self, delivery: Delivery, reason: str) -> None:
        attempts = delivery.attempts + 1
        if datetime.now(UTC) - delivery.created_at > self.settings.lifetime:
            await self._fail(delivery, f"gave up after {attempts} attempts: {reason}", "5.4.7")
            return
        delay = pause(attempts, self.settings.first_retry, self.settings.max_retry)
        log.warning("will retry", **delivery.ids(), attempts=attempts, reason=reason)
        await asyncio.to_thread(
            self.spool.transition,
            delivery.id,
            {State.QUEUED},
            state=State.QUEUED,
            attempts=attempts,
            last_error=reason,
            next_attempt_at=datetime.now(UTC) + delay,
        )

    async def _submitted(self, delivery: Delivery) -> None:
        # Only from QUEUED: a kvittens may already have settled it (after a restart).
        await asyncio.to_thread(
            self.spool.transition,
            delivery.id,
            {State.QUEUED},
            state=State.SUBMITTED,
            attempts=delivery.attempts + 1,
            next_attempt_at=datetime.now(UTC) + self.settings.first_look,  # a status look
        )

    async def _fail(self, delivery: Delivery, reason: str, status: str) -> None:
        log.warning("delivery failed", **delivery.ids(), reason=reason)
        counters.OUTBOUND.labels("failed").inc()
        await settle(
            self.spool,
            self.notify,
            delivery,
            {State.QUEUED},
            Event.FAILED,
            status,
            reason,
            state=State.FAILED,
            attempts=delivery.attempts + 1,
            last_error=reason,
        )


def _references(stored: tuple[tuple[str, str, str | None], ...]) -> tuple[msg.Reference, ...]:
    return tuple(msg.Reference(msg.Identifier(root, ext), label) for root, ext, label in stored)


def _seal(business: msg.BusinessMessage, signer: KeyPair, certificate: object) -> bytes:
    return seal_message(business, signer=signer, recipient_cert=certificate)  # type: ignore[arg-type]


def _text(error: Exception) -> str:
    if isinstance(error, msg.InvalidMessage):
        return f"not a valid SDK message: {error.problem.text}"
    return " ".join(str(error).split())[:500]
