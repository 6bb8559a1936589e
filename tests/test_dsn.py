"""RFC 3464 DSNs: built, parsed back with the email package, and sent to an SMTP sink."""

import asyncio
import email.policy
import email.utils
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage, Message, MIMEPart
from email.parser import BytesParser
from pathlib import Path
from typing import cast

import pytest
from aiosmtpd.controller import Controller

from sdk_bridge.lab.sandbox.ports import free_tcp_port
from sdk_bridge.lab.testpki import make_pki
from sdk_bridge.outbound import dsn, smarthost
from sdk_bridge.outbound.dsn import Action, Report, should_notify
from sdk_bridge.spool import Envelope, RecipientRecord

MTA = "bridge.a.example.se"
POSTMASTER = f"MAILER-DAEMON@{MTA}"
SENDER = "anna.aberg@a.example.se"
RECIPIENT = "registrator@b.sdk.example.se"
ARRIVAL = datetime(2025, 3, 14, 9, 30, 5, tzinfo=UTC)
ATTEMPT = datetime(2025, 3, 14, 10, 2, 0, tzinfo=UTC)
SUBJECT = "Möte om räksmörgåsar på Östermalm"
BODY = "Hej!\n\nVälkommen på möte i morgon. Ta med årsredovisningen.\n"


def original(subject: str = SUBJECT, body: str = BODY, *, utf8: bool = False) -> bytes:
    mail = EmailMessage(policy=email.policy.SMTPUTF8 if utf8 else email.policy.SMTP)
    mail["From"] = f"Anna Åberg <{SENDER}>"
    mail["To"] = RECIPIENT
    mail["Subject"] = subject
    mail["Message-ID"] = "<orig-1@a.example.se>"
    mail.set_content(body, cte="8bit" if utf8 else None)
    return mail.as_bytes()


def envelope(**changes: object) -> Envelope:
    fields: dict[str, object] = {
        "mail_from": SENDER,
        "client": "10.0.0.5:40000",
        "helo": "exchange.a.example.se",
        "envid": "QQ314159",
        "ret": None,
    }
    fields.update(changes)
    return Envelope(**fields)  # type: ignore[arg-type]


def rejected(**changes: object) -> Report:
    fields: dict[str, object] = {
        "address": RECIPIENT,
        "orcpt": "rfc822;Registrator@B.sdk.example.se",
        "action": Action.FAILED,
        "status": "5.6.0",
        "diagnostic": "SDK-REJ-12 Bilagan går inte att öppna",
        "diagnostic_type": dsn.DIAGNOSTIC_SDK,
        "last_attempt": ATTEMPT,
    }
    fields.update(changes)
    return Report(**fields)  # type: ignore[arg-type]


def build(reports: list[Report], *, env: Envelope | None = None, mail: bytes | None = None):
    return dsn.build(
        envelope=env or envelope(),
        reports=reports,
        original=original() if mail is None else mail,
        reporting_mta=MTA,
        arrival=ARRIVAL,
        from_address=POSTMASTER,
    )


def parse(message: EmailMessage | None) -> EmailMessage:
    assert message is not None
    parsed = BytesParser(policy=email.policy.default).parsebytes(message.as_bytes())
    assert isinstance(parsed, EmailMessage)
    return parsed


def parts(parsed: EmailMessage) -> list[MIMEPart]:
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    payload = list(parsed.iter_parts())
    assert len(payload) == 3
    return payload


def header_blocks(part: Message) -> list[Message]:
    """The header blocks of a message/delivery-status part."""
    blocks = part.get_payload()
    assert isinstance(blocks, list)
    return cast(list[Message], blocks)


def status_blocks(parsed: EmailMessage) -> tuple[Message, list[Message]]:
    part = parts(parsed)[1]
    assert part.get_content_type() == "message/delivery-status"
    blocks = header_blocks(part)
    return blocks[0], blocks[1:]


def human(parsed: EmailMessage) -> str:
    part = parts(parsed)[0]
    assert part.get_content_type() == "text/plain"
    text = part.get_content()
    assert isinstance(text, str)
    return text


def when(value: str | None) -> datetime:
    assert value is not None
    return email.utils.parsedate_to_datetime(value)


# --- the whole DSN -----------------------------------------------------------------------


def test_failure_dsn_every_field() -> None:
    parsed = parse(build([rejected()]))

    assert parsed["From"] == POSTMASTER
    assert parsed["To"] == SENDER
    assert parsed["Subject"] == f"Olevererbart / Undeliverable: {SUBJECT}"
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert abs(when(parsed["Date"]) - datetime.now(UTC)) < timedelta(minutes=1)
    assert parsed["Message-ID"].endswith(f"@{MTA}>")

    text = human(parsed)
    for words in (
        "Kunde inte levereras till: " + RECIPIENT,
        "avvisade det (kvittens REJECTED)",
        "Mottagarens orsak: SDK-REJ-12 Bilagan går inte att öppna",
        "Vad du kan göra:",
        f"Ämne: {SUBJECT}",
        "Could not be delivered to: " + RECIPIENT,
        "The receiving organisation received the message but rejected it",
        "The recipient's reason: SDK-REJ-12 Bilagan går inte att öppna",
        "What you can do:",
        f"Subject: {SUBJECT}",
    ):
        assert words in text

    per_message, (block,) = status_blocks(parsed)
    assert per_message["Reporting-MTA"] == f"dns; {MTA}"
    assert per_message["Original-Envelope-Id"] == "QQ314159"
    assert per_message["Received-From-MTA"] == "dns; exchange.a.example.se"
    assert when(per_message["Arrival-Date"]) == ARRIVAL
    assert block["Original-Recipient"] == "rfc822; Registrator@B.sdk.example.se"
    assert block["Final-Recipient"] == f"rfc822; {RECIPIENT}"
    assert block["Action"] == "failed"
    assert block["Status"] == "5.6.0"
    assert block["Diagnostic-Code"] == "X-SDK; SDK-REJ-12 Bilagan går inte att öppna"
    assert when(block["Last-Attempt-Date"]) == ATTEMPT
    assert block["Will-Retry-Until"] is None

    # no RET: the original's headers only
    returned = parts(parsed)[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    headers = returned.get_payload(decode=True)
    assert isinstance(headers, bytes)
    assert b"Message-ID: <orig-1@a.example.se>" in headers
    assert b"rsredovisningen" not in headers


def test_ret_full_still_returns_the_headers_only() -> None:
    """Issue 16: a report leaves through the smart host; the mail B refused (a phishing
    link, or confidential text) does not travel back whole, whatever RET asks."""
    mail = original(utf8=True)
    built = build([rejected()], env=envelope(ret="FULL"), mail=mail)
    assert built is not None
    returned = parts(parse(built))[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"Message-ID: <orig-1@a.example.se>" in returned.get_payload(decode=True)
    assert BODY.split("\n")[0].encode() not in built.as_bytes()


def test_ret_hdrs_returns_headers_only() -> None:
    returned = parts(parse(build([rejected()], env=envelope(ret="HDRS"))))[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    text = returned.get_payload(decode=True)
    assert b"Subject:" in text and b"rsredovisningen" not in text


def test_without_envid_and_orcpt_the_fields_are_left_out() -> None:
    parsed = parse(build([rejected(orcpt=None)], env=envelope(envid=None, helo="")))
    per_message, (block,) = status_blocks(parsed)
    assert per_message["Original-Envelope-Id"] is None
    assert per_message["Received-From-MTA"] is None
    assert block["Original-Recipient"] is None
    assert block["Final-Recipient"] == f"rfc822; {RECIPIENT}"


def test_nothing_from_outside_can_add_header_lines() -> None:
    parsed = parse(
        build(
            [rejected(diagnostic="nope\r\nBcc: victim@example.com\r\n\r\nbody")],
            env=envelope(envid="id\r\nX-Evil: 1"),
        )
    )
    per_message, (block,) = status_blocks(parsed)
    assert per_message["X-Evil"] is None
    assert per_message["Original-Envelope-Id"] == "id+0D+0AX-Evil:+201"
    assert block["Bcc"] is None
    assert block["Diagnostic-Code"] == "X-SDK; nope Bcc: victim@example.com body"


def test_long_swedish_reasons_keep_their_spaces_and_the_diagnostic_type() -> None:
    reason = "SDK-REJ-7 Meddelandet saknar ärendenummer på första sidan; " * 3
    subject = "Ärende på gång: räksmörgåsar på Östermalm och ålfiske i Åre " * 2
    built = build([rejected(diagnostic=reason)], mail=original(subject=subject.strip()))
    raw = built.as_bytes() if built else b""
    assert b"\r\nDiagnostic-Code: X-SDK; =?utf-8?" in raw
    parsed = parse(built)
    assert parsed["Subject"] == f"Olevererbart / Undeliverable: {subject.strip()}"
    _, (block,) = status_blocks(parsed)
    assert block["Diagnostic-Code"] == f"X-SDK; {reason.strip()}"


# --- who gets one -------------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["", "<>", "  "])
def test_never_to_a_null_sender(sender: str) -> None:
    assert build([rejected()], env=envelope(mail_from=sender)) is None


def test_never_about_a_dsn() -> None:
    earlier = build([rejected()])
    assert earlier is not None
    assert build([rejected()], mail=earlier.as_bytes()) is None


@pytest.mark.parametrize("action", list(Action))
def test_notify_never_means_no_dsn(action: Action) -> None:
    status = {Action.FAILED: "5.1.1", Action.DELAYED: "4.4.1", Action.DELIVERED: "2.0.0"}
    report = Report(address=RECIPIENT, action=action, status=status[action], notify=("NEVER",))
    assert build([report]) is None


@pytest.mark.parametrize(
    ("notify", "failed", "delayed", "delivered"),
    [
        ((), True, True, False),  # RFC 3461's default: FAILURE and DELAY
        (("NEVER",), False, False, False),
        (("SUCCESS",), False, False, True),
        (("FAILURE",), True, False, False),
        (("DELAY",), False, True, False),
        (("SUCCESS", "FAILURE", "DELAY"), True, True, True),
        (("success,failure",), True, False, True),
    ],
)
def test_should_notify(
    notify: tuple[str, ...], failed: bool, delayed: bool, delivered: bool
) -> None:
    assert should_notify(notify, Action.FAILED) is failed
    assert should_notify(notify, Action.DELAYED) is delayed
    assert should_notify(notify, Action.DELIVERED) is delivered


def test_delivered_after_all_goes_to_whoever_was_told_of_failures() -> None:
    assert should_notify((), Action.DELIVERED, after_failure=True)
    assert should_notify(("FAILURE",), Action.DELIVERED, after_failure=True)
    assert should_notify(("SUCCESS",), Action.DELIVERED, after_failure=True)
    assert not should_notify(("DELAY",), Action.DELIVERED, after_failure=True)
    assert not should_notify(("NEVER",), Action.DELIVERED, after_failure=True)


def test_default_notify_reports_failure_and_delay_but_not_success() -> None:
    assert build([rejected(notify=())]) is not None
    until = ARRIVAL + timedelta(days=5)
    delay = Report(address=RECIPIENT, action=Action.DELAYED, status="4.4.1", will_retry_until=until)
    assert build([delay]) is not None
    assert build([Report(address=RECIPIENT, action=Action.DELIVERED, status="2.0.0")]) is None


def test_only_the_recipients_that_asked_are_reported() -> None:
    quiet = rejected(address="tyst@b.sdk.example.se", orcpt=None, notify=("NEVER",))
    parsed = parse(build([quiet, rejected()]))
    _, blocks = status_blocks(parsed)
    assert [b["Final-Recipient"] for b in blocks] == [f"rfc822; {RECIPIENT}"]
    assert "tyst@" not in human(parsed)


# --- the kinds of report -----------------------------------------------------------------


def test_success_only_with_notify_success() -> None:
    report = Report(
        address=RECIPIENT,
        action=Action.DELIVERED,
        status="2.0.0",
        notify=("SUCCESS",),
        last_attempt=ATTEMPT,
    )
    parsed = parse(build([report], env=envelope(ret="FULL")))
    assert parsed["Subject"] == f"Levererat / Delivered: {SUBJECT}"
    _, (block,) = status_blocks(parsed)
    assert block["Action"] == "delivered"
    assert block["Status"] == "2.0.0"
    text = human(parsed)
    assert f"Levererat till: {RECIPIENT}" in text and f"Delivered to: {RECIPIENT}" in text
    # RET=FULL is for failures: a success returns the headers only
    assert parts(parsed)[2].get_content_type() == "text/rfc822-headers"


def test_delay_says_until_when_it_keeps_trying() -> None:
    until = ARRIVAL + timedelta(days=5)
    report = Report(
        address=RECIPIENT,
        action=Action.DELAYED,
        status="4.4.1",
        diagnostic="No kvittens from the receiving organisation yet",
        last_attempt=ATTEMPT,
        will_retry_until=until,
    )
    parsed = parse(build([report], env=envelope(ret="FULL")))
    assert parsed["Subject"] == f"Försenat / Delayed: {SUBJECT}"
    _, (block,) = status_blocks(parsed)
    assert block["Action"] == "delayed"
    assert block["Status"] == "4.4.1"
    assert block["Diagnostic-Code"] == "smtp; No kvittens from the receiving organisation yet"
    assert when(block["Will-Retry-Until"]) == until
    text = human(parsed)
    assert f"Bryggan fortsätter att försöka till {dsn.human_time(until)}" in text
    assert f"The bridge will keep trying until {dsn.human_time(until)}" in text
    assert parts(parsed)[2].get_content_type() == "text/rfc822-headers"


def test_delivered_after_all_follow_up() -> None:
    report = Report(
        address=RECIPIENT,
        orcpt="rfc822;Registrator@B.sdk.example.se",
        action=Action.DELIVERED,
        status="2.0.0",
        diagnostic="ACCEPTED",
        diagnostic_type=dsn.DIAGNOSTIC_SDK,
        last_attempt=ATTEMPT,
        after_failure=True,
    )
    parsed = parse(build([report]))  # default NOTIFY: the sender was told of the failure
    assert parsed["Subject"] == f"Levererat trots allt / Delivered after all: {SUBJECT}"
    _, (block,) = status_blocks(parsed)
    assert block["Action"] == "delivered"
    assert block["Status"] == "2.0.0"
    assert block["Original-Recipient"] == "rfc822; Registrator@B.sdk.example.se"
    text = human(parsed)
    assert f"Levererat trots allt till: {RECIPIENT}" in text
    assert "Bortse från det tidigare beskedet" in text
    assert f"Delivered after all to: {RECIPIENT}" in text
    assert "Please disregard the earlier notice" in text


def test_unknown_recipient_wording() -> None:
    report = Report(
        address=RECIPIENT,
        action=Action.FAILED,
        status="5.1.1",
        diagnostic="EBMS:0004 recipient not serviced",
        last_attempt=ATTEMPT,
        remote_mta="ap.a.example.se",
    )
    parsed = parse(build([report]))
    _, (block,) = status_blocks(parsed)
    assert block["Diagnostic-Code"] == "smtp; EBMS:0004 recipient not serviced"
    assert block["Remote-MTA"] == "dns; ap.a.example.se"
    text = human(parsed)
    assert "Adressen finns inte" in text and "Kontrollera att adressen är rätt" in text
    assert "The address does not exist" in text and "Check that the address is right" in text


def test_expired_wording() -> None:
    report = rejected(status="4.4.7", diagnostic="gave up after 40 attempts: timeout")
    parsed = parse(build([report], env=envelope(ret="FULL")))
    assert parsed["Subject"].startswith("Olevererbart / Undeliverable")
    _, (block,) = status_blocks(parsed)
    assert (block["Action"], block["Status"]) == ("failed", "4.4.7")
    text = human(parsed)
    assert f"försökt leverera sedan {dsn.human_time(ARRIVAL)}" in text
    assert "has given up" in text
    assert parts(parsed)[2].get_content_type() == "text/rfc822-headers"  # issue 16


def test_report_checks_status_against_action() -> None:
    with pytest.raises(ValueError):
        Report(address=RECIPIENT, action=Action.DELIVERED, status="5.0.0")
    with pytest.raises(ValueError):
        Report(address=RECIPIENT, action=Action.DELAYED, status="5.4.7")
    with pytest.raises(ValueError):
        Report(address=RECIPIENT, action=Action.FAILED, status="550")
    with pytest.raises(ValueError):
        Report(address=RECIPIENT, action=Action.FAILED, status="5.1.1", after_failure=True)


def test_report_for_a_spooled_recipient() -> None:
    record = RecipientRecord(
        address=RECIPIENT,
        organisation_id="0203:b.example.se",
        functional_address="registrator",
        orcpt="rfc822;x@y.se",
        notify=("FAILURE",),
    )
    report = Report.for_recipient(record, Action.FAILED, "5.1.1", diagnostic="unknown")
    assert (report.address, report.orcpt, report.notify) == (
        RECIPIENT,
        "rfc822;x@y.se",
        ("FAILURE",),
    )


# --- sending -------------------------------------------------------------------------------


class Sink:
    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.received: list[tuple[str, list[str], bytes, list[str]]] = []
        self.encrypted: list[bool] = []

    async def handle_RCPT(self, server, session, envelope, address, options):
        if self.refuse:
            return self.refuse
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.encrypted.append(session.ssl is not None)
        self.received.append(
            (
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                list(envelope.mail_options),
            )
        )
        return "250 OK"


@pytest.fixture
def sink() -> Iterator[tuple[Sink, int]]:
    handler = Sink()
    controller = Controller(handler, hostname="127.0.0.1", port=free_tcp_port())
    controller.start()
    try:
        yield handler, controller.port
    finally:
        controller.stop()


def test_send_hands_the_dsn_to_the_smart_host_with_a_null_sender(sink: tuple[Sink, int]) -> None:
    handler, port = sink
    message = build([rejected()], env=envelope(ret="FULL"), mail=original(utf8=True))
    assert message is not None
    asyncio.run(smarthost.send(message, smart_host="127.0.0.1", port=port, timeout=10))

    ((mail_from, rcpt_tos, content, options),) = handler.received
    assert mail_from == "<>"  # MAIL FROM:<> (aiosmtpd reports the null path so)
    assert rcpt_tos == [SENDER]
    assert "BODY=8BITMIME" in options
    parsed = BytesParser(policy=email.policy.default).parsebytes(content)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed["Subject"] == f"Olevererbart / Undeliverable: {SUBJECT}"
    _, status, returned = parsed.iter_parts()
    assert status.get_content_type() == "message/delivery-status"
    assert header_blocks(status)[1]["Action"] == "failed"
    assert returned.get_content_type() == "text/rfc822-headers"


def test_send_failures_raise_for_the_caller_to_retry() -> None:
    message = build([rejected()])
    assert message is not None
    handler = Sink(refuse="550 5.1.1 no such user")
    controller = Controller(handler, hostname="127.0.0.1", port=free_tcp_port())
    controller.start()
    try:
        with pytest.raises(smarthost.SendError, match="550") as refused:
            asyncio.run(smarthost.send(message, smart_host="127.0.0.1", port=controller.port))
        assert refused.value.permanent
    finally:
        controller.stop()

    with pytest.raises(smarthost.SendError, match="unreachable") as down:
        asyncio.run(
            smarthost.send(message, smart_host="127.0.0.1", port=free_tcp_port(), timeout=5)
        )
    assert not down.value.permanent


def test_reports_go_over_starttls_and_only_loopback_may_do_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = make_pki(tmp_path, key_size=2048)
    identity = pki.issue("smarthost", key_usage="sign", hosts=["127.0.0.1"])
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(identity.cert_pem, identity.key_pem)
    client_tls = ssl.create_default_context(cafile=str(pki.chain_pem))
    handler = Sink()
    controller = Controller(
        handler, hostname="127.0.0.1", port=free_tcp_port(), tls_context=server_tls
    )
    controller.start()
    try:
        message = build([rejected()])
        assert message is not None
        asyncio.run(
            smarthost.send(message, smart_host="127.0.0.1", port=controller.port, tls=client_tls)
        )
        assert handler.encrypted == [True]
        with pytest.raises(smarthost.SendError, match="certificate verify failed"):  # not its CA
            asyncio.run(smarthost.send(message, smart_host="127.0.0.1", port=controller.port))
    finally:
        controller.stop()
    plain = Controller(Sink(), hostname="127.0.0.1", port=free_tcp_port())
    plain.start()
    try:
        monkeypatch.setattr(smarthost, "is_loopback", lambda host: False)  # as if elsewhere
        with pytest.raises(smarthost.SendError, match="does not offer STARTTLS") as refused:
            asyncio.run(smarthost.send(message, smart_host="127.0.0.1", port=plain.port))
        assert not refused.value.permanent  # held, and sent once the smart host is set up
    finally:
        plain.stop()


def test_a_smart_host_that_never_answers_costs_one_timeout() -> None:
    """It takes the connection and says nothing: a temporary failure after `timeout`."""
    message = build([rejected()])
    assert message is not None
    with socket.create_server(("127.0.0.1", 0)) as silent:
        started = time.monotonic()
        with pytest.raises(smarthost.SendError, match="timed out") as hung:
            asyncio.run(
                smarthost.send(
                    message, smart_host="127.0.0.1", port=silent.getsockname()[1], timeout=0.5
                )
            )
    assert not hung.value.permanent and time.monotonic() - started < 5


def test_lines_that_begin_with_a_dot_arrive_as_written(sink: tuple[Sink, int]) -> None:
    handler, port = sink
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"], message["To"], message["Subject"] = "postmaster@a.se", SENDER, "Punkter"
    message.set_content(".\n..två\n.tre\nslut utan radslut", cte="8bit")
    asyncio.run(smarthost.send(message, smart_host="127.0.0.1", port=port, timeout=10))
    ((_, _, content, _),) = handler.received
    body = BytesParser(policy=email.policy.default).parsebytes(content).get_content()
    assert body.replace("\r\n", "\n") == ".\n..två\n.tre\nslut utan radslut\n"
