"""The access point connector for Domibus's WS plugin (`BackendService_1_1`, SOAP 1.2).

SDK access points run Domibus (or answer as it does), and Digg's example
`as4_xhe_encrypted.xml` shows what a message service sends them: one `cid:message` part
holding the XHE, and an ebMS header naming our access point as From, the SDK process as
Service, the document type as Action and the two organisations as properties. The access
point finds the receiving access point itself (SML/SMP), so no To party is sent.

What matters most is how answers map to the bridge's outcomes, because the outbound worker
decides on them whether mail is retried, bounced or counted as sent:

- `submitResponse` → the MessageId (ours: Domibus keeps the submitter's).
- "Message with id [X] already exists" → `DuplicateSubmission`: an earlier attempt got
  through (perhaps its answer was lost), so the message counts as submitted.
- A definite refusal of the message itself → `PermanentFailure`: no SMP metadata for the
  recipient, an ebMS error that says the header is wrong (EBMS:0001-0003, 0007-0011), a
  SOAP Sender fault (our request is malformed), HTTP 413.
- Everything else → `TemporaryFailure`: connection errors, timeouts, HTTP 5xx and 503 from a
  proxy, 401/403 (an administrator must fix the credentials, but mail must not be lost
  meanwhile), and EBMS:0004 faults with a text we do not know, since EBMS:0004 ("Other") is
  also what Domibus answers for its own internal errors. Retrying is always safe: the
  MessageId is fixed, so a retry of something that did arrive is refused as a duplicate.

Responses are parsed with the hardened parser and a size limit. Retrieval is destructive
under Digg's P-Mode (retention_downloaded=0): a message that cannot be understood after it
was downloaded is reported with the raw answer (`UnreadableMessage`), never silently lost.
"""

import binascii
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from lxml import etree

from bridge.plugins import (
    DuplicateSubmission,
    PermanentFailure,
    Retrieved,
    Submission,
    TemporaryFailure,
    UnreadableRetrieval,
)
from bridge.pluginsettings import only
from bridge.sdk.keys import read_passphrase
from bridge.sdk.names import PARTY_SCHEME, PROCESS_ID, PROCESS_ID_SCHEME
from bridge.sdk.sealing import MAX_ENVELOPE_BYTES
from bridge.sdk.xmlsafe import Apart, UnsafeXML, decode_base64, parse, parse_apart

SOAP12_NS: Final = "http://www.w3.org/2003/05/soap-envelope"
EBMS_NS: Final = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/"
BACKEND_NS: Final = "http://org.ecodex.backend/1_1/"
SOAP_CONTENT_TYPE: Final = "application/soap+xml; charset=UTF-8"

# Digg's example and P-Mode.
AP_PARTY_TYPE: Final = "urn:fdc:digg.se:edelivery:transportprofile:as4:partytype:ap"
INITIATOR_ROLE: Final = EBMS_NS + "initiator"
PAYLOAD_HREF: Final = "cid:message"
PAYLOAD_MIME_TYPE: Final = "text/xml"

# A 30 MB SDK message is ~40 MB as an XHE and ~54 MB once base64 again in the SOAP body.
MAX_RESPONSE_BYTES: Final = 64_000_000
MAX_REQUEST_BYTES: Final = 64_000_000  # refused here rather than uploaded to be refused
MAX_MESSAGE_ID_CHARS: Final = 255  # Domibus's limit; it also wants printable ASCII
DEFAULT_TIMEOUT: Final = 60.0
_BASE64_CHUNK: Final = 3 << 18  # payload bytes encoded at a time: a multiple of 3, no padding
# A retrieved payload/value this long is decoded from the answer's bytes, not from its tree.
APART_CHARS: Final = 1 << 20
_PAYLOAD_VALUE: Final = f"{{{SOAP12_NS}}}Body/{{{BACKEND_NS}}}retrieveMessageResponse/payload/value"

# ebMS 3 errors that say the message or its header is wrong: resending it will not help.
# EBMS:0004 (Other) is missing on purpose: Domibus uses it for its internal errors too.
_PERMANENT_CODES: Final = frozenset(
    f"EBMS{sep}{n:04d}" for sep in ":_" for n in (1, 2, 3, 7, 8, 9, 10, 11)
)
# EBMS:0004 texts that are definite refusals of this message. Domibus words every failed
# SMP lookup so, an unreachable SML or SMP included (DynamicDiscoveryServiceOASIS wraps the
# LookupException); it is still taken as "no such recipient", as the issue asks, because
# the bridge has found the recipient in the SMP itself before it submits.
_PERMANENT_TEXTS: Final = re.compile(
    r"Could not fetch metadata|Received incomplete metadata from the SMP"
    r"|You are not allowed to handle this message|NOT_SERVICED",
    re.IGNORECASE,
)
_DUPLICATE_TEXT: Final = re.compile(r"Message with id \[.*\] already exists", re.DOTALL)
_NOT_FOUND_TEXT: Final = re.compile(r"not found|No message with id", re.IGNORECASE)
_SETTINGS: Final = frozenset(
    {
        "url",
        "username",
        "password",
        "password_file",
        "tls_trust",
        "client_cert",
        "client_key",
        "party_id",
        "party_type",
        "timeout",
        "plugin",  # the section may name the plugin it configures
    }
)


class MessageNotFound(PermanentFailure):
    """retrieveMessage: the access point has no such message pending (or it was taken)."""

    def __init__(self, message_id: str, text: str) -> None:
        super().__init__(f"access point has no message {message_id!r} to retrieve: {text}")
        self.message_id = message_id


class UnreadableMessage(UnreadableRetrieval):
    """retrieveMessage answered, but not with a message we can use.

    The access point has probably deleted it already (Digg's P-Mode keeps nothing after
    download), so `raw` holds the whole answer for the caller to keep for an administrator.
    """

    def __init__(self, message_id: str, problem: str, raw: bytes) -> None:
        super().__init__(f"retrieved message {message_id!r} is unusable: {problem}", raw)
        self.message_id = message_id


class _Fault(Exception):
    """An answer other than success: a SOAP fault, or an HTTP error without one."""

    def __init__(
        self,
        http_status: int,
        reason: str,
        soap_code: str | None = None,
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        self.http_status = http_status
        self.reason = reason
        self.soap_code = soap_code  # "Receiver", "Sender", "VersionMismatch"; None: not SOAP
        self.code = code  # FaultDetail/code, e.g. "EBMS:0004"
        self.message = message  # FaultDetail/message
        super().__init__(self.text)

    @property
    def text(self) -> str:
        """One line for logs, DSNs and the queue's last error."""
        detail = " ".join(part for part in (self.code, self.message) if part)
        return f"HTTP {self.http_status}: {self.reason}" + (f" ({detail})" if detail else "")


@dataclass(frozen=True)
class _Settings:
    url: str
    username: str | None
    password: str | None
    tls_trust: Path | None
    client_cert: Path | None
    client_key: Path | None
    party_id: str
    party_type: str
    timeout: float

    @classmethod
    def read(cls, settings: Mapping[str, Any]) -> "_Settings":
        only(settings, _SETTINGS)

        def text(name: str, default: str | None = None) -> str | None:
            value = settings.get(name, default)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{name} must be a non-empty string")
            return value

        def path(name: str) -> Path | None:
            value = settings.get(name)
            return None if value is None else Path(value)

        url = text("url")
        if not url or not url.startswith("https://"):
            # Basic auth and whole messages: never in clear text.
            raise ValueError("url must be the WS plugin's https:// address")
        party_id = text("party_id")
        if not party_id:
            raise ValueError("party_id (this access point's PartyId, the ebMS From) is required")
        password = text("password")
        password_file = path("password_file")
        if password is not None and password_file is not None:
            raise ValueError("give password or password_file, not both")
        if password_file is not None:
            password = read_passphrase(password_file).decode("utf-8")
        username = text("username")
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        client_cert, client_key = path("client_cert"), path("client_key")
        if client_key is not None and client_cert is None:
            raise ValueError("client_key needs client_cert")
        if username is None and client_cert is None:
            raise ValueError("give username and password, or client_cert, or both")
        timeout = settings.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        return cls(
            url=url,
            username=username,
            password=password,
            tls_trust=path("tls_trust"),
            client_cert=client_cert,
            client_key=client_key,
            party_id=party_id,
            party_type=text("party_type", AP_PARTY_TYPE) or AP_PARTY_TYPE,
            timeout=float(timeout),
        )

    def tls_context(self) -> ssl.SSLContext:
        """The system's trust store unless tls_trust names a CA bundle; TLS 1.2 or later."""
        context = ssl.create_default_context(cafile=str(self.tls_trust) if self.tls_trust else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.client_cert is not None:
            context.load_cert_chain(self.client_cert, self.client_key if self.client_key else None)
        return context


class DomibusWS:
    """bridge.plugins.AccessPoint over Domibus's WS plugin; one instance per access point.

    Safe to share between tasks: httpx.AsyncClient pools connections and every call is
    independent.
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = _Settings.read(settings)
        s = self.settings
        self._http = httpx.AsyncClient(
            verify=s.tls_context(),
            auth=None if s.username is None or s.password is None else (s.username, s.password),
            timeout=httpx.Timeout(s.timeout),
            follow_redirects=False,  # a redirect would resend the message elsewhere
        )

    async def close(self) -> None:
        await self._http.aclose()

    # --- AccessPoint ----------------------------------------------------------------------

    async def submit(self, submission: Submission) -> str:
        """submitMessage; see the module docstring for how answers map to outcomes."""
        try:
            _check_message_id(submission.message_id)
        except ValueError as e:
            raise PermanentFailure(str(e)) from None
        head, tail = self._submit_request(submission)
        size = len(head) + 4 * ((len(submission.payload) + 2) // 3) + len(tail)
        if size > MAX_REQUEST_BYTES:
            raise PermanentFailure(
                f"submission is {size} bytes, more than an SDK access point takes"
                f" ({MAX_REQUEST_BYTES})"
            )
        body = _submit_body(head, submission.payload, tail)
        try:
            answer = await self._call(body, "submitMessage", size)
        except _Fault as fault:
            raise _submit_failure(fault) from None
        response = answer.find(f".//{{{BACKEND_NS}}}submitResponse")
        ids = (
            []
            if response is None
            else [(e.text or "").strip() for e in response.findall("messageID")]
        )
        if len(ids) != 1 or not ids[0]:
            # It may have been taken: a retry is refused as a duplicate if so.
            raise TemporaryFailure("submitMessage: the access point's answer names no MessageId")
        return ids[0]  # Domibus keeps ours; whatever it names is what getStatus knows

    async def pending(self) -> list[str]:
        """listPendingMessages: oldest first, as Domibus lists them."""
        answer = await self._checked(_request("listPendingMessagesRequest"), "listPending")
        response = answer.find(f".//{{{BACKEND_NS}}}listPendingMessagesResponse")
        if response is None:
            raise TemporaryFailure("listPendingMessages: unexpected answer")
        return [(e.text or "").strip() for e in response.findall("messageID") if e.text]

    async def retrieve(self, message_id: str) -> Retrieved:
        """retrieveMessage: the header fields and the payload, checked to be base64.

        Raises MessageNotFound for an id the access point does not have (any more), and
        UnreadableMessage, carrying the raw answer, when the answer is unusable.
        """
        _check_id_argument(message_id)
        body = _request("retrieveMessageRequest", message_id)
        try:
            raw, answer, apart = await self._call_raw(
                body, "retrieveMessage", apart_at=_PAYLOAD_VALUE
            )
        except _Fault as fault:
            if fault.soap_code is not None and _NOT_FOUND_TEXT.search(
                f"{fault.reason} {fault.message or ''}"
            ):
                raise MessageNotFound(message_id, fault.text) from None
            raise _other_failure(fault, "retrieveMessage") from None
        try:
            return _retrieved(answer, message_id, apart)
        except ValueError as e:
            raise UnreadableMessage(message_id, str(e), bytes(raw)) from None

    async def status(self, message_id: str) -> str:
        """getStatus: Domibus's MessageStatus word; NOT_FOUND for an id it does not know."""
        _check_id_argument(message_id)
        answer = await self._checked(_request("statusRequest", message_id), "getStatus")
        found = answer.find(f".//{{{BACKEND_NS}}}getStatusResponse")
        status = (found.text or "").strip() if found is not None else ""
        if not status:
            raise TemporaryFailure("getStatus: the access point's answer holds no status")
        return status

    async def errors(self, message_id: str) -> list[dict[str, str]]:
        """getMessageErrors: one dict per error, keyed by the XSD's errorResultImpl fields
        (errorCode such as EBMS_0004, errorDetail such as NOT_SERVICED, mshRole, …)."""
        _check_id_argument(message_id)
        answer = await self._checked(_request("getErrorsRequest", message_id), "getErrors")
        response = answer.find(f".//{{{BACKEND_NS}}}getMessageErrorsResponse")
        if response is None:
            raise TemporaryFailure("getMessageErrors: unexpected answer")
        return [
            {etree.QName(child).localname: (child.text or "").strip() for child in item}
            for item in response.findall("item")
        ]

    # --- requests ---------------------------------------------------------------------------

    def _submit_request(self, submission: Submission) -> tuple[bytes, bytes]:
        """A submitRequest shaped like Digg's as4_xhe_encrypted.xml, plus a ConversationId:
        what goes before and after the payload's base64.

        The envelope is serialised around a placeholder, and the base64 payload streamed in
        between (`_submit_body`), so a 40 MB payload is neither copied through lxml nor
        held whole as a 54 MB request.
        """
        s = self.settings
        envelope = etree.Element(
            f"{{{SOAP12_NS}}}Envelope", nsmap={"soap": SOAP12_NS, "ns": EBMS_NS, "_1": BACKEND_NS}
        )

        def eb(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> Any:
            element = etree.SubElement(parent, f"{{{EBMS_NS}}}{tag}", attrs)
            element.text = text
            return element

        header = etree.SubElement(envelope, f"{{{SOAP12_NS}}}Header")
        user = eb(eb(header, "Messaging"), "UserMessage")
        eb(eb(user, "MessageInfo"), "MessageId", submission.message_id)
        sender = eb(eb(user, "PartyInfo"), "From")
        eb(sender, "PartyId", s.party_id, type=s.party_type)
        eb(sender, "Role", INITIATOR_ROLE)
        collaboration = eb(user, "CollaborationInfo")
        eb(collaboration, "Service", PROCESS_ID, type=PROCESS_ID_SCHEME)
        eb(collaboration, "Action", submission.action)
        eb(collaboration, "ConversationId", submission.conversation_id)
        properties = eb(user, "MessageProperties")
        for name, party in (
            ("originalSender", submission.original_sender),
            ("finalRecipient", submission.final_recipient),
        ):
            eb(properties, "Property", party, name=name, type=PARTY_SCHEME)
        part = eb(eb(user, "PayloadInfo"), "PartInfo", href=PAYLOAD_HREF)
        eb(eb(part, "PartProperties"), "Property", PAYLOAD_MIME_TYPE, name="MimeType")
        body = etree.SubElement(envelope, f"{{{SOAP12_NS}}}Body")
        request = etree.SubElement(body, f"{{{BACKEND_NS}}}submitRequest")
        payload = etree.SubElement(
            request, "payload", payloadId=PAYLOAD_HREF, contentType=PAYLOAD_MIME_TYPE
        )
        placeholder = "PAYLOAD-PLACEHOLDER"
        etree.SubElement(payload, "value").text = placeholder
        serialised = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
        head, tail = serialised.rsplit(placeholder.encode(), 1)  # the value is the last text
        return head, tail

    async def _checked(self, body: bytes, what: str) -> etree._Element:
        """_call for the read-only operations: every failure is temporary."""
        try:
            return await self._call(body, what)
        except _Fault as fault:
            raise _other_failure(fault, what) from None

    async def _call(
        self, body: bytes | AsyncIterator[bytes], what: str, size: int | None = None
    ) -> etree._Element:
        return (await self._call_raw(body, what, size))[1]

    async def _call_raw(
        self,
        body: bytes | AsyncIterator[bytes],
        what: str,
        size: int | None = None,
        *,
        apart_at: str | None = None,
    ) -> tuple[bytearray, etree._Element, Apart | None]:
        """(raw answer, parsed envelope, its long text left apart) of a successful call;
        raise _Fault or TemporaryFailure (the access point could not be asked). A streamed
        `body` comes with its `size`, sent as Content-Length rather than chunked, as any
        server takes it. `apart_at`: see `_parse_answer`."""
        url = self.settings.url
        headers = {"Content-Type": SOAP_CONTENT_TYPE}
        if size is not None:
            headers["Content-Length"] = str(size)
        try:
            async with self._http.stream("POST", url, content=body, headers=headers) as response:
                data = await _read_limited(response)
        except httpx.TimeoutException as e:
            raise TemporaryFailure(
                f"{what}: the access point at {url} did not answer within"
                f" {self.settings.timeout:g} s"
            ) from e
        except (httpx.HTTPError, OSError) as e:
            # OSError: under TLS 1.3 a server's refusal of our client certificate arrives as
            # a bare ssl.SSLError on the first read, which httpcore does not wrap.
            cause = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise TemporaryFailure(
                f"{what}: cannot reach the access point at {url} ({cause})"
            ) from e
        status = response.status_code
        if status in (401, 403, 407):
            raise TemporaryFailure(
                f"{what}: the access point at {url} refused our credentials (HTTP {status});"
                " an administrator must correct the username, password or client certificate."
                " Mail waits until then."
            )
        media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        envelope = apart = None
        if media_type in ("application/soap+xml", "text/xml") and data:
            try:
                envelope, apart = _parse_answer(data, apart_at)
            except UnsafeXML as e:
                raise _Fault(status, f"unreadable answer from the access point: {e}") from None
        if envelope is not None and envelope.tag != f"{{{SOAP12_NS}}}Envelope":
            raise _Fault(status, "the access point's answer is not a SOAP 1.2 envelope")
        fault = (
            None if envelope is None else envelope.find(f"{{{SOAP12_NS}}}Body/{{{SOAP12_NS}}}Fault")
        )
        if fault is not None:
            raise _soap_fault(status, fault)
        if status != 200 or envelope is None:
            snippet = data[:200].decode("utf-8", "replace").strip()
            raise _Fault(status, response.reason_phrase or "error", message=snippet or None)
        return data, envelope, apart


async def _submit_body(head: bytes, payload: bytes, tail: bytes) -> AsyncIterator[bytes]:
    """The submitRequest with the payload's base64 made a chunk at a time as it is sent."""
    yield head
    view = memoryview(payload)
    for start in range(0, len(view), _BASE64_CHUNK):
        yield binascii.b2a_base64(view[start : start + _BASE64_CHUNK], newline=False)
    yield tail


# --- answers --------------------------------------------------------------------------------


async def _read_limited(response: httpx.Response) -> bytearray:
    """The body, refused past MAX_RESPONSE_BYTES before it is all in memory.

    It grows in one buffer (in place, where the C library remaps a large one): chunks
    joined at the end would hold a 54 MB answer twice over for a moment.
    """
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
        raise TemporaryFailure(f"the access point's answer is larger than {MAX_RESPONSE_BYTES}")
    data = bytearray()
    async for chunk in response.aiter_bytes():
        if len(data) + len(chunk) > MAX_RESPONSE_BYTES:
            raise TemporaryFailure(
                f"the access point's answer is larger than {MAX_RESPONSE_BYTES} bytes"
            )
        data += chunk
    return data


def _parse_answer(data: bytearray, apart_at: str | None) -> tuple[etree._Element, Apart | None]:
    """The answer's tree. With `apart_at`, the path of the one element whose text may be
    long, that text is left in `data` (`xmlsafe.parse_apart`): a 54 MB payload/value would
    otherwise be held by libxml2's tree and again as the str lxml makes of it.

    Taken apart only when the placeholder is the whole text of the one element there, so
    that every other text read from the tree is the answer's own; else parsed whole.
    """
    if apart_at is not None:
        root, apart = parse_apart(data, max_bytes=MAX_RESPONSE_BYTES, min_text=APART_CHARS)
        found = [] if apart is None else root.findall(apart_at)
        if apart is None or (len(found) == 1 and found[0].text == apart.placeholder):
            return root, apart
    return parse(data, max_bytes=MAX_RESPONSE_BYTES), None


def _soap_fault(status: int, fault: etree._Element) -> _Fault:
    value = (fault.findtext(f"{{{SOAP12_NS}}}Code/{{{SOAP12_NS}}}Value") or "").strip()
    reason = (fault.findtext(f"{{{SOAP12_NS}}}Reason/{{{SOAP12_NS}}}Text") or "").strip()
    detail = fault.find(f"{{{SOAP12_NS}}}Detail/{{{BACKEND_NS}}}FaultDetail")
    code = message = None
    if detail is not None:
        code = (detail.findtext("code") or "").strip() or None
        message = (detail.findtext("message") or "").strip() or None
    soap_code = value.rpartition(":")[2] or "Receiver"
    return _Fault(status, reason or "SOAP fault", soap_code, code, message)


def _submit_failure(fault: _Fault) -> Exception:
    """What a refused submitMessage means for the message (module docstring)."""
    text = f"submitMessage refused: {fault.text}"
    words = f"{fault.reason} {fault.message or ''}"
    if fault.soap_code is not None and _DUPLICATE_TEXT.search(words):
        return DuplicateSubmission(text)
    if fault.http_status == 413:
        return PermanentFailure(text)
    if fault.soap_code in ("Sender", "VersionMismatch", "MustUnderstand"):
        return PermanentFailure(text)
    if fault.code in _PERMANENT_CODES:
        return PermanentFailure(text)
    if fault.code is not None and _PERMANENT_TEXTS.search(words):
        return PermanentFailure(text)
    return TemporaryFailure(text)


def _other_failure(fault: _Fault, what: str) -> Exception:
    """listPending/getStatus/getErrors/retrieve: nothing to refuse for good, so temporary."""
    return TemporaryFailure(f"{what} failed: {fault.text}")


def _eb(path: str) -> str:
    return "/".join(f"{{{EBMS_NS}}}{step}" for step in path.split("/"))


def _retrieved(answer: etree._Element, message_id: str, apart: Apart | None) -> Retrieved:
    """The Retrieved of a retrieveMessage answer (its payload/value left `apart` from the
    tree when long, see `_parse_answer`); ValueError says what is wrong with it."""
    user = answer.find(f"{{{SOAP12_NS}}}Header/{_eb('Messaging/UserMessage')}")
    if user is None:
        raise ValueError("no ebMS UserMessage in the SOAP Header")

    def field(path: str) -> str | None:
        found = user.find(_eb(path))
        return None if found is None else (found.text or "").strip()

    got_id = field("MessageInfo/MessageId")
    if got_id != message_id:
        raise ValueError(f"the answer is for MessageId {got_id!r}")
    properties: dict[str, str] = {}
    for prop in user.findall(_eb("MessageProperties/Property")):
        properties.setdefault(prop.get("name", ""), (prop.text or "").strip())
    action = field("CollaborationInfo/Action")
    original_sender = properties.get("originalSender")
    final_recipient = properties.get("finalRecipient")
    if not action or not original_sender or not final_recipient:
        raise ValueError("the ebMS header lacks Action, originalSender or finalRecipient")
    hrefs = [p.get("href", "") for p in user.findall(_eb("PayloadInfo/PartInfo"))]
    response = answer.find(f"{{{SOAP12_NS}}}Body/{{{BACKEND_NS}}}retrieveMessageResponse")
    if response is None:
        raise ValueError("no retrieveMessageResponse in the SOAP Body")
    payloads = [
        p for p in response.findall("payload") if p.get("payloadId", "").lower() == PAYLOAD_HREF
    ]
    if PAYLOAD_HREF not in [h.lower() for h in hrefs] or len(payloads) != 1:
        raise ValueError(f"expected exactly one payload {PAYLOAD_HREF}, found {len(payloads)}")
    value = payloads[0].find("value")
    if value is None:
        raise ValueError(f"payload {PAYLOAD_HREF} has no value (a payload URL is not supported)")
    if apart is not None:  # then `value` is the one element that holds the placeholder
        text: str | memoryview = apart.text  # decoded from the answer's bytes: no copy
    else:
        text = value.text or ""
        value.text = None  # libxml2's copy of the text goes before the payload is decoded
    try:
        payload = decode_base64(text)
    except (binascii.Error, ValueError):
        raise ValueError(f"payload {PAYLOAD_HREF} is not base64") from None
    if not payload:
        raise ValueError(f"payload {PAYLOAD_HREF} is empty")
    if len(payload) > MAX_ENVELOPE_BYTES:
        raise ValueError(f"payload is larger than {MAX_ENVELOPE_BYTES} bytes")
    return Retrieved(
        message_id=message_id,
        payload=payload,
        action=action,
        original_sender=original_sender,
        final_recipient=final_recipient,
        conversation_id=field("CollaborationInfo/ConversationId") or None,
    )


def _request(operation: str, message_id: str | None = None) -> bytes:
    envelope = etree.Element(f"{{{SOAP12_NS}}}Envelope", nsmap={"soap": SOAP12_NS})
    body = etree.SubElement(envelope, f"{{{SOAP12_NS}}}Body")
    request = etree.SubElement(body, f"{{{BACKEND_NS}}}{operation}", nsmap={"_1": BACKEND_NS})
    if message_id is not None:
        etree.SubElement(request, "messageID").text = message_id  # unqualified, as the XSD says
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")


def _check_message_id(message_id: str) -> None:
    """Domibus's checks on a MessageId, made before sending so a bad one fails clearly."""
    if not message_id or len(message_id) > MAX_MESSAGE_ID_CHARS:
        raise ValueError(f"MessageId must have 1 to {MAX_MESSAGE_ID_CHARS} characters")
    if not all(" " <= c <= "~" for c in message_id) or message_id != message_id.strip():
        raise ValueError(f"MessageId {message_id!r} must be printable ASCII without edge spaces")


def _check_id_argument(message_id: str) -> None:
    try:
        _check_message_id(message_id)
    except ValueError as e:
        raise ValueError(f"not a MessageId an access point can know: {e}") from None
