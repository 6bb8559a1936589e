"""Handing delivery reports to the organisation's smart host: a small SMTP client on the
event loop, so a smart host that hangs costs the report stage a timeout and nothing
else, and a stopping bridge drops the attempt at once (the report stays owed)."""

import asyncio
import email.utils
import ssl
from email.message import EmailMessage

from ..plugin.settings import is_loopback

MAX_REPLY_LINES = 100  # a reply longer than this is not from a mail server
LINE_LIMIT = 4096  # bytes of one reply line


class SendError(Exception):
    """The smart host did not take the report. `permanent` (a 5xx reply): retrying the
    same report will not help; otherwise try again later."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


async def send(
    message: EmailMessage,
    *,
    smart_host: str,
    port: int,
    tls: ssl.SSLContext | None = None,
    timeout: float = 30,
    local_hostname: str | None = None,
) -> None:
    """Hand `message` to the smart host with `MAIL FROM:<>` (a report never causes
    another), to the addresses in its To header, over STARTTLS (`tls`, else the system's
    CAs): a smart host that does not offer it is used only on loopback, as the `smtp`
    mailbox plugin does. `timeout` bounds each step. Raises `SendError` unless taken."""
    recipients = [address for _, address in email.utils.getaddresses(message.get_all("To", []))]
    if not recipients:
        raise SendError("the report has no recipient", permanent=True)
    data = message.as_bytes(policy=message.policy)
    if local_hostname is None:
        local_hostname = str(message.get("From", "")).rpartition("@")[2].strip(" >") or None
    where = f"smart host {smart_host}:{port}"
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(smart_host, port, limit=LINE_LIMIT), timeout
        )
    except (OSError, TimeoutError) as e:
        raise SendError(f"{where} unreachable: {_describe(e)}", permanent=False) from e
    session = _Session(reader, writer, where, timeout)
    try:
        await session.deliver(
            data,
            recipients,
            helo=local_hostname or "localhost",
            tls=tls or ssl.create_default_context(),
            server_hostname=smart_host,
            tls_required=not is_loopback(smart_host),
        )
    except (OSError, TimeoutError, ValueError, EOFError) as e:  # ValueError: line too long
        raise SendError(f"{where} unreachable: {_describe(e)}", permanent=False) from e
    finally:
        writer.close()


class _Session:
    """One SMTP transaction (RFC 5321), replies read with a bound on time and size."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str, timeout: float
    ) -> None:
        self.reader, self.writer, self.where, self.timeout = reader, writer, where, timeout
        self._lines: list[str] = []  # of the last reply

    async def deliver(
        self,
        data: bytes,
        recipients: list[str],
        *,
        helo: str,
        tls: ssl.SSLContext,
        server_hostname: str,
        tls_required: bool,
    ) -> None:
        await self.expect(220)
        extensions = await self.ehlo(helo)
        if "STARTTLS" in extensions:
            await self.command("STARTTLS", 220)
            await asyncio.wait_for(
                self.writer.start_tls(tls, server_hostname=server_hostname), self.timeout
            )
            extensions = await self.ehlo(helo)
        elif tls_required:  # kept and sent again: the smart host's set-up is to blame
            raise SendError(f"{self.where} does not offer STARTTLS", permanent=False)
        options = ""
        if not data.isascii():
            if "8BITMIME" not in extensions:
                raise SendError(f"{self.where} does not offer 8BITMIME", permanent=True)
            options += " BODY=8BITMIME"
        if not all(r.isascii() for r in recipients):
            if "SMTPUTF8" not in extensions:
                raise SendError(f"{self.where} does not offer SMTPUTF8", permanent=True)
            options += " SMTPUTF8"
        await self.command(f"MAIL FROM:<>{options}", 250, "refused the report")
        refused = []
        for recipient in recipients:
            code, text = await self.ask(f"RCPT TO:<{recipient}>")
            if code not in (250, 251):
                refused.append((code, text))
        if len(refused) == len(recipients):
            code, text = refused[0]
            raise SendError(
                f"{self.where} refused the recipient: {code} {text}",
                permanent=all(500 <= code < 600 for code, _ in refused),
            )
        await self.command("DATA", 354, "refused the report")
        self.writer.write(_dot_stuffed(data) + b".\r\n")
        await self.expect(250, "refused the report")
        self.writer.write(b"QUIT\r\n")  # the report is taken: the answer does not matter

    async def ehlo(self, helo: str) -> set[str]:
        code, text = await self.ask(f"EHLO {helo}")
        if code != 250:
            raise SendError(f"{self.where} refused EHLO: {code} {text}", permanent=False)
        return {line.split(" ")[0].upper() for line in self._lines[1:]}

    async def command(self, line: str, wanted: int, refusal: str = "refused the dialogue") -> None:
        code, text = await self.ask(line)
        if code != wanted:
            raise SendError(f"{self.where} {refusal}: {code} {text}", permanent=code >= 500)

    async def expect(self, wanted: int, refusal: str = "refused the dialogue") -> None:
        code, text = await self.reply()
        if code != wanted:
            raise SendError(f"{self.where} {refusal}: {code} {text}", permanent=code >= 500)

    async def ask(self, line: str) -> tuple[int, str]:
        self.writer.write(line.encode() + b"\r\n")
        await asyncio.wait_for(self.writer.drain(), self.timeout)
        return await self.reply()

    async def reply(self) -> tuple[int, str]:
        """The next reply: its code and its lines' text joined on one line."""
        self._lines = []
        while len(self._lines) < MAX_REPLY_LINES:
            line = await asyncio.wait_for(self.reader.readline(), self.timeout)
            if not line.endswith(b"\n"):
                raise EOFError("the connection was closed")
            code, more, text = line[:3], line[3:4] == b"-", line[4:].strip()
            if not code.isdigit():
                raise SendError(f"{self.where} does not speak SMTP", permanent=False)
            self._lines.append(text.decode("utf-8", "replace"))
            if not more:
                return int(code), " ".join(" ".join(self._lines).split())
        raise SendError(f"{self.where} sent an endless reply", permanent=False)


def _dot_stuffed(data: bytes) -> bytes:
    """The message as DATA carries it: CRLF line ends, a leading dot doubled, ending
    in CRLF (the terminating "." follows)."""
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


def _describe(error: BaseException) -> str:
    return str(error) or ("timed out" if isinstance(error, TimeoutError) else type(error).__name__)
