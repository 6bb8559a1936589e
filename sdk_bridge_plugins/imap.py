"""IMAP mailbox delivery: APPEND into an account's folder (aioimaplib).

Each delivery opens its own connection (IMAPS, or plain IMAP to a loopback server),
logs in, and first SEARCHes the folder for the Message-ID: a repeated call, after a crash
or an APPEND whose answer was lost, then finds the message there and does not append a
second copy. A folder that does not exist yet is created when the server asks for it
([TRYCREATE]). A fresh connection per message keeps no state to go stale; reconnecting
is simply the next delivery.

Settings: `host` (default 127.0.0.1), `port` (default 993 with TLS, 143 without),
`tls` (true by default; false only for a server on a loopback address), `cafile` (CA
certificates to verify the server with; default: the system's), `user`, `password` or
`password_file`, `folder` (default INBOX; "/"-separated levels, sent in modified UTF-7
and joined with the server's own hierarchy separator, "." in Dovecot's Maildir layout),
`timeout` (seconds for each step, default 30; an APPEND gets one more second per
`rate` bytes, default 1 MB/s, so a 25 MB message is not cut off on a slow link).

Failures: no answer, a refused login, NO from the server: TemporaryFailure (the message
stays queued; fixing the account or the server heals it). BAD to an APPEND: the server
cannot take this message as it is, PermanentFailure.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aioimaplib import aioimaplib

from sdk_bridge.plugin import PermanentFailure, TemporaryFailure, mutf7
from sdk_bridge.plugin.kit import KeyError_, read_passphrase
from sdk_bridge.plugin.settings import file_path, is_loopback, only, positive, tls_client_context
from sdk_bridge.plugin.settings import port as check_port

SETTINGS = {
    "host", "port", "tls", "cafile", "user", "password", "password_file", "folder",
    "timeout", "rate",
}  # fmt: skip
DEFAULT_TIMEOUT = 30.0
DEFAULT_RATE = 1_000_000  # bytes per second assumed at worst for an APPEND


class IMAP:
    """A `sdk_bridge.plugin.Mailbox` appending to one IMAP account's folder."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        only(settings, SETTINGS)
        self.host = _text(settings, "host", "127.0.0.1")
        self.tls = settings.get("tls", True)
        if not isinstance(self.tls, bool):
            raise ValueError(f"`tls` must be true or false, not {self.tls!r}")
        if not self.tls and not is_loopback(self.host):
            raise ValueError(f"`tls: false` is only allowed for a loopback host, not {self.host}")
        self.port = check_port(settings.get("port", 993 if self.tls else 143))
        self.user = _text(settings, "user", None)
        self.password = _password(settings)
        folder = _text(settings, "folder", "INBOX")
        if any(not level for level in folder.split("/")):
            raise ValueError(f"`folder` {folder!r}: empty level between '/'")
        self.folder = folder
        self.timeout = positive(settings, "timeout", DEFAULT_TIMEOUT)
        self.rate = positive(settings, "rate", DEFAULT_RATE)
        self._context = tls_client_context(settings) if self.tls else None

    def __repr__(self) -> str:
        scheme = "imaps" if self.tls else "imap"
        return f"IMAP({scheme}://{self.user}@{self.host}:{self.port}/{self.folder})"

    async def deliver(self, message_id: str, message: bytes) -> None:
        timeout = self.timeout + len(message) / self.rate
        await self._session(timeout, lambda client: self._deliver(client, message_id, message))

    async def check(self) -> None:
        """Log in and out: the server answers and the account works."""

        async def login(client: aioimaplib.IMAP4) -> None:
            _expect(await client.login(_quoted(self.user), self.password), "LOGIN", self)

        await self._session(self.timeout, login)

    async def close(self) -> None:
        return None

    async def _session(
        self, timeout: float, work: Callable[[aioimaplib.IMAP4], Awaitable[None]]
    ) -> None:
        """A connection of its own for `work`, closed on every path."""
        client = (
            aioimaplib.IMAP4_SSL(self.host, self.port, timeout=timeout, ssl_context=self._context)
            if self.tls
            else aioimaplib.IMAP4(self.host, self.port, timeout=timeout)
        )
        try:
            try:
                await client.wait_hello_from_server()
            except (OSError, TimeoutError, aioimaplib.Abort) as e:
                raise TemporaryFailure(f"{self!r}: cannot connect: {_why(e)}") from e
            try:
                await work(client)
            except (OSError, TimeoutError, aioimaplib.Abort, aioimaplib.CommandTimeout) as e:
                # Whether an APPEND in flight arrived is unknown: the next call looks first.
                raise TemporaryFailure(f"{self!r}: connection lost: {_why(e)}") from e
            with contextlib.suppress(Exception):  # done; LOGOUT's answer changes nothing
                await client.logout()
        finally:
            transport = client.protocol.transport if client.protocol else None
            if transport is not None:
                transport.close()

    async def _deliver(self, client: aioimaplib.IMAP4, message_id: str, message: bytes) -> None:
        login = await client.login(_quoted(self.user), self.password)
        _expect(login, "LOGIN", self)
        mailbox = _quoted(await self._mailbox_name(client))
        if await self._holds(client, mailbox, message_id):
            return
        answer = await client.append(message, mailbox=mailbox)
        if answer.result == "NO" and b"[TRYCREATE]" in b" ".join(answer.lines):
            created = await client.create(mailbox)
            # Another delivery may have created it a moment ago: what was wanted anyway.
            if not (created.result == "NO" and b"[ALREADYEXISTS]" in b" ".join(created.lines)):
                _expect(created, "CREATE", self)
            answer = await client.append(message, mailbox=mailbox)
        if answer.result == "BAD":
            raise PermanentFailure(f"{self!r}: APPEND refused: {_text_of(answer)}")
        _expect(answer, "APPEND", self)

    async def _mailbox_name(self, client: aioimaplib.IMAP4) -> str:
        """The folder's name on this server: each level in modified UTF-7, joined by the
        server's hierarchy separator (Dovecot's Maildir default is ".", others use "/")."""
        levels = self.folder.split("/")
        if len(levels) == 1:
            return mutf7.encode(self.folder)
        listed = await client.list('""', '""')
        _expect(listed, "LIST", self)
        separator = next(
            (m[1].decode() for line in listed.lines if (m := _SEPARATOR.match(line))), None
        )
        if separator is None:
            raise TemporaryFailure(f"{self!r}: the server has no folder hierarchy")
        separator = separator[-1]  # "\\" is a quoted backslash
        if any(separator in level for level in levels):
            raise TemporaryFailure(
                f"{self!r}: a folder level holds the server's separator {separator!r}; "
                "rename it in the configuration"
            )
        return separator.join(mutf7.encode(level) for level in levels)

    async def _holds(self, client: aioimaplib.IMAP4, mailbox: str, message_id: str) -> bool:
        """Whether the folder has a message with this Message-ID (False: no such folder)."""
        # SELECT, not EXAMINE: aioimaplib allows SEARCH only after SELECT. Searching
        # changes nothing, and the session ends with LOGOUT, never with CLOSE (which would
        # expunge what the user marked deleted). SELECT does take \Recent off the folder's
        # messages; clients show unread mail by \Seen, which stays as it was.
        selected = await client.select(mailbox)
        if selected.result == "NO" and not await self._exists(client, mailbox):
            return False  # not created yet: APPEND's [TRYCREATE] will make it
        _expect(selected, "SELECT", self)
        found = await client.search("HEADER", "Message-ID", _quoted(f"<{message_id}>"))
        _expect(found, "SEARCH", self)
        # aioimaplib gives the untagged "* SEARCH 3 7" as b"3 7"; the last line is the
        # tagged completion's text.
        return any(
            re.fullmatch(rb"(SEARCH )?\d+( \d+)*", line.strip()) for line in found.lines[:-1]
        )

    async def _exists(self, client: aioimaplib.IMAP4, mailbox: str) -> bool:
        """Whether LIST finds the folder: a SELECT refused for another reason must not be
        taken for "not there", or a message already in it would be appended again."""
        listed = await client.list('""', mailbox)
        _expect(listed, "LIST", self)
        return len(listed.lines) > 1


# One LIST reply: (flags) "separator" name; NIL for a flat server.
_SEPARATOR = re.compile(rb'\([^)]*\) "(\\?.)" ')


def _why(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _expect(answer: aioimaplib.Response, command: str, mailbox: IMAP) -> None:
    if answer.result != "OK":
        raise TemporaryFailure(
            f"{mailbox!r}: {command} answered {answer.result} {_text_of(answer)}"
        )


def _text_of(answer: aioimaplib.Response) -> str:
    return " ".join(line.decode(errors="replace") for line in answer.lines if line)[:300]


def _quoted(text: str) -> str:
    """An IMAP quoted string (RFC 3501 §4.3): backslash and double quote escaped."""
    if any(c in text for c in "\r\n\0"):
        raise ValueError(f"{text!r} cannot be sent to an IMAP server")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(settings: Mapping[str, Any], key: str, default: str | None) -> str:
    value = settings.get(key, default)
    if not (isinstance(value, str) and value):
        raise ValueError(f"`{key}` must be set to a non-empty text")
    return value


def _password(settings: Mapping[str, Any]) -> str:
    password, path = settings.get("password"), file_path(settings, "password_file")
    if (password is None) == (path is None):
        raise ValueError("set either `password` or `password_file`")
    if path is not None:
        try:
            password = read_passphrase(path).decode()
        except (KeyError_, UnicodeDecodeError) as e:
            raise ValueError(f"`password_file`: {e}") from e
    if not (isinstance(password, str) and password):
        raise ValueError("the password must be a non-empty text")
    return password
