"""Dovecot reads what the Maildir plugin writes: the inbox and a Swedish-named folder."""

import asyncio
import grp
import os
import pwd
import stat
from pathlib import Path

from support import dovecot
from support.dovecot import Dovecot

from sdk_bridge_plugins.maildir import Maildir

dovecot_server = dovecot.dovecot_server

NOBODY = 65534  # uid and gid: a user of its own, as systemd's DynamicUser= gives
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


def test_a_bridge_of_its_own_user_shares_the_maildir_through_its_group(
    dovecot_server: Dovecot, tmp_path: Path
) -> None:
    """As under systemd/maildir.conf: the bridge runs as a user of its own (here nobody)
    with Dovecot's group as a supplementary one, and a umask that lets others read; the
    administrator made the Maildir 2770 vmail:vmail. Dovecot (as vmail) reads and files the
    mail; the bridge delivers again after Dovecot wrote its own files; nobody else may look."""
    account = pwd.getpwnam(dovecot.MAIL_USER)
    group = grp.getgrgid(account.pw_gid).gr_name
    root = dovecot_server.maildir("bob")
    root.mkdir()
    os.chown(root, account.pw_uid, account.pw_gid)
    os.chmod(root, 0o2770)
    asyncio.run(Maildir({"path": str(tmp_path), "group": group}).deliver("warm-up", MAIL))
    boxes = [Maildir({"path": str(root), "folder": f, "group": group}) for f in (None, "Ärenden")]

    def deliver_as_the_bridge(message_id: str) -> None:
        child = os.fork()
        if child == 0:  # the child, as the bridge
            code = 1
            try:
                os.setgroups([account.pw_gid])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                os.umask(0o022)
                for box in boxes:
                    asyncio.run(box.deliver(message_id, MAIL.replace(b"4f1c", message_id.encode())))
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0

    deliver_as_the_bridge("first@sdk.example.se")
    for path in [root / "new", *root.glob("new/*"), *root.glob(".*/*")]:
        mode = path.stat()
        assert (mode.st_uid, mode.st_gid) == (NOBODY, account.pw_gid), path
        assert stat.S_IMODE(mode.st_mode) in (0o2770, 0o660), path
    with dovecot_server.imap("bob") as imap:
        for folder in ("INBOX", "&AMQ-renden"):
            assert imap.select(folder) == ("OK", [b"1"])
            assert imap.store("1", "+FLAGS", "\\Seen")[0] == "OK"  # Dovecot moves it to cur/
    deliver_as_the_bridge("second@sdk.example.se")
    with dovecot_server.imap("bob") as imap:
        for folder in ("INBOX", "&AMQ-renden"):
            assert imap.select(folder, readonly=True) == ("OK", [b"2"])
