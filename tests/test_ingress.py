"""SMTP ingress against the sandbox's registry: what is refused during the dialogue, with
which reply, and what is stored before 250. Real SMTP clients (smtplib) over loopback."""

import asyncio
import base64
import dataclasses
import email.policy
import errno
import os
import random
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP
from support.clamd import EICAR
from support.registries import registry_for
from support.sandboxed import ORG_A, ORG_B, TO_B

from sdk_bridge.ingress import arriving
from sdk_bridge.ingress.smtp import (
    JUNK_ALLOWANCE,
    BridgeSMTP,
    IngressHandler,
    IngressSettings,
    SenderRule,
    networks,
    serve,
    tls_context,
)
from sdk_bridge.lab.sandbox.federation import Sandbox
from sdk_bridge.lab.sandbox.web import Faults
from sdk_bridge.mapping.premapped import Premapped
from sdk_bridge.plugin import Scanner, load
from sdk_bridge.registry.client import Registry
from sdk_bridge.runtime import counters
from sdk_bridge.spool import SpoolFull, SQLiteSpool, State

FROM = "anna@kommun-a.se"


class Running:
    """An ingress server on its own event loop in a thread, as the daemon runs it."""

    def __init__(self, handler: IngressHandler, tls: ssl.SSLContext) -> None:
        self.handler = handler
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(
            serve(handler, [("127.0.0.1", 0)], [("127.0.0.1", 0)], tls), self.loop
        )
        self.servers = future.result(10)
        self.port = self.servers[0].sockets[0].getsockname()[1]
        self.tls_port = self.servers[1].sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            for server in self.servers:
                server.close()
                await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def tls(sandbox: Sandbox) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    pki = sandbox.tls_pki
    identity = pki.issued("smtp") or pki.issue("smtp", key_usage="sign", hosts=["127.0.0.1"])
    client = ssl.create_default_context(cafile=str(pki.chain_pem))
    return tls_context(str(identity.cert_pem), str(identity.key_pem)), client


SETTINGS = IngressSettings(
    organisation_id=ORG_A,
    hostname="bridge.kommun-a.se",
    allowed_networks=networks(["127.0.0.1/32"]),
    senders=(
        SenderRule("a.registrator", ("*@kommun-a.se",), ("exchange",)),
        SenderRule("a.socialtjänsten", ("*@soc.kommun-a.se",), ()),
    ),
    users={"exchange": "s3cret"},
    forbidden_types=frozenset({"application/x-msdownload", "application/pdf"}),
)


@pytest.fixture
def make_ingress(
    sandbox: Sandbox, tls: tuple[ssl.SSLContext, ssl.SSLContext], tmp_path: Path
) -> Iterator[Callable[..., tuple[Running, SQLiteSpool]]]:
    """Start an ingress (optionally with a scanner); everything stops after the test."""
    sandbox.smp.faults = Faults()
    started: list[tuple[Running, Registry]] = []

    def start(scanner: Scanner | None = None, **settings: Any) -> tuple[Running, SQLiteSpool]:
        spool = SQLiteSpool(tmp_path / "spool")
        registry = registry_for(sandbox, "a", tmp_path / "registry")
        handler = IngressHandler(
            dataclasses.replace(SETTINGS, **settings),
            registry,
            spool,
            scanner,
            premapped=Premapped(),
        )
        running = Running(handler, tls[0])
        started.append((running, registry))
        return running, spool

    yield start
    for running, registry in started:
        running.stop()
        registry.close()


@pytest.fixture
def ingress(
    make_ingress: Callable[..., tuple[Running, SQLiteSpool]],
) -> tuple[Running, SQLiteSpool]:
    return make_ingress()


def mail(subject: str = "Hej B", body: str = "Hälsningar från A", **headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = FROM
    message["To"] = TO_B
    message["Subject"] = subject
    message["Message-ID"] = "<m1@kommun-a.se>"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message


def client(port: int, source: str = "127.0.0.1") -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=30)


def test_accepted_mail_is_kept_mapped_for_each_delivery(ingress) -> None:
    running, spool = ingress
    with client(running.port) as smtp:
        smtp.send_message(mail(), FROM, [TO_B])
    (delivery,) = spool.deliveries()
    premapped = running.handler.premapped
    assert premapped is not None
    kept = premapped.take(delivery.message_id)
    assert kept is not None and kept.label == "Hej B"
    assert premapped.take(delivery.message_id) is None  # its one delivery took it


def test_ehlo_advertises_what_exchange_looks_for(ingress) -> None:
    running, _ = ingress
    with client(running.port) as smtp:
        code, text = smtp.ehlo("exchange.kommun-a.se")
        assert code == 250
        for extension in (
            b"SIZE 30000000",
            b"8BITMIME",
            b"SMTPUTF8",
            b"STARTTLS",
            b"PIPELINING",
            b"ENHANCEDSTATUSCODES",
            b"DSN",
        ):
            assert extension in text, extension
        assert b"AUTH" not in text  # never before TLS


def test_accepted_mail_is_spooled_with_its_recipient(ingress) -> None:
    running, spool = ingress
    with client(running.port) as smtp:
        refused = smtp.send_message(
            mail(),
            FROM,
            [TO_B],
            mail_options=["RET=HDRS", "ENVID=QQ314159"],
            rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;anna+b@kommun-a.se"],
        )
    assert refused == {}
    (delivery,) = spool.deliveries()
    assert delivery.state is State.QUEUED
    assert delivery.recipient.organisation_id == ORG_B
    assert delivery.recipient.functional_address == "b.registrator"
    assert delivery.recipient.notify == ("SUCCESS", "FAILURE")
    assert delivery.recipient.orcpt == "rfc822;anna+b@kommun-a.se"
    envelope = spool.envelope(delivery.message_id)
    assert (envelope.ret, envelope.envid, envelope.sender_address) == (
        "HDRS",
        "QQ314159",
        "a.registrator",
    )
    assert envelope.mail_message_id == "m1@kommun-a.se"
    assert "Hälsningar".encode() in spool.body(
        delivery.message_id
    ) or b"H=C3=A4lsningar" in spool.body(delivery.message_id)


@pytest.mark.parametrize(
    ("recipient", "reply"),
    [
        (
            "ekonomi@b.sandbox.test.sdk.a.sandbox.test",
            (
                550,
                b"5.1.1 Sandbox kommun B (0203:b.sandbox.test) has no functional address 'ekonomi'",
            ),
        ),
        (
            "registrator@c.sandbox.test.sdk.a.sandbox.test",
            (550, b"5.1.1 0203:c.sandbox.test is not in the SDK address book"),
        ),
        ("someone@example.org", (550, b"5.1.1 example.org is not under the SDK domain")),
    ],
)
def test_unknown_recipients_are_refused_at_rcpt(
    ingress, recipient: str, reply: tuple[int, bytes]
) -> None:
    running, spool = ingress
    with client(running.port) as smtp:
        smtp.ehlo()
        smtp.mail(FROM)
        code, text = smtp.rcpt(recipient)
    assert code == reply[0] and text.startswith(reply[1]), text
    assert spool.deliveries() == []


def test_sender_who_may_not_speak_for_us(ingress) -> None:
    running, _ = ingress
    with client(running.port) as smtp:
        smtp.ehlo()
        smtp.mail("mallory@example.org")
        code, text = smtp.rcpt(TO_B)
    assert (code, text[:5]) == (550, b"5.7.1")


@pytest.mark.hostile("SMTP abuse: relay control")
def test_relay_control_from_another_address(ingress, tls) -> None:
    """127.0.0.2 is outside the allowed networks: it must authenticate, over TLS only."""
    running, spool = ingress
    with client(running.port, source="127.0.0.2") as smtp:
        smtp.ehlo()
        smtp.mail(FROM)
        code, text = smtp.rcpt(TO_B)
        assert (code, text[:5]) == (554, b"5.7.1")
        code, _ = smtp.docmd("AUTH", "PLAIN AGV4Y2hhbmdlAHMzY3JldA==")
        assert code == 538  # encryption required

    def handshakes(kind: str) -> float:
        value = counters.REGISTRY.get_sample_value(
            "sdk_bridge_smtp_tls_sessions_total", {"kind": kind}
        )
        return value or 0.0

    before = handshakes("starttls")
    with client(running.port, source="127.0.0.2") as smtp:
        smtp.starttls(context=tls[1])
        smtp.login("exchange", "s3cret")
        assert smtp.send_message(mail(), FROM, [TO_B]) == {}
    assert handshakes("starttls") == before + 1  # counted for /metrics
    before = handshakes("implicit")
    with (
        smtplib.SMTP_SSL(
            "127.0.0.1",
            running.tls_port,
            context=tls[1],
            timeout=30,
            source_address=("127.0.0.2", 0),
        ) as smtp,
        pytest.raises(smtplib.SMTPAuthenticationError),
    ):
        smtp.login("exchange", "wrong")
    assert handshakes("implicit") == before + 1
    assert len(spool.deliveries()) == 1


def test_registry_unreachable_is_temporary(ingress, sandbox: Sandbox) -> None:
    running, _ = ingress
    sandbox.smp.faults.fail_with = 503
    with client(running.port) as smtp:
        smtp.ehlo()
        smtp.mail(FROM)
        code, text = smtp.rcpt(TO_B)
    assert (code, text[:5]) == (451, b"4.4.3")


def test_a_recipient_known_from_the_caches_is_answered_on_the_event_loop(
    ingress, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the address book is fetched and the recipient's certificates are cached, RCPT
    needs no thread (where a registry may be asked); before that it takes one."""
    running, _ = ingress
    certpub = running.handler.registry.certpub
    asked: list[str] = []
    looked_up = certpub.encryption_certificates

    def counted(participant: str, **kw: Any) -> Any:
        asked.append(participant)
        return looked_up(participant, **kw)

    monkeypatch.setattr(certpub, "encryption_certificates", counted)
    for _ in range(3):
        with client(running.port) as smtp:
            smtp.ehlo()
            smtp.mail(FROM)
            assert smtp.rcpt(TO_B)[0] == 250
    assert asked == [ORG_B]  # the first time only


@pytest.mark.parametrize(
    "data",
    [
        b"Subject: a\r\n\r\nline\nsmuggled\r\n",  # bare LF
        b"Subject: a\r\n\r\nline\rsmuggled\r\n",  # bare CR
        b"Subject: a\r\n\r\nfirst\r\n\n.\r\nMAIL FROM:<x@y>\r\n",  # LF.CRLF end-of-data
        b"Subject: a\r\n\r\nfirst\r\n.\nRCPT TO:<x@y>\r\n",  # CRLF.LF
    ],
)
@pytest.mark.hostile("SMTP abuse: smuggling")
def test_smtp_smuggling_is_refused(ingress, data: bytes) -> None:
    running, spool = ingress
    with client(running.port) as smtp:
        start_data(smtp)
        smtp.send(data + b".\r\n")
        code, text = smtp.getreply()
    assert (code, text[:5]) == (554, b"5.6.0"), text
    assert spool.deliveries() == []


def test_forbidden_attachment_types_and_pdf(ingress) -> None:
    running, spool = ingress
    exe = mail()
    exe.add_attachment(
        b"MZ\x90\x00", maintype="application", subtype="x-msdownload", filename="a.exe"
    )
    pdf = mail()
    pdf.add_attachment(b"%PDF-1.7\n", maintype="application", subtype="pdf", filename="a.pdf")
    with client(running.port) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as error:
            smtp.send_message(exe, FROM, [TO_B])
        assert (error.value.smtp_code, error.value.smtp_error[:5]) == (554, b"5.6.0")
        assert smtp.send_message(pdf, FROM, [TO_B]) == {}  # PDF is always allowed
    assert len(spool.deliveries()) == 1


@pytest.mark.hostile("SMTP abuse: oversize")
def test_too_large_for_sdk(ingress) -> None:
    running, _ = ingress
    with client(running.port) as smtp:
        smtp.ehlo()
        code, _ = smtp.mail(FROM, ["SIZE=40000000"])
    assert code == 552


def test_malware_is_refused_at_data(make_ingress, clamd_server) -> None:
    scanner = load("sdk_bridge.scanners", "clamav", {"socket": str(clamd_server.socket)})
    running, spool = make_ingress(scanner)
    infected = mail()
    infected.add_attachment(
        EICAR, maintype="application", subtype="octet-stream", filename="eicar.com"
    )
    with client(running.port) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as error:
            smtp.send_message(infected, FROM, [TO_B])
        assert (error.value.smtp_code, error.value.smtp_error[:5]) == (554, b"5.7.1")
        assert smtp.send_message(mail(), FROM, [TO_B]) == {}
    assert len(spool.deliveries()) == 1


@pytest.mark.hostile("SMTP abuse: oversize")
def test_big_messages_do_not_stall_other_sessions(ingress) -> None:
    """Three 25 MB mails at once; meanwhile a short dialogue still answers promptly."""
    running, spool = ingress
    big = mail("Stor")
    big.add_attachment(
        os.urandom(18_000_000), maintype="application", subtype="pdf", filename="stor.pdf"
    )  # about 25 MB once base64-encoded
    data = big.as_bytes(policy=email.policy.SMTP)
    assert 24_000_000 < len(data) < 26_000_000
    errors: list[BaseException] = []

    def send(number: int) -> None:
        try:
            with client(running.port) as smtp:  # three different mails, not one sent again
                smtp.sendmail(
                    FROM, [TO_B], data.replace(b"Subject: Stor", b"Subject: Stor %d" % number)
                )
        except BaseException as e:
            errors.append(e)

    senders = [threading.Thread(target=send, args=(n,)) for n in range(3)]
    for sender in senders:
        sender.start()
    slowest = 0.0
    while any(s.is_alive() for s in senders):
        started = time.monotonic()
        with client(running.port) as smtp:
            smtp.ehlo()
            smtp.mail(FROM)
            code, _ = smtp.rcpt(TO_B)
            assert code == 250
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.2)
    for sender in senders:
        sender.join(120)
    assert errors == []
    assert len(spool.deliveries()) == 3
    assert slowest < 5.0, slowest


@pytest.mark.hostile("SMTP abuse: oversize")
def test_limits_on_lines_and_headers(ingress) -> None:
    running, spool = ingress
    with client(running.port) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as error:
            smtp.sendmail(FROM, [TO_B], b"Subject: x\r\n\r\n" + b"a" * 2000 + b"\r\n")
        assert error.value.smtp_code == 500  # RFC 5321 4.5.3.1.6: 1000 octets a line
    many = b"".join(b"X-Filler-%d: x\r\n" % n for n in range(600)) + b"Subject: x\r\n\r\nhej\r\n"
    with client(running.port) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as error:
            smtp.sendmail(FROM, [TO_B], many)
        assert (error.value.smtp_code, error.value.smtp_error[:5]) == (552, b"5.3.4")
    assert spool.deliveries() == []


def test_too_large_once_mapped_is_refused_at_data(ingress) -> None:
    """Under the SIZE limit as mail, over 30 MB as an SDK message: "&" becomes "&amp;"."""
    running, spool = ingress
    big = mail("För stor", ("&" * 500 + "\n") * 14_000)  # 7 MB of mail, 35 MB of XML
    with client(running.port) as smtp, pytest.raises(smtplib.SMTPDataError) as error:
        smtp.send_message(big, FROM, [TO_B])
    assert (error.value.smtp_code, error.value.smtp_error[:5]) == (552, b"5.3.4")
    assert spool.deliveries() == []


@pytest.mark.parametrize(
    ("error", "reply"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), (452, b"4.3.1")),
        (SpoolFull("the spool database has no room"), (452, b"4.3.1")),
        (OSError(errno.EIO, "Input/output error"), (451, b"4.3.0")),
    ],
)
def test_a_spool_that_cannot_store_answers_4xx(
    ingress, monkeypatch: pytest.MonkeyPatch, error: Exception, reply: tuple[int, bytes]
) -> None:
    running, spool = ingress

    def broken(*_: object) -> str:
        raise error

    monkeypatch.setattr(spool, "accept", broken)
    with client(running.port) as smtp, pytest.raises(smtplib.SMTPDataError) as refused:
        smtp.send_message(mail(), FROM, [TO_B])
    assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == reply


@pytest.mark.hostile("SMTP abuse: smuggling")
def test_the_tail_of_an_over_long_line_does_not_end_data(ingress) -> None:
    """After 1100 characters, ".\\r\\n" is the end of that line, not of the message: what
    follows must not run as commands."""
    running, spool = ingress
    with client(running.port) as smtp:
        start_data(smtp)
        # The server drains all but the last byte read of an over-long line; sent in two
        # pieces, what it reads next is exactly ".\r\n" followed by a command.
        smtp.send(b"Subject: x\r\n\r\n" + b"A" * 1100 + b".")
        time.sleep(0.3)
        smtp.send(b"\r\nNOOP\r\n.\r\n")
        code, text = smtp.getreply()
        assert code == 500 and text.startswith(b"5.5.6")
        smtp.putcmd("HELP")  # the next reply must answer it, not a smuggled NOOP
        code, text = smtp.getreply()
        assert code == 250 and b"Supported" in text, text
    assert spool.deliveries() == []


def test_the_same_recipient_twice_is_one_delivery(ingress) -> None:
    running, spool = ingress
    with client(running.port) as smtp:
        assert (
            smtp.send_message(
                mail(),
                FROM,
                [TO_B, TO_B.upper(), "b.registrator@b.sandbox.test.sdk.a.sandbox.test"],
            )
            == {}
        )
    assert len(spool.deliveries()) == 1


def test_an_authenticated_user_may_use_only_its_own_senders(ingress, tls) -> None:
    """Issue 16: MAIL FROM is bound to the login (Postfix's reject_sender_login_mismatch):
    exchange may send as a.registrator, from the addresses a.registrator's senders allow."""
    running, spool = ingress
    with client(running.port, source="127.0.0.2") as smtp:
        smtp.starttls(context=tls[1])
        smtp.login("exchange", "s3cret")
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            smtp.send_message(mail(), "someone@soc.kommun-a.se", [TO_B])
        assert refused.value.recipients[TO_B] == (
            553,
            b"5.7.1 someone@soc.kommun-a.se: not owned by user exchange",
        )
        assert smtp.send_message(mail(), "anna@kommun-a.se", [TO_B]) == {}
        assert smtp.send_message(mail(), "", [TO_B]) == {}  # an auto-reply: MAIL FROM:<>
    with client(running.port) as smtp:  # unauthenticated: known by MAIL FROM
        assert smtp.send_message(mail(), "someone@soc.kommun-a.se", [TO_B]) == {}
    senders = [spool.envelope(d.message_id).sender_address for d in spool.deliveries()]
    assert senders == ["a.registrator", "a.registrator", "a.socialtjänsten"]


def test_addresses_that_are_not_utf8_are_refused_in_words_that_can_be_written(ingress) -> None:
    running, _ = ingress
    with client(running.port) as smtp:
        smtp.ehlo()
        assert smtp.docmd("MAIL FROM:<anna@kommun-a.se>")[0] == 250
        smtp.send(b"RCPT TO:<registrator@b\xff.sandbox.test>\r\n")
        assert smtp.getreply() == (553, b"5.1.3 The recipient address is not valid UTF-8")
        smtp.send(b"MAIL FROM:<anna@kommun\xfe-a.se>\r\n")
        assert smtp.getreply() == (553, b"5.1.7 The sender address is not valid UTF-8")


def test_every_reply_has_an_enhanced_status_code(ingress) -> None:
    running, _ = ingress
    with client(running.port) as smtp:
        smtp.ehlo()
        for command, expected in (
            ("NOOP", (250, b"2.0.0")),
            ("RSET", (250, b"2.0.0")),
            ("DATA", (503, b"5.5.1")),
            ("FROBNICATE", (500, b"5.5.2")),
            ("MAIL FROM:<a@kommun-a.se> SIZE=99999999999", (552, b"5.3.4")),
            ("MAIL FROM:<a@kommun-a.se> BOGUS=1", (555, b"5.5.4")),
        ):
            smtp.putcmd(command)
            code, text = smtp.getreply()
            assert (code, text[:5]) == expected, (command, code, text)


@pytest.mark.hostile("SMTP abuse: oversize")
def test_a_message_nested_too_deeply_is_refused_not_crashed(ingress) -> None:
    running, spool = ingress
    parts = "".join(
        f'Content-Type: multipart/mixed; boundary="b{n}"\r\n\r\n--b{n}\r\n' for n in range(1200)
    )
    data = f"From: {FROM}\r\nSubject: djup\r\n{parts}\r\nhej\r\n".encode()
    with client(running.port) as smtp, pytest.raises(smtplib.SMTPDataError) as error:
        smtp.sendmail(FROM, [TO_B], data)
    assert error.value.smtp_code in (451, 554), error.value
    assert error.value.smtp_code != 500
    assert spool.deliveries() == []


@pytest.mark.hostile("SMTP abuse: slow or vanishing clients")
@pytest.mark.parametrize("size", [100_000, 2 * arriving.PER_MESSAGE])  # in memory, in a file
def test_a_client_that_hangs_up_mid_data_leaves_nothing(ingress, size: int) -> None:
    running, spool = ingress
    smtp = client(running.port)
    smtp.ehlo()
    smtp.mail(FROM)
    smtp.rcpt(TO_B)
    smtp.putcmd("DATA")
    assert smtp.getreply()[0] == 354
    smtp.send(b"Subject: halv\r\n\r\n" + b"x\r\n" * (size // 3))
    smtp.close()  # gone before the end of data

    def left() -> bool:
        return bool(list((spool.directory / "incoming").iterdir()) or running.handler.memory.in_use)

    deadline = time.monotonic() + 10
    while left() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left()
    assert spool.deliveries() == []
    with client(running.port) as fresh:  # and the server carries on
        assert fresh.send_message(mail(), FROM, [TO_B]) == {}


# --- abuse: relaying, too many recipients, password guessing, silent clients ------------


@pytest.mark.parametrize(
    "recipient",
    [
        "someone@gmail.com",  # another domain
        "someone%gmail.com@b.sandbox.test.sdk.a.sandbox.test",  # the percent hack
        "someone@gmail.com@b.sandbox.test.sdk.a.sandbox.test",
        '"someone@gmail.com"@b.sandbox.test.sdk.a.sandbox.test',  # a quoted local part
        "@relay.example:someone@gmail.com",  # a source route
        "someone!gmail.com@b.sandbox.test.sdk.a.sandbox.test",  # a UUCP bang path
        "registrator@b.sandbox.test.sdk.a.sandbox.test.gmail.com",
        "registrator@sdk.a.sandbox.test",  # the SDK domain itself
    ],
)
@pytest.mark.hostile("SMTP abuse: relay control")
def test_no_open_relay(ingress, recipient: str) -> None:
    running, spool = ingress
    with client(running.port) as smtp:
        smtp.ehlo()
        smtp.mail(FROM)
        code, _ = smtp.docmd("RCPT", f"TO:<{recipient}>")
        assert 500 <= code < 600, (recipient, code)
    assert spool.deliveries() == []


@pytest.mark.hostile("SMTP abuse: recipients")
def test_too_many_recipients(make_ingress) -> None:
    running, _ = make_ingress(max_recipients=1)
    with client(running.port) as smtp:
        smtp.ehlo()
        smtp.mail(FROM)
        assert smtp.rcpt(TO_B)[0] == 250
        code, text = smtp.rcpt("socialtjansten@b.sandbox.test.sdk.a.sandbox.test")
        assert (code, text[:5]) == (452, b"4.5.3")


def login_timed(port: int, tls: tuple[ssl.SSLContext, ssl.SSLContext], source: str,
                password: str, user: str = "exchange") -> tuple[int, float]:  # fmt: skip
    """AUTH PLAIN (mechanism in lower case, as RFC 4954 allows): the reply code and how
    long the answer took."""
    credentials = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    with client(port, source=source) as smtp:
        smtp.starttls(context=tls[1])
        smtp.ehlo()
        started = time.monotonic()
        code, _ = smtp.docmd("AUTH", f"plain {credentials}")
        return code, time.monotonic() - started


@pytest.mark.hostile("SMTP abuse: AUTH guessing")
def test_password_guessing_is_slowed_down_never_locked_out(make_ingress, tls) -> None:
    """Issue 16: failures are answered later and later, per address and per login; the
    right password is never refused, whoever failed from the same address."""
    running, _ = make_ingress()
    with client(running.port) as smtp:
        assert smtp.ehlo()[0] == 250
        assert smtp.esmtp_features.get("auth") is None  # only offered under TLS
        smtp.starttls(context=tls[1])
        smtp.ehlo()
        assert smtp.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]  # no "BLOCKED"
    times = [login_timed(running.port, tls, "127.0.0.2", "guess") for _ in range(6)]
    assert [code for code, _ in times] == [535] * 6
    assert all(seconds < 0.4 for _, seconds in times[:3])
    assert [round(seconds, 1) >= wanted for (_, seconds), wanted in zip(
        times[3:], (0.5, 1.0, 2.0), strict=True)] == [True] * 3  # fmt: skip
    assert login_timed(running.port, tls, "127.0.0.2", "s3cret")[0] == 235  # no lock-out
    # The login's failures count from another address too (a guesser moving around).
    code, seconds = login_timed(running.port, tls, "127.0.0.3", "guess")
    assert (code, seconds >= 4.0) == (535, True)
    assert login_timed(running.port, tls, "127.0.0.3", "other", user="nobody")[1] < 0.4


@pytest.mark.hostile("SMTP abuse: slow or vanishing clients")
def test_a_silent_client_loses_its_slot(make_ingress) -> None:
    running, _ = make_ingress(idle_timeout=1.0)
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as silent:
        greeting = silent.recv(1000)
        assert greeting.startswith(b"220")
        silent.sendall(b"EHLO slow")  # never finishes the line
        started = time.monotonic()
        while silent.recv(1000):  # until the server hangs up
            assert time.monotonic() - started < 10, "the silent client was never cut off"
        assert time.monotonic() - started < 5


def test_every_refusal_is_in_the_readme_table() -> None:
    """An administrator looks a reply code up in README's table (issue 15: 500 5.5.6)."""
    root = Path(__file__).parent.parent
    code = "\n".join(p.read_text() for p in (root / "sdk_bridge" / "ingress").glob("*.py"))
    replies = set(re.findall(r"\"([45]\d\d [45]\.\d{1,3}\.\d{1,3})", code))
    table = [
        line for line in (root / "README.md").read_text().splitlines() if line.startswith("| `")
    ]
    documented = {
        reply for line in table for reply in re.findall(r"`([45]\d\d [45]\.\d+\.\d+)`", line)
    }
    assert len(replies) > 10
    assert replies <= documented, sorted(replies - documented)


def greeting(source: str, port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return sock, sock.recv(1000)


@pytest.mark.hostile("SMTP abuse: connection floods")
def test_connections_are_limited_per_client_and_in_all(make_ingress) -> None:
    """Issue 16: one host cannot take every connection (421 4.7.0 over its share)."""
    running, _ = make_ingress(max_connections_per_client=3, max_connections=5)
    opened = [greeting("127.0.0.2", running.port) for _ in range(4)]
    try:
        assert [reply[:3] for _, reply in opened] == [b"220", b"220", b"220", b"421"]
        assert opened[3][1].startswith(b"421 4.7.0 Too many connections from your address")
        with client(running.port) as smtp:  # another address has its own share
            assert smtp.noop()[0] == 250
            opened.append(greeting("127.0.0.1", running.port))  # 3 + 2 open: all there is
            assert opened[-1][1].startswith(b"220")
            opened.append(greeting("127.0.0.3", running.port))
            assert opened[-1][1].startswith(b"421 4.7.0 Too many connections;")
    finally:
        for sock, _ in opened:
            sock.close()
    deadline = time.monotonic() + 10  # closed connections give their slots back
    while greeting("127.0.0.2", running.port)[1][:3] != b"220":
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.hostile("SMTP abuse: slow or vanishing clients")
def test_noop_keeps_a_session_alive_only_a_few_times(make_ingress) -> None:
    running, _ = make_ingress(idle_timeout=1.0)
    with client(running.port) as smtp:
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPServerDisconnected):
            while time.monotonic() - started < 10:  # the allowance, then the idle timeout
                smtp.noop()
                time.sleep(0.3)
        assert time.monotonic() - started < 1.0 + 0.3 * (JUNK_ALLOWANCE + 2) + 1.0


def start_data(smtp: smtplib.SMTP) -> None:
    """A mail from FROM to TO_B up to DATA's 354: the message itself is the caller's."""
    smtp.ehlo()
    smtp.mail(FROM)
    smtp.rcpt(TO_B)
    smtp.putcmd("DATA")
    assert smtp.getreply()[0] == 354


@pytest.mark.hostile("SMTP abuse: slow or vanishing clients")
def test_a_slow_but_steady_data_is_accepted(make_ingress) -> None:
    """DATA is timed by progress: lines keep coming for three times the idle timeout."""
    running, _ = make_ingress(idle_timeout=1.0)
    with client(running.port) as smtp:
        start_data(smtp)
        raw = mail(body="rad\n" * 12).as_bytes().replace(b"\n", b"\r\n")
        for line in raw.split(b"\r\n"):
            smtp.send(line + b"\r\n")
            time.sleep(0.15)
        smtp.send(b".\r\n")
        assert smtp.getreply()[0] == 250
    with client(running.port) as smtp:  # the same, silent after a line: cut
        start_data(smtp)
        smtp.send(b"Subject: tyst\r\n")
        started = time.monotonic()
        assert smtp.sock is not None
        assert smtp.sock.recv(1000) == b""  # the server hung up
        assert time.monotonic() - started < 3.0


def test_a_mime_structure_the_parser_chokes_on_is_refused_for_good(ingress) -> None:
    """CPython's parser raises on `charset*` with no value: 554, not a 451 forever."""
    running, _ = ingress
    with client(running.port) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail(
                FROM, [TO_B], b"Subject: x\r\nContent-Type: text/plain; charset*\r\n\r\nx\r\n"
            )
        assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (554, b"5.6.0")


def test_the_path_shortcut_reads_mail_from_and_rcpt_to_as_aiosmtpd_does() -> None:
    """BridgeSMTP reads a plain `<local@domain>` itself (aiosmtpd's parser is slow); for
    every path, plain or not, the address and the rest are what aiosmtpd's parser says."""

    def parsed(cls: type[SMTP], arg: str) -> object:
        server = cls.__new__(cls)
        server.local_part_limit = 8
        try:
            return cls._getaddr(server, arg)
        except Exception as e:  # aiosmtpd's parser on some garbage
            return type(e)

    chosen = random.Random(18)
    atext = "abcXYZ019!#$%&'*+/=?^_`{|}~-.å\"()"
    rests = ["", " ", "  SIZE=1", " SIZE=1 BODY=8BITMIME", "\tX", " (c)", "x", " X ", " (c) X"]
    for _ in range(3000):
        local = "".join(chosen.choice(atext) for _ in range(chosen.randint(0, 10)))
        domain = "".join(chosen.choice("ab-.9[]") for _ in range(chosen.randint(0, 8)))
        arg = f"<{local}@{domain}>{chosen.choice(rests)}"
        assert parsed(BridgeSMTP, arg) == parsed(SMTP, arg), arg


@pytest.mark.parametrize("lines", [8000, 20_000])  # held in memory; a file past PER_MESSAGE
def test_data_arriving_in_any_pieces_is_stored_exactly(ingress, lines: int) -> None:
    """DATA is read in blocks: lines that start with dots, a line as long as allowed, a
    message over several blocks, and the final dot split over pieces of a few bytes each;
    what is stored is the message, unstuffed, byte for byte, whether it was held in memory
    or went on into a file as it grew."""
    running, spool = ingress
    body = b"".join(
        [b".leading dot\r\n", b"..two dots\r\n", b".x\r\n", b"A" * 1001 + b"\r\n"]
        + [b"rad %d med text\r\n" % n for n in range(lines)]  # more than one 64 KiB block
        + [b". \r\n", b"..\r\n", b"last\r\n"]
    )
    message = b"Subject: pieces\r\nMessage-ID: <p@kommun-a.se>\r\n\r\n" + body
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    chosen = random.Random(18)
    with client(running.port) as smtp:
        start_data(smtp)
        wire, at = stuffed + b".\r\n", 0
        while at < len(wire):  # small pieces near the end: the final dot split up
            step = chosen.randint(1, 7) if len(wire) - at < 64 else chosen.randint(1, 20_000)
            smtp.send(wire[at : at + step])
            at += step
        code, text = smtp.getreply()
        assert code == 250, text
    (delivery,) = spool.deliveries()
    assert spool.body(delivery.message_id) == message
    assert (len(message) > arriving.PER_MESSAGE) == (lines == 20_000)
    assert running.handler.memory.in_use == 0
    assert list((spool.directory / "incoming").iterdir()) == []


def test_data_goes_to_a_file_when_the_sessions_hold_their_share_of_memory(tmp_path: Path) -> None:
    """Past the budget of all sessions together, a message goes on into a file, whole, and
    what it held in memory is given back; so is a message's memory when it is done."""
    budget = arriving.MemoryBudget(per_message=100, total=150)
    files = iter([tmp_path / "1.part", tmp_path / "2.part"])
    first, second = (arriving.Arriving(budget, lambda: next(files)) for _ in range(2))
    first.write(b"a" * 40)
    first.write(b"a" * 40)
    second.write(b"b" * 50)
    assert budget.in_use == 130
    second.write(b"b" * 30)  # 160 together: on into a file
    assert budget.in_use == 80 and second.content == tmp_path / "1.part"
    first.finish()
    second.finish()
    assert first.content == b"a" * 80
    assert (tmp_path / "1.part").read_bytes() == b"b" * 80
    first.discard()
    second.discard()
    assert budget.in_use == 0 and list(tmp_path.iterdir()) == []


def test_commands_pipelined_after_the_final_dot_are_answered(ingress) -> None:
    """A client may send its next command with the final dot (RFC 2920): what DATA read
    beyond the dot goes back to the command reader, in order."""
    running, spool = ingress
    with client(running.port) as smtp:
        start_data(smtp)
        message = mail().as_bytes(policy=email.policy.SMTP)
        smtp.send(message + b".\r\nMAIL FROM:<" + FROM.encode() + b">\r\nRSET\r\nNOOP\r\n")
        replies = [smtp.getreply()[0] for _ in range(4)]
        assert replies == [250, 250, 250, 250]
    assert len(spool.deliveries()) == 1


def test_a_line_one_byte_over_the_limit_is_too_long_however_it_arrives(ingress) -> None:
    running, spool = ingress
    for pieces in ([b"A" * 1002 + b"\r\n"], [b"A" * 1002, b"\r\n"], [b"A" * 3000, b"B\r\n"]):
        with client(running.port) as smtp:
            start_data(smtp)
            smtp.send(b"Subject: long\r\n\r\n")
            for piece in pieces:
                smtp.send(piece)
                time.sleep(0.05)  # read apart, as they would come over a network
            smtp.send(b".\r\n")
            code, text = smtp.getreply()
            assert (code, text[:5]) == (500, b"5.5.6"), pieces
    assert spool.deliveries() == []
