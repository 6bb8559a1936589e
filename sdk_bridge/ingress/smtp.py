"""SMTP ingress: Exchange or Postfix relays mail for SDK recipients here.

What can be known during the SMTP dialogue is refused during it, so the sending server
writes the non-delivery report itself: relaying for strangers (554 5.7.1), a sender that
may not speak for any of our functional addresses (550 5.7.1), a recipient SDK does not
know or cannot encrypt to (550 5.1.1), a registry that cannot answer now (451 4.4.3),
content SDK cannot carry (552 5.3.4, 554 5.6.0) and malware (554 5.7.1). 250 comes only
after the message is durably in the spool.
"""

import asyncio
import errno
import fnmatch
import hmac
import ipaddress
import re
import ssl
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from ..mapping.premapped import Premapped
from ..mapping.to_sdk import MappedMail, business_message, map_mail, parse_mail
from ..plugin import Scanner, TemporaryFailure
from ..registry.addresses import DOT_ATOM, PLAIN_DOMAIN
from ..registry.client import Registry
from ..registry.errors import NotFound, RegistryUnavailable
from ..runtime import counters
from ..sdk import message as msg
from ..spool import Envelope as SpoolEnvelope
from ..spool import RecipientRecord, SpoolFull
from ..spool.contract import IngressQueue
from . import dsnparams, limits
from .arriving import Arriving, MemoryBudget

log = structlog.get_logger(__name__)

# The largest mail that can still become a 30 MB SDK message: MIME's base64 and the SDK
# message's base64 cost the same, so the mail's own size is a fair bound; the exact check
# is made on the mapped message at DATA.
MAX_MESSAGE_BYTES = 30_000_000
MAX_HEADER_LINES = 500
MAX_HEADER_BYTES = 256 * 1024
JUNK_ALLOWANCE = 10  # NOOP, RSET, VRFY, EXPN, HELP that move the idle timer between messages
ALWAYS_ALLOWED_TYPES = frozenset({"application/pdf"})


@dataclass(frozen=True)
class SenderRule:
    """Who may send as one of our functional addresses."""

    functional_address: str  # the address-book identifier
    senders: tuple[str, ...] = ()  # envelope senders, shell patterns: "*@kommun.se"
    auth_users: tuple[str, ...] = ()  # SMTP AUTH users


@dataclass(frozen=True)
class IngressSettings:
    organisation_id: str
    hostname: str
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    senders: tuple[SenderRule, ...]
    users: dict[str, str] = field(default_factory=dict)  # SMTP AUTH user -> password
    max_message_bytes: int = MAX_MESSAGE_BYTES
    forbidden_types: frozenset[str] = frozenset()
    secrecy_tags: tuple[str, ...] = ("[sekretess]",)
    max_recipients: int = 100  # per message (RFC 5321 asks servers to take at least 100)
    idle_timeout: float = 300.0  # seconds a client may stay silent; then its slot is freed
    auth_window: float = 600.0  # failed AUTH attempts this recent slow the next ones down
    max_connections: int = 500  # at once, all clients (the daemon keeps it below the fd limit)
    max_connections_per_client: int = 50  # at once, one address or IPv6 /64


# A path of ASCII dot-atoms only; anything else goes to the full parser.
_SIMPLE_PATH = re.compile(rf"<(({DOT_ATOM})@{PLAIN_DOMAIN})>[ \t]*([^\s(](?:.*\S)?|)")
_REPLY = re.compile(r"(\d{3})([ -])(.*)", re.DOTALL)
_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(\s|$)")
_DEFAULT_CODES = {  # RFC 3463 codes for aiosmtpd's replies that carry none
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "552": "5.3.4",
    "553": "5.1.3",
    "555": "5.5.4",
}


def with_enhanced_code(reply: str) -> str:
    """`250 OK` -> `250 2.0.0 OK`; replies that have one, 220, 334 and 354 stay as they are."""
    match = _REPLY.fullmatch(reply)
    if match is None or match[1] in ("220", "334", "354") or _ENHANCED.match(match[3]):
        return reply
    code = _DEFAULT_CODES.get(match[1], f"{match[1][0]}.0.0")
    return f"{match[1]}{match[2]}{code} {match[3]}"


class _Refused(Exception):
    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class BridgeSession(Session):
    """aiosmtpd's Session, with what the bridge keeps on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.auth_delay = 0.0  # seconds before the 535 of a failed AUTH
        self.dsn_mail: dict[str, str] = {}  # RFC 3461 parameters of the last MAIL
        self.dsn_rcpt: dict[str, str] = {}  # and of the last RCPT


class BridgeEnvelope(Envelope):
    """aiosmtpd's Envelope, with what the bridge keeps on it."""

    def __init__(self) -> None:
        super().__init__()
        self.mail: bytes | Path | None = None  # the message, once DATA has ended well
        self.dsn_mail: dict[str, str] = {}  # RFC 3461 parameters of its MAIL
        self.recipients: list[RecipientRecord] = []  # resolved, one per SDK recipient


class BridgeSMTP(SMTP):
    """aiosmtpd's SMTP, with these changes: connections are counted per client and in all
    (`limits`; over a limit the client gets 421 4.7.0 and nothing else); NOOP, RSET, VRFY,
    EXPN and HELP keep a session alive only `JUNK_ALLOWANCE` times between messages; RFC
    3461 parameters are taken off MAIL and RCPT before aiosmtpd parses them; DATA is held
    in memory within a budget and goes to a file in the spool past it (`arriving`), not
    collected in aiosmtpd's lists of lines, refusing SMTP smuggling as it reads, timed by
    progress (silence for the idle timeout ends it, a slow but steady sender is not cut)."""

    _client: str | None = None  # the key this connection is counted under, once admitted
    _refusal: str | None = None  # the 421 a connection over a limit gets
    _junk = 0  # junk commands since the last message
    _deadline = 0.0  # when the idle timer fires
    _previous_deadline = 0.0  # when it would have fired before the last command

    def _create_session(self) -> BridgeSession:
        return BridgeSession(self.loop)

    def _create_envelope(self) -> BridgeEnvelope:
        return BridgeEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None and self._client is None and self._refusal is None:
            peer = transport.get_extra_info("peername")
            key = limits.client_key(str(peer[0]) if isinstance(peer, tuple) else "")
            handler, settings = self.event_handler, self.event_handler.settings
            self._refusal = handler.limits.admit(
                key, per_client=settings.max_connections_per_client, total=settings.max_connections
            )
            if self._refusal is None:
                self._client = key
            else:
                counters.SMTP_CONNECTIONS_REFUSED.inc()
                count = handler.limits.refusals_to_report()
                if count:
                    log.warning("SMTP connections refused", count=count, client=key)
        super().connection_made(transport)
        if transport.get_extra_info("ssl_object") is not None:  # the implicit TLS listener
            counters.SMTP_TLS.labels("implicit").inc()

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        if self._client is not None:
            self.event_handler.limits.release(self._client)
            self._client = None

    async def _handle_client(self) -> None:
        if self._refusal is not None:
            await self.push(self._refusal)
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()

    def _reset_timeout(self, duration: float | None = None) -> None:
        self._previous_deadline = self._deadline
        super()._reset_timeout(duration)
        self._deadline = self.loop.time() + (duration or self._timeout_duration)

    async def _junk_command(self) -> None:
        """After the allowance a junk command no longer moves the idle timer: the timer
        goes back to when it would have fired (Postfix's smtpd_junk_command_limit)."""
        self._junk += 1
        if self._junk > JUNK_ALLOWANCE:
            self._reset_timeout(max(self._previous_deadline - self.loop.time(), 0.001))

    async def smtp_NOOP(self, arg: str) -> None:
        await self._junk_command()
        await super().smtp_NOOP(arg)

    async def smtp_RSET(self, arg: str) -> None:
        await self._junk_command()
        await super().smtp_RSET(arg)

    async def smtp_VRFY(self, arg: str) -> None:
        await self._junk_command()
        await super().smtp_VRFY(arg)

    async def smtp_EXPN(self, arg: str) -> None:
        await self._junk_command()
        await super().smtp_EXPN(arg)

    async def smtp_HELP(self, arg: str) -> None:
        await self._junk_command()
        await super().smtp_HELP(arg)

    event_handler: "IngressHandler"
    _plain_replies = False  # greeting and HELO/EHLO: no enhanced status codes (RFC 2034)

    async def smtp_AUTH(self, arg: str) -> None:
        """Mechanism names in any case (RFC 4954 says they are case-insensitive)."""
        mechanism, space, rest = (arg or "").partition(" ")
        await super().smtp_AUTH(mechanism.upper() + space + rest if arg else arg)

    async def push(self, status: str | bytes) -> None:
        """Every reply carries an enhanced status code, aiosmtpd's own ones too. A failed
        AUTH is answered after the delay the handler set (`IngressHandler.authenticate`):
        password guessing is slowed, never locked out."""
        session = self.session
        if (
            isinstance(status, str)
            and status.startswith("535")
            and isinstance(session, BridgeSession)
        ):
            await asyncio.sleep(session.auth_delay)
        if isinstance(status, bytes):
            await super().push(status)
        else:
            await super().push(status if self._plain_replies else with_enhanced_code(status))

    async def smtp_EHLO(self, hostname: str) -> None:
        self._plain_replies = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._plain_replies = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._plain_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._plain_replies = False

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        handler = self.event_handler
        arriving = Arriving(handler.memory, handler.spool.incoming)
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            problem = await self._receive(arriving)
            if problem is None and isinstance(self.envelope, BridgeEnvelope):
                self.envelope.mail = arriving.content
                status = await self._call_handler_hook("DATA")
            else:
                status = problem
        finally:
            if isinstance(self.envelope, BridgeEnvelope):
                self.envelope.mail = None
            arriving.discard()
        self._set_post_data_state()
        self._junk = 0
        await self.push(status)

    async def _receive(self, arriving: Arriving) -> str | None:
        """Read DATA into `arriving` (dot-unstuffed) up to the final dot, whatever goes wrong,
        so that no line of the message is ever read as a command; the refusal, or None when
        it is whole and flushed.

        Read in blocks, not a line at a time (that cost more than the rest of the
        dialogue): the lines a block completes are checked and written together. What the
        client sent after the final dot (pipelined commands) goes back to the reader."""
        size, limit, problem = 0, self.data_size_limit, None
        pending = b""  # the start of a line not yet complete
        line_start = True  # `pending` starts a line (not the rest of an over-long one)
        while self.transport is not None:
            since = self.loop.time() - self._deadline + self._timeout_duration
            if since > min(1.0, self._timeout_duration / 10):
                self._reset_timeout()  # progress; not for every block, as it costs a timer
            block = await self._reader.read(DATA_BLOCK)
            if not block:
                raise asyncio.IncompleteReadError(pending, None)
            pending += block
            # As if after the CRLF that ended the line before (none before the first line,
            # none inside an over-long line): an index in `view` past it is one in `pending`.
            view = (b"\r\n" if line_start else b"--") + pending
            end = view.find(b"\r\n.\r\n")  # the final dot, at `pending[end]`
            complete = end if end >= 0 else max(view.rfind(b"\r\n"), 0)  # whole lines
            lines, pending = pending[:complete], pending[complete:]
            if not line_start and lines:  # the rest of an over-long line: never written
                lines = lines[lines.find(b"\r\n") + 2 :]
                line_start = True
            if lines:
                size += len(lines)
                problem = problem or _data_problem(lines, size, limit, self.line_length_limit)
                if problem is None:
                    try:
                        arriving.write(_unstuffed(lines))
                    except OSError as e:
                        log.error("cannot store an incoming message", error=str(e))
                        problem = storage_reply(e)
            if end >= 0:
                # asyncio's reader cannot be read ahead of; aiosmtpd uses its buffer too.
                self._reader._buffer[:0] = pending[3:]  # type: ignore[attr-defined]
                if problem is None:
                    try:
                        arriving.finish()
                    except OSError as e:
                        problem = storage_reply(e)
                return problem
            if len(pending) > self.line_length_limit + 1:  # no CRLF in sight: too long
                problem = problem or "500 5.5.6 Line too long (RFC 5321 4.5.3.1.6)"
                pending, line_start = pending[-1:], False  # it may be the CR of its CRLF
        return "421 4.4.2 Connection lost"

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's, with a shortcut for the usual `<local@domain.tld>`: the email
        package's address parser it uses costs more than the rest of the command."""
        match = _SIMPLE_PATH.fullmatch(arg) if arg else None
        if match is None or (self.local_part_limit and len(match[2]) > self.local_part_limit):
            return super()._getaddr(arg)
        return match[1], match[3]

    async def smtp_MAIL(self, arg: str | None) -> None:
        if not _utf8(arg):
            await self.push("553 5.1.7 The sender address is not valid UTF-8")
            return
        arg = await self._take(arg, dsnparams.MAIL_PARAMS, "dsn_mail")
        if arg is not None:
            await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if not _utf8(arg):
            await self.push("553 5.1.3 The recipient address is not valid UTF-8")
            return
        arg = await self._take(arg, dsnparams.RCPT_PARAMS, "dsn_rcpt")
        if arg is not None:
            await super().smtp_RCPT(arg)

    async def _take(self, arg: str | None, names: tuple[str, ...], key: str) -> str | None:
        if not arg:
            return arg
        try:
            arg, params = dsnparams.take(arg, names)
        except dsnparams.ParameterError as e:
            await self.push(f"501 5.5.4 {e}")
            return None
        if isinstance(self.session, BridgeSession):
            setattr(self.session, key, params)
        return arg


class IngressHandler:
    """The aiosmtpd handler: decides at each command, stores at the end of DATA."""

    def __init__(
        self,
        settings: IngressSettings,
        registry: Registry,
        spool: IngressQueue,
        scanner: Scanner | None = None,
        accepted: Callable[[], None] | None = None,
        premapped: Premapped | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.spool = spool
        self.scanner = scanner
        self.accepted = accepted  # told after each 250 (wakes the outbound worker)
        self.premapped = premapped  # what was mapped here, for the outbound worker
        self.in_flight = 0
        self.memory = MemoryBudget()  # DATA of all sessions held in memory (`arriving`)
        self.limits = limits.ConnectionLimits()
        # Not named auth_…: aiosmtpd offers a handler's auth_* attributes as mechanisms.
        self.guessing = limits.AuthThrottle(settings.auth_window)

    async def handle_exception(self, error: Exception) -> str:
        """An unexpected failure is never a 5xx: the client tries again later."""
        if isinstance(error, RecursionError):
            return "554 5.6.0 The message is nested too deeply to be read"
        log.error("SMTP session failed", error=repr(error))
        return "451 4.3.0 Internal error; try again later"

    # --- authentication --------------------------------------------------------------------

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        """A right password always passes; a wrong one is answered late (`failure_delay`)."""
        user = ""
        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode("utf-8", "replace")
            expected = self.settings.users.get(user)
            given = auth_data.password.decode("utf-8", "replace")
            if expected is not None and _same(expected, given):
                return AuthResult(success=True, auth_data=user)
        delay = self.guessing.failed(limits.client_key(_client_address(session)), user)
        if isinstance(session, BridgeSession):  # BridgeSMTP waits this long before the 535
            session.auth_delay = delay
        log.warning("SMTP AUTH failed", client=_client_address(session), delay=delay)
        return AuthResult(success=False, handled=False)

    # --- the dialogue ----------------------------------------------------------------------

    async def handle_EHLO(
        self,
        server: SMTP,
        session: BridgeSession,
        envelope: BridgeEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        extensions = ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-DSN"]
        return [*responses[:-1], *extensions, "250 HELP"]

    async def handle_MAIL(
        self,
        server: SMTP,
        session: BridgeSession,
        envelope: BridgeEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.dsn_mail = session.dsn_mail
        envelope.recipients = []
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: BridgeSession,
        envelope: BridgeEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        if len(envelope.recipients) >= self.settings.max_recipients:
            return "452 4.5.3 Too many recipients; send the rest in another message"
        try:
            self._check_relay(session)
            self._sender(envelope, session)
            record = await self._recipient(address, session.dsn_rcpt)
        except _Refused as refused:
            log.info("recipient refused", recipient=address, reply=refused.reply)
            return refused.reply
        same = (record.organisation_id, record.functional_address)
        if any((r.organisation_id, r.functional_address) == same for r in envelope.recipients):
            return "250 2.1.5 OK (already a recipient)"  # one SDK message per address
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        envelope.recipients.append(record)
        return "250 2.1.5 OK"

    def _check_relay(self, session: BridgeSession) -> None:
        if session.authenticated:
            return
        host = session.peer[0] if isinstance(session.peer, tuple) else ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped  # a dual-stack listener sees ::ffff:10.1.2.3
        if address is None or not any(address in n for n in self.settings.allowed_networks):
            raise _Refused(
                "554 5.7.1 Relaying denied: authenticate, or send from an allowed network"
            )

    def _sender(self, envelope: BridgeEnvelope, session: BridgeSession) -> SenderRule:
        """The functional address this mail is sent as. An authenticated user may speak only
        for the addresses that list it (by MAIL FROM among them, else the first); anyone
        else is known by MAIL FROM alone."""
        mail_from = (envelope.mail_from or "").lower()
        mail_from = "" if mail_from == "<>" else mail_from  # the null sender

        def matches(rule: SenderRule) -> bool:
            return bool(mail_from) and any(
                fnmatch.fnmatchcase(mail_from, p.lower()) for p in rule.senders
            )

        rules = self.settings.senders
        if session.authenticated:
            rules = tuple(r for r in rules if session.auth_data in r.auth_users)
            if rules and not mail_from:  # a bounce or an auto-reply: nobody's address
                return rules[0]
            if not any(matches(r) for r in rules):  # Postfix's reject_sender_login_mismatch
                raise _Refused(
                    f"553 5.7.1 {envelope.mail_from}: not owned by user {session.auth_data}"
                )
        for rule in rules:
            if matches(rule):
                return rule
        raise _Refused(
            f"550 5.7.1 {envelope.mail_from or '<>'} may not send as any of our SDK functional "
            "addresses"
        )

    async def _recipient(self, address: str, dsn: dict[str, str]) -> RecipientRecord:
        addresses = self.registry.addresses
        assert addresses is not None  # the daemon requires organisation.sdk_domain

        def resolve() -> Any:  # in one thread hop: both are cached, each may ask a registry
            found = addresses.resolve(address)
            self.registry.certpub.encryption_certificates(found.organisation.id)
            return found

        def known() -> Any:  # on the event loop, where nothing need be asked of a registry
            if addresses.book.refreshed_at is None:  # not fetched yet: the first use fetches
                return None
            found = addresses.resolve(address)
            cached = self.registry.certpub.cached_encryption_certificates(found.organisation.id)
            return found if cached else None

        try:
            recipient = known() or await asyncio.to_thread(resolve)
            organisation_id = recipient.organisation.id
        except NotFound as e:
            raise _Refused(f"550 5.1.1 {_one_line(e)}") from None
        except RegistryUnavailable as e:
            counters.SMTP_REGISTRY_DEFERRALS.inc()
            raise _Refused(
                f"451 4.4.3 SDK registry unavailable, try again later: {_one_line(e)}"
            ) from None
        notify = tuple(dsn["NOTIFY"].split(",")) if "NOTIFY" in dsn else ()
        return RecipientRecord(
            address=address,
            organisation_id=organisation_id,
            functional_address=recipient.address.identifier,
            orcpt=dsn.get("ORCPT"),
            notify=notify,
        )

    async def handle_DATA(
        self, server: SMTP, session: BridgeSession, envelope: BridgeEnvelope
    ) -> str:
        self.in_flight += 1  # a shutdown waits for these before closing the spool
        try:
            with counters.LATENCY.labels("smtp_accept").time():
                return await self._data(session, envelope)
        finally:
            self.in_flight -= 1

    def handle_STARTTLS(
        self, server: SMTP, session: BridgeSession, envelope: BridgeEnvelope
    ) -> bool:
        """After a STARTTLS handshake: counted; no client certificate is asked for."""
        counters.SMTP_TLS.labels("starttls").inc()
        return True

    async def drained(self, timeout: float) -> bool:
        """Wait (bounded) until no message is being checked or stored."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        return not self.in_flight

    async def _data(self, session: BridgeSession, envelope: BridgeEnvelope) -> str:
        data = envelope.mail
        assert data is not None  # DATA ended well: BridgeSMTP set it
        try:
            rule = self._sender(envelope, session)
            if self.scanner is None:  # read, check and store in one thread hop
                spool_id, stored, mapped = await asyncio.to_thread(
                    self._check_and_store, data, session, envelope, rule
                )
            else:
                content, mail, mapped = await asyncio.to_thread(self._read_and_check, data)
                await self._scan(content)
                del content
                stored = self._spool_envelope(session, envelope, rule, mail)
                spool_id = await asyncio.to_thread(self._store, data, stored, envelope.recipients)
        except _Refused as refused:
            log.info("message refused", reply=refused.reply)
            return refused.reply
        if self.premapped is not None:
            self.premapped.keep(spool_id, mapped, len(envelope.recipients))
        log.info(
            "message accepted",
            spool_id=spool_id,
            message_id=stored.mail_message_id,
            recipients=len(envelope.recipients),
        )
        counters.SMTP_ACCEPTED.inc()
        if self.accepted is not None:
            self.accepted()
        return f"250 2.0.0 OK queued as {spool_id}"

    def _check_and_store(
        self, data: bytes | Path, session: BridgeSession, envelope: BridgeEnvelope, rule: SenderRule
    ) -> tuple[str, SpoolEnvelope, MappedMail]:
        _, mail, mapped = self._read_and_check(data)
        stored = self._spool_envelope(session, envelope, rule, mail)
        return self._store(data, stored, envelope.recipients), stored, mapped

    def _read_and_check(self, data: bytes | Path) -> tuple[bytes, Any, MappedMail]:
        content = data if isinstance(data, bytes) else data.read_bytes()
        return content, *self._check_content(content)

    @staticmethod
    def _spool_envelope(
        session: BridgeSession, envelope: BridgeEnvelope, rule: SenderRule, mail: Any
    ) -> SpoolEnvelope:
        return SpoolEnvelope(
            mail_from=envelope.mail_from or "",
            client=f"{session.peer[0]}:{session.peer[1]}" if session.peer else "",
            helo=session.host_name or "",
            auth_user=session.auth_data if session.authenticated else None,
            envid=envelope.dsn_mail.get("ENVID"),
            ret=envelope.dsn_mail.get("RET"),
            mail_message_id=(mail["Message-ID"] or "").strip().strip("<>") or None,
            sender_address=rule.functional_address,
        )

    def _store(
        self, data: bytes | Path, stored: SpoolEnvelope, recipients: list[RecipientRecord]
    ) -> str:
        """The spool id, or a refusal with the reply a storage failure calls for."""
        try:
            return self.spool.accept(stored, recipients, data)
        except Exception as e:
            log.exception("message could not be stored")
            raise _Refused(storage_reply(e)) from None

    def _check_content(self, content: bytes) -> tuple[Any, MappedMail]:
        """Parse and map the mail as the worker would: what cannot become an SDK message
        is refused now. Returns the parsed mail and its mapping."""
        end = content.find(b"\r\n\r\n")  # split() would copy the body too
        header_block = content if end < 0 else content[:end]
        if len(header_block) > MAX_HEADER_BYTES or header_block.count(b"\r\n") > MAX_HEADER_LINES:
            raise _Refused("552 5.3.4 Too many or too large header lines")
        try:
            mail = parse_mail(content)
        except (IndexError, ValueError, TypeError):  # the email package on hostile headers
            raise _Refused("554 5.6.0 The message's MIME structure cannot be read") from None
        placeholder = msg.Party(self.settings.organisation_id, msg.Attention("placeholder"))
        message_id = str(uuid.uuid4())
        try:
            mapped = map_mail(mail, secrecy_tags=self.settings.secrecy_tags, raw=content)
            business = business_message(
                mapped,
                message_id=message_id,
                conversation_id=message_id,
                ref_to_message_id=None,
                sender=placeholder,
                recipient=placeholder,
                now=datetime.now(UTC),
            )
        except ValueError as e:
            raise _Refused(
                f"554 5.6.0 The message cannot be carried by SDK: {_one_line(e)}"
            ) from None
        for document in business.documents:
            for file in document.files:
                kind = file.content_type.lower()
                if kind in self.settings.forbidden_types and kind not in ALWAYS_ALLOWED_TYPES:
                    raise _Refused(f"554 5.6.0 Attachments of type {kind} are not accepted")
        try:
            msg.check(business)  # to_xml's verdict, without serialising the attachments
        except msg.InvalidMessage as e:
            if e.problem.detail == "too-long":
                raise _Refused(
                    "552 5.3.4 Too large for SDK: at most 30 MB as an SDK message"
                ) from None
            raise _Refused(
                f"554 5.6.0 The message cannot be carried by SDK: {e.problem.text}"
            ) from None
        return mail, mapped

    async def _scan(self, content: bytes) -> None:
        if self.scanner is None:
            return
        try:
            found = await self.scanner.scan(content)
        except TemporaryFailure as e:
            raise _Refused(
                f"451 4.7.0 Content scanner unavailable, try again later: {_one_line(e)}"
            ) from None
        if found:
            log.warning("malware refused", signature=found)
            raise _Refused(f"554 5.7.1 Message refused: malware found ({found})")


DATA_BLOCK = 64 * 1024  # bytes read from a client at a time during DATA
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def _data_problem(lines: bytes, size: int, limit: int | None, line_limit: int) -> str | None:
    """What is wrong with these whole lines of DATA (`size`: all lines so far), the one
    that comes first in them, as reading a line at a time would find it; None: nothing."""
    found: list[tuple[int, str]] = []
    if limit and size > limit:
        found.append((len(lines) - (size - limit), "552 5.3.4 Message too large"))
    pairs = lines.count(b"\r\n")
    if lines.count(b"\r") != pairs or lines.count(b"\n") != pairs:
        bare = _BARE.search(lines)  # SMTP smuggling: a bare CR or LF could hide a second message
        assert bare is not None
        found.append(
            (bare.start(), "554 5.6.0 Bare CR or LF in message data (RFC 5322 2.3) refused")
        )
    split = lines.split(b"\r\n")
    if max(map(len, split)) > line_limit:
        at = 0
        for line in split:
            if len(line) > line_limit:
                found.append((at, "500 5.5.6 Line too long (RFC 5321 4.5.3.1.6)"))
                break
            at += len(line) + 2
    return min(found)[1] if found else None


def _unstuffed(lines: bytes) -> bytes:
    """Whole lines of DATA without the dot a client adds to a line that starts with one."""
    lines = lines.replace(b"\r\n.", b"\r\n")
    return lines[1:] if lines.startswith(b".") else lines


def storage_reply(error: Exception) -> str:
    """The reply when a message cannot be stored: full disk or quota is the standard
    452 4.3.1, so the client knows to try later; anything else a 451."""
    full = isinstance(error, SpoolFull) or (
        isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
    )
    if full:
        return "452 4.3.1 Insufficient system storage; try again later"
    return "451 4.3.0 The message could not be stored; try again later"


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:400]


def _client_address(session: Session) -> str:
    return str(session.peer[0]) if isinstance(session.peer, tuple) else ""


def _utf8(text: str | None) -> bool:
    """Whether `text` (aiosmtpd decodes with surrogateescape) was valid UTF-8, so that a
    reply quoting it can be written."""
    try:
        (text or "").encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


async def serve(
    handler: IngressHandler,
    listen: Sequence[tuple[str, int]],
    listen_tls: Sequence[tuple[str, int]] = (),
    tls: ssl.SSLContext | None = None,
) -> list[asyncio.Server]:
    """Start the listeners: plain (STARTTLS when `tls` is given) and implicit TLS."""
    loop = asyncio.get_running_loop()
    servers = []
    for addresses, implicit in ((listen, False), (listen_tls, True)):
        for host, port in addresses:
            factory = _factory(handler, tls=tls, implicit_tls=implicit)
            server = await loop.create_server(
                factory, host, port, ssl=tls if implicit else None, reuse_address=True
            )
            servers.append(server)
    return servers


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """Modern TLS only: 1.2 and 1.3."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def _factory(handler: IngressHandler, *, tls: ssl.SSLContext | None, implicit_tls: bool) -> Any:
    """The protocol factory for asyncio's create_server: one BridgeSMTP per connection."""
    max_message_bytes = handler.settings.max_message_bytes

    def factory() -> BridgeSMTP:
        return BridgeSMTP(
            handler,
            data_size_limit=max_message_bytes,
            enable_SMTPUTF8=True,
            hostname=handler.settings.hostname,
            ident="sdk-bridge ESMTP",
            tls_context=None if implicit_tls else tls,
            auth_require_tls=not implicit_tls,
            authenticator=handler.authenticate,
            auth_exclude_mechanism=("CRAM-MD5",),
            timeout=handler.settings.idle_timeout,
        )

    return factory


def networks(values: Sequence[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)
