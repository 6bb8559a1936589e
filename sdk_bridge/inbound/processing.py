"""The inbound stage: a stored SDK message is opened, judged, answered and turned into mail.

Order, as Digg asks (B1.3.3 §5.3, C3.2.4): the signature against the sender's CertPub
certificate before decrypting; then decryption with our keys, structure, Digg's rules and
the consistency of the AS4 parties, the XHE envelope and the business header; then our own
checks: the sender's functional address is in the address book, the messageId is new, no
attachment is of a refused type or carries malware. The verdict decides:

- ACCEPTED: the mail for the mailbox and the ACCEPTED kvittens are stored in one spool
  transaction, and only then is the kvittens handed to the access point (B1.3.3: ACCEPTED
  means stored and valid).
- REJECTED: a kvittens with Digg's reason and detail code, whose text names a rule and
  never anything from the message (kvittens travel unencrypted). Nothing is delivered.
- No kvittens (not well-formed, not decryptable, not for us, sender not in SMP): the
  envelope stays in the spool as `quarantined`, with an alert in the log.

Every transition is logged with the SDK messageId and the ebMS MessageId. A message whose
check cannot be done now (registry or scanner unavailable) stays `new` and is taken again
in the next round; nothing is answered before it is decided.
"""

import asyncio
from collections.abc import Collection
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from ..mapping.to_mail import to_email
from ..plugin import (
    DELIVERED_STATUSES,
    NOT_SERVICED,
    SEND_FAILURE,
    AccessPoint,
    DuplicateSubmission,
    PermanentFailure,
    Scanner,
    Submission,
    TemporaryFailure,
    describe_errors,
)
from ..registry.client import Registry
from ..registry.errors import NotFound, RegistryUnavailable
from ..retrieval.intake import OVERSIZE_ACTION
from ..retrieval.opening import open_received
from ..runtime import counters, workers
from ..runtime.backoff import pause
from ..runtime.concurrently import each
from ..sdk import kvittens as kv
from ..sdk import message as msg
from ..sdk import xhe
from ..sdk.keys import KeyPair
from ..sdk.names import KVITTENS_ACTION, MESSAGE_ACTION
from ..sdk.sealing import Opened, Receiver, seal_kvittens
from ..sdk.verdict import ACCEPTED, Detail, Outcome, Reason, Rejected, Verdict
from ..sdk.xmlsafe import UnsafeXML, parse_beginning
from ..spool import (
    STORAGE_ERRORS,
    DuplicateMessage,
    InboundMail,
    OwedKvittens,
    Received,
    Spool,
    State,
)

log = structlog.get_logger(__name__)

ALWAYS_ACCEPTED_TYPES = frozenset({"application/pdf"})  # B1.3.3: PDF must be supported
NO_REPLY_LOCAL_PART = "no-reply"  # From of a message whose sender names no functional address

_HEADER = "/messagePayload/message/messageHeader"
_MESSAGE_ID = f"{_HEADER}/messageId"
_SENDER_ADDRESS = f"{_HEADER}/sender/attention/subOrganization/organizationId/extension"
_FILES = "/messagePayload/message/messageBody/document/contentFile"


class _Unjudgeable(Exception):
    """An envelope this stage cannot judge; it goes to quarantine with this text."""


# What makes a message wait for the next attempt instead of being judged now.
WAIT_ON = (RegistryUnavailable, TemporaryFailure, *STORAGE_ERRORS, BrokenExecutor)
# Messages taken from the spool per round, judged several at once (`each`): their RSA work
# runs in the crypto workers meanwhile. Two copies of one messageId judged together are told
# apart by the spool (one is a duplicate).
BATCH = 50
# and at most this many envelope bytes, their payloads being in memory for the round: a
# backlog of 30 MB messages is taken a few at a time, not fifty.
BATCH_BYTES = 100_000_000
MAX_RESENDS = 3  # a kvittens handed over again after SEND_FAILURE at most this often
MAX_LOOKS = 24  # looks at a kvittens's status, with growing pauses (a day or more)


@dataclass(frozen=True)
class InboundSettings:
    organisation_id: str
    sdk_domain: str
    # Our functional addresses and the e-mail address each one's mail is addressed to.
    mailbox_addresses: dict[str, str]
    decryption_keys: list[KeyPair]
    signer: KeyPair
    trust_anchors: list
    federation: str
    forbidden_types: Collection[str] = frozenset()
    secrecy_prefix: str = "[sekretess] "
    first_retry: timedelta = timedelta(seconds=30)  # for kvittens the access point refused
    max_retry: timedelta = timedelta(hours=1)
    # A kvittens handed over is asked after at the access point this long after, then
    # with growing pauses, until it is sent or has failed.
    first_look: timedelta = timedelta(seconds=30)
    max_wait: timedelta = timedelta(minutes=15)  # between attempts at judging a message


class Inbound:
    def __init__(
        self,
        settings: InboundSettings,
        spool: Spool,
        registry: Registry,
        access_point: AccessPoint,
        scanner: Scanner | None = None,
        crypto: workers.CryptoWorkers | None = None,
    ) -> None:
        self.spool = spool
        self.registry = registry
        self.access_point = access_point
        self.scanner = scanner
        self.crypto = crypto
        self.reconfigure(settings)

    def reconfigure(self, settings: InboundSettings) -> None:
        """New settings (a reload): messages judged from now on use them."""
        self.settings = settings
        self.receiver = Receiver(
            decryption_keys=settings.decryption_keys,
            trust_anchors=settings.trust_anchors,
            our_parties={settings.organisation_id},
            our_functional_addresses=set(settings.mailbox_addresses),
            federation=settings.federation,
        )

    async def judge_pending(self) -> bool:
        """The judge stage's round: stored messages not yet decided, oldest first, a batch
        at a time; whether any was taken (more may be waiting).

        Kvittens are left for `outbound.receipts`. A message that cannot be judged now
        (registry, scanner, disk or crypto workers failing) waits with growing pauses;
        another document type, or a message that trips a bug, is quarantined: one bad
        envelope never holds up the others. Each message judged leaves "new" or waits
        until later, so rounds that return True end."""
        items = await asyncio.to_thread(self.spool.claim_received, BATCH, max_bytes=BATCH_BYTES)
        await each(items, self._process_safely)
        return bool(items)

    async def answer(self) -> None:
        """The answer stage's round: the kvittens owed are handed to the access point,
        and those it took are asked after."""
        await self.send_owed()
        await self.follow_sent()

    async def _process_safely(self, item: Received) -> None:
        try:
            if item.action == OVERSIZE_ACTION:
                await self._too_long(item)
                return
            if item.action != MESSAGE_ACTION:
                raise _Unjudgeable("not an SDK message or kvittens document type")
            with counters.LATENCY.labels("inbound_judge").time():
                await self.process(item)
        except WAIT_ON as e:
            await self._postpone(item, e)
        except Exception as e:
            if not isinstance(e, _Unjudgeable):
                log.exception("inbound processing failed", ebms_id=item.id)
                e = _Unjudgeable(f"internal error while processing ({type(e).__name__})")
            verdict = Verdict(Outcome.NO_KVITTENS, text=str(e))
            await self._quarantine(item, Opened(verdict), verdict)

    async def process(self, item: Received) -> None:
        """Judge one message and record the outcome; raise one of WAIT_ON when that cannot
        be done now."""
        opened = await open_received(item, self.registry, self.receiver, self.crypto)
        verdict, addressing = opened.verdict, None
        if verdict.outcome is Outcome.ACCEPTED:
            if opened.message is None:
                raise _Unjudgeable("a kvittens sent as a business message")
            verdict, addressing = await self._judge(item, opened.message, opened)
        if verdict.outcome is Outcome.NO_KVITTENS:
            await self._quarantine(item, opened, verdict)
        elif verdict.outcome is Outcome.REJECTED:
            await self._reject(item, opened, verdict)
        else:
            assert opened.message is not None and addressing is not None
            await self._accept(item, opened.message, addressing, opened)

    async def _too_long(self, item: Received) -> None:
        """A message too large to take (the intake kept the beginning of its envelope):
        REJECTED BV too-long (B1.3.3 §5.3), addressed by the envelope's ID and parties; one
        whose beginning does not name them, names another sender than the access point did,
        or another recipient than us, is quarantined with an alert instead."""
        try:
            root = parse_beginning(item.payload, max_bytes=len(item.payload) + 1)
            envelope_id, from_party, to_party = xhe.identity(root)
        except UnsafeXML:
            envelope_id = from_party = to_party = None
        too_long = Rejected(
            Reason.BV,
            Detail.TOO_LONG,
            "the message is larger than the 30 MB an SDK message may be; it was not taken",
        )
        ours = to_party == self.settings.organisation_id
        if envelope_id is None or from_party != item.original_sender or not ours:
            why = f"too large, and its sender or recipient cannot be told: {too_long.text}"
            verdict = Verdict(Outcome.NO_KVITTENS, text=why)
            await self._quarantine(item, Opened(verdict, envelope_id=envelope_id), verdict)
            return
        verdict = Verdict.of(too_long)
        opened = Opened(verdict, envelope_id=envelope_id, from_party=from_party, to_party=to_party)
        await self._reject(item, opened, verdict)

    async def _postpone(self, item: Received, error: Exception) -> None:
        delay = pause(item.attempts + 1, self.settings.first_retry, self.settings.max_wait)
        log.warning(
            "inbound message waits",
            ebms_id=item.id,
            attempts=item.attempts + 1,
            error=f"{type(error).__name__}: {error}",
        )
        await asyncio.to_thread(self.spool.postpone_received, item.id, datetime.now(UTC) + delay)

    # --- judging -----------------------------------------------------------------------

    async def _judge(
        self, item: Received, message: msg.BusinessMessage, opened: Opened
    ) -> tuple[Verdict, "_Addressing | None"]:
        """Our checks beyond the core's, for a message the core found valid; with
        ACCEPTED, how its mail is addressed."""
        try:
            if (item.original_sender, item.final_recipient) != (opened.from_party, opened.to_party):
                raise Rejected(
                    Reason.BV,
                    Detail.SECURITY,
                    "the AS4 originalSender and finalRecipient differ from the XHE parties",
                )
            addressing = await asyncio.to_thread(self._checked_sender, message)
            await self._check_files(item, message)
        except Rejected as e:
            return Verdict.of(e), None
        return ACCEPTED, addressing

    def _checked_sender(self, message: msg.BusinessMessage) -> "_Addressing":
        """The checks that ask the address book and the spool, in one thread hop: the
        sender's address (`_sender_address`), not a duplicate, not an answer to a message
        that failed; and the mail of ours that it answers."""
        sender, sender_name = self._sender_address(message)
        if self.spool.known_inbound(message.message_id):
            raise Rejected(
                Reason.BV, Detail.DUPLICATE, "messageId has been received before", _MESSAGE_ID
            )
        refers_to = message.ref_to_message_id
        if refers_to is None:
            return _Addressing(sender, sender_name, None)
        ours = self.spool.by_sdk_message_id(refers_to)
        failed = ours is not None and ours.state is State.FAILED  # REJECTED, or given up
        if failed or self.spool.rejected_inbound(refers_to):
            raise Rejected(  # B1.3.3 §5.3 row 11
                Reason.BV,
                Detail.NOT_SUPPORTED,
                "refToMessageId refers to a message marked as rejected",
                f"{_HEADER}/refToMessageId",
            )
        replying_to = ours.mail_message_id if ours is not None else None  # our user's mail
        return _Addressing(sender, sender_name, replying_to)

    def _sender_address(self, message: msg.BusinessMessage) -> tuple[str, str]:
        """The sender's reply-able alias and display name; Rejected when the address book
        does not have the functional address it names."""
        addresses = self.registry.addresses
        assert addresses is not None
        try:
            organisation = self.registry.book.organisation(message.sender.organisation_id)
        except NotFound:
            raise Rejected(
                Reason.BV,
                Detail.NOT_FOUND,
                "the sending organisation is not in the SDK address book",
                f"{_HEADER}/sender/senderID",
            ) from None
        attention = message.sender.attention
        if attention is None:
            domain = addresses.domain(organisation.id)
            return f"{NO_REPLY_LOCAL_PART}@{domain}", organisation.name
        for address in organisation.addresses:
            if address.identifier == attention.functional_address:
                return addresses.email(address), f"{organisation.name} – {address.name}"
        raise Rejected(
            Reason.BV,
            Detail.NOT_FOUND,
            "the sender's functional address is not in the SDK address book",
            _SENDER_ADDRESS,
        )

    async def _check_files(self, item: Received, message: msg.BusinessMessage) -> None:
        refused = self.settings.forbidden_types
        files = [file for document in message.documents for file in document.files]
        for file in files:
            kind = file.content_type.split(";")[0].strip().lower()
            if kind in refused and kind not in ALWAYS_ACCEPTED_TYPES:
                log.warning(
                    "inbound attachment type refused",
                    sdk_id=message.message_id,
                    ebms_id=item.id,
                    content_type=kind,
                )
                raise Rejected(
                    Reason.BV,
                    Detail.NOT_SUPPORTED,
                    "the receiving organisation does not accept this attachment's file type",
                    f"{_FILES}/contentType",
                )
        if self.scanner is None:
            return
        for file in files:
            found = await self.scanner.scan(file.content)
            if found is not None:
                log.error(
                    "incident: malware in an inbound message",
                    sdk_id=message.message_id,
                    ebms_id=item.id,
                    sender=message.sender.organisation_id,
                    signature=found,
                )
                counters.INCIDENTS.labels("malware").inc()
                raise Rejected(
                    Reason.BV,
                    Detail.FORBIDDEN,
                    "an attachment was found to contain malware",
                    f"{_FILES}/content",
                )

    # --- the three outcomes ---------------------------------------------------------------

    async def _quarantine(self, item: Received, opened: Opened, verdict: Verdict) -> None:
        if not await asyncio.to_thread(
            self.spool.conclude_received, item.id, "quarantined", verdict.text
        ):
            _judged_elsewhere(item)
            return
        log.error(
            "alert: inbound message quarantined, no kvittens sent",
            ebms_id=item.id,
            sdk_id=opened.envelope_id,
            sender=item.original_sender,
            reason=verdict.text,
        )
        counters.INBOUND.labels("quarantined", "-").inc()

    async def _reject(self, item: Received, opened: Opened, verdict: Verdict) -> None:
        owed = await self._kvittens(item, opened, verdict)
        judged = opened.message.message_id if opened.message else None  # signature verified
        if not await asyncio.to_thread(
            self.spool.conclude_received,
            item.id,
            "rejected",
            verdict.line(),
            kvittens=owed,
            sdk_message_id=judged,
        ):
            _judged_elsewhere(item)
            return
        log.warning(
            "inbound message rejected",
            ebms_id=item.id,
            sdk_id=opened.envelope_id,
            sender=item.original_sender,
            reason=verdict.line(),
        )
        counters.INBOUND.labels("rejected", f"{verdict.reason} {verdict.detail}").inc()

    async def _accept(
        self,
        item: Received,
        message: msg.BusinessMessage,
        addressing: "_Addressing",
        opened: Opened,
    ) -> None:
        address = message.functional_address
        assert address is not None  # the core checked it is one of ours
        answer, owed, handling = self._answer(item, opened, ACCEPTED)
        writing = _Writing(
            recipient=self.settings.mailbox_addresses[address],
            sdk_domain=self.settings.sdk_domain,
            secrecy_prefix=self.settings.secrecy_prefix,
        )
        mail, sealed = await workers.run(  # one task: the mail is written there too
            self.crypto,
            _mail_and_kvittens,
            message,
            addressing,
            writing,
            answer,
            self.settings.signer,
            handling,
            size=len(item.payload),
        )
        inbound = InboundMail(
            sdk_message_id=message.message_id,
            received_id=item.id,
            functional_address=address,
            sender=message.sender.organisation_id,
            conversation_id=message.conversation_id,
            mail_message_id=f"{message.message_id}@{self.settings.sdk_domain}",
            reply_references=_references(message.sender.attention),
            our_references=_references(message.recipient.attention),
        )
        try:
            concluded = await asyncio.to_thread(
                self.spool.conclude_received,
                item.id,
                "accepted",
                kvittens=(owed, sealed),
                mail=(inbound, mail),
                sdk_message_id=message.message_id,
            )
        except DuplicateMessage:  # judged at the same moment as a copy of itself
            duplicate = Rejected(
                Reason.BV, Detail.DUPLICATE, "messageId has been received before", _MESSAGE_ID
            )
            await self._reject(item, opened, Verdict.of(duplicate))
            return
        if not concluded:
            _judged_elsewhere(item)
            return
        counters.INBOUND.labels("accepted", "-").inc()
        log.info("inbound message accepted", **inbound.ids(), to=address, sender=inbound.sender)

    async def _kvittens(
        self, item: Received, opened: Opened, verdict: Verdict
    ) -> tuple[OwedKvittens, bytes]:
        answer, owed, handling = self._answer(item, opened, verdict)
        sealed = await workers.run(
            self.crypto, _seal_kvittens, answer, self.settings.signer, handling
        )
        return owed, sealed

    def _answer(
        self, item: Received, opened: Opened, verdict: Verdict
    ) -> tuple[kv.Kvittens, OwedKvittens, str | None]:
        """The kvittens `verdict` calls for, the spool's record of it, and the
        HandlingServiceID to seal it with."""
        assert opened.envelope_id is not None
        answer = kv.Kvittens.answering(
            verdict,
            refers_to=opened.envelope_id,
            sender=self.settings.organisation_id,
            receiver=item.original_sender,
        )
        handling = opened.header.handling_service_id if opened.header else None
        conversation = item.conversation_id or (
            opened.message.conversation_id if opened.message else answer.id
        )
        owed = OwedKvittens(
            id=answer.id,
            answers=item.id,
            receiver=item.original_sender,
            conversation_id=conversation,
            accepted=answer.accepted,
        )
        return answer, owed, handling

    # --- kvittens to the access point ---------------------------------------------------

    async def send_owed(self) -> None:
        """Hand every owed kvittens to the access point, several at once. Its ebMS
        MessageId is its own ID, so one handed over before a crash is refused as a
        duplicate, not sent twice."""
        owed = await asyncio.to_thread(self.spool.owed_kvittens)
        await each(owed, lambda kvittens_and_payload: self._hand_over(*kvittens_and_payload))

    async def _hand_over(self, owed: OwedKvittens, payload: bytes) -> None:
        try:
            await self.access_point.submit(
                Submission(
                    message_id=owed.ebms_id,
                    payload=payload,
                    action=KVITTENS_ACTION,
                    original_sender=self.settings.organisation_id,
                    final_recipient=owed.receiver,
                    conversation_id=owed.conversation_id or owed.id,
                )
            )
        except DuplicateSubmission:
            pass
        except PermanentFailure as e:
            log.error("kvittens refused by the access point", id=owed.id, error=str(e))
            await asyncio.to_thread(
                self.spool.update_kvittens, owed.id, state="failed", last_error=str(e)
            )
            return
        except Exception as e:  # TemporaryFailure, or a bug: tried again later
            if not isinstance(e, TemporaryFailure):
                log.exception("handing over a kvittens failed unexpectedly", id=owed.id)
            delay = pause(owed.attempts + 1, self.settings.first_retry, self.settings.max_retry)
            log.warning("kvittens not handed over; will retry", id=owed.id, error=str(e))
            await asyncio.to_thread(
                self.spool.update_kvittens,
                owed.id,
                attempts=owed.attempts + 1,
                last_error=str(e),
                next_attempt_at=datetime.now(UTC) + delay,
            )
            return
        await asyncio.to_thread(
            self.spool.update_kvittens,
            owed.id,
            state="sent",
            attempts=0,
            next_attempt_at=datetime.now(UTC) + self.settings.first_look,
        )
        outcome = "ACCEPTED" if owed.accepted else "REJECTED"
        log.info("kvittens sent", id=owed.id, ebms_id=owed.answers, outcome=outcome)
        counters.KVITTENS_SENT.labels(outcome).inc()

    # --- kvittens on their way -----------------------------------------------------------

    async def follow_sent(self) -> None:
        """Ask the access point after the kvittens it took: the sender counts on them (no
        kvittens, and its mail bounces after days). One that ends SEND_FAILURE is handed
        over again, the same envelope under a new transport MessageId, as B1.4.7
        §5.3.7.3 allows ("exakt samma meddelande kan skickas om"), up to MAX_RESENDS
        times; then, or when the sender's access point does not serve it, an alert."""
        sent = await asyncio.to_thread(self.spool.sent_kvittens)
        await each(sent, self._follow)

    async def _follow(self, owed: OwedKvittens) -> None:
        try:
            status = await self.access_point.status(owed.ebms_id)
            errors = await self.access_point.errors(owed.ebms_id) if status == SEND_FAILURE else []
        except TemporaryFailure as e:
            log.warning("access point: kvittens status unknown for now", id=owed.id, error=str(e))
            status, errors = "", []
        if status in DELIVERED_STATUSES:
            await asyncio.to_thread(self.spool.update_kvittens, owed.id, state="delivered")
            log.info("kvittens reached the sender's access point", id=owed.id)
            return
        if status != SEND_FAILURE:  # on its way, or not known yet: look again later
            if owed.attempts + 1 >= MAX_LOOKS:
                log.warning(
                    "kvittens never confirmed sent by the access point; no longer asked",
                    id=owed.id,
                    ebms_id=owed.ebms_id,
                    status=status or "unknown",
                )
                await asyncio.to_thread(self.spool.update_kvittens, owed.id, state="unconfirmed")
                return
            delay = pause(owed.attempts + 1, self.settings.first_look, self.settings.max_retry)
            await asyncio.to_thread(
                self.spool.update_kvittens,
                owed.id,
                attempts=owed.attempts + 1,
                next_attempt_at=datetime.now(UTC) + delay,
            )
            return
        details = describe_errors(errors)
        if NOT_SERVICED in details or owed.resends >= MAX_RESENDS:
            log.error(
                "alert: a kvittens cannot reach its sender; the sender will see its message"
                " as undelivered",
                id=owed.id,
                answers=owed.answers,
                receiver=owed.receiver,
                ebms_id=owed.ebms_id,
                errors=details,
            )
            counters.KVITTENS_FAILED.inc()
            await asyncio.to_thread(
                self.spool.update_kvittens, owed.id, state="failed", last_error=details
            )
            return
        resend = f"{owed.id}-resend-{owed.resends + 1}"
        log.warning(
            "kvittens not sent by the access point; handing it over again",
            id=owed.id,
            ebms_id=resend,
            errors=details,
        )
        await asyncio.to_thread(
            self.spool.update_kvittens,
            owed.id,
            state="pending",
            transport_id=resend,
            resends=owed.resends + 1,
            attempts=0,
            last_error=details,
            next_attempt_at=datetime.now(UTC) + self.settings.first_look,
        )


def _judged_elsewhere(item: Received) -> None:
    """Another instance concluded it first (it took the message over from this one, whose
    lease had run out): its verdict stands, and this one's is dropped unrecorded."""
    log.warning("inbound message was judged by another instance meanwhile", ebms_id=item.id)


def _references(attention: msg.Attention | None) -> tuple[tuple[str, str, str | None], ...]:
    return tuple(
        (r.id.root, r.id.extension, r.label) for r in (attention.references if attention else ())
    )


def _seal_kvittens(answer: kv.Kvittens, signer: KeyPair, handling: str | None) -> bytes:
    return seal_kvittens(answer, signer=signer, handling_service_id=handling)


@dataclass(frozen=True)
class _Addressing:
    """How an accepted message's mail is addressed, as judging found: the sender's
    reply-able alias and display name, and the Message-ID of the mail of ours it answers."""

    sender: str
    sender_name: str
    replying_to: str | None


@dataclass(frozen=True)
class _Writing:
    """What the mail is written with besides the message and its addressing."""

    recipient: str  # the functional address's mailbox
    sdk_domain: str
    secrecy_prefix: str


def _mail_and_kvittens(
    message: msg.BusinessMessage,
    addressing: _Addressing,
    writing: _Writing,
    answer: kv.Kvittens,
    signer: KeyPair,
    handling: str | None,
) -> tuple[bytes, bytes]:
    """An accepted message's mail and its sealed kvittens: one task for a crypto worker,
    which keeps the mail's Markdown and MIME work out of the event loop's process too."""
    mail = to_email(
        message,
        sender=addressing.sender,
        sender_name=addressing.sender_name,
        recipient=writing.recipient,
        sdk_domain=writing.sdk_domain,
        replying_to=addressing.replying_to,
        secrecy_prefix=writing.secrecy_prefix,
    )
    return mail, _seal_kvittens(answer, signer, handling)
