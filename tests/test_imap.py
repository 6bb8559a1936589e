"""The IMAP mailbox plugin against a real Dovecot on loopback."""

import asyncio
import socket
from pathlib import Path
from typing import Any

import aioimaplib
import pytest
from support import dovecot
from support.dovecot import Dovecot

from sdk_bridge import plugin
from sdk_bridge_plugins.imap import IMAP

dovecot_server = dovecot.dovecot_server


def mail(message_id: str, size: int = 0) -> bytes:
    head = f"Message-ID: <{message_id}>\r\nFrom: a@example.se\r\nSubject: Hej\r\n\r\n"
    return (head + "Å ä ö\r\n").encode() + (b"x" * 76 + b"\r\n") * (size // 78)


def settings(server: Dovecot, **more: Any) -> dict[str, Any]:
    base = {
        "port": server.imaps_port,
        "cafile": str(server.cafile),
        "user": "bob",
        "password": "bobpw",
    }
    return base | more


def messages(server: Dovecot, folder: str, message_id: str) -> list[bytes]:
    """The whole messages with this Message-ID in bob's `folder` (modified UTF-7 name)."""
    with server.imap("bob") as imap:
        status, _ = imap.select(f'"{folder}"', readonly=True)
        assert status == "OK", folder
        _, found = imap.search(None, "HEADER", "Message-ID", f"<{message_id}>")
        numbers = found[0].split()
        fetched = [imap.fetch(n, "(BODY.PEEK[])")[1][0] for n in numbers]
        return [item[1] for item in fetched if isinstance(item, tuple)]


def test_appends_once_over_imaps_into_inbox(dovecot_server: Dovecot) -> None:
    box = plugin.load(plugin.MAILBOXES, "imap", settings(dovecot_server))
    message = mail("inbox-1@sdk.example.se")
    for _ in range(3):  # the later calls stand for retries after a lost answer
        asyncio.run(box.deliver("inbox-1@sdk.example.se", message))
    assert messages(dovecot_server, "INBOX", "inbox-1@sdk.example.se") == [message]


def test_creates_a_swedish_folder_and_sends_large_mail(dovecot_server: Dovecot) -> None:
    box = IMAP(settings(dovecot_server, folder='Ärenden/Socialtjänst "Nord"'))
    message = mail("large@sdk.example.se", size=3_000_000)
    asyncio.run(box.deliver("large@sdk.example.se", message))
    asyncio.run(box.deliver("large@sdk.example.se", message))
    folder = '&AMQ-renden.Socialtj&AOQ-nst \\"Nord\\"'  # Dovecot's Maildir separator
    assert messages(dovecot_server, folder, "large@sdk.example.se") == [message]


def test_plain_imap_on_loopback(dovecot_server: Dovecot) -> None:
    box = IMAP(settings(dovecot_server, tls=False, port=dovecot_server.imap_port))
    asyncio.run(box.deliver("plain@sdk.example.se", mail("plain@sdk.example.se")))
    assert len(messages(dovecot_server, "INBOX", "plain@sdk.example.se")) == 1


def test_wrong_password_and_no_server_are_temporary(
    dovecot_server: Dovecot, tmp_path: Path
) -> None:
    box = IMAP(settings(dovecot_server, password="wrong"))
    with pytest.raises(plugin.TemporaryFailure, match="LOGIN answered NO"):
        asyncio.run(box.deliver("x@sdk.example.se", mail("x@sdk.example.se")))
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        box = IMAP(settings(dovecot_server, port=port, timeout=2))
        with pytest.raises(plugin.TemporaryFailure, match="cannot connect"):
            asyncio.run(box.deliver("x@sdk.example.se", mail("x@sdk.example.se")))


def test_untrusted_certificate_is_refused(dovecot_server: Dovecot) -> None:
    box = IMAP(settings(dovecot_server, cafile=None))
    with pytest.raises(plugin.TemporaryFailure, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(box.deliver("x@sdk.example.se", mail("x@sdk.example.se")))


@pytest.mark.parametrize(
    ("more", "error"),
    [
        ({"tls": False, "host": "imap.example.se"}, "only allowed for a loopback"),
        ({"password_file": "/x"}, "either `password` or `password_file`"),
        ({"port": 0}, "`port` must be"),
        ({"folder": "a//b"}, "empty level"),
        ({"colour": "blue"}, "unknown setting"),
        ({"timeout": -1}, "`timeout` must be a positive"),
    ],
)
def test_bad_settings_are_named(more: dict[str, Any], error: str) -> None:
    base = {"user": "bob", "password": "bobpw"}
    with pytest.raises(plugin.PluginError, match=error):
        plugin.load(plugin.MAILBOXES, "imap", base | more)


def test_folder_that_exists_but_cannot_be_selected_is_not_appended_to(
    dovecot_server: Dovecot,
) -> None:
    asyncio.run(
        IMAP(settings(dovecot_server, folder="Arkiv/Inkommande")).deliver("a@b", mail("a@b"))
    )
    parent = IMAP(settings(dovecot_server, folder="Arkiv"))  # \Noselect: holds only folders
    with pytest.raises(plugin.TemporaryFailure, match="SELECT answered NO"):
        asyncio.run(parent.deliver("a@b", mail("a@b")))


def test_a_folder_level_with_the_servers_separator_is_refused(dovecot_server: Dovecot) -> None:
    box = IMAP(settings(dovecot_server, folder="Arkiv/v.2"))
    with pytest.raises(plugin.TemporaryFailure, match=r"holds the server's separator '\.'"):
        asyncio.run(box.deliver("a@b", mail("a@b")))


def test_password_from_a_file(dovecot_server: Dovecot, tmp_path: Path) -> None:
    secret = tmp_path / "imap.pass"
    secret.write_text("bobpw\n")
    box = IMAP(settings(dovecot_server, password=None) | {"password_file": str(secret)})
    asyncio.run(box.deliver("file@sdk.example.se", mail("file@sdk.example.se")))
    assert len(messages(dovecot_server, "INBOX", "file@sdk.example.se")) == 1
    with pytest.raises(ValueError, match="password_file"):
        IMAP(settings(dovecot_server, password=None) | {"password_file": str(tmp_path / "no")})


def test_a_folder_another_delivery_just_created(
    dovecot_server: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two deliveries into a new folder are both told [TRYCREATE]; the second CREATE
    finds the folder the first made ([ALREADYEXISTS]) and appends anyway, instead of
    failing and waiting for a retry. The other delivery's CREATE is made to land first."""
    real_create = aioimaplib.IMAP4.create

    async def after_another(client: aioimaplib.IMAP4, mailbox: str) -> Any:
        with dovecot_server.imap("bob") as other:
            other.create(mailbox)
        return await real_create(client, mailbox)

    monkeypatch.setattr(aioimaplib.IMAP4, "create", after_another)
    box = IMAP(settings(dovecot_server, folder="Samtidigt"))
    asyncio.run(box.deliver("race@sdk.example.se", mail("race@sdk.example.se")))
    assert len(messages(dovecot_server, "Samtidigt", "race@sdk.example.se")) == 1
