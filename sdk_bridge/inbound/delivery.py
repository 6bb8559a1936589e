"""The last stage: accepted mail from the spool into each functional address's mailbox.

Each of our functional addresses has its mailbox plugin (IMAP, LMTP/SMTP, Maildir). A
delivery the mailbox cannot take now is retried with growing pauses, without end: the
sender already holds our ACCEPTED kvittens, so the mail must never be dropped. A mailbox
that refuses for good (no such folder or user) marks it failed: the mail stays in the
spool (`inbox/`), logged as an error for an administrator.
"""

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from ..plugin import Mailbox, PermanentFailure, TemporaryFailure
from ..runtime import counters
from ..runtime.backoff import pause
from ..spool import InboundMail, InboxState
from ..spool.contract import Inbox

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class DeliverySettings:
    first_retry: timedelta = timedelta(seconds=10)
    max_retry: timedelta = timedelta(minutes=15)
    batch: int = 16  # mails taken from the spool at a time


class MailboxDelivery:
    def __init__(
        self,
        spool: Inbox,
        mailboxes: Mapping[str, Mailbox],
        settings: DeliverySettings = DeliverySettings(),
    ) -> None:
        self.spool = spool
        self.mailboxes = mailboxes  # functional address -> its mailbox
        self.settings = settings

    async def replace(self, mailboxes: Mapping[str, Mailbox]) -> None:
        """New mailboxes, from a reloaded configuration; the ones they replace are closed."""
        replaced, self.mailboxes = self.mailboxes, mailboxes
        for mailbox in replaced.values():
            await mailbox.close()

    async def close(self) -> None:
        """At shutdown: the mailboxes in use now, after any reload."""
        for mailbox in self.mailboxes.values():
            await mailbox.close()

    async def round(self) -> bool:
        """Deliver what is due, a batch at a time; whether any was (more may be waiting)."""
        due = await asyncio.to_thread(self.spool.inbox_due, self.settings.batch)
        await asyncio.gather(*(self.deliver(mail) for mail in due))
        return bool(due)

    async def deliver(self, mail: InboundMail) -> None:
        """One attempt; its outcome is written back to the spool."""
        ids = mail.ids()
        mailbox = self.mailboxes.get(mail.functional_address)
        try:
            if mailbox is None:
                raise TemporaryFailure(
                    f"no mailbox is configured for functional address {mail.functional_address}"
                )
            data = await asyncio.to_thread(self.spool.inbound_mail, mail.sdk_message_id)
            with counters.LATENCY.labels("mailbox").time():
                await mailbox.deliver(mail.mail_message_id, data)
        except PermanentFailure as e:
            log.error("mailbox refused the mail; kept in the spool", **ids, error=str(e))
            counters.MAILBOX.labels("failed").inc()
            await self._update(
                mail, state=InboxState.FAILED, attempts=mail.attempts + 1, last_error=str(e)
            )
        except (TemporaryFailure, OSError) as e:
            await self._retry(mail, str(e), ids)
        except Exception as e:  # a bug in a plugin: keep the mail, try again later
            log.exception("mailbox delivery failed unexpectedly", **ids)
            await self._retry(mail, f"internal error: {type(e).__name__}", ids)
        else:
            log.info("delivered to the mailbox", **ids, to=mail.functional_address)
            counters.MAILBOX.labels("delivered").inc()
            await self._update(mail, state=InboxState.DELIVERED, attempts=mail.attempts + 1)

    async def _retry(self, mail: InboundMail, reason: str, ids: dict[str, Any]) -> None:
        attempts = mail.attempts + 1
        delay = pause(attempts, self.settings.first_retry, self.settings.max_retry)
        log.warning("mailbox delivery will be retried", **ids, attempts=attempts, reason=reason)
        counters.MAILBOX.labels("retry").inc()
        await self._update(
            mail,
            attempts=attempts,
            last_error=reason,
            next_attempt_at=datetime.now(UTC) + delay,
        )

    async def _update(self, mail: InboundMail, **changes: object) -> None:
        await asyncio.to_thread(self.spool.update_inbound, mail.sdk_message_id, **changes)
