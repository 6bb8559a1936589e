"""The access point connector for Domibus's WS plugin, both of its interfaces (SOAP 1.2).

`interface: wsplugin` (the default) speaks the current interface of Domibus 5.x
(`http://eu.domibus.wsplugin/`, served at `/services/wsplugin`); `interface: backend` the
deprecated `BackendService_1_1` (`http://org.ecodex.backend/1_1/`, Domibus 4.x, and 5.x at
`/services/backend`). The requests are the same in shape; the current interface adds
what a message service needs not to lose or take others' messages:

- listPendingMessages with a `finalRecipient` filter per organisation of ours: on an access
  point shared by several organisations an administrator plugin user sees them all.
- retrieveMessage with `markAsDownloaded="false"`, and `markMessageAsDownloaded` once the
  message is stored (`acknowledge`): a bridge killed in between retrieves it again.
- getStatus and getMessageErrors with the access point role SENDING: on a shared access
  point a message between two of its organisations is known in both roles.

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
  recipient, an ebMS error that says the header is wrong (EBMS:0001-0003, 0007-0011), the
  5.x plugin's own refusals of the request (WS_PLUGIN:0003-0005, 0007, 0008: P-Mode,
  parties, payloads, invalid message, conversion), a SOAP Sender fault (our request is
  malformed), HTTP 413. Domibus 4.x words some of these in the fault's Reason alone, with
  no FaultDetail ("Could not fetch metadata ..."): the texts count as much as the codes.
- Everything else → `TemporaryFailure`: connection errors, timeouts, HTTP 5xx and 503 from a
  proxy, and EBMS:0004 faults with a text we do not know, since EBMS:0004 ("Other") is also
  what Domibus answers for its own internal errors. Retrying is always safe: the MessageId
  is fixed, so a retry of something that did arrive is refused as a duplicate.
- Two mistakes of configuration are named as such, and mail waits until an administrator
  fixes them: refused credentials (HTTP 401/403, or, as Domibus's plugin-user interceptor
  answers a failed login, a SOAP fault with HTTP 500), and a URL that serves the other
  interface (CXF's "Unexpected wrapper element").

Responses are parsed with the hardened parser and a size limit, whether they come as one
SOAP document or as MTOM/XOP (`multipart/related`, the payload a binary part). On the
deprecated interface retrieval is destructive under Digg's P-Mode
(retention_downloaded=0): a message that cannot be understood after it was downloaded is
reported with the raw answer (`UnreadableMessage`), never silently lost.
"""

import binascii
import re
import ssl
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, NamedTuple

from lxml import etree

from sdk_bridge.plugin import (
    DuplicateSubmission,
    OversizedRetrieval,
    PermanentFailure,
    Retrieved,
    Submission,
    TemporaryFailure,
    UnreadableRetrieval,
)
from sdk_bridge.plugin.kit import (
    MAX_ENVELOPE_BYTES,
    PARTY_SCHEME,
    PROCESS_ID,
    PROCESS_ID_SCHEME,
    Apart,
    UnsafeXML,
    decode_base64,
    parse,
    parse_apart,
    parse_beginning,
    read_passphrase,
)
from sdk_bridge.plugin.settings import file_path, only

from .domibus_xop import Unpacked, XopError, resolve, unpack
from .http11 import AnswerTooLarge, Client, HTTPError, HTTPTimeout, Response

SOAP12_NS: Final = "http://www.w3.org/2003/05/soap-envelope"
EBMS_NS: Final = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/"
BACKEND_NS: Final = "http://org.ecodex.backend/1_1/"  # the deprecated interface
WSPLUGIN_NS: Final = "http://eu.domibus.wsplugin/"  # the current interface of Domibus 5.x
INTERFACES: Final = {"wsplugin": WSPLUGIN_NS, "backend": BACKEND_NS}
SENDING: Final = "SENDING"  # the access point role of a message we submitted
SOAP_CONTENT_TYPE: Final = "application/soap+xml; charset=UTF-8"

# Digg's example and P-Mode.
AP_PARTY_TYPE: Final = "urn:fdc:digg.se:edelivery:transportprofile:as4:partytype:ap"
INITIATOR_ROLE: Final = EBMS_NS + "initiator"
PAYLOAD_HREF: Final = "cid:message"
PAYLOAD_MIME_TYPE: Final = "text/xml"

# A 30 MB SDK message is ~40 MB as an XHE and ~54 MB once base64 again in the SOAP body.
MAX_RESPONSE_BYTES: Final = 64_000_000
MAX_REQUEST_BYTES: Final = 64_000_000  # refused here rather than uploaded to be refused
MAX_WSDL_BYTES: Final = 1_000_000
# Of an answer too large to take, this much is read: its ebMS header and the beginning of
# the envelope, enough to answer the message with a kvittens.
HEAD_BYTES: Final = 256 * 1024
MAX_MESSAGE_ID_CHARS: Final = 255  # Domibus's limit; it also wants printable ASCII
DEFAULT_TIMEOUT: Final = 60.0
_BASE64_CHUNK: Final = 3 << 18  # payload bytes encoded at a time: a multiple of 3, no padding
# A retrieved payload/value this long is decoded from the answer's bytes, not from its tree.
APART_CHARS: Final = 1 << 20

# ebMS 3 errors that say the message or its header is wrong: resending it will not help.
# EBMS:0004 (Other) is missing on purpose: Domibus uses it for its internal errors too.
# Domibus 5's plugin refuses a request it cannot take with its own codes, written
# WS_PLUGIN:0007 or, by enum name, WS_PLUGIN_0005: P-Mode (3), parties (4), payloads (5),
# invalid message (7), conversion (8). 1 (generic), 2 (login) and 6 (proxy) are temporary.
_PERMANENT_CODES: Final = frozenset(
    [f"EBMS{sep}{n:04d}" for sep in ":_" for n in (1, 2, 3, 7, 8, 9, 10, 11)]
    + [f"WS_PLUGIN{sep}{n:04d}" for sep in ":_" for n in (3, 4, 5, 7, 8)]
)
# EBMS:0004 texts that are definite refusals of this message. Domibus words every failed
# SMP lookup so, an unreachable SML or SMP included (DynamicDiscoveryServiceOASIS wraps the
# LookupException); it is still taken as "no such recipient", as the issue asks, because
# the bridge has found the recipient in the SMP itself before it submits.
_PERMANENT_TEXTS: Final = re.compile(
    r"Could not fetch metadata|Received incomplete metadata from the SMP|NOT_SERVICED",
    re.IGNORECASE,
)
_DUPLICATE_TEXT: Final = re.compile(r"Message with id \[.*\] already exists", re.DOTALL)
_NOT_FOUND_TEXT: Final = re.compile(r"Message not found, id \[|No message with id \[")
_NOT_FOUND_CODES: Final = frozenset({"WS_PLUGIN:0009", "WS_PLUGIN_0009"})
# A failed plugin-user login: Domibus's CustomAuthenticationInterceptor throws a CXF Fault
# around AuthenticationExtException, answered as a SOAP fault with HTTP 500, not 401.
_LOGIN_TEXT: Final = re.compile(
    r"AuthenticationExtException|Bad credentials|DOM_002|WS_PLUGIN[:_]0002"
    r"|not authori[sz]ed|authentication failed|unauthori[sz]ed",
    re.IGNORECASE,
)
# CXF's answers to a request of the other interface: its body element is not in the WSDL
# served there ("Message part {ns}x was not recognized. (Does it exist in service WSDL?)"),
# or, once an operation was picked, "Unexpected wrapper element {ns}x found. Expected
# {served}x".
_UNRECOGNISED_PART: Final = re.compile(r"Message part \{([^}]*)\}\S* was not recognized")
_WRONG_WRAPPER: Final = re.compile(
    r"Unexpected wrapper element \{[^}]*\}\S* found\.\s+Expected \{([^}]*)\}"
)
# A plugin user whose originalUser is not the organisation it submits for (a mistake of
# configuration, however Domibus words it as a refusal of the message).
_NOT_ALLOWED_TEXT: Final = re.compile(r"You are not allowed to handle this message")
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
        "interface",
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

    @property
    def not_found(self) -> bool:
        """The access point has no such message (any more): Domibus 5 says so by code,
        4.x in words."""
        if self.soap_code is None:
            return False
        return self.code in _NOT_FOUND_CODES or bool(
            _NOT_FOUND_TEXT.search(f"{self.reason} {self.message or ''}")
        )


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
    interface: str = "wsplugin"

    @classmethod
    def read(cls, settings: Mapping[str, Any]) -> "_Settings":
        only(settings, _SETTINGS)

        def text(name: str, default: str | None = None) -> str | None:
            value = settings.get(name, default)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{name} must be a non-empty string")
            return value

        url = text("url")
        if not url or not url.startswith("https://"):
            # Basic auth and whole messages: never in clear text.
            raise ValueError("url must be the WS plugin's https:// address")
        party_id = text("party_id")
        if not party_id:
            raise ValueError("party_id (this access point's PartyId, the ebMS From) is required")
        password = text("password")
        password_file = file_path(settings, "password_file")
        if password is not None and password_file is not None:
            raise ValueError("give password or password_file, not both")
        if password_file is not None:
            password = read_passphrase(password_file).decode("utf-8")
        username = text("username")
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        client_cert = file_path(settings, "client_cert")
        client_key = file_path(settings, "client_key")
        if client_key is not None and client_cert is None:
            raise ValueError("client_key needs client_cert")
        if username is None and client_cert is None:
            raise ValueError("give username and password, or client_cert, or both")
        interface = settings.get("interface", "wsplugin")
        if interface not in INTERFACES:
            raise ValueError(
                "interface must be wsplugin (Domibus 5.x, /services/wsplugin) or backend"
                " (the deprecated BackendService_1_1 of Domibus 4.x, /services/backend)"
            )
        timeout = settings.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        return cls(
            url=url,
            username=username,
            password=password,
            tls_trust=file_path(settings, "tls_trust"),
            client_cert=client_cert,
            client_key=client_key,
            party_id=party_id,
            party_type=text("party_type", AP_PARTY_TYPE) or AP_PARTY_TYPE,
            timeout=float(timeout),
            interface=interface,
        )

    def tls_context(self) -> ssl.SSLContext:
        """The system's trust store unless tls_trust names a CA bundle; TLS 1.2 or later."""
        context = ssl.create_default_context(cafile=str(self.tls_trust) if self.tls_trust else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.client_cert is not None:
            context.load_cert_chain(self.client_cert, self.client_key if self.client_key else None)
        return context


class DomibusWS:
    """sdk_bridge.plugin.AccessPoint over Domibus's WS plugin; one instance per access point.

    Safe to share between tasks: the HTTP client pools connections and every call is
    independent.
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = _Settings.read(settings)
        s = self.settings
        self.ns = INTERFACES[s.interface]
        self.keeps_until_acknowledged = s.interface == "wsplugin"
        self._http = Client(
            tls=s.tls_context(),
            auth=None if s.username is None or s.password is None else (s.username, s.password),
            timeout=s.timeout,
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
        body: bytes | AsyncIterator[bytes]
        if len(submission.payload) <= _BASE64_CHUNK:  # most mail: one write, one segment
            body = head + binascii.b2a_base64(submission.payload, newline=False) + tail
        else:
            body = _submit_body(head, submission.payload, tail)
        try:
            answer = (await self._call(body, "submitMessage", size)).root
        except _Fault as fault:
            raise self._failure(fault, "submitMessage", submitting=True) from None
        response = answer.find(f".//{{{self.ns}}}submitResponse")
        ids = (
            []
            if response is None
            else [(e.text or "").strip() for e in response.findall("messageID")]
        )
        if len(ids) != 1 or not ids[0]:
            # It may have been taken: a retry is refused as a duplicate if so.
            raise TemporaryFailure("submitMessage: the access point's answer names no MessageId")
        return ids[0]  # Domibus keeps ours; whatever it names is what getStatus knows

    async def pending(self, final_recipients: Collection[str] = ()) -> list[str]:
        """listPendingMessages: oldest first, as Domibus lists them. On the current
        interface asked once per organisation in `final_recipients` (the filter takes one);
        the deprecated one has no filter and lists whatever the plugin user may see."""
        recipients: list[str | None] = [None]
        if self.keeps_until_acknowledged and final_recipients:
            recipients = [*sorted(set(final_recipients))]
        found: dict[str, None] = {}
        for recipient in recipients:
            fields = () if recipient is None else (("finalRecipient", recipient),)
            answer = await self._checked(
                self._request("listPendingMessagesRequest", fields=fields), "listPending"
            )
            response = answer.find(f".//{{{self.ns}}}listPendingMessagesResponse")
            if response is None:
                raise TemporaryFailure("listPendingMessages: unexpected answer")
            ids = ((e.text or "").strip() for e in response.findall("messageID"))
            found.update(dict.fromkeys(ids))
        found.pop("", None)
        return list(found)

    async def retrieve(self, message_id: str) -> Retrieved:
        """retrieveMessage: the header fields and the payload, checked to be base64. On the
        current interface the message stays pending until `acknowledge`.

        Raises MessageNotFound for an id the access point does not have (any more), and
        UnreadableMessage, carrying the raw answer, when the answer is unusable.
        """
        _check_id_argument(message_id)
        keep = {"markAsDownloaded": "false"} if self.keeps_until_acknowledged else {}
        body = self._request("retrieveMessageRequest", message_id, attributes=keep)
        value_path = f"{{{SOAP12_NS}}}Body/{{{self.ns}}}retrieveMessageResponse/payload/value"
        try:
            answer = await self._call(body, "retrieveMessage", apart_at=value_path)
        except _Fault as fault:
            if fault.not_found:
                raise MessageNotFound(message_id, fault.text) from None
            raise self._failure(fault, "retrieveMessage") from None
        except _TooLarge as e:
            head = _head_of(e.head, e.content_type, message_id, self.ns)
            raise OversizedRetrieval(
                f"retrieveMessage: message {message_id!r} is larger than a bridge takes"
                f" ({e.size or 'over ' + str(MAX_RESPONSE_BYTES)} bytes as the access point"
                " sends it)",
                head,
                e.size,
            ) from None
        try:
            return _retrieved(answer, message_id, self.ns)
        except _Oversized as e:
            head = replace(e.retrieved, payload=e.retrieved.payload[:HEAD_BYTES])
            raise OversizedRetrieval(str(e), head, e.size) from None
        except ValueError as e:
            raise UnreadableMessage(message_id, str(e), bytes(answer.raw)) from None

    async def acknowledge(self, message_id: str) -> None:
        """markMessageAsDownloaded on the current interface (an id it no longer has was
        marked before); nothing on the deprecated one, whose retrieve marked it."""
        if not self.keeps_until_acknowledged:
            return
        _check_id_argument(message_id)
        body = self._request("markMessageAsDownloadedRequest", message_id)
        try:
            await self._call(body, "markMessageAsDownloaded")
        except _Fault as fault:
            if fault.not_found:
                return
            raise self._failure(fault, "markMessageAsDownloaded") from None

    async def status(self, message_id: str) -> str:
        """getStatus (as the sender, on the current interface): Domibus's MessageStatus
        word; NOT_FOUND for an id it does not know."""
        request = self._as_sender("statusRequest", message_id)
        answer = await self._checked(request, "getStatus")
        found = answer.find(f".//{{{self.ns}}}getStatusResponse")
        status = (found.text or "").strip() if found is not None else ""
        if not status:
            raise TemporaryFailure("getStatus: the access point's answer holds no status")
        return status

    async def errors(self, message_id: str) -> list[dict[str, str]]:
        """getMessageErrors (as the sender, on the current interface): one dict per error,
        keyed by the XSD's errorResultImpl fields (errorCode such as EBMS_0004, errorDetail
        such as NOT_SERVICED, mshRole, …); Domibus 5's domibusErrorCode is given as
        errorCode too."""
        request = self._as_sender("getErrorsRequest", message_id)
        try:
            answer = (await self._call(request, "getErrors")).root
        except _Fault as fault:
            if fault.not_found:  # Domibus 5 answers WS_PLUGIN:0009 for an id it has no errors of
                return []
            raise self._failure(fault, "getErrors") from None
        response = answer.find(f".//{{{self.ns}}}getMessageErrorsResponse")
        if response is None:
            raise TemporaryFailure("getMessageErrors: unexpected answer")
        errors = []
        for item in response.findall("item"):
            error = {etree.QName(child).localname: (child.text or "").strip() for child in item}
            if "domibusErrorCode" in error:
                error.setdefault("errorCode", error["domibusErrorCode"])
            errors.append(error)
        return errors

    def _as_sender(self, operation: str, message_id: str) -> bytes:
        """`operation` about a message we submitted: on the current interface its
        ...WithAccessPointRole form, SENDING, since a message between two organisations of a
        shared access point is known there in both roles."""
        _check_id_argument(message_id)
        if not self.keeps_until_acknowledged:
            return self._request(operation, message_id)
        return self._request(
            f"{operation}WithAccessPointRole",
            message_id,
            fields=(("accessPointRole", SENDING),),
        )

    async def interface_served(self) -> str | None:
        """Which interface the URL serves, from its WSDL (`?wsdl`): "wsplugin", "backend",
        or None when it cannot be told (no WSDL there, or another service's)."""
        try:
            async with self._http.request("GET", f"{self.settings.url}?wsdl") as response:
                if response.status != 200:
                    return None
                wsdl = await response.read(MAX_WSDL_BYTES)
        except AnswerTooLarge:
            return None
        except HTTPError as e:
            raise TemporaryFailure(f"cannot fetch the WSDL at {self.settings.url}?wsdl: {e}") from e
        try:
            root = parse(wsdl, max_bytes=MAX_WSDL_BYTES)
        except UnsafeXML:
            return None
        namespace = root.get("targetNamespace")
        return next((name for name, ns in INTERFACES.items() if ns == namespace), None)

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
            f"{{{SOAP12_NS}}}Envelope", nsmap={"soap": SOAP12_NS, "ns": EBMS_NS, "_1": self.ns}
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
        request = etree.SubElement(body, f"{{{self.ns}}}submitRequest")
        payload = etree.SubElement(
            request, "payload", payloadId=PAYLOAD_HREF, contentType=PAYLOAD_MIME_TYPE
        )
        placeholder = "PAYLOAD-PLACEHOLDER"
        etree.SubElement(payload, "value").text = placeholder
        serialised = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
        head, tail = serialised.rsplit(placeholder.encode(), 1)  # the value is the last text
        return head, tail

    def _request(
        self,
        operation: str,
        message_id: str | None = None,
        *,
        fields: Iterable[tuple[str, str]] = (),
        attributes: Mapping[str, str] | None = None,
    ) -> bytes:
        """A request of this interface; its children are unqualified, as the XSDs say."""
        envelope = etree.Element(f"{{{SOAP12_NS}}}Envelope", nsmap={"soap": SOAP12_NS})
        body = etree.SubElement(envelope, f"{{{SOAP12_NS}}}Body")
        request = etree.SubElement(
            body, f"{{{self.ns}}}{operation}", dict(attributes or {}), nsmap={"_1": self.ns}
        )
        if message_id is not None:
            etree.SubElement(request, "messageID").text = message_id
        for name, value in fields:
            etree.SubElement(request, name).text = value
        return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")

    def _failure(self, fault: "_Fault", what: str, *, submitting: bool = False) -> Exception:
        """What a fault means: configuration mistakes named as such (mail waits), then for
        submitMessage the refusals of the message itself (module docstring)."""
        text = f"{what} refused: {fault.text}" if submitting else f"{what} failed: {fault.text}"
        url = self.settings.url
        words = f"{fault.reason} {fault.message or ''}"
        if fault.http_status in (401, 403, 407) or (
            fault.soap_code is not None and _LOGIN_TEXT.search(words)
        ):
            return TemporaryFailure(
                f"{what}: the access point at {url} refused our credentials"
                f" ({fault.text}); an administrator must correct the username, password or"
                " client certificate (Domibus: a plugin user). Mail waits until then."
            )
        if fault.soap_code is not None and _NOT_ALLOWED_TEXT.search(words):
            return TemporaryFailure(
                f"{what}: the access point at {url} does not let our plugin user act for this"
                f" organisation ({fault.text}); an administrator must set the plugin user's"
                " originalUser to our organisation id. Mail waits until then."
            )
        served_ns = None
        if wrapper := _WRONG_WRAPPER.search(words):
            served_ns = wrapper.group(1)
        elif (part := _UNRECOGNISED_PART.search(words)) and part.group(1) == self.ns:
            served_ns = next(ns for ns in INTERFACES.values() if ns != self.ns)
        if served_ns is not None and served_ns != self.ns:
            served = next((n for n, ns in INTERFACES.items() if ns == served_ns), "other")
            return TemporaryFailure(
                f"{what}: the access point at {url} does not serve the"
                f" {self.settings.interface!r} interface ({fault.text}); set"
                f" access_point.interface: {served}, or point url at"
                f" {'/services/wsplugin' if served == 'backend' else '/services/backend'}."
                " Mail waits until then."
            )
        if not submitting:
            return TemporaryFailure(text)  # nothing to refuse for good
        if fault.soap_code is not None and _DUPLICATE_TEXT.search(words):
            return DuplicateSubmission(text)
        if fault.http_status == 413:
            return PermanentFailure(text)
        if fault.soap_code in ("Sender", "VersionMismatch", "MustUnderstand"):
            return PermanentFailure(text)
        if fault.code in _PERMANENT_CODES:
            return PermanentFailure(text)
        if fault.soap_code is not None and _PERMANENT_TEXTS.search(words):
            return PermanentFailure(text)  # Domibus 4.x: often in the Reason alone
        return TemporaryFailure(text)

    async def _checked(self, body: bytes, what: str) -> etree._Element:
        """_call for the read-only operations: every failure is temporary."""
        try:
            return (await self._call(body, what)).root
        except _Fault as fault:
            raise self._failure(fault, what) from None

    async def _call(
        self,
        body: bytes | AsyncIterator[bytes],
        what: str,
        size: int | None = None,
        *,
        apart_at: str | None = None,
    ) -> "_Answer":
        """The answer of a successful call; raise _Fault or TemporaryFailure (the access
        point could not be asked). A streamed `body` comes with its `size`, sent as
        Content-Length rather than chunked, as any server takes it. `apart_at`: see
        `_parse_answer`."""
        url = self.settings.url
        headers = {"Content-Type": SOAP_CONTENT_TYPE}
        try:
            async with self._http.request(
                "POST", url, body=body, size=size, headers=headers
            ) as response:
                data = await _read_limited(response)
        except _TooLarge as e:
            if apart_at is not None:  # retrieving: the caller answers the message
                raise
            raise TemporaryFailure(f"{what}: {e}") from None
        except HTTPTimeout as e:
            raise TemporaryFailure(
                f"{what}: the access point at {url} did not answer within"
                f" {self.settings.timeout:g} s"
            ) from e
        except HTTPError as e:
            raise TemporaryFailure(f"{what}: cannot reach the access point at {url} ({e})") from e
        status = response.status
        content_type = response.headers.get("content-type", "")
        media_type = content_type.split(";")[0].strip().lower()
        envelope = apart = unpacked = None
        soap: bytes | bytearray = data
        try:
            if media_type == "multipart/related" and data:  # MTOM/XOP
                unpacked = unpack(content_type, data)
                soap = unpacked.root
                media_type = "application/soap+xml"
            if media_type in ("application/soap+xml", "text/xml") and soap:
                envelope, apart = _parse_answer(soap, apart_at)
        except (UnsafeXML, XopError) as e:
            if status in (401, 403, 407):
                raise _Fault(status, response.reason or "refused") from None
            raise _Fault(status, f"unreadable answer from the access point: {e}") from None
        if envelope is not None and envelope.tag != f"{{{SOAP12_NS}}}Envelope":
            raise _Fault(status, "the access point's answer is not a SOAP 1.2 envelope")
        fault = (
            None if envelope is None else envelope.find(f"{{{SOAP12_NS}}}Body/{{{SOAP12_NS}}}Fault")
        )
        if fault is not None:
            raise _soap_fault(status, fault)
        if status != 200 or envelope is None:
            snippet = bytes(data[:200]).decode("utf-8", "replace").strip()
            raise _Fault(status, response.reason or "error", message=snippet or None)
        return _Answer(data, envelope, apart, unpacked)


@dataclass(frozen=True)
class _Answer:
    raw: bytearray  # the whole answer, as it came
    root: etree._Element  # the SOAP envelope
    apart: Apart | None  # its one long text left in `raw` (`_parse_answer`)
    unpacked: Unpacked | None  # MTOM/XOP: the binary parts


async def _submit_body(head: bytes, payload: bytes, tail: bytes) -> AsyncIterator[bytes]:
    """The submitRequest with the payload's base64 made a chunk at a time as it is sent."""
    yield head
    view = memoryview(payload)
    for start in range(0, len(view), _BASE64_CHUNK):
        yield binascii.b2a_base64(view[start : start + _BASE64_CHUNK], newline=False)
    yield tail


# --- answers --------------------------------------------------------------------------------


class _TooLarge(Exception):
    """An answer past MAX_RESPONSE_BYTES: its first HEAD_BYTES, to learn what it is."""

    def __init__(self, head: bytes, size: int | None, content_type: str) -> None:
        super().__init__(f"the access point's answer is larger than {MAX_RESPONSE_BYTES} bytes")
        self.head, self.size, self.content_type = head, size, content_type


async def _read_limited(response: Response) -> bytearray:
    """The body, refused past MAX_RESPONSE_BYTES before it is all in memory (_TooLarge,
    with its beginning).

    It grows in one buffer (in place, where the C library remaps a large one): chunks
    joined at the end would hold a 54 MB answer twice over for a moment.
    """
    declared = response.headers.get("content-length", "")
    size = int(declared) if declared.isdigit() else None
    content_type = response.headers.get("content-type", "")
    data = bytearray()
    async for chunk in response.chunks():
        if len(data) + len(chunk) > MAX_RESPONSE_BYTES or (
            size is not None and size > MAX_RESPONSE_BYTES and len(data) >= HEAD_BYTES
        ):
            data += chunk[: max(0, HEAD_BYTES - len(data))]
            raise _TooLarge(bytes(data[:HEAD_BYTES]), size, content_type)
        data += chunk
    return data


def _parse_answer(
    data: bytes | bytearray, apart_at: str | None
) -> tuple[etree._Element, Apart | None]:
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
    # Either interface's FaultDetail (4.x sends faults without one, too).
    detail = fault.find(f"{{{SOAP12_NS}}}Detail/{{*}}FaultDetail")
    code = message = None
    if detail is not None:
        code = (detail.findtext("code") or "").strip() or None
        message = (detail.findtext("message") or "").strip() or None
    soap_code = value.rpartition(":")[2] or "Receiver"
    return _Fault(status, reason or "SOAP fault", soap_code, code, message)


def _eb(path: str) -> str:
    return "/".join(f"{{{EBMS_NS}}}{step}" for step in path.split("/"))


def _retrieved(answer: _Answer, message_id: str, ns: str) -> Retrieved:
    """The Retrieved of a retrieveMessage answer of interface `ns` (its payload/value left
    apart from the tree when long, see `_parse_answer`, or an MTOM part); ValueError says
    what is wrong with it."""
    user = _user_message(answer.root)
    if user is None:
        raise ValueError("no ebMS UserMessage in the SOAP Header")
    header = _header(user)
    if header.message_id != message_id:
        raise ValueError(f"the answer is for MessageId {header.message_id!r}")
    action = header.action
    original_sender, final_recipient = header.original_sender, header.final_recipient
    if not action or not original_sender or not final_recipient:
        raise ValueError("the ebMS header lacks Action, originalSender or finalRecipient")
    hrefs = [p.get("href", "") for p in user.findall(_eb("PayloadInfo/PartInfo"))]
    response = answer.root.find(f"{{{SOAP12_NS}}}Body/{{{ns}}}retrieveMessageResponse")
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
    payload = _payload_bytes(value, answer)
    if not payload:
        raise ValueError(f"payload {PAYLOAD_HREF} is empty")
    retrieved = Retrieved(
        message_id=message_id,
        payload=payload,
        action=action,
        original_sender=original_sender,
        final_recipient=final_recipient,
        conversation_id=header.conversation_id,
    )
    if len(payload) > MAX_ENVELOPE_BYTES:
        raise _Oversized(
            f"retrieveMessage: message {message_id!r} is {len(payload)} bytes, more than"
            f" an SDK envelope may be ({MAX_ENVELOPE_BYTES})",
            retrieved,
            len(payload),
        )
    return retrieved


class _Oversized(ValueError):
    """A payload larger than an SDK envelope may be, read whole all the same."""

    def __init__(self, text: str, retrieved: Retrieved, size: int) -> None:
        super().__init__(text)
        self.retrieved, self.size = retrieved, size


def _head_of(head: bytes, content_type: str, message_id: str, ns: str) -> Retrieved | None:
    """What the beginning of an answer too large to take says: the ebMS fields, and the
    beginning of its envelope (from the base64 of `value`, or an MTOM part) as payload.
    None when it does not say (then the message cannot be answered)."""
    media_type = content_type.split(";")[0].strip().lower()
    soap, binary = head, b""
    if media_type == "multipart/related":  # the root part, then the payload's part
        parts = head.split(b"\r\n\r\n", 2)
        if len(parts) < 3:
            return None
        soap, binary = parts[1], parts[2]
    try:
        root = parse_beginning(soap, max_bytes=HEAD_BYTES)
    except UnsafeXML:
        return None
    value = root.find(f".//{{{ns}}}retrieveMessageResponse/payload/value")
    if not binary and value is not None and value.text:
        text = "".join(value.text.split())
        try:
            binary = binascii.a2b_base64(text[: len(text) // 4 * 4])
        except binascii.Error:
            return None
    user = _user_message(root)
    if user is None or not binary:
        return None
    header = _header(user)
    if header.message_id != message_id or not header.action or not header.original_sender:
        return None
    return Retrieved(
        message_id=message_id,
        payload=bytes(binary),
        action=header.action,
        original_sender=header.original_sender,
        final_recipient=header.final_recipient or "",
        conversation_id=header.conversation_id,
    )


def _user_message(envelope: etree._Element) -> etree._Element | None:
    return envelope.find(f"{{{SOAP12_NS}}}Header/{_eb('Messaging/UserMessage')}")


class _Header(NamedTuple):
    """The fields of an ebMS UserMessage the bridge keeps; None where one is missing."""

    message_id: str | None
    action: str | None
    original_sender: str | None
    final_recipient: str | None
    conversation_id: str | None


def _header(user: etree._Element) -> _Header:
    def field(path: str) -> str | None:
        found = user.find(_eb(path))
        return None if found is None else (found.text or "").strip()

    properties: dict[str, str] = {}
    for prop in user.findall(_eb("MessageProperties/Property")):
        properties.setdefault(prop.get("name", ""), (prop.text or "").strip())  # first counts
    return _Header(
        message_id=field("MessageInfo/MessageId"),
        action=field("CollaborationInfo/Action"),
        original_sender=properties.get("originalSender"),
        final_recipient=properties.get("finalRecipient"),
        conversation_id=field("CollaborationInfo/ConversationId") or None,
    )


def _payload_bytes(value: etree._Element, answer: _Answer) -> bytes:
    """The payload of its `value` element: an MTOM part's bytes, or its base64 text
    decoded (from the answer's bytes when it was left apart)."""
    if answer.unpacked is not None:
        try:
            included = resolve(answer.root, answer.unpacked).get(value)
        except XopError as e:
            raise ValueError(str(e)) from None
        if included is not None:
            return bytes(included)
    if answer.apart is not None and value.text == answer.apart.placeholder:
        text: str | memoryview = answer.apart.text  # decoded from the answer's bytes: no copy
    else:
        text = value.text or ""
        value.text = None  # libxml2's copy of the text goes before the payload is decoded
    try:
        return decode_base64(text)
    except (binascii.Error, ValueError):
        raise ValueError(f"payload {PAYLOAD_HREF} is not base64") from None


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
