"""Delivery reports: a smart host that is down does not lose them."""

import asyncio
import dataclasses
import email.policy
from datetime import timedelta
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path

import pytest
from support.daemon import Sink
from support.outbound import TO_B, new_mail

from sdk_bridge.lab.sandbox.ports import free_tcp_port
from sdk_bridge.outbound import smarthost
from sdk_bridge.outbound.outcomes import Event, settle
from sdk_bridge.outbound.reports import DsnReporter, inside, sender_domains
from sdk_bridge.spool import (
    Delivery,
    Envelope,
    OwedReport,
    RecipientRecord,
    Retention,
    SQLiteSpool,
    State,
)


def reporter_for(spool: SQLiteSpool, port: int) -> DsnReporter:
    """A's reporter, its smart host on loopback at `port`, its senders in kommun-a.se."""
    return DsnReporter(
        spool,
        ("127.0.0.1", port),
        "postmaster@a.se",
        "bridge.a.se",
        timedelta(days=5),
        report_domains=("kommun-a.se",),
    )


def anna_sends(spool: SQLiteSpool, recipient: RecipientRecord, subject: str) -> None:
    """A mail from anna@kommun-a.se, inside the organisation, accepted for `recipient`."""
    spool.accept(
        Envelope("anna@kommun-a.se", sender_address="a.registrator"),
        [recipient],
        new_mail(subject).as_bytes(policy=email.policy.SMTP),
    )


def test_a_report_waits_for_the_smart_host(tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path)
    anna_sends(spool, TO_B, "Rapport")
    (queued,) = spool.deliveries()
    port = free_tcp_port()  # nothing listens yet
    reporter = reporter_for(spool, port)
    delivery = spool.transition(
        queued.id,
        {queued.state},
        notes={"report": OwedReport(Event.FAILED, "5.1.1", "no such address")},
    )
    assert delivery is not None
    asyncio.run(reporter.report(delivery))
    assert spool.delivery(delivery.id).notes.report is None  # sent, or held: not owed
    ((_, recipient, _),) = spool.held_reports()
    assert recipient == "anna@kommun-a.se"
    sink = Sink()
    try:
        reporter.smart_host = ("127.0.0.1", sink.port)
        asyncio.run(reporter.resend_held())
    finally:
        sink.stop()
    assert spool.held_reports() == []
    ((mail_from, recipients, content),) = sink.messages
    assert mail_from in ("", "<>") and recipients == ["anna@kommun-a.se"]
    assert message_from_bytes(content).get_content_type() == "multipart/report"


def test_a_report_owed_while_another_is_sent_is_not_lost(tmp_path: Path) -> None:
    """The delay report is on its way when the worker fails the delivery: the failure
    report stays owed (the delay report's clearing leaves it) and goes out next round."""
    spool = SQLiteSpool(tmp_path)
    recipient = dataclasses.replace(TO_B, notify=("DELAY", "FAILURE"))
    anna_sends(spool, recipient, "Rapport")
    (delivery,) = spool.deliveries()
    reporter = reporter_for(spool, 1)
    sent: list[str] = []
    woken: list[int] = []

    def owed(delivery: Delivery) -> None:
        woken.append(delivery.id)

    async def send(message: EmailMessage, delivery: Delivery) -> None:
        sent.append(str(message["Subject"]))
        if len(sent) == 1:  # meanwhile the worker gives up on it
            await settle(
                spool,
                owed,
                delivery,
                {State.QUEUED},
                Event.FAILED,
                "5.4.7",
                "expired",
                state=State.FAILED,
            )

    reporter._send = send  # type: ignore[method-assign]
    asyncio.run(settle(spool, owed, delivery, {State.QUEUED}, Event.DELAYED, "4.4.1", "waiting"))
    assert sent == [] and woken == [delivery.id]  # settling waits for no smart host
    assert asyncio.run(reporter.round()) is True
    assert len(sent) == 1 and woken == [delivery.id] * 2
    report = spool.delivery(delivery.id).notes.report
    assert report is not None and report.event == Event.FAILED
    asyncio.run(reporter.round())
    assert len(sent) == 2 and sent[0] != sent[1]
    assert spool.delivery(delivery.id).notes.report is None
    assert asyncio.run(reporter.round()) is False


def test_held_reports_wait_after_the_first_the_smart_host_does_not_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A smart host that hangs costs a round one timeout, not one per held report."""
    spool = SQLiteSpool(tmp_path)
    report = new_mail("Rapport").as_bytes(policy=email.policy.SMTP)
    for _ in range(3):
        spool.hold_report("anna@kommun-a.se", report)
    reporter = reporter_for(spool, 1)
    tried: list[str] = []

    async def down(message: EmailMessage, **_: object) -> None:
        tried.append(str(message["Subject"]))
        raise smarthost.SendError("timed out", permanent=False)

    monkeypatch.setattr(smarthost, "send", down)
    asyncio.run(reporter.resend_held())
    assert len(tried) == 1 and len(spool.held_reports()) == 3


def test_reports_go_only_to_senders_inside_the_organisation(tmp_path: Path) -> None:
    """Issue 16: a report carries what the other side said about a mail; it goes only to
    the organisation's own senders, never out through the smart host to anyone else."""
    assert sender_domains(("*@kommun-a.se", "*@*.kommun-a.se", "reg@soc.a.se", "*@*")) == (
        "kommun-a.se",
        "soc.a.se",
    )
    assert inside("anna@kommun-a.se", ("kommun-a.se",))
    assert inside("<bo@skola.kommun-a.se>", ("kommun-a.se",))
    assert not inside("mallory@evilkommun-a.se", ("kommun-a.se",))
    spool = SQLiteSpool(tmp_path)
    spool.accept(
        Envelope("mallory@evil.example", sender_address="a.registrator"),
        [TO_B],
        new_mail("Rapport").as_bytes(policy=email.policy.SMTP),
    )
    (queued,) = spool.deliveries()
    sink = Sink()
    try:
        reporter = reporter_for(spool, sink.port)
        delivery = spool.transition(
            queued.id,
            {queued.state},
            notes={"report": OwedReport(Event.FAILED, "5.1.1", "no")},
        )
        assert delivery is not None
        asyncio.run(reporter.report(delivery))
    finally:
        sink.stop()
    assert sink.messages == [] and spool.held_reports() == []
    assert spool.delivery(delivery.id).notes.report is None


def test_delivered_after_all_once_its_content_is_gone(tmp_path: Path) -> None:
    """A failed mail's content goes once its failure report is sent; should its kvittens
    ACCEPTED come after all, the sender still hears so, without the original's headers."""
    spool = SQLiteSpool(tmp_path)
    recipient = dataclasses.replace(TO_B, notify=("SUCCESS", "FAILURE"))
    anna_sends(spool, recipient, "Sent omsider")
    (delivery,) = spool.deliveries()
    spool.update(delivery.id, state=State.FAILED)
    assert spool.purge(Retention()).outbound_mails == 1
    sink = Sink()
    try:
        reporter = reporter_for(spool, sink.port)
        owed = OwedReport(Event.DELIVERED_AFTER_ALL, "2.0.0", "ACCEPTED")
        delivered = spool.transition(
            delivery.id, {State.FAILED}, state=State.DELIVERED, notes={"report": owed}
        )
        assert delivered is not None
        asyncio.run(reporter.report(delivered))
    finally:
        sink.stop()
    ((_, recipients, content),) = sink.messages
    report = message_from_bytes(content)
    assert recipients == ["anna@kommun-a.se"] and report.get_content_type() == "multipart/report"
    assert b"Sent omsider" not in content
