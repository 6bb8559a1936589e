"""Kvittens intake against the sandbox: B answers with kvittens made with its own sandbox
keys; A retrieves them from its access point, verifies them and settles the deliveries."""

import asyncio
import dataclasses
import uuid
from dataclasses import astuple
from datetime import timedelta
from pathlib import Path

import pytest
from support.kvittens import REJECTED, send_kvittens
from support.outbound import TO_B, access_point, new_mail, queue, run_worker
from support.registries import registry_for
from support.sandboxed import ORG_A, ORG_B

from sdk_bridge import config
from sdk_bridge.lab.sandbox.federation import Sandbox
from sdk_bridge.outbound.receipts import Event, Receipts
from sdk_bridge.retrieval.intake import Intake
from sdk_bridge.sdk.keys import KeyPair
from sdk_bridge.sdk.names import KVITTENS_ACTION
from sdk_bridge.sdk.verdict import ACCEPTED, Detail, Outcome, Reason, Verdict
from sdk_bridge.spool import Received, SQLiteSpool, State

pytestmark = pytest.mark.slow  # running bridges or servers: `make test-fast` leaves it out


EVERY_REPORT = ("SUCCESS", "FAILURE", "DELAY")


class Harness:
    def __init__(self, sandbox: Sandbox, tmp_path: Path) -> None:
        self.sandbox = sandbox
        self.tmp_path = tmp_path
        self.spool = SQLiteSpool(tmp_path / "spool")
        self.events: list[tuple[str, Event, str, str]] = []

    def sent(self, subject: str = "Ärende", notify: tuple[str, ...] = EVERY_REPORT) -> str:
        """One message from A to B, submitted; its SDK messageId. Its NOTIFY asks for
        every report, so that `events` shows each outcome."""
        queue(self.spool, new_mail(subject, "Text."), dataclasses.replace(TO_B, notify=notify))
        run_worker(self.sandbox, self.spool, self.tmp_path / "cache-a")
        delivery = self.spool.deliveries()[-1]
        assert delivery.state is State.SUBMITTED
        asyncio.run(self._drain_b())
        return delivery.sdk_message_id

    async def _drain_b(self) -> None:  # B's bridge would retrieve its messages
        ap = access_point(self.sandbox, "b")
        for message_id in await ap.pending():
            await ap.retrieve(message_id)
            await ap.acknowledge(message_id)
        await ap.close()

    def settle(self) -> None:
        """A's intake: retrieve from the access point, then process the kvittens."""
        a = config.load(self.sandbox.config_path("a"))

        def notify(delivery) -> None:
            self.events.append((delivery.sdk_message_id, *astuple(delivery.notes.report)))

        async def run() -> None:
            ap = access_point(self.sandbox, "a")
            await Intake(ap, self.spool, [ORG_A]).fetch()
            await ap.close()
            with registry_for(self.sandbox, "a", self.tmp_path / "cache-a") as registry:
                receipts = Receipts(ORG_A, self.spool, registry, a.trust_anchors, notify)
                await receipts.process_pending()

        asyncio.run(run())

    def state(self, sdk_message_id: str) -> State:
        delivery = self.spool.by_sdk_message_id(sdk_message_id)
        assert delivery is not None
        return delivery.state


@pytest.fixture
def harness(sandbox: Sandbox, tmp_path: Path) -> Harness:
    return Harness(sandbox, tmp_path)


def test_accepted_delivers(harness: Harness) -> None:
    sent = harness.sent()
    send_kvittens(harness.sandbox, ACCEPTED, sent)
    harness.settle()
    assert harness.state(sent) is State.DELIVERED
    assert harness.events == [
        (sent, Event.DELIVERED, "2.0.0", "ACCEPTED by the receiving organisation")
    ]
    assert harness.spool.received("new") == [] and len(harness.spool.received("done")) == 1


def test_a_success_nobody_asked_to_hear_of_owes_no_report(harness: Harness) -> None:
    """Without NOTIFY=SUCCESS (most mail), a delivery settles without a report owed: the
    report stage has nothing to build, send or clear."""
    sent = harness.sent(notify=())
    send_kvittens(harness.sandbox, ACCEPTED, sent)
    harness.settle()
    delivery = harness.spool.by_sdk_message_id(sent)
    assert delivery is not None and delivery.state is State.DELIVERED
    assert delivery.notes.report is None and harness.spool.owing_reports() == []


def test_rejected_fails_with_the_reason(harness: Harness) -> None:
    sent = harness.sent()
    send_kvittens(harness.sandbox, REJECTED, sent)
    harness.settle()
    assert harness.state(sent) is State.FAILED
    ((_, event, status, text),) = harness.events
    assert (event, status) == (Event.REJECTED, "5.6.0")
    assert text == "REJECTED BV not-supported: file type not accepted"


def test_rejected_never_overrides_accepted(harness: Harness) -> None:
    sent = harness.sent()
    send_kvittens(harness.sandbox, ACCEPTED, sent)
    duplicate = Verdict(
        Outcome.REJECTED, Reason.BV, Detail.DUPLICATE, "messageId has been received before"
    )
    send_kvittens(harness.sandbox, duplicate, sent)
    harness.settle()
    assert harness.state(sent) is State.DELIVERED
    assert [e[1] for e in harness.events] == [Event.DELIVERED]


def test_accepted_after_a_failure_report(harness: Harness) -> None:
    sent = harness.sent()
    delivery = harness.spool.by_sdk_message_id(sent)
    assert delivery is not None
    harness.spool.transition(
        delivery.id, set(State), state=State.FAILED, notes={"failure_reported": True}
    )
    send_kvittens(harness.sandbox, ACCEPTED, sent)
    harness.settle()
    assert harness.state(sent) is State.DELIVERED
    assert [e[1] for e in harness.events] == [Event.DELIVERED_AFTER_ALL]


def test_forged_and_stray_kvittens_are_ignored(harness: Harness) -> None:
    sent = harness.sent()
    o2o = harness.sandbox.o2o_pki
    mallory = o2o.issued("mallory") or o2o.issue("mallory", key_usage="sign")
    send_kvittens(harness.sandbox, ACCEPTED, sent, signer=KeyPair(mallory.key, mallory.cert))
    send_kvittens(harness.sandbox, ACCEPTED, str(uuid.uuid4()))  # names nothing we sent
    send_kvittens(harness.sandbox, ACCEPTED, sent, handling_service_id="a.registrator")  # ours
    harness.settle()
    assert harness.state(sent) is State.SUBMITTED
    assert harness.events == []
    ignored = harness.spool.received("ignored")
    assert len(ignored) == 3


def test_no_kvittens_in_time(harness: Harness) -> None:
    sent = harness.sent()
    a = config.load(harness.sandbox.config_path("a"))

    async def sweep(delay: timedelta, lifetime: timedelta) -> None:
        def notify(delivery) -> None:
            harness.events.append((delivery.sdk_message_id, *astuple(delivery.notes.report)))

        with registry_for(harness.sandbox, "a", harness.tmp_path / "cache") as registry:
            await Receipts(ORG_A, harness.spool, registry, a.trust_anchors, notify).sweep(
                delay, lifetime
            )

    asyncio.run(sweep(timedelta(0), timedelta(days=5)))
    asyncio.run(sweep(timedelta(0), timedelta(days=5)))  # one delay report, not two
    assert [(e[1], e[2]) for e in harness.events] == [(Event.DELAYED, "4.4.1")]
    asyncio.run(sweep(timedelta(0), timedelta(0)))
    assert harness.state(sent) is State.FAILED
    assert harness.events[-1][1:3] == (Event.FAILED, "5.4.7")


def test_a_retrieved_envelope_is_kept_once(tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path)
    item = Received("id-1@ap", KVITTENS_ACTION, ORG_B, ORG_A, None, b"<XHE/>")
    assert spool.store_received(item) is True
    assert spool.store_received(item) is False
    assert spool.received() == [item]


def test_a_queued_delivery_gets_one_delay_report(harness: Harness) -> None:
    queue(harness.spool, new_mail("Köad", "Text."))
    (delivery,) = harness.spool.deliveries()
    harness.spool.update(delivery.id, last_error="access point unavailable")
    a = config.load(harness.sandbox.config_path("a"))

    async def sweep() -> None:
        def notify(delivery) -> None:
            harness.events.append((delivery.sdk_message_id, *astuple(delivery.notes.report)))

        with registry_for(harness.sandbox, "a", harness.tmp_path / "cache") as registry:
            receipts = Receipts(ORG_A, harness.spool, registry, a.trust_anchors, notify)
            await receipts.sweep(timedelta(0), timedelta(days=5))

    asyncio.run(sweep())
    asyncio.run(sweep())
    ((_, event, status, text),) = harness.events
    assert (event, status) == (Event.DELAYED, "4.4.1") and "access point unavailable" in text
    assert harness.spool.deliveries()[0].state is State.QUEUED
