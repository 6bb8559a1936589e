"""The outbound path end to end against the sandbox: mail in A's spool leaves through A's
access point as an SDK message that B's key opens, with every mapped field equal."""

import asyncio
import dataclasses
import email.policy
from dataclasses import astuple
from pathlib import Path

import pytest
from support.outbound import TO_B, access_point, new_mail, queue, received_by_b, run_worker
from support.registries import registry_for
from support.sandboxed import ORG_A, ORG_B

from sdk_bridge import config
from sdk_bridge.lab.sandbox.federation import Sandbox
from sdk_bridge.mapping.to_sdk import SUBJECT_PREFIX
from sdk_bridge.outbound.worker import OutboundSettings, Worker
from sdk_bridge.sdk import markdown
from sdk_bridge.spool import Envelope, SQLiteSpool, State

pytestmark = pytest.mark.slow  # running bridges or servers: `make test-fast` leaves it out


def test_mails_arrive_at_b_with_every_field(sandbox: Sandbox, tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path / "spool")
    swedish = new_mail("Ärende: åäö ÅÄÖ", "Hej Örjan,\nvälkommen till Malmö!\n", Message_ID="<s@a>")
    html = new_mail("HTML", None, Message_ID="<h@a>")
    html.set_content("<h1>Rubrik</h1><p>Text med <b>fet</b> stil.</p>", subtype="html")
    pdf_bytes = b"%PDF-1.7\n" + bytes(range(256)) * 20_000  # about 5 MB
    with_pdf = new_mail("Beslut", "Se bilaga.", Message_ID="<p@a>")
    with_pdf.add_attachment(pdf_bytes, maintype="application", subtype="pdf", filename="beslut.pdf")
    with_pdf.add_attachment(
        b"tabell;1\n", maintype="text", subtype="csv", filename="tabell åäö.csv"
    )
    secret = new_mail("[sekretess] Utredning", "Känsligt.", Message_ID="<x@a>")
    marked = new_mail("Utredning 2", "Känsligt.", Sensitivity="Private", Message_ID="<y@a>")
    long_subject = ("Mycket lång rubrik om ärendet " * 12).strip()
    long = new_mail(long_subject, "Text.", Message_ID="<l@a>")
    for mail in (swedish, html, with_pdf, secret, marked, long):
        queue(spool, mail)
    run_worker(sandbox, spool, tmp_path / "cache-a")
    assert [d.state for d in spool.deliveries()] == [State.SUBMITTED] * 6
    by_label = {m.label: m for m in received_by_b(sandbox, tmp_path / "cache-b")}

    message = by_label["Ärende: åäö ÅÄÖ"]
    (text,) = message.documents[0].texts  # B1.3.3 Markdown that renders as written
    assert markdown.plain(text) == "Hej Örjan,\nvälkommen till Malmö!"
    assert message.sender.organisation_id == ORG_A
    assert message.sender.attention.functional_address == "a.registrator"
    assert message.recipient.attention.functional_address == "b.registrator"
    assert "# Rubrik" in by_label["HTML"].documents[0].texts[0]
    assert "**fet**" in by_label["HTML"].documents[0].texts[0]
    files = {f.file_name: f for f in by_label["Beslut"].documents[0].files}
    assert (
        files["beslut.pdf"].content == pdf_bytes
        and files["beslut.pdf"].content_type == "application/pdf"
    )
    assert files["tabell åäö.csv"].content == b"tabell;1\n"
    assert by_label["Utredning"].confidential and by_label["Utredning 2"].confidential
    assert not message.confidential
    (cut,) = [m for label, m in by_label.items() if label and label.endswith("…")]
    assert len(cut.label) <= 256
    assert cut.documents[0].texts[0].startswith(f"{SUBJECT_PREFIX}{long_subject}")


def test_a_reply_keeps_the_conversation(sandbox: Sandbox, tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path / "spool")
    queue(spool, new_mail("Fråga", "Första.", Message_ID="<first@kommun-a.se>"))
    run_worker(sandbox, spool, tmp_path / "cache-a")
    reply = new_mail(
        "Sv: Fråga",
        "Följdfråga.",
        Message_ID="<second@kommun-a.se>",
        In_Reply_To="<first@kommun-a.se>",
        References="<first@kommun-a.se>",
    )
    queue(spool, reply)
    run_worker(sandbox, spool, tmp_path / "cache-a")
    first, second = sorted(
        received_by_b(sandbox, tmp_path / "cache-b"), key=lambda m: m.label != "Fråga"
    )
    assert second.ref_to_message_id == first.message_id
    assert second.conversation_id == first.conversation_id == first.message_id


def test_access_point_down_then_back(sandbox: Sandbox, tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path / "spool")
    queue(spool, new_mail("Väntar", "Snart."))
    sandbox.access_points["a"].refuse_submissions(how="unavailable")
    try:
        run_worker(sandbox, spool, tmp_path / "cache-a")
        (waiting,) = spool.deliveries()
        assert waiting.state is State.QUEUED and waiting.attempts == 1
        assert waiting.last_error is not None
        assert "503" in waiting.last_error or "unavailable" in waiting.last_error.lower()
    finally:
        sandbox.access_points["a"].clear_fault_switches()
    spool.update(waiting.id, next_attempt_at=waiting.created_at)  # due now
    run_worker(sandbox, spool, tmp_path / "cache-a")
    assert spool.delivery(waiting.id).state is State.SUBMITTED
    assert [m.label for m in received_by_b(sandbox, tmp_path / "cache-b")] == ["Väntar"]


def test_resubmission_after_a_crash_is_not_sent_twice(sandbox: Sandbox, tmp_path: Path) -> None:
    """The ebMS MessageId is the SDK messageId: the access point refuses the second copy."""
    spool = SQLiteSpool(tmp_path / "spool")
    queue(spool, new_mail("En gång", "Bara en."))
    run_worker(sandbox, spool, tmp_path / "cache-a")
    (delivery,) = spool.deliveries()
    spool.update(
        delivery.id, state=State.QUEUED, next_attempt_at=delivery.created_at
    )  # as if killed before the update
    run_worker(sandbox, spool, tmp_path / "cache-a")
    assert spool.delivery(delivery.id).state is State.SUBMITTED
    assert [m.message_id for m in received_by_b(sandbox, tmp_path / "cache-b")] == [
        delivery.sdk_message_id
    ]


def test_unknown_recipient_at_the_access_point_fails_for_good(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    spool = SQLiteSpool(tmp_path / "spool")
    failures = []
    record = dataclasses.replace(TO_B, organisation_id="0203:gone.sandbox.test")
    spool.accept(
        Envelope("anna@kommun-a.se", sender_address="a.registrator"),
        [record],
        new_mail("Till ingen").as_bytes(policy=email.policy.SMTP),
    )
    a = config.load(sandbox.config_path("a"))

    async def once() -> None:
        ap = access_point(sandbox, "a")
        with registry_for(sandbox, "a", tmp_path / "cache") as registry:

            def notify(delivery) -> None:
                failures.append(astuple(delivery.notes.report))

            worker = Worker(OutboundSettings(ORG_A), spool, registry, ap, a.signing, notify=notify)
            for delivery in spool.claim_due(10):
                await worker.deliver(delivery)
        await ap.close()

    asyncio.run(once())
    (delivery,) = spool.deliveries()
    assert delivery.state is State.FAILED
    ((event, status, reason),) = failures
    assert (event, status) == ("failed", "5.1.1") and "not registered" in reason


def test_not_serviced_at_the_receiving_access_point(sandbox: Sandbox, tmp_path: Path) -> None:
    """SMP points at B's access point, which does not serve the organisation: the access
    point ends SEND_FAILURE with NOT_SERVICED, and the sender is told (5.1.1)."""
    from sdk_bridge.lab.sandbox.smp import Registration
    from sdk_bridge.outbound.transport import follow

    stale = "0203:stale.sandbox.test"
    b = sandbox.smp.registrations[ORG_B]
    sandbox.smp.registrations[stale] = Registration(
        b.endpoint_url, b.access_point_cert, b.signing_certs, b.encryption_certs
    )
    spool = SQLiteSpool(tmp_path / "spool")
    record = dataclasses.replace(TO_B, organisation_id=stale)
    spool.accept(
        Envelope("anna@kommun-a.se", sender_address="a.registrator"),
        [record],
        new_mail("Fel mottagare").as_bytes(policy=email.policy.SMTP),
    )
    events = []

    def notify(delivery) -> None:
        events.append(astuple(delivery.notes.report))

    try:
        run_worker(sandbox, spool, tmp_path / "cache")
        assert spool.deliveries()[0].state is State.SUBMITTED

        async def check() -> None:
            ap = access_point(sandbox, "a")
            await follow(ap, spool, notify)
            await ap.close()

        asyncio.run(check())
    finally:
        del sandbox.smp.registrations[stale]
    assert spool.deliveries()[0].state is State.FAILED
    ((event, status, reason),) = events
    assert (event, status) == ("failed", "5.1.1") and "NOT_SERVICED" in reason


def test_acknowledged_submissions_are_noted(sandbox: Sandbox, tmp_path: Path) -> None:
    from sdk_bridge.outbound.transport import follow

    spool = SQLiteSpool(tmp_path / "spool")
    queue(spool, new_mail("Kvitto", "Text."))
    run_worker(sandbox, spool, tmp_path / "cache")

    async def check() -> None:
        ap = access_point(sandbox, "a")
        await follow(ap, spool, None)
        await ap.close()

    asyncio.run(check())
    (delivery,) = spool.deliveries()
    assert delivery.state is State.SUBMITTED and delivery.notes.transport == "ACKNOWLEDGED"
    received_by_b(sandbox, tmp_path / "cache-b")  # leave B's access point empty


def test_send_failure_is_sent_again_as_a_new_sdk_message(sandbox: Sandbox, tmp_path: Path) -> None:
    """The receiving access point did not answer: the access point keeps the MessageId as
    failed, so the bridge sends the message again under a new SDK messageId (after a fresh
    CertPub lookup); the old id still finds the delivery, for a late kvittens."""
    from datetime import timedelta

    from sdk_bridge.outbound.transport import follow

    spool = SQLiteSpool(tmp_path / "spool")
    queue(spool, new_mail("Igen", "Andra försöket."))
    sandbox.access_points["a"].fail_sends(1)
    try:
        run_worker(sandbox, spool, tmp_path / "cache")
        (first,) = spool.deliveries()

        async def check() -> None:
            ap = access_point(sandbox, "a")
            await follow(ap, spool, None, resend_after=timedelta(0))
            await ap.close()

        asyncio.run(check())
        (resent,) = spool.deliveries()
        assert resent.state is State.QUEUED and resent.sdk_message_id != first.sdk_message_id
        found = spool.by_sdk_message_id(first.sdk_message_id)
        assert found is not None and found.id == first.id
        run_worker(sandbox, spool, tmp_path / "cache")
        asyncio.run(check())
    finally:
        sandbox.access_points["a"].clear_fault_switches()
    (done,) = spool.deliveries()
    assert done.state is State.SUBMITTED and done.notes.transport == "ACKNOWLEDGED"
    assert done.notes.resends == 1
    (arrived,) = received_by_b(sandbox, tmp_path / "cache-b")
    assert arrived.message_id == done.sdk_message_id
