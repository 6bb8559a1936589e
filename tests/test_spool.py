"""The embedded spool: durable accept, leases, updates, lookups, and a reopen."""

import dataclasses
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bridge.spool import Envelope, RecipientRecord, SQLiteSpool, State

ENVELOPE = Envelope(
    mail_from="anna@kommun.se",
    client="127.0.0.1:50000",
    helo="exchange.kommun.se",
    envid="ENV-1",
    ret="HDRS",
    mail_message_id="abc@kommun.se",
    sender_address="a.registrator",
)
RECIPIENTS = [
    RecipientRecord(
        "registrator@b.se.sdk.kommun.se", "0203:b.se", "b.registrator", None, ("SUCCESS", "FAILURE")
    ),
    RecipientRecord("ekonomi@c.se.sdk.kommun.se", "0203:c.se", "c.ekonomi"),
]


def test_accept_stores_body_and_one_delivery_per_recipient(tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path)
    message_id = spool.accept(ENVELOPE, RECIPIENTS, b"Subject: x\r\n\r\nhej\r\n")
    assert spool.body(message_id) == b"Subject: x\r\n\r\nhej\r\n"
    assert spool.envelope(message_id) == ENVELOPE
    deliveries = spool.deliveries()
    assert [d.recipient for d in deliveries] == RECIPIENTS
    assert all(d.state is State.QUEUED and d.attempts == 0 for d in deliveries)
    assert len({d.sdk_message_id for d in deliveries}) == 2  # one SDK message per recipient
    assert spool.by_mail_message_id("abc@kommun.se").id == deliveries[-1].id
    assert spool.by_sdk_message_id(deliveries[0].sdk_message_id) == deliveries[0]
    with sqlite3.connect(tmp_path / "spool.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_claims_are_leased_and_updates_written(tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path)
    spool.accept(ENVELOPE, RECIPIENTS, b"x")
    claimed = spool.claim_due(10, lease=timedelta(minutes=5))
    assert len(claimed) == 2
    assert spool.claim_due(10, lease=timedelta(minutes=5)) == []  # leased
    first = claimed[0]
    later = datetime.now(UTC) + timedelta(seconds=30)
    spool.update(
        first.id, state=State.QUEUED, attempts=1, last_error="AP down", next_attempt_at=later
    )
    again = spool.delivery(first.id)
    assert (again.attempts, again.last_error, again.next_attempt_at) == (1, "AP down", later)
    spool.update(first.id, state=State.SUBMITTED, notes={"kvittens": "pending"})
    assert spool.delivery(first.id).notes == {"kvittens": "pending"}
    assert [d.id for d in spool.deliveries(State.SUBMITTED)] == [first.id]
    with pytest.raises(ValueError, match="cannot update"):
        spool.update(first.id, sdk_message_id="x")


def test_expired_lease_makes_it_due_again(tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path)
    spool.accept(ENVELOPE, RECIPIENTS[:1], b"x")
    (claimed,) = spool.claim_due(1, lease=timedelta(seconds=-1))  # a worker that died
    (again,) = spool.claim_due(1, lease=timedelta(minutes=5))
    assert again.id == claimed.id


def test_leases_of_a_killed_worker_are_released_at_start(tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path)
    spool.accept(ENVELOPE, RECIPIENTS, b"x")
    assert len(spool.claim_due(10, lease=timedelta(hours=1))) == 2
    restarted = SQLiteSpool(tmp_path)
    assert restarted.claim_due(10, lease=timedelta(hours=1)) == []
    assert restarted.release_leases() == 2
    assert len(restarted.claim_due(10, lease=timedelta(hours=1))) == 2


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path)
    message_id = spool.accept(ENVELOPE, RECIPIENTS, b"body")
    before = spool.deliveries()
    spool.close()
    reopened = SQLiteSpool(tmp_path)
    assert reopened.deliveries() == before
    assert reopened.body(message_id) == b"body"


def test_the_same_mail_sent_again_is_kept_once(tmp_path: Path) -> None:
    """A client that did not see our 250 (we were killed after the commit) sends the mail
    again: the very same bytes, envelope and recipients are one message, not two."""
    spool = SQLiteSpool(tmp_path)
    envelope = Envelope("anna@kommun-a.se", sender_address="a.registrator")
    recipients = [RecipientRecord("x@b.se.sdk.a.se", "0203:b.se", "b.registrator")]
    first = spool.accept(envelope, recipients, b"Message-ID: <1@a>\r\n\r\nHej")
    resent = spool.incoming()
    resent.write_bytes(b"Message-ID: <1@a>\r\n\r\nHej")
    assert spool.accept(envelope, recipients, resent) == first
    assert not resent.exists()
    assert len(spool.deliveries()) == 1
    other = spool.accept(envelope, recipients, b"Message-ID: <2@a>\r\n\r\nHej")
    as_other = dataclasses.replace(envelope, sender_address="a.socialtjanst")
    assert spool.accept(as_other, recipients, b"Message-ID: <1@a>\r\n\r\nHej") != first
    assert len({first, other}) == 2 and len(spool.deliveries()) == 3
