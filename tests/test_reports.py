"""Delivery reports: a smart host that is down does not lose them."""

import asyncio
import email.policy
from datetime import timedelta
from email import message_from_bytes
from pathlib import Path

from test_daemon import Sink
from test_outbound import TO_B, new_mail

from bridge.outbound.outcomes import Event
from bridge.outbound.reports import DsnReporter
from bridge.sandbox.sml import free_tcp_port
from bridge.spool import Envelope, SQLiteSpool


def test_a_report_waits_for_the_smart_host(tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path)
    spool.accept(
        Envelope("anna@kommun-a.se", sender_address="a.registrator"),
        [TO_B],
        new_mail("Rapport").as_bytes(policy=email.policy.SMTP),
    )
    (delivery,) = spool.deliveries()
    port = free_tcp_port()  # nothing listens yet
    reporter = DsnReporter(
        spool, ("127.0.0.1", port), "postmaster@a.se", "bridge.a.se", timedelta(days=5)
    )
    delivery = spool.transition(
        delivery.id,
        {delivery.state},
        notes={"report": {"event": Event.FAILED, "status": "5.1.1", "text": "no such address"}},
    )
    asyncio.run(reporter(delivery))
    assert "report" not in spool.delivery(delivery.id).notes  # sent, or held: not owed
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
