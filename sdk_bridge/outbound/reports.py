"""Telling senders: outcomes of deliveries become RFC 3464 DSNs through the smart host."""

import asyncio
import ssl
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesParser

import structlog

from ..spool import ContentRemoved, Delivery, OwedReport, Spool, State
from . import dsn, smarthost
from .outcomes import ACTIONS, Event

log = structlog.get_logger(__name__)


class DsnReporter:
    """The report stage: sends the reports deliveries are owed (their notes say so), then
    clears each note. A report the smart host does not take now is kept in the spool and
    sent again (`resend_held`); one owed when the bridge died is sent after the restart.
    Only this stage talks to the smart host, so one that hangs delays nothing else; other
    instances are kept off a report by the spool's lease."""

    def __init__(
        self,
        spool: Spool,
        smart_host: tuple[str, int] | None,
        postmaster: str,
        reporting_mta: str,
        lifetime: timedelta,
        *,
        report_domains: tuple[str, ...],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`report_domains`: reports go only to senders in these domains (or subdomains),
        inside the organisation; `tls`: how the smart host's certificate is checked."""
        self.spool = spool
        self.smart_host = smart_host
        self.report_domains = report_domains
        self.tls = tls
        self.postmaster = postmaster
        self.reporting_mta = reporting_mta
        self.lifetime = lifetime

    async def round(self) -> bool:
        """Owed reports, then held ones; whether any was owed (more may be waiting)."""
        owed = await self.send_owed()
        await self.resend_held()
        return owed

    async def report(self, delivery: Delivery) -> None:
        """Send the report `delivery`'s notes say it is owed, then clear that note."""
        owed = delivery.notes.report
        if owed is None:
            return
        message = await asyncio.to_thread(self._build, delivery, owed)  # maybe 30 MB
        if message is not None:
            await self._send(message, delivery)
        await asyncio.to_thread(  # unless another was owed meanwhile: sent next round
            self.spool.transition,
            delivery.id,
            set(State),
            when=lambda now: now.notes.report == owed,
            notes={"report": None},
        )

    def _build(self, delivery: Delivery, owed: OwedReport) -> EmailMessage | None:
        event = Event(owed.event)
        envelope = self.spool.envelope(delivery.message_id)
        action = ACTIONS[event]
        extra: dict[str, object] = {}
        if action is dsn.Action.DELAYED:
            extra["will_retry_until"] = delivery.created_at + self.lifetime
        report = dsn.Report.for_recipient(
            delivery.recipient,
            action,
            owed.status,
            diagnostic=owed.text,
            diagnostic_type=dsn.DIAGNOSTIC_SDK if event is Event.REJECTED else dsn.DIAGNOSTIC_SMTP,
            last_attempt=datetime.now(UTC),
            after_failure=event is Event.DELIVERED_AFTER_ALL,
            **extra,
        )
        if not dsn.wanted(envelope, [report]):
            return None  # most deliveries: the original (maybe 30 MB) is not even read
        try:
            original = self.spool.body(delivery.message_id)
        except ContentRemoved:  # delivered after all, long after it failed: no headers
            original = b""
        return dsn.build(
            envelope=envelope,
            reports=[report],
            original=original,
            reporting_mta=self.reporting_mta,
            arrival=delivery.created_at,
            from_address=self.postmaster,
        )  # None: NOTIFY, a null sender, or a DSN about a DSN

    async def _send(self, message: EmailMessage, delivery: Delivery) -> None:
        to = str(message["To"])
        if not inside(to, self.report_domains):
            log.warning(
                "delivery report not sent: the sender is outside the organisation",
                to=to,
                **delivery.ids(),
            )
            return
        if self.smart_host is None:
            log.warning(
                "no smart host configured: delivery report not sent",
                to=to,
                **delivery.ids(),
            )
            return
        try:
            await self._hand_over(message)
        except smarthost.SendError as e:
            log.error(
                "delivery report could not be sent",
                to=to,
                **delivery.ids(),
                error=str(e),
                permanent=e.permanent,
            )
            if not e.permanent:  # kept, and sent again by resend_held()
                data = message.as_bytes(policy=dsn.POLICY)
                await asyncio.to_thread(self.spool.hold_report, to, data)
            return
        log.info("delivery report sent", to=to, **delivery.ids())

    async def _hand_over(self, message: EmailMessage) -> None:
        assert self.smart_host is not None
        host, port = self.smart_host
        await smarthost.send(message, smart_host=host, port=port, tls=self.tls)

    async def send_owed(self) -> bool:
        """Reports not sent yet: owed by a settled delivery, by a bridge that stopped
        before sending them, or asked for by `sdk-bridge queue bounce`. A few a round, one
        after another, so that a round stays well within the spool's lease even when the
        smart host hangs; whether there were any."""
        owed = await asyncio.to_thread(self.spool.owing_reports)
        for delivery in owed:
            await self.report(delivery)
        return bool(owed)

    async def resend_held(self) -> None:
        """Reports kept because the smart host did not take them: try each once more, and
        none after the first it does not take now (a round against a smart host that hangs
        is one timeout long, well within the spool's lease)."""
        if self.smart_host is None:
            return
        for report_id, recipient, data in await asyncio.to_thread(self.spool.held_reports):
            message = BytesParser(policy=dsn.POLICY).parsebytes(data)
            assert isinstance(message, EmailMessage)
            try:
                await self._hand_over(message)
            except smarthost.SendError as e:
                if not e.permanent:
                    return
                log.error("held delivery report refused for good", to=recipient, error=str(e))
            await asyncio.to_thread(self.spool.drop_report, report_id)


def inside(address: str, domains: tuple[str, ...]) -> bool:
    """Whether `address` is in one of `domains` or a subdomain of one."""
    domain = address.strip().strip("<>").rpartition("@")[2].lower().rstrip(".")
    return any(domain == d or domain.endswith("." + d) for d in domains)


def sender_domains(patterns: tuple[str, ...]) -> tuple[str, ...]:
    """The domains of envelope sender patterns ("*@kommun.se", "*@*.kommun.se": kommun.se),
    those with no wildcard left in them once a leading "*." is taken off."""
    found = []
    for pattern in patterns:
        domain = pattern.rpartition("@")[2].lower().removeprefix("*.").strip(".")
        if domain and not any(c in domain for c in "*?[]") and domain not in found:
            found.append(domain)
    return tuple(found)
