"""LMTP (to a real Dovecot) and SMTP (to an aiosmtpd server with STARTTLS) hand-off."""

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as Server
from aiosmtpd.smtp import Envelope, Session
from support import dovecot
from support.dovecot import Dovecot

from sdk_bridge import plugin
from sdk_bridge.lab import testpki
from sdk_bridge.lab.sandbox.ports import free_tcp_port
from sdk_bridge_plugins.handoff import LMTP, SMTP

dovecot_server = dovecot.dovecot_server
MAIL = "Message-ID: <h1@sdk.example.se>\r\nSubject: Hej\r\n\r\nÅ ä ö\r\n".encode()


def test_lmtp_into_dovecot(dovecot_server: Dovecot) -> None:
    box = plugin.load(
        plugin.MAILBOXES,
        "lmtp",
        {"host": "127.0.0.1", "port": dovecot_server.lmtp_port, "recipient": "alice@localhost"},
    )
    asyncio.run(box.deliver("h1@sdk.example.se", MAIL))
    with dovecot_server.imap("alice") as imap:
        imap.select("INBOX", readonly=True)
        _, found = imap.search(None, "HEADER", "Message-ID", "<h1@sdk.example.se>")
        [number] = found[0].split()
        body = imap.fetch(number, "(BODY.PEEK[TEXT])")[1][0][1]  # type: ignore[index]
        assert body == "Å ä ö\r\n".encode()


def test_lmtp_unknown_mailbox_is_permanent(dovecot_server: Dovecot) -> None:
    box = LMTP({"host": "127.0.0.1", "port": dovecot_server.lmtp_port, "recipient": "x@localhost"})
    with pytest.raises(plugin.PermanentFailure, match="refused for good: 550"):
        asyncio.run(box.deliver("h2@sdk.example.se", MAIL))


class Recorder:
    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes, list[str]]] = []
        self.answer = "250 OK"
        self.quit_answer = "221 Bye"

    async def handle_DATA(self, server: Server, session: Session, envelope: Envelope) -> str:
        if self.answer.startswith("250"):
            content = envelope.original_content or b""
            self.received.append(
                (envelope.mail_from or "", envelope.rcpt_tos, content, envelope.mail_options)
            )
        return self.answer

    async def handle_QUIT(self, server: Server, session: Session, envelope: Envelope) -> str:
        return self.quit_answer


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    pki = testpki.make_pki(tmp_path_factory.mktemp("pki"), 2048)
    server = pki.issue("localhost", hosts=["localhost", "127.0.0.1"])
    chain = tmp_path_factory.mktemp("chain") / "server.pem"  # the leaf, then its CAs
    chain.write_bytes(server.cert_pem.read_bytes() + pki.chain_pem.read_bytes())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain, server.key_pem)
    return context, pki.root_pem


@pytest.fixture
def smtp_server(tls_files: tuple[ssl.SSLContext, Path]) -> Iterator[tuple[Recorder, int]]:
    recorder = Recorder()
    controller = Controller(
        recorder, hostname="127.0.0.1", port=free_tcp_port(), tls_context=tls_files[0]
    )
    controller.start()
    try:
        yield recorder, controller.port
    finally:
        controller.stop()


def smtp(port: int, cafile: Path, **more: Any) -> SMTP:
    settings = {"host": "127.0.0.1", "port": port, "recipient": "diarium@kommun.example.se"}
    return SMTP(settings | {"cafile": str(cafile)} | more)


def test_smtp_with_starttls_and_null_sender(
    smtp_server: tuple[Recorder, int], tls_files: tuple[ssl.SSLContext, Path]
) -> None:
    recorder, port = smtp_server
    asyncio.run(smtp(port, tls_files[1]).deliver("h1@sdk.example.se", MAIL))
    [(sender, recipients, content, options)] = recorder.received
    assert (sender, recipients, content) == ("<>", ["diarium@kommun.example.se"], MAIL)
    assert "BODY=8BITMIME" in options


@pytest.mark.parametrize(
    ("answer", "failure"),
    [("451 4.3.0 try later", plugin.TemporaryFailure), ("554 5.6.0 no", plugin.PermanentFailure)],
)
def test_smtp_replies_map_to_failures(
    smtp_server: tuple[Recorder, int],
    tls_files: tuple[ssl.SSLContext, Path],
    answer: str,
    failure: type[Exception],
) -> None:
    recorder, port = smtp_server
    recorder.answer = answer
    with pytest.raises(failure, match=answer.split()[0]):
        asyncio.run(smtp(port, tls_files[1]).deliver("h1@sdk.example.se", MAIL))


def test_an_odd_answer_to_quit_does_not_undo_a_delivery(
    smtp_server: tuple[Recorder, int], tls_files: tuple[ssl.SSLContext, Path]
) -> None:
    recorder, port = smtp_server
    recorder.quit_answer = "554 5.0.0 bye"
    asyncio.run(smtp(port, tls_files[1]).deliver("h1@sdk.example.se", MAIL))
    assert len(recorder.received) == 1


def test_smtp_never_falls_back_to_plain_text(tls_files: tuple[ssl.SSLContext, Path]) -> None:
    recorder = Recorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_tcp_port())  # no STARTTLS
    controller.start()
    try:
        with pytest.raises(plugin.TemporaryFailure, match="STARTTLS"):
            asyncio.run(smtp(controller.port, tls_files[1]).deliver("h@x", MAIL))
        assert recorder.received == []
    finally:
        controller.stop()


@pytest.mark.parametrize(
    ("name", "settings", "error"),
    [
        ("lmtp", {"recipient": "a@b", "host": "mail.example.se", "port": 24}, "loopback"),
        ("lmtp", {"recipient": "a@b"}, "either `socket`"),
        ("lmtp", {"recipient": "a@b", "socket": "relative"}, "absolute path"),
        ("lmtp", {"recipient": "nobody", "socket": "/run/x"}, "`recipient` must be"),
        ("smtp", {"recipient": "a@b", "host": "mail.example.se", "tls": "none"}, "loopback"),
        ("smtp", {"recipient": "a@b", "host": "h", "tls": "maybe"}, "`tls` must be"),
        ("smtp", {"recipient": "a@b", "host": "h", "colour": 1}, "unknown setting"),
    ],
)
def test_bad_settings_are_named(name: str, settings: dict[str, Any], error: str) -> None:
    with pytest.raises(plugin.PluginError, match=error):
        plugin.load(plugin.MAILBOXES, name, settings)
