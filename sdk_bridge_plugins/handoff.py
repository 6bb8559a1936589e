"""LMTP and SMTP mailbox delivery: hand the mail to the organisation's own mail server.

For Exchange (which takes mail over SMTP more readily than IMAP APPEND) or a Postfix or
Dovecot that delivers it further. One recipient per message, so LMTP's per-recipient
reply after DATA is the single reply smtplib reads.

At-least-once: the bridge records the delivery after the server's "250"; a crash between
the two repeats the hand-off, and the server cannot tell a repeat from a new message. The
mail keeps its Message-ID, so a mail server or client that drops duplicates by Message-ID
(Dovecot's duplicate elimination in Sieve, Exchange's) can remove the copy.

Settings, both: `recipient` (the envelope recipient, e.g. the functional mailbox's
address), `sender` (envelope sender; default empty, the null reverse-path, so that the
mail server never sends bounces about it: a failure is seen in the bridge's queue),
`timeout` (seconds, default 30, plus one per `rate` bytes, default 1 MB/s).
LMTP: `socket` (a Unix socket, e.g. Dovecot's /run/dovecot/lmtp) or `host` and `port`
(loopback only: LMTP has no TLS here). SMTP: `host`, `port` (default 25), `tls`:
"starttls" (default), "implicit", or "none" (loopback only); `cafile`.

Replies: 5xx is PermanentFailure (the server refuses this message for good: no such
mailbox, too large), 4xx and lost connections TemporaryFailure.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Callable, Mapping
from typing import Any

from sdk_bridge.plugin import PermanentFailure, TemporaryFailure
from sdk_bridge.plugin.settings import is_loopback, only, positive, tls_client_context
from sdk_bridge.plugin.settings import port as check_port

COMMON = {"recipient", "sender", "timeout", "rate"}
DEFAULT_TIMEOUT = 30.0
DEFAULT_RATE = 1_000_000  # bytes per second assumed at worst


class _Handoff:
    """What LMTP and SMTP share: the envelope, the timeouts and the reply mapping."""

    def __init__(self, settings: Mapping[str, Any], known: set[str]) -> None:
        only(settings, known | COMMON)
        recipient = settings.get("recipient")
        if not (isinstance(recipient, str) and "@" in recipient):
            raise ValueError(f"`recipient` must be an e-mail address, not {recipient!r}")
        sender = settings.get("sender", "")
        if not isinstance(sender, str):
            raise ValueError(f"`sender` must be an e-mail address or empty, not {sender!r}")
        self.recipient, self.sender = recipient, sender
        self.timeout = positive(settings, "timeout", DEFAULT_TIMEOUT)
        self.rate = positive(settings, "rate", DEFAULT_RATE)

    async def deliver(self, message_id: str, message: bytes) -> None:
        await asyncio.to_thread(self._deliver, message)

    async def check(self) -> None:
        await asyncio.to_thread(self._check)

    async def close(self) -> None:
        return None

    def _connect(self, timeout: float) -> smtplib.SMTP:
        raise NotImplementedError

    def _check(self) -> None:
        """Connect and greet (with TLS where configured), and say goodbye."""
        self._session(self.timeout, lambda client: None)

    def _deliver(self, message: bytes) -> None:
        def send(client: smtplib.SMTP) -> None:
            eight_bit = not message.isascii() and client.has_extn("8bitmime")
            options = ["BODY=8BITMIME"] if eight_bit else []
            client.sendmail(self.sender, [self.recipient], message, options)

        self._session(self.timeout + len(message) / self.rate, send)

    def _session(self, timeout: float, work: Callable[[smtplib.SMTP], None]) -> None:
        """Connect, greet, do `work`, and say goodbye; server replies become Temporary or
        PermanentFailure."""
        client: smtplib.SMTP | None = None
        try:
            client = self._connect(timeout)
            client.ehlo_or_helo_if_needed()
            work(client)
        except smtplib.SMTPConnectError as e:  # refused at the greeting: not this message
            raise TemporaryFailure(f"{self!r}: {e.smtp_code} {e.smtp_error!r}") from e
        except smtplib.SMTPRecipientsRefused as e:
            code, text = e.recipients[self.recipient]
            raise _failure(self, code, text) from e
        except smtplib.SMTPResponseException as e:
            raise _failure(self, e.smtp_code, e.smtp_error) from e
        except (OSError, smtplib.SMTPException) as e:
            raise TemporaryFailure(f"{self!r}: {e or type(e).__name__}") from e
        finally:
            if client is not None:
                _quit(client)


class LMTP(_Handoff):
    """A `sdk_bridge.plugin.Mailbox` handing mail over LMTP (RFC 2033)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings, {"socket", "host", "port"})
        path, host, port = settings.get("socket"), settings.get("host"), settings.get("port")
        if (path is None) == (host is None and port is None):
            raise ValueError("set either `socket` (a Unix socket) or `host` and `port`")
        if path is not None:
            if not (isinstance(path, str) and path.startswith("/")):
                raise ValueError(f"`socket` must be an absolute path, not {path!r}")
            self.where: tuple[str, int] = (path, 0)
        else:
            self.where = (_loopback(host, "LMTP has no TLS"), check_port(port))

    def __repr__(self) -> str:
        return f"LMTP({self.where[0]}:{self.where[1]} to {self.recipient})"

    def _connect(self, timeout: float) -> smtplib.SMTP:
        host, port = self.where
        client = smtplib.LMTP(timeout=timeout)
        if port:
            client.connect(host, port)
        else:
            client.connect(host)  # smtplib.LMTP takes a host beginning with "/" as a socket
        return client


class SMTP(_Handoff):
    """A `sdk_bridge.plugin.Mailbox` handing mail over SMTP, with TLS."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings, {"host", "port", "tls", "cafile"})
        self.tls = settings.get("tls", "starttls")
        if self.tls not in ("starttls", "implicit", "none"):
            raise ValueError(f"`tls` must be starttls, implicit or none, not {self.tls!r}")
        host = settings.get("host")
        if not (isinstance(host, str) and host):
            raise ValueError("`host` must name the mail server")
        self.host = _loopback(host, "mail would travel unencrypted") if self.tls == "none" else host
        self.port = check_port(settings.get("port", 465 if self.tls == "implicit" else 25))
        self._context = tls_client_context(settings)

    def __repr__(self) -> str:
        return f"SMTP({self.host}:{self.port} {self.tls} to {self.recipient})"

    def _connect(self, timeout: float) -> smtplib.SMTP:
        if self.tls == "implicit":
            return smtplib.SMTP_SSL(self.host, self.port, timeout=timeout, context=self._context)
        client = smtplib.SMTP(self.host, self.port, timeout=timeout)
        if self.tls == "starttls":
            try:
                client.starttls(context=self._context)  # raises unless the server offers it
            except BaseException:
                client.close()
                raise
        return client


def _quit(client: smtplib.SMTP) -> None:
    """Once sendmail() returned, the mail is handed over: QUIT's answer changes nothing
    (smtplib would raise on anything but 221, turning a delivery into a "failure")."""
    try:
        client.quit()
    except (OSError, smtplib.SMTPException):
        client.close()


def _failure(handoff: _Handoff, code: int, text: bytes | str) -> Exception:
    reply = text.decode(errors="replace") if isinstance(text, bytes) else text
    if 500 <= code < 600:
        return PermanentFailure(f"{handoff!r}: refused for good: {code} {reply}")
    return TemporaryFailure(f"{handoff!r}: {code} {reply}")


def _loopback(host: Any, why: str) -> str:
    if not is_loopback(host):
        raise ValueError(f"`host` must be a loopback address ({why}), not {host!r}")
    return str(host)
