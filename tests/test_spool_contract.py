"""The Spool contract, the same behaviours against every back end: SQLite in a temporary
directory, PostgreSQL in a fresh database (a copy of one upgraded once per session).

`open_spool()` opens the test's store as its one bridge instance (again: as the instance
restarted). The tests of several instances at once are PostgreSQL's alone, SQLite serving
one machine: `open_instance(name)` opens instance `name` (its own spool directory) on the
shared database, as two bridges of one organisation do. Then `sdk-bridge db upgrade`: a
fresh database, a second run, two at once, a start refused."""

import dataclasses
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from support import postgres
from support.configs import write_config
from support.spools import AT_ONCE, ENVELOPE, NOTHING_YET, RECIPIENTS

from sdk_bridge import cli, config
from sdk_bridge.lab.testpki import Identity, TestPKI
from sdk_bridge.ops import queueadmin as queue
from sdk_bridge.sdk.names import KVITTENS_ACTION
from sdk_bridge.spool import (
    ContentRemoved,
    DuplicateMessage,
    Envelope,
    InboundMail,
    InboxState,
    Notes,
    OwedKvittens,
    OwedReport,
    Received,
    RecipientRecord,
    Retention,
    Spool,
    SQLiteSpool,
    State,
)
from sdk_bridge_plugins import postgres_spool
from sdk_bridge_plugins.postgres_spool import PostgresSpool

LEASE = timedelta(minutes=5)
EXPIRED = timedelta(seconds=-1)  # the lease of an instance that died

OpenSpool = Callable[..., Spool]


@pytest.fixture(scope="session")
def spool_template(postgres_server: postgres.PostgreSQL) -> str:
    """A database upgraded once, copied for each test (much faster than migrating each)."""
    name = postgres_server.database()
    postgres_spool.upgrade({"dsn": postgres_server.dsn(name)})
    return name


@pytest.fixture
def open_instance(
    postgres_server: postgres.PostgreSQL, spool_template: str, tmp_path: Path
) -> Iterator[OpenSpool]:
    """Opens bridge instance `instance` (its own spool directory) on the test's database."""
    database = postgres_server.database(template=spool_template)
    opened: list[Spool] = []

    def make(instance: str = "a", lease: timedelta = LEASE) -> Spool:
        settings = {
            "dsn": postgres_server.dsn(database),
            "directory": str(tmp_path / instance),
            "lease_seconds": lease.total_seconds(),
        }
        opened.append(PostgresSpool(settings))
        return opened[-1]

    yield make
    for spool in opened:
        spool.close()


@pytest.fixture(params=["sqlite", "postgres"])
def open_spool(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenSpool]:
    """Opens the test's store as the one bridge instance (again: as a restarted one)."""
    if request.param == "postgres":
        yield request.getfixturevalue("open_instance")
        return
    opened: list[SQLiteSpool] = []

    def make(lease: timedelta = LEASE) -> Spool:
        opened.append(SQLiteSpool(tmp_path / "spool", lease))
        return opened[-1]

    yield make
    for spool in opened:
        spool.close()


@pytest.fixture
def spool(open_spool: OpenSpool) -> Spool:
    return open_spool()


def backdate_messages(spool: Spool, hours: float) -> None:
    """Make every stored message look `hours` older, as if accepted back then."""
    if isinstance(spool, SQLiteSpool):
        with sqlite3.connect(spool.directory / "spool.sqlite3") as db:
            for message_id, at in db.execute("SELECT id, received_at FROM messages").fetchall():
                earlier = datetime.fromisoformat(at) - timedelta(hours=hours)
                db.execute(
                    "UPDATE messages SET received_at = ? WHERE id = ?",
                    (earlier.isoformat(), message_id),
                )
    else:
        assert isinstance(spool, PostgresSpool)
        with spool._pool.connection() as db:
            db.execute(
                "UPDATE messages SET received_at = received_at - %s", (timedelta(hours=hours),)
            )


def received(ebms_id: str, payload: bytes = b"<xhe/>", action: str = "message") -> Received:
    return Received(ebms_id, action, "0203:b.se", "0203:a.se", "conv-1", payload)


def inbound(sdk_id: str, ebms_id: str) -> InboundMail:
    return InboundMail(
        sdk_message_id=sdk_id,
        received_id=ebms_id,
        functional_address="a.registrator",
        sender="0203:b.se",
        conversation_id="conv-1",
        mail_message_id=f"{sdk_id}@sdk.a.se",
        reply_references=(("root", "ext", None),),
        our_references=(("1.2.3", "A-1", "Ärende"),),
    )


def kvittens(kvittens_id: str, answers: str) -> OwedKvittens:
    return OwedKvittens(kvittens_id, answers, "0203:b.se", "conv-1", accepted=True)


def accept_e1(spool: Spool) -> None:
    """Received envelope e-1 accepted: its kvittens kv-1 owed, its mail sdk-1 on its way."""
    spool.conclude_received(
        "e-1",
        "accepted",
        kvittens=(kvittens("kv-1", "e-1"), b"<kvittens/>"),
        mail=(inbound("sdk-1", "e-1"), b"From: b\r\n\r\nHej"),
        sdk_message_id="sdk-1",
    )


# --- outbound: accept, claim, lease, transition ---------------------------------------------


def test_accept_stores_body_and_one_delivery_per_recipient(spool: Spool) -> None:
    arriving = spool.incoming()
    arriving.parent.mkdir(parents=True, exist_ok=True)
    arriving.write_bytes(b"Subject: x\r\n\r\nhej\r\n")
    message_id = spool.accept(ENVELOPE, RECIPIENTS, arriving)
    assert not arriving.exists()  # it is the spool's now
    assert spool.body(message_id) == b"Subject: x\r\n\r\nhej\r\n"
    assert spool.envelope(message_id) == ENVELOPE
    deliveries = spool.deliveries()
    assert [d.recipient for d in deliveries] == RECIPIENTS
    assert all(d.state is State.QUEUED and d.attempts == 0 for d in deliveries)
    assert all(d.message_id == message_id and d.notes == Notes() for d in deliveries)
    assert len({d.sdk_message_id for d in deliveries}) == 2  # one SDK message per recipient
    found = spool.by_mail_message_id("abc@kommun.se")
    assert found is not None and found.id == deliveries[-1].id
    assert spool.by_sdk_message_id(deliveries[0].sdk_message_id) == deliveries[0]
    assert spool.by_sdk_message_id("no such id") is None
    assert spool.delivery(deliveries[1].id) == deliveries[1]
    with pytest.raises(KeyError):
        spool.delivery(10_000)
    (count, first) = spool.queue_depths()[("outbound", "queued")]
    assert count == 2 and abs(first - datetime.now(UTC)) < timedelta(minutes=1)


def test_claims_are_leased_and_updates_written(spool: Spool) -> None:
    spool.accept(ENVELOPE, RECIPIENTS, b"x")
    claimed = spool.claim_due(10)
    assert [d.recipient for d in claimed] == RECIPIENTS
    assert spool.claim_due(10) == []  # leased
    first = claimed[0]
    later = datetime.now(UTC) + timedelta(seconds=30)
    spool.update(
        first.id, state=State.QUEUED, attempts=1, last_error="AP down", next_attempt_at=later
    )
    again = spool.delivery(first.id)
    assert (again.attempts, again.last_error, again.next_attempt_at) == (1, "AP down", later)
    assert spool.claim_due(10) == []  # not due before `later`
    spool.update(first.id, next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
    assert [d.id for d in spool.claim_due(10)] == [first.id]  # a new state ended
    spool.update(first.id, state=State.SUBMITTED)  # the lease

    assert [d.id for d in spool.deliveries(State.SUBMITTED)] == [first.id]
    now = datetime.now(UTC)
    assert [d.id for d in spool.deliveries(State.SUBMITTED, due=now)] == [first.id]
    spool.update(first.id, next_attempt_at=now + timedelta(minutes=1))
    assert spool.deliveries(State.SUBMITTED, due=now) == []  # its look is not due yet
    assert len(spool.deliveries(due=now)) == 1  # the other, still queued
    assert len(spool.deliveries(created_before=now)) == 2
    assert spool.deliveries(created_before=now - timedelta(minutes=1)) == []
    others: list[dict[str, object]] = [{"sdk_message_id": "x"}, {"notes": {}}]
    for other in others:  # notes go with a transition
        with pytest.raises(ValueError, match="cannot update"):
            spool.update(first.id, **other)


def test_an_expired_lease_makes_it_due_again(open_spool: OpenSpool) -> None:
    dying = open_spool(lease=EXPIRED)
    dying.accept(ENVELOPE, RECIPIENTS[:1], b"x")
    (claimed,) = dying.claim_due(1)  # a worker that died
    spool = open_spool()
    (again,) = spool.claim_due(1)
    assert again.id == claimed.id
    assert spool.claim_due(1) == []


def test_a_restarted_instance_releases_its_predecessors_leases(open_spool: OpenSpool) -> None:
    spool = open_spool()
    spool.accept(ENVELOPE, RECIPIENTS, b"x")
    assert len(spool.claim_due(10)) == 2
    restarted = open_spool()
    assert restarted.claim_due(10) == []
    assert restarted.release_leases() == 2
    assert len(restarted.claim_due(10)) == 2


def test_transitions_only_from_the_given_states(spool: Spool) -> None:
    spool.accept(ENVELOPE, RECIPIENTS[:1], b"x")
    (delivery,) = spool.claim_due(1)
    assert spool.transition(delivery.id, {State.SUBMITTED}, state=State.DELIVERED) is None
    assert spool.delivery(delivery.id).state is State.QUEUED
    moved = spool.transition(
        delivery.id,
        {State.QUEUED},
        state=State.SUBMITTED,
        notes={"transport": "ACKNOWLEDGED", "resends": 2},
    )
    assert moved is not None and moved.state is State.SUBMITTED
    assert moved.notes == Notes(transport="ACKNOWLEDGED", resends=2)
    merged = spool.transition(
        delivery.id, set(State), notes={"transport": None, "kvittens": "ACCEPTED"}
    )
    assert merged is not None and merged.notes == Notes(kvittens="ACCEPTED", resends=2)
    assert merged.state is State.SUBMITTED  # notes alone keep the state
    with pytest.raises(TypeError):  # no note but those Notes knows
        spool.transition(delivery.id, set(State), notes={"typo": True})  # type: ignore[arg-type]
    assert spool.delivery(delivery.id).notes == merged.notes
    resent = spool.transition(
        delivery.id, {State.SUBMITTED}, new_sdk_message_id=True, state=State.QUEUED
    )
    assert resent is not None and resent.sdk_message_id != delivery.sdk_message_id
    assert spool.by_sdk_message_id(delivery.sdk_message_id) == resent  # the old id finds it
    assert spool.by_sdk_message_id(resent.sdk_message_id) == resent
    assert [d.id for d in spool.claim_due(1)] == [delivery.id]  # lease ended
    assert spool.transition(10_000, set(State), state=State.FAILED) is None
    with pytest.raises(ValueError, match="cannot update"):
        spool.transition(delivery.id, set(State), recipient="x")


def test_a_transition_only_when_the_delivery_is_as_expected(spool: Spool) -> None:
    """Two instances sweeping at once owe the sender one delay report, not two; a sent
    report is cleared only if no other was owed meanwhile."""
    spool.accept(ENVELOPE, RECIPIENTS[:1], b"x")
    (delivery,) = spool.deliveries()
    delayed = OwedReport("delayed", "4.4.1", "waiting")
    once: dict = {"when": lambda now: not now.notes.delay_reported}
    once["notes"] = {"delay_reported": True, "report": delayed}
    assert spool.transition(delivery.id, {State.QUEUED}, **once) is not None
    assert spool.transition(delivery.id, {State.QUEUED}, **once) is None
    failed = OwedReport("failed", "5.4.7", "expired")
    spool.transition(delivery.id, {State.QUEUED}, state=State.FAILED, notes={"report": failed})
    sent = spool.transition(
        delivery.id,
        set(State),
        when=lambda now: now.notes.report == delayed,
        notes={"report": None},
    )
    assert sent is None and spool.delivery(delivery.id).notes.report == failed


def test_the_same_mail_sent_again_within_a_day_is_kept_once(spool: Spool) -> None:
    """A client that did not see our 250 sends the mail again: the very same bytes,
    envelope sender, sending address and user, and recipients are one message, not two."""
    envelope = Envelope("anna@kommun-a.se", sender_address="a.registrator")
    recipients = [RecipientRecord("x@b.se.sdk.a.se", "0203:b.se", "b.registrator")]
    mail = b"Message-ID: <1@a>\r\n\r\nHej"
    first = spool.accept(envelope, recipients, mail)
    resent = spool.incoming()
    resent.write_bytes(mail)
    assert spool.accept(envelope, recipients, resent) == first
    assert not resent.exists()
    assert len(spool.deliveries()) == 1
    as_other = dataclasses.replace(envelope, sender_address="a.socialtjanst")
    to_more = [*recipients, RecipientRecord("y@b.se.sdk.a.se", "0203:b.se", "b.ekonomi")]
    others = {
        spool.accept(envelope, recipients, b"Message-ID: <2@a>\r\n\r\nHej"),
        spool.accept(as_other, recipients, mail),
        spool.accept(dataclasses.replace(envelope, auth_user="exchange"), recipients, mail),
        spool.accept(dataclasses.replace(envelope, mail_from="bo@kommun-a.se"), recipients, mail),
        spool.accept(envelope, to_more, mail),
    }
    assert first not in others and len(others) == 5
    assert len(spool.deliveries()) == 7
    backdate_messages(spool, 25)  # a day later the same mail is a new one
    assert spool.accept(envelope, recipients, mail) not in {first, *others}


# --- inbound: received envelopes, the inbox, kvittens -------------------------------------


def test_received_envelopes_are_kept_once(spool: Spool) -> None:
    assert spool.store_received(received("e-1", b"first"))
    assert not spool.store_received(received("e-1", b"second"))  # the first copy stays
    assert spool.received_payload("e-1") == b"first"
    assert spool.store_received(received("k-1", action="kvittens"))
    assert [r.id for r in spool.received()] == ["e-1", "k-1"]
    assert [r.id for r in spool.received("new", "kvittens")] == ["k-1"]
    assert [r.id for r in spool.received(limit=1)] == ["e-1"]
    (item,) = spool.received("new", "message")
    assert item == received("e-1", b"first")
    spool.postpone_received("e-1", datetime.now(UTC) + timedelta(hours=1))
    assert [r.id for r in spool.received()] == ["k-1"]  # not due yet
    spool.postpone_received("e-1", datetime.now(UTC) - timedelta(seconds=1))
    assert [r.attempts for r in spool.received("new", "message")] == [2]
    spool.mark_received("k-1", "done")
    assert spool.received("done")[0].id == "k-1"
    assert spool.queue_depths()[("received", "new")][0] == 1


def test_retrieving_lost_and_recovered(spool: Spool) -> None:
    spool.store_received(received("e-1"))
    assert spool.note_retrieving(["e-1", "e-2", "e-3"]) == ["e-2", "e-3"]  # e-1 is stored
    assert spool.note_retrieving(["e-3", "e-4"]) == ["e-2", "e-3", "e-4"]  # oldest first
    assert spool.store_received(received("e-2"))
    spool.lost_retrieving("e-3", "the access point no longer gives it out")
    assert spool.note_retrieving([]) == ["e-4"]
    (lost,) = spool.held_received()
    assert (lost["id"], lost["state"], lost["note"]) == (
        "e-3",
        "lost",
        "the access point no longer gives it out",
    )
    assert datetime.fromisoformat(lost["received_at"]) <= datetime.now(UTC)
    assert not spool.import_received(received("e-1"))  # not lost: the spool has it
    assert spool.import_received(received("e-3", b"recovered"))
    assert spool.received_payload("e-3") == b"recovered"
    assert spool.held_received() == []
    assert "e-3" in [r.id for r in spool.received()]


def test_a_retrieval_recorded_lost_is_stored_after_all(spool: Spool) -> None:
    """An instance that outlived its lease on a retrieval stores what another found no
    longer given out at the access point: the message is kept, not the `lost` record."""
    assert spool.note_retrieving(["e-1"]) == ["e-1"]
    spool.lost_retrieving("e-1", "the access point no longer gives it out")
    assert spool.store_received(received("e-1", b"late"))
    assert spool.held_received() == []
    assert spool.received_payload("e-1") == b"late"
    assert not spool.store_received(received("e-1", b"again"))


def test_received_envelopes_are_claimed_by_kind(spool: Spool) -> None:
    for ebms_id in ("e-1", "k-1", "e-2"):
        spool.store_received(received(ebms_id, action=KVITTENS_ACTION if "k" in ebms_id else "msg"))
    assert [r.id for r in spool.claim_received()] == ["e-1", "e-2"]
    assert [r.id for r in spool.claim_received(1)] == ["e-1"]  # again
    assert [r.id for r in spool.claim_received(kvittens=True)] == ["k-1"]
    spool.postpone_received("e-1", datetime.now(UTC) + timedelta(hours=1))
    (item,) = spool.claim_received()
    assert item == received("e-2", action="msg")


def test_received_envelopes_are_claimed_within_a_size(spool: Spool) -> None:
    """A backlog of large envelopes is taken a few at a time: their payloads come along."""
    for number, size in enumerate((400, 300, 200, 100), 1):
        spool.store_received(received(f"e-{number}", b"x" * size))
    assert [r.id for r in spool.claim_received(max_bytes=750)] == ["e-1", "e-2"]
    assert [r.id for r in spool.claim_received(max_bytes=100)] == ["e-1"]  # one, whatever size
    assert [r.id for r in spool.claim_received(3, max_bytes=10_000)] == ["e-1", "e-2", "e-3"]
    for ebms_id in ("e-1", "e-2"):
        spool.conclude_received(ebms_id, "quarantined", "test")
    (taken,) = spool.claim_received(max_bytes=250)
    assert (taken.id, taken.payload) == ("e-3", b"x" * 200)


def test_a_received_message_is_concluded_once(spool: Spool) -> None:
    spool.store_received(received("e-1"))
    assert spool.conclude_received(
        "e-1",
        "accepted",
        kvittens=(kvittens("kv-1", "e-1"), b"<accepted/>"),
        mail=(inbound("sdk-1", "e-1"), b"mail"),
        sdk_message_id="sdk-1",
    )
    late = spool.conclude_received(  # judged again by an instance whose lease had run out
        "e-1", "rejected", "late", kvittens=(kvittens("kv-2", "e-1"), b"<rejected/>")
    )
    assert late is False
    assert [k.id for k, _ in spool.owed_kvittens()] == ["kv-1"]
    assert spool.received("accepted")[0].id == "e-1" and not spool.rejected_inbound("sdk-1")


def test_quarantine_release_and_delete(spool: Spool) -> None:
    spool.store_received(received("e-1", b"odd"))
    spool.store_received(received("e-2", b"junk"), "unreadable")
    spool.conclude_received("e-1", "quarantined", "cannot decrypt")
    assert [(r["id"], r["state"]) for r in spool.held_received()] == [
        ("e-2", "unreadable"),
        ("e-1", "quarantined"),
    ]  # newest first
    assert not spool.release_received("e-2")  # only quarantined ones are judged again
    assert spool.release_received("e-1")
    assert [r.id for r in spool.received()] == ["e-1"]
    assert not spool.delete_received("e-1")  # not held any more
    assert spool.delete_received("e-2")
    assert spool.received_payload("e-2") == b""  # the payload went, the record stays
    assert spool.held_received() == []
    assert spool.queue_depths()[("received", "deleted")][0] == 1


def test_conclude_stores_state_kvittens_and_mail_together(spool: Spool) -> None:
    spool.store_received(received("e-1"))
    assert not spool.known_inbound("sdk-1")
    accept_e1(spool)
    assert spool.received("accepted")[0].id == "e-1"
    assert spool.known_inbound("sdk-1") and not spool.rejected_inbound("sdk-1")
    assert spool.owed_kvittens() == [(kvittens("kv-1", "e-1"), b"<kvittens/>")]
    (mail,) = spool.inbox()
    assert mail == dataclasses.replace(inbound("sdk-1", "e-1"), created_at=mail.created_at)
    assert datetime.fromisoformat(mail.created_at) <= datetime.now(UTC)
    assert spool.inbound_mail("sdk-1") == b"From: b\r\n\r\nHej"
    assert spool.inbound_by_mail_message_id("sdk-1@sdk.a.se") == mail
    assert spool.inbound_by_mail_message_id("other@sdk.a.se") is None
    with pytest.raises(KeyError):
        spool.inbound_mail("sdk-2")


def test_a_copy_judged_at_the_same_moment_records_nothing(spool: Spool) -> None:
    """The inbox holds one message per SDK messageId: concluding a second copy raises
    DuplicateMessage (what the stages catch) and stores none of its parts."""
    for ebms_id in ("e-1", "e-2"):
        spool.store_received(received(ebms_id))
    spool.conclude_received(
        "e-1", "accepted", mail=(inbound("sdk-1", "e-1"), b"first"), sdk_message_id="sdk-1"
    )
    with pytest.raises(DuplicateMessage):
        spool.conclude_received(
            "e-2",
            "accepted",
            kvittens=(kvittens("kv-2", "e-2"), b"<kvittens/>"),
            mail=(inbound("sdk-1", "e-2"), b"second"),
            sdk_message_id="sdk-1",
        )
    assert spool.owed_kvittens() == []
    assert [r.id for r in spool.received()] == ["e-2"]  # still new: judged again
    assert spool.inbound_mail("sdk-1") == b"first"
    spool.conclude_received(
        "e-2",
        "rejected",
        "duplicate",
        kvittens=(kvittens("kv-2", "e-2"), b"<rejected/>"),
        sdk_message_id="sdk-1",
    )
    assert spool.rejected_inbound("sdk-1")
    assert [k.id for k, _ in spool.owed_kvittens()] == ["kv-2"]


def test_owed_kvittens_are_due_until_sent(spool: Spool) -> None:
    for number in (1, 2):
        spool.store_received(received(f"e-{number}"))
        spool.conclude_received(
            f"e-{number}", "rejected", kvittens=(kvittens(f"kv-{number}", f"e-{number}"), b"k")
        )
    assert [k.id for k, _ in spool.owed_kvittens(limit=1)] == ["kv-1"]
    spool.update_kvittens(
        "kv-1", attempts=1, last_error="AP down", next_attempt_at=datetime.now(UTC) + LEASE
    )
    assert [k.id for k, _ in spool.owed_kvittens()] == ["kv-2"]
    spool.update_kvittens("kv-2", state="sent")
    assert spool.owed_kvittens() == []
    spool.update_kvittens("kv-1", next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
    assert [(k.id, k.attempts) for k, _ in spool.owed_kvittens()] == [("kv-1", 1)]
    assert spool.queue_depths()[("kvittens", "sent")][0] == 1
    with pytest.raises(ValueError, match="cannot update"):
        spool.update_kvittens("kv-1", receiver="x")


def test_sent_kvittens_are_followed_and_handed_over_again(spool: Spool) -> None:
    """Sent: asked after when due; after a SEND_FAILURE pending again under a new
    transport MessageId; delivered: no longer asked."""
    spool.store_received(received("e-1"))
    spool.conclude_received("e-1", "accepted", kvittens=(kvittens("kv-1", "e-1"), b"k"))
    ((owed, payload),) = spool.owed_kvittens()
    assert (owed.ebms_id, owed.transport_id, owed.resends) == ("kv-1", None, 0)
    spool.update_kvittens("kv-1", state="sent", next_attempt_at=datetime.now(UTC) + LEASE)
    assert spool.sent_kvittens() == []  # not due yet
    spool.update_kvittens("kv-1", next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
    assert [k.id for k in spool.sent_kvittens()] == ["kv-1"]
    spool.update_kvittens(
        "kv-1",
        state="pending",
        transport_id="kv-1-resend-1",
        resends=1,
        next_attempt_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    ((again, same),) = spool.owed_kvittens()
    assert (again.ebms_id, again.resends, same) == ("kv-1-resend-1", 1, payload)
    spool.update_kvittens("kv-1", state="delivered")
    assert spool.owed_kvittens() == [] and spool.sent_kvittens() == []


def test_received_states_and_forgotten_retrievals(spool: Spool) -> None:
    spool.store_received(received("e-1"))
    spool.store_received(received("e-9", b""), "left")  # another organisation's, left there
    assert spool.received_states(["e-1", "e-2", "e-9"]) == {"e-1": "new", "e-9": "left"}
    assert spool.note_retrieving(["e-2", "e-3", "e-9"]) == ["e-2", "e-3"]
    spool.forget_retrieving("e-2")  # taken by its owner meanwhile
    assert spool.note_retrieving([]) == ["e-3"]
    assert spool.held_received() == []  # not recorded lost


def test_a_note_left_for_a_stored_envelope_is_cleared(open_instance: OpenSpool) -> None:
    """Two instances on one database: one notes a MessageId just as the other stores it,
    and its note waits for the store's transaction and comes after that delete. The next
    note clears it; it is no retrieval begun for ever."""
    spool = open_instance()
    spool.store_received(received("e-1"))
    with spool._connection() as db:  # type: ignore[attr-defined]  # the race's outcome
        db.execute("INSERT INTO retrieving (id, noted_at) VALUES ('e-1', now())")
    assert spool.note_retrieving([]) == []
    with spool._connection() as db:  # type: ignore[attr-defined]
        assert db.execute("SELECT count(*) FROM retrieving").fetchone()["count"] == 0


def test_inbox_due_until_delivered(spool: Spool) -> None:
    for number in (1, 2):
        spool.store_received(received(f"e-{number}"))
        spool.conclude_received(
            f"e-{number}",
            "accepted",
            mail=(inbound(f"sdk-{number}", f"e-{number}"), b"mail"),
            sdk_message_id=f"sdk-{number}",
        )
    assert [m.sdk_message_id for m in spool.inbox_due()] == ["sdk-1", "sdk-2"]
    assert [m.sdk_message_id for m in spool.inbox_due(limit=1)] == ["sdk-1"]
    spool.update_inbound(
        "sdk-1", attempts=1, last_error="IMAP down", next_attempt_at=datetime.now(UTC) + LEASE
    )
    assert [m.sdk_message_id for m in spool.inbox_due()] == ["sdk-2"]
    spool.update_inbound("sdk-2", state=InboxState.DELIVERED)
    assert spool.inbox_due() == []
    assert [m.sdk_message_id for m in spool.inbox(InboxState.DELIVERED)] == ["sdk-2"]
    (waiting,) = spool.inbox(InboxState.DELIVERING)
    assert (waiting.attempts, waiting.last_error) == (1, "IMAP down")
    assert spool.queue_depths()[("inbox", "delivering")][0] == 1
    with pytest.raises(ValueError, match="cannot update"):
        spool.update_inbound("sdk-1", sender="x")


def test_only_deliveries_owing_a_report_are_listed(spool: Spool) -> None:
    spool.accept(ENVELOPE, RECIPIENTS, b"x")
    first, second = spool.deliveries()
    assert spool.owing_reports() == []
    report = OwedReport("failed", "5.0.0", "nej")
    spool.transition(first.id, set(State), notes={"report": report, "kvittens": "REJECTED"})
    assert [d.id for d in spool.owing_reports()] == [first.id]
    spool.transition(second.id, set(State), notes={"report": report})
    assert [d.id for d in spool.owing_reports(limit=1)] == [first.id]  # a few a round
    spool.transition(first.id, set(State), notes={"report": None})  # sent
    spool.transition(second.id, set(State), notes={"report": None, "delay_reported": True})
    assert spool.owing_reports() == []


def test_delivery_reports_held_for_the_smart_host(spool: Spool) -> None:
    spool.hold_report("anna@kommun.se", b"report 1")
    spool.hold_report("bo@kommun.se", b"report 2")
    held = spool.held_reports()
    assert [(r, d) for _, r, d in held] == [
        ("anna@kommun.se", b"report 1"),
        ("bo@kommun.se", b"report 2"),
    ]
    spool.drop_report(held[0][0])
    assert [d for _, _, d in spool.held_reports()] == [b"report 2"]


def test_partial_mail_is_discarded_at_start(spool: Spool) -> None:
    arriving = spool.incoming()
    arriving.write_bytes(b"half a mail")
    spool.discard_partial()
    assert not arriving.exists()


def test_unknown_ids_are_said_alike(spool: Spool) -> None:
    """Every back end answers the same for an id it does not have: KeyError from a
    lookup, False from a change that needs the record, nothing from a listing."""
    for lookup in (spool.body, spool.envelope, spool.inbound_mail):
        with pytest.raises(KeyError):
            lookup("no-such-id")
    with pytest.raises(KeyError):
        spool.delivery(424242)
    assert spool.by_sdk_message_id("no-such-id") is None
    assert spool.by_mail_message_id("no-such-id") is None
    assert spool.inbound_by_mail_message_id("no-such-id") is None
    assert spool.received_payload("no-such-id") == b""
    assert spool.received_states(["no-such-id"]) == {}
    assert not spool.conclude_received("no-such-id", "accepted")
    assert not spool.release_received("no-such-id")
    assert not spool.delete_received("no-such-id")
    assert spool.transition(424242, set(State), state=State.DELIVERED) is None


# --- retention --------------------------------------------------------------------------


def test_outbound_content_goes_once_every_delivery_settled(spool: Spool) -> None:
    """A mail's body stays while any recipient's delivery is on its way or owes its
    sender a report; then it goes, and its records stay."""
    message_id = spool.accept(ENVELOPE, RECIPIENTS, b"Subject: hemligt\r\n\r\nuppgifter\r\n")
    first, second = spool.deliveries()
    spool.update(first.id, state=State.DELIVERED)
    spool.update(second.id, state=State.SUBMITTED)
    assert not spool.purge(AT_ONCE)
    report = OwedReport("failed", "5.0.0", "nej")
    spool.transition(second.id, set(State), state=State.FAILED, notes={"report": report})
    assert not spool.purge(AT_ONCE)  # the report quotes its headers
    spool.transition(second.id, set(State), notes={"report": None})
    assert not spool.purge(NOTHING_YET)  # settled a moment ago
    assert spool.purge(AT_ONCE).outbound_mails == 1
    with pytest.raises(ContentRemoved):
        spool.body(message_id)
    assert spool.envelope(message_id) == ENVELOPE
    assert [d.state for d in spool.deliveries()] == [State.DELIVERED, State.FAILED]
    assert not spool.purge(AT_ONCE)  # nothing twice


def test_inbound_content_goes_once_in_its_mailbox(spool: Spool) -> None:
    spool.store_received(received("e-1", b"<xhe>krypterat</xhe>"))
    spool.store_received(received("e-2", b"<xhe>oklart</xhe>"))
    accept_e1(spool)
    spool.conclude_received("e-2", "quarantined", "cannot decrypt")
    purged = spool.purge(NOTHING_YET)
    assert (purged.received_envelopes, purged.inbound_mails, purged.held) == (0, 0, 0)
    assert spool.purge(AT_ONCE).received_envelopes == 1  # concluded: its mail is in the inbox
    assert spool.received_payload("e-1") == b""
    assert spool.inbound_mail("sdk-1") == b"From: b\r\n\r\nHej"  # still on its way
    spool.update_inbound("sdk-1", state=InboxState.DELIVERED)
    spool.update_kvittens("kv-1", state="delivered")
    purged = spool.purge(AT_ONCE)
    assert (purged.inbound_mails, purged.kvittens) == (1, 1)
    with pytest.raises(ContentRemoved):
        spool.inbound_mail("sdk-1")
    assert spool.inbox()[0].content_removed
    assert spool.inbound_by_mail_message_id("sdk-1@sdk.a.se") is not None  # replies thread
    assert spool.known_inbound("sdk-1")  # and a copy is still a duplicate
    # The quarantined one went at once too (held: 0): its record says so.
    assert spool.held_received() == [] and spool.received_payload("e-2") == b""
    assert spool.received_states(["e-2"]) == {"e-2": "deleted"}


def test_held_envelopes_and_refused_mail_stay_their_time(spool: Spool) -> None:
    spool.store_received(received("e-1", b"<xhe>oklart</xhe>"))
    spool.conclude_received("e-1", "quarantined", "cannot decrypt")
    spool.store_received(received("e-2"))
    spool.conclude_received(
        "e-2", "accepted", mail=(inbound("sdk-2", "e-2"), b"mail"), sdk_message_id="sdk-2"
    )
    spool.update_inbound("sdk-2", state=InboxState.FAILED, last_error="550 no such folder")
    assert spool.purge(NOTHING_YET).held == 0
    assert [r["id"] for r in spool.held_received()] == ["e-1"]
    assert spool.inbound_mail("sdk-2") == b"mail"
    assert spool.purge(dataclasses.replace(NOTHING_YET, held=timedelta(0))).held == 2
    assert spool.held_received() == [] and spool.received_payload("e-1") == b""
    assert spool.received_states(["e-1"]) == {"e-1": "deleted"}
    with pytest.raises(ContentRemoved):
        spool.inbound_mail("sdk-2")
    with pytest.raises(queue.QueueError, match="removed after the retention time"):
        queue.retry(spool, "sdk-2")


def test_reports_the_smart_host_never_took_are_dropped(spool: Spool) -> None:
    spool.hold_report("anna@kommun.se", b"report 1")
    assert spool.purge(NOTHING_YET).reports == 0
    assert spool.purge(AT_ONCE).reports == 1
    assert spool.held_reports() == []


def test_records_go_after_their_time(spool: Spool) -> None:
    spool.accept(ENVELOPE, RECIPIENTS, b"x")
    for delivery in spool.deliveries():
        spool.update(delivery.id, state=State.DELIVERED)
    spool.store_received(received("e-1"))
    accept_e1(spool)
    spool.update_inbound("sdk-1", state=InboxState.DELIVERED)
    spool.update_kvittens("kv-1", state="delivered")
    spool.purge(AT_ONCE)  # content first
    assert spool.purge(AT_ONCE).records == 0  # records are kept records_days
    assert spool.purge(dataclasses.replace(AT_ONCE, records=timedelta(0))).records == 6
    assert spool.deliveries() == [] and spool.inbox() == []
    assert spool.received_states(["e-1"]) == {} and not spool.known_inbound("sdk-1")
    assert spool.queue_depths() == {}


def test_records_of_envelopes_left_at_the_access_point_stay(spool: Spool) -> None:
    """Left, unreadable and deleted envelopes may still be listed by the access point:
    their records keep the bridge from retrieving them again. A lost one's goes."""
    spool.store_received(received("e-left", b""), "left")
    spool.store_received(received("e-junk", b"junk"), "unreadable")
    spool.lost_retrieving("e-lost", "no longer given out")
    everything = Retention(timedelta(0), timedelta(0), timedelta(0), timedelta(0))
    spool.purge(everything)
    spool.purge(everything)
    states = spool.received_states(["e-left", "e-junk", "e-lost"])
    assert states == {"e-left": "left", "e-junk": "deleted"}


def test_a_lost_envelope_recovered_keeps_its_content(spool: Spool) -> None:
    spool.lost_retrieving("e-1", "no longer given out")
    spool.purge(AT_ONCE)
    assert spool.import_received(received("e-1", b"<xhe>recovered</xhe>"))
    spool.purge(AT_ONCE)
    assert spool.received_payload("e-1") == b"<xhe>recovered</xhe>"  # new: to be judged
    spool.conclude_received("e-1", "rejected", "not for us")
    assert spool.purge(AT_ONCE).received_envelopes == 1
    assert spool.received_payload("e-1") == b""


# --- several instances on one PostgreSQL database -------------------------------------------


def test_two_instances_never_claim_the_same_delivery(open_instance: OpenSpool) -> None:
    a, b = open_instance("a"), open_instance("b")
    recipients = [RecipientRecord(f"r{i}@b.se.sdk.a.se", "0203:b.se", f"b.{i}") for i in range(50)]
    for number in range(4):
        a.accept(ENVELOPE, recipients, f"mail {number}".encode())
    claims: dict[str, list[int]] = {"a": [], "b": []}
    start = threading.Barrier(4)

    def claim(name: str, spool: Spool) -> None:
        start.wait(timeout=10)
        while batch := spool.claim_due(7):
            claims[name].extend(d.id for d in batch)

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(claim, name, spool) for name, spool in [("a", a), ("b", b)] * 2]:
            future.result(timeout=60)
    everything = claims["a"] + claims["b"]
    assert len(everything) == len(set(everything)) == 200
    assert claims["a"] and claims["b"]  # both took part


def test_a_dead_instances_lease_is_taken_over(open_instance: OpenSpool) -> None:
    a, b = open_instance("a"), open_instance("b")
    a.accept(ENVELOPE, RECIPIENTS, b"x")
    (first, second) = a.claim_due(10)
    assert b.claim_due(10) == []  # a holds both
    assert b.release_leases() == 0  # b's start-up leaves a's leases alone
    assert b.claim_due(10) == []
    a.close()
    restarted = open_instance("a")  # a's successor on the same host and directory
    assert restarted.release_leases() == 2
    dying = open_instance("b", lease=EXPIRED)
    assert [d.id for d in dying.claim_due(1)] == [first.id]  # b then dies too
    assert [d.id for d in restarted.claim_due(10)] == [first.id, second.id]


def test_an_expired_lease_of_one_instance_is_taken_over_by_the_other(
    open_instance: OpenSpool,
) -> None:
    a, b = open_instance("a", lease=timedelta(seconds=1)), open_instance("b")
    a.accept(ENVELOPE, RECIPIENTS[:1], b"x")
    (claimed,) = a.claim_due(1)
    assert b.claim_due(1) == []
    deadline = datetime.now(UTC) + timedelta(seconds=10)
    while not (taken := b.claim_due(1)) and datetime.now(UTC) < deadline:
        threading.Event().wait(0.1)
    assert [d.id for d in taken] == [claimed.id]
    assert b.transition(claimed.id, {State.QUEUED}, state=State.SUBMITTED) is not None
    assert a.transition(claimed.id, {State.QUEUED}, state=State.FAILED) is None  # too late


def test_two_instances_never_take_the_same_inbound_work(open_instance: OpenSpool) -> None:
    """Envelopes to judge, retrievals, kvittens to hand over, mail for the mailboxes and
    delivery reports: what one instance holds, the other does not get until the holder's
    successor releases it (or its lease runs out); the holder may take it again."""
    a, b = open_instance("a"), open_instance("b")
    for ebms_id in ("e-1", "e-2", "e-3", "k-1"):
        a.store_received(received(ebms_id, action=KVITTENS_ACTION if "k" in ebms_id else "msg"))
    assert [r.id for r in a.claim_received(2)] == ["e-1", "e-2"]
    assert [r.id for r in b.claim_received()] == ["e-3"]
    assert [r.id for r in a.claim_received()] == ["e-1", "e-2"]
    assert [r.id for r in b.claim_received(kvittens=True)] == ["k-1"]
    assert a.claim_received(kvittens=True) == []
    assert a.note_retrieving(["m-1", "m-2"]) == ["m-1", "m-2"]
    assert b.note_retrieving(["m-1", "m-2", "m-3"]) == ["m-3"]
    a.conclude_received(
        "e-1",
        "accepted",
        kvittens=(kvittens("kv-1", "e-1"), b"k"),
        mail=(inbound("sdk-1", "e-1"), b"mail"),
        sdk_message_id="sdk-1",
    )
    assert [k.id for k, _ in a.owed_kvittens()] == ["kv-1"] and b.owed_kvittens() == []
    assert [m.sdk_message_id for m in a.inbox_due()] == ["sdk-1"] and b.inbox_due() == []
    b.update_inbound("sdk-1", next_attempt_at=datetime.now(UTC))  # `queue retry` on b's host
    assert b.inbox_due() == []  # a is delivering it: only a ends its own lease
    a.accept(ENVELOPE, RECIPIENTS[:1], b"x")
    (delivery,) = a.deliveries()
    report = OwedReport("failed", "5.4.7", "expired")
    assert a.transition(delivery.id, {State.QUEUED}, notes={"report": report}) is not None
    assert b.owing_reports() == []  # a, which recorded it, sends it now
    assert [d.id for d in a.owing_reports()] == [delivery.id]
    a.transition(delivery.id, set(State), notes={"report": None})  # sent
    assert isinstance(a, PostgresSpool)
    with a._pool.connection() as db:
        held = db.execute("SELECT report_lease_owner FROM deliveries WHERE id = %s", (delivery.id,))
        assert held.fetchone() == {"report_lease_owner": None}
    a.transition(delivery.id, {State.QUEUED}, notes={"report": report})  # owed again
    a.hold_report("anna@kommun.se", b"report")
    assert len(a.held_reports()) == 1 and b.held_reports() == []
    a.close()
    assert open_instance("a").release_leases() > 0  # a's successor, after a crash
    assert [r.id for r in b.claim_received()] == ["e-2", "e-3"]
    assert b.note_retrieving([]) == ["m-1", "m-2", "m-3"]
    assert [k.id for k, _ in b.owed_kvittens()] == ["kv-1"]
    assert [m.sdk_message_id for m in b.inbox_due()] == ["sdk-1"]
    assert [d.id for d in b.owing_reports()] == [delivery.id]
    assert len(b.held_reports()) == 1


def test_a_size_bounded_claim_skips_what_another_instance_holds(
    open_instance: OpenSpool,
) -> None:
    a, b = open_instance("a"), open_instance("b")
    for number in (1, 2, 3):
        a.store_received(received(f"e-{number}", b"x" * 100))
    assert [r.id for r in a.claim_received(max_bytes=150)] == ["e-1"]
    assert [r.id for r in b.claim_received(max_bytes=250)] == ["e-2", "e-3"]
    assert [r.id for r in a.claim_received(max_bytes=1000)] == ["e-1"]


def test_instances_share_the_dedup_state(open_instance: OpenSpool) -> None:
    """The same mail resent to two instances at once is kept once; an envelope one instance
    stored or a message it judged is known to the other; a copy judged by both at once is
    accepted by exactly one."""
    a, b = open_instance("a"), open_instance("b")
    with ThreadPoolExecutor(2) as pool:
        ids = list(pool.map(lambda s: s.accept(ENVELOPE, RECIPIENTS, b"resent"), [a, b] * 3))
    assert len(set(ids)) == 1 and len(a.deliveries()) == 2
    assert a.store_received(received("e-1")) and not b.store_received(received("e-1"))
    assert b.store_received(received("e-2"))

    def conclude(spool_and_ebms_id: tuple[Spool, str]) -> bool:
        spool, ebms_id = spool_and_ebms_id
        try:
            spool.conclude_received(
                ebms_id,
                "accepted",
                mail=(inbound("sdk-1", ebms_id), b"mail"),
                sdk_message_id="sdk-1",
            )
        except DuplicateMessage:
            return False
        return True

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(conclude, [(a, "e-1"), (b, "e-2")]))
    assert sorted(outcomes) == [False, True]
    assert a.known_inbound("sdk-1") and b.known_inbound("sdk-1")
    assert len(b.inbox()) == 1


def test_the_registry_cache_is_shared_by_the_instances(open_instance: OpenSpool) -> None:
    """What one instance fetched from the registry, the other serves: one started while the
    address book cannot be reached still knows every organisation."""
    a, b = open_instance("a"), open_instance("b")
    cache_a, cache_b = a.registry_cache(), b.registry_cache()
    assert cache_a is not None and cache_b is not None
    assert cache_b.get("addressbook.json") is None
    cache_a.put("addressbook.json", b'{"entries": []}')
    data, stored_at = cache_b.get("addressbook.json") or (b"", None)
    assert data == b'{"entries": []}' and stored_at is not None
    assert abs(stored_at - datetime.now(UTC)) < timedelta(minutes=1)
    cache_b.put("addressbook.json", b"newer")
    newer = cache_a.get("addressbook.json")
    assert newer is not None and newer[0] == b"newer" and newer[1] >= stored_at
    a.close()
    with pytest.raises(OSError, match="registry cache"):  # the registry logs it and goes on
        cache_a.get("addressbook.json")


def test_a_sqlite_spool_leaves_the_registry_its_own_cache(tmp_path: Path) -> None:
    spool: Spool = SQLiteSpool(tmp_path)
    assert spool.registry_cache() is None
    spool.close()


# --- sdk-bridge db upgrade --------------------------------------------------------------------


def postgres_config(tmp_path: Path, pki: TestPKI, alice: Identity, bob: Identity, dsn: str) -> Path:
    path = write_config(tmp_path, pki, alice, bob)
    with path.open("a") as file:
        file.write(f'spool:\n  backend: postgres\n  directory: spool\n  dsn: "{dsn}"\n')
    return path


def test_db_upgrade(
    postgres_server: postgres.PostgreSQL,
    tmp_path: Path,
    pki: TestPKI,
    alice: Identity,
    bob: Identity,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A fresh database is refused until upgraded; a second upgrade does nothing; a schema
    older than the code needs is refused at start with what to do."""
    dsn = postgres_server.dsn(postgres_server.database())
    path = postgres_config(tmp_path, pki, alice, bob, dsn)
    loaded = config.load(path)
    with pytest.raises(postgres_spool.SchemaOutOfDate, match="schema version 0"):
        config.open_spool(loaded)
    with pytest.raises(SystemExit) as refused:
        cli.main(["queue", "list", "-c", str(path)])
    assert refused.value.code == 2
    assert "schema version 0, this sdk-bridge needs" in capsys.readouterr().err
    assert cli.main(["db", "upgrade", "-c", str(path)]) == 0
    assert capsys.readouterr().out == "".join(
        f"applied schema version {number}: {text}\n"
        for number, text, _ in postgres_spool.MIGRATIONS
    )
    assert cli.main(["db", "upgrade", "-c", str(path)]) == 0
    assert "up to date: nothing to do" in capsys.readouterr().out
    config.open_spool(loaded).close()
    assert cli.main(["queue", "list", "-c", str(path)]) == 0
    with psycopg.connect(dsn) as db:  # as if this code brought a migration not yet applied
        db.execute(
            "DELETE FROM schema_version WHERE version = %s", (postgres_spool.SCHEMA_VERSION,)
        )
    with pytest.raises(postgres_spool.SchemaOutOfDate, match="run `sdk-bridge db upgrade"):
        config.open_spool(loaded)


def test_db_upgrade_twice_at_once(postgres_server: postgres.PostgreSQL) -> None:
    """Two instances upgrading together: one applies the migrations, the other waits on the
    advisory lock and then finds nothing to do."""
    settings = {"dsn": postgres_server.dsn(postgres_server.database())}
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(postgres_spool.upgrade, [settings, settings]))
    assert sorted(len(applied) for applied in results) == [0, len(postgres_spool.MIGRATIONS)]
    with psycopg.connect(settings["dsn"]) as db:
        assert postgres_spool.schema_version(db) == postgres_spool.SCHEMA_VERSION


def test_migrations_are_numbered_in_order() -> None:
    assert [n for n, _, _ in postgres_spool.MIGRATIONS] == list(
        range(1, len(postgres_spool.MIGRATIONS) + 1)
    )


def test_db_upgrade_of_a_sqlite_spool_has_nothing_to_do(
    tmp_path: Path, pki: TestPKI, alice: Identity, bob: Identity, capsys: pytest.CaptureFixture
) -> None:
    path = write_config(tmp_path, pki, alice, bob)
    with path.open("a") as file:
        file.write("spool: spool\n")
    assert cli.main(["db", "upgrade", "-c", str(path)]) == 0
    assert "nothing to do" in capsys.readouterr().out
