"""The mailbox stage's bookkeeping: delivered, retried later, or failed for good; never
dropped. (The mailbox plugins themselves are tested against Dovecot and real Maildirs.)"""

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sdk_bridge.inbound.delivery import MailboxDelivery
from sdk_bridge.plugin import PermanentFailure, TemporaryFailure
from sdk_bridge.spool import InboundMail, InboxState, OwedKvittens, Received, SQLiteSpool


class Mailbox:
    def __init__(self, failure: Exception | None = None) -> None:
        self.failure = failure
        self.delivered: list[tuple[str, bytes]] = []
        self.closed = 0

    async def deliver(self, message_id: str, message: bytes) -> None:
        if self.failure is not None:
            raise self.failure
        self.delivered.append((message_id, message))

    async def check(self) -> None:
        pass

    async def close(self) -> None:
        self.closed += 1


def accepted(spool: SQLiteSpool, sdk_id: str, address: str = "b.registrator") -> InboundMail:
    spool.store_received(Received(f"ebms-{sdk_id}", "x", "0203:a.se", "0203:b.se", None, b"<x/>"))
    mail = InboundMail(sdk_id, f"ebms-{sdk_id}", address, "0203:a.se", sdk_id, f"{sdk_id}@sdk")
    kvittens = OwedKvittens(f"k-{sdk_id}", f"ebms-{sdk_id}", "0203:a.se", None, True)
    spool.conclude_received(
        f"ebms-{sdk_id}", "accepted", kvittens=(kvittens, b"<k/>"), mail=(mail, b"Subject: x\r\n")
    )
    return mail


def run_once(spool: SQLiteSpool, mailboxes: dict) -> None:
    async def once() -> None:
        stage = MailboxDelivery(spool, mailboxes)
        for mail in spool.inbox_due():
            await stage.deliver(mail)

    asyncio.run(once())


@pytest.mark.parametrize(
    ("failure", "state"),
    [
        (None, InboxState.DELIVERED),
        (TemporaryFailure("connection refused"), InboxState.DELIVERING),
        (OSError("disk full"), InboxState.DELIVERING),
        (RuntimeError("a plugin bug"), InboxState.DELIVERING),
        (PermanentFailure("no such folder"), InboxState.FAILED),
    ],
)
def test_outcomes(tmp_path: Path, failure: Exception | None, state: InboxState) -> None:
    spool = SQLiteSpool(tmp_path)
    accepted(spool, "m1")
    mailbox = Mailbox(failure)
    run_once(spool, {"b.registrator": mailbox})
    (mail,) = spool.inbox()
    assert mail.state is state
    assert mail.attempts == 1
    if failure is None:
        assert mailbox.delivered == [("m1@sdk", b"Subject: x\r\n")]
    else:
        assert mail.last_error
    if state is InboxState.DELIVERING:  # not due again at once: it waits a while
        assert spool.inbox_due() == []


def test_a_functional_address_without_mailbox_waits(tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path)
    accepted(spool, "m2", address="b.removed")
    run_once(spool, {})
    (mail,) = spool.inbox()
    assert mail.state is InboxState.DELIVERING
    assert "no mailbox is configured" in (mail.last_error or "")


def test_the_kvittens_is_owed_until_sent(tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path)
    accepted(spool, "m3")
    ((owed, payload),) = spool.owed_kvittens()
    assert (owed.id, payload) == ("k-m3", b"<k/>")
    spool.update_kvittens("k-m3", state="sent", next_attempt_at=datetime.now(UTC))
    assert spool.owed_kvittens() == []


def test_a_refused_mail_is_listed_and_sent_again_by_the_administrator(tmp_path: Path) -> None:
    from sdk_bridge.ops import queueadmin as queue

    spool = SQLiteSpool(tmp_path)
    accepted(spool, "m4")
    run_once(spool, {"b.registrator": Mailbox(PermanentFailure("no such folder"))})
    (entry,) = queue.entries(spool, "failed")
    assert (entry.direction, entry.id, entry.last_error) == ("in", "m4", "no such folder")
    assert queue.retry(spool, "m4").endswith("at once")
    mailbox = Mailbox()
    run_once(spool, {"b.registrator": mailbox})
    assert [m for m, _ in mailbox.delivered] == ["m4@sdk"]
    with pytest.raises(queue.QueueError, match="already delivered"):
        queue.retry(spool, "m4")


def test_each_mailbox_is_closed_once_the_reloaded_ones_at_shutdown(tmp_path: Path) -> None:
    """A reload closes the mailboxes it replaces; shutdown closes those in use then."""
    first, second = Mailbox(), Mailbox()

    async def lifetime() -> None:
        stage = MailboxDelivery(SQLiteSpool(tmp_path), {"b.registrator": first})
        await stage.replace({"b.registrator": second})
        assert (first.closed, second.closed) == (1, 0)
        await stage.close()

    asyncio.run(lifetime())
    assert (first.closed, second.closed) == (1, 1)
