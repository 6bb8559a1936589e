"""Dovecot reads what the Maildir plugin writes: the inbox and a Swedish-named folder."""

import asyncio

import dovecot
from dovecot import Dovecot

from plugins.maildir import Maildir

dovecot_server = dovecot.dovecot_server

MAIL = (
    "Message-ID: <4f1c@sdk.example.se>\r\nFrom: a@example.se\r\n"
    "Subject: =?utf-8?q?=C3=84rende?=\r\n\r\nÅ ä ö\r\n"
).encode()


def test_dovecot_serves_the_maildir_over_imaps(dovecot_server: Dovecot) -> None:
    root = dovecot_server.maildir("alice")
    for folder in (None, "Ärenden/Inkommande"):
        box = Maildir({"path": str(root), "folder": folder})
        for _ in range(2):  # a repeat must not make a second copy
            asyncio.run(box.deliver("4f1c@sdk.example.se", MAIL))
    dovecot_server.give(root)
    with dovecot_server.imap("alice") as imap:
        status, folders = imap.list()
        assert status == "OK"
        assert b'(\\HasNoChildren) "." &AMQ-renden.Inkommande' in folders
        for folder in ("INBOX", "&AMQ-renden.Inkommande"):
            status, count = imap.select(folder, readonly=True)
            assert (status, count) == ("OK", [b"1"])
            status, found = imap.search(None, "HEADER", "Message-ID", "4f1c@sdk.example.se")
            assert found == [b"1"]
            status, data = imap.fetch("1", "(BODY.PEEK[])")
            assert data[0][1] == MAIL  # type: ignore[index]
