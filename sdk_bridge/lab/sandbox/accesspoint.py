"""An emulated SDK access point: Domibus 5.2's WS plugin, for one or several organisations.

It serves both interfaces of the plugin over SOAP 1.2, as Domibus 5.2 does where a client
can tell: the current one (`http://eu.domibus.wsplugin/`) at `/services/wsplugin` and the
deprecated `BackendService_1_1` (`http://org.ecodex.backend/1_1/`) at `/services/backend`,
each with its WSDL at `?wsdl`. Plugin users log in with HTTP Basic auth; one with an
`originalUser` (ROLE_USER) sees and may handle only that organisation's messages, one without
(ROLE_ADMIN) every organisation's on the access point; a failed login is a SOAP fault with
HTTP 500, as Domibus's interceptor answers. The submitter's ebMS MessageId is kept, a
repeated one is refused, faults carry the WSDL's FaultDetail with Domibus's codes and texts,
a message is given out once (or, with `markAsDownloaded="false"`, kept pending until
markMessageAsDownloaded), and a downloaded message is deleted at once under Digg's P-Mode
(retention_downloaded=0); with a retention, its payload stays for an administrator.

Switches make it answer as other real access points do: `domibus="4"` serves only the
deprecated interface with Domibus 4.x's fault shapes (refusals with no FaultDetail), `mtom`
answers retrieveMessage as MTOM/XOP, and `intermediate_statuses` shows SEND_ENQUEUED,
SEND_ATTEMPT_FAILED and WAITING_FOR_RETRY before a submission's final status.

Submissions are checked as Digg's P-Mode and AP specification (C3.2.1, C3.4.6 §3.1.6) ask, then
routed in-process to the access point that serves the finalRecipient, as dynamic discovery
(SML/SMP) routes them in SDK. State lives in a directory, so a restarted sandbox keeps it.
"""

import base64
import binascii
import hashlib
import hmac
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import structlog
from lxml import etree

from ...runtime.files import write_atomic
from ...sdk import xhe
from ...sdk.names import (
    DOCUMENT_ID_SCHEME,
    KVITTENS_ACTION,
    MESSAGE_ACTION,
    PARTY_SCHEME,
    PROCESS_ID,
    PROCESS_ID_SCHEME,
    q,
)
from ...sdk.sealing import MAX_ENVELOPE_BYTES
from ...sdk.verdict import Rejected
from ...sdk.xmlsafe import UnsafeXML, base64_text
from ...sdk.xmlsafe import parse as parse_xml
from . import mtom
from .web import read_body, respond

log = structlog.get_logger(__name__)

SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
EBMS_NS = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/"
BACKEND_NS = "http://org.ecodex.backend/1_1/"
WSPLUGIN_NS = "http://eu.domibus.wsplugin/"
INTERFACE_PATHS = {"/services/wsplugin": WSPLUGIN_NS, "/services/backend": BACKEND_NS}
XML_NS = "http://www.w3.org/XML/1998/namespace"
SOAP_CONTENT_TYPE = "application/soap+xml; charset=UTF-8"

# Digg's P-Mode (domibus-example/P-mode/p-mode.xml) and AS4 profile (C3.2.1 §2.3.1).
AP_PARTY_TYPE = "urn:fdc:digg.se:edelivery:transportprofile:as4:partytype:ap"
INITIATOR_ROLE = EBMS_NS + "initiator"
RESPONDER_ROLE = EBMS_NS + "responder"
PAYLOAD_HREF = "cid:message"
PAYLOAD_MIME_TYPE = "text/xml"
ACTIONS = {
    MESSAGE_ACTION: xhe.PayloadKind.MESSAGE,
    KVITTENS_ACTION: xhe.PayloadKind.KVITTENS,
}
NOT_SERVICED = "NOT_SERVICED"  # C3.2.1 §2.5 c: the receiving AP does not serve the recipient

# A 30 MB business message is ~40 MB as an XHE (its ciphertext is base64) and ~54 MB once the
# XHE is base64 again in the SOAP body; the envelope limit is the one the SDK core uses.
MAX_REQUEST_BYTES = 60_000_000
MAX_DELAY_SECONDS = 120.0
MAX_MESSAGE_ID_CHARS = 255

# Which ConversationId to accept. Digg's texts disagree: B1.3.3 1.5.2 says the business
# message's conversationId (invisible to the AP: it is encrypted), C3.2.1 §2.7 a says the XHE
# Header ID; Domibus itself makes one up when none is given.
ConversationIdRule = Literal["business", "envelope", "optional"]
CONVERSATION_ID_RULES = ("business", "envelope", "optional")
Refusal = Literal["fault", "unavailable"]
Generation = Literal["5", "4"]
SENDING, RECEIVING = "SENDING", "RECEIVING"
# What Domibus reports of a submission on its way, before ACKNOWLEDGED or SEND_FAILURE.
INTERMEDIATE = ("SEND_ENQUEUED", "SEND_ATTEMPT_FAILED", "WAITING_FOR_RETRY")
LOGIN_FAILED = "[DOM_002]:Bad credentials"  # AuthenticationExtException's message
_NO_PASSWORD = "\0" * 32


@dataclass(frozen=True)
class PluginUser:
    """A Domibus plugin user. With `original_user` (ROLE_USER) it acts for that organisation
    only; without (ROLE_ADMIN) for every organisation on the access point."""

    password: str
    original_user: str | None = None


class Status:
    """Domibus MessageStatus values (the XSD's `messageStatus`) this emulator uses."""

    SEND_ENQUEUED = "SEND_ENQUEUED"
    ACKNOWLEDGED = "ACKNOWLEDGED"
    SEND_FAILURE = "SEND_FAILURE"
    RECEIVED = "RECEIVED"
    DOWNLOADED = "DOWNLOADED"
    DELETED = "DELETED"
    NOT_FOUND = "NOT_FOUND"


# ebMS 3 short descriptions, which Domibus puts before the detail of an EbMS3Exception
# (MessagingExceptionFactory: "<short description> detail: <detail>").
_SHORT = {
    "EBMS:0003": "ValueInconsistent",
    "EBMS:0004": "Other",
    "EBMS:0009": "InvalidHeader",
    "EBMS:0010": "ProcessingModeMismatch",
}
SUBMISSION_FAILED = "Message submission failed"  # Domibus's SubmitMessageFault text


class Fault(Exception):
    """A SOAP 1.2 fault; `code`/`message` become the WSDL's FaultDetail."""

    def __init__(
        self,
        reason: str,
        code: str | None = None,
        message: str | None = None,
        *,
        soap_code: str = "Receiver",
        http_status: int = 500,
        logged: str | None = None,
    ) -> None:
        super().__init__(f"{reason}: {code} {message}")
        self.reason = reason
        self.code = code
        self.message = message
        self.soap_code = soap_code  # Receiver; Sender for a malformed request
        self.http_status = http_status
        self.logged = logged  # the errorDetail Domibus logs for it (getMessageErrors), if any


def _refused(code: str, detail: str) -> Fault:
    """A submission refused by an EbMS3Exception, worded as Domibus words it."""
    return Fault(SUBMISSION_FAILED, code, f"{_SHORT[code]} detail: {detail}", logged=detail)


def _invalid(detail: str) -> Fault:
    """A submission refused by a check Digg asks of an SDK AP and Domibus does not make."""
    return Fault(SUBMISSION_FAILED, "EBMS:0004", detail)


def _no_metadata(action: str, process: str) -> Fault:
    """Domibus's answer when dynamic discovery finds no SMP metadata for the finalRecipient."""
    text = f"Could not fetch metadata from SMP for documentId {action} processId {process}"
    return Fault(SUBMISSION_FAILED, "EBMS:0004", text, logged=text)


@dataclass(frozen=True)
class Envelope:
    """The ebMS UserMessage fields the access point keeps and hands back on retrieval."""

    message_id: str
    timestamp: str
    from_party: str
    to_party: str
    service: str
    service_type: str
    action: str
    conversation_id: str
    original_sender: str
    final_recipient: str


@dataclass(frozen=True)
class Record:
    envelope: Envelope
    status: str
    payload_file: str | None  # under payloads/, None once deleted
    changed: str  # when the status last changed
    downloaded: str | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class AccessPoint:
    """One organisation's access point, as a WSGI application.

    `route(finalRecipient)` names the access point the SMP publishes for a participant, None
    when the SMP has no metadata for it. As Domibus with dynamic discovery, the lookup happens
    during submitMessage, so an unknown participant is refused at once (EBMS:0004); an access
    point that is found but does not serve the participant refuses delivery, and the message
    ends SEND_FAILURE with EBMS_0004 / NOT_SERVICED in getMessageErrors (C3.2.1 §2.5).
    """

    def __init__(
        self,
        directory: Path,
        party_id: str,
        organisations: Iterable[str],
        users: Mapping[str, PluginUser],
        route: Callable[[str], "AccessPoint | None"],
        conversation_id_rule: ConversationIdRule = "business",
        retention_downloaded_minutes: int = 0,
        clock: Callable[[], datetime] = _now,
        *,
        domibus: Generation = "5",
        mtom: bool = False,
        unsecure_login: bool = False,
    ) -> None:
        if conversation_id_rule not in CONVERSATION_ID_RULES:
            raise ValueError(f"conversation_id_rule must be one of {CONVERSATION_ID_RULES}")
        if retention_downloaded_minutes < 0:
            raise ValueError("retention_downloaded_minutes must not be negative")
        self.directory = Path(directory)
        self.party_id = party_id
        self.organisations = frozenset(organisations)
        self.users = dict(users)
        self.domibus = domibus
        self.mtom = mtom
        # domibus.auth.unsecureLoginAllowed: only then is a request's finalRecipient filter
        # used; otherwise it is always the user's originalUser (none for an administrator).
        self.unsecure_login = unsecure_login
        self.route = route
        self.conversation_id_rule = conversation_id_rule
        self.retention_downloaded_minutes = retention_downloaded_minutes
        self.clock = clock
        self._payloads = self.directory / "payloads"
        self._payloads.mkdir(parents=True, exist_ok=True)
        self._journal = self.directory / "journal.jsonl"
        self._lock = threading.RLock()
        self._reserved: set[str] = set()  # submissions being stored, outside the lock
        self._journaled = self._synced = 0  # journal lines appended, and made durable
        self._sync_lock = threading.Lock()
        self._sent: dict[str, Record] = {}
        self._received: dict[str, Record] = {}
        self._errors: dict[str, list[dict[str, str]]] = {}
        self._load()
        self._switch_lock = threading.Lock()
        self._refusal: tuple[Refusal, int | None] | None = None
        self._delay: tuple[float, int | None] | None = None
        self._send_failures = 0
        self._intermediate: dict[str, int] = {}  # status queries left to answer on the way
        self._intermediate_steps = 0
        # Tests watch the wire: called with ("request" or "answer", body, Content-Type).
        self.observer: Callable[[str, bytes, str], None] | None = None

    # Fault switches for tests.

    def refuse_submissions(self, how: Refusal = "fault", count: int | None = None) -> None:
        """Refuse the next `count` submissions (None: until cleared).

        "fault" answers Domibus's SubmitMessageFault; "unavailable" answers HTTP 503, as a proxy
        in front of a stopped Domibus does.
        """
        if how not in ("fault", "unavailable"):
            raise ValueError("how must be 'fault' or 'unavailable'")
        if count is not None and count < 1:
            raise ValueError("count must be at least 1")
        with self._switch_lock:
            self._refusal = (how, count)

    def delay_submissions(self, seconds: float, count: int | None = None) -> None:
        """Hold each of the next `count` submissions `seconds` before answering it."""
        if not 0 < seconds <= MAX_DELAY_SECONDS:
            raise ValueError(f"seconds must be in (0, {MAX_DELAY_SECONDS}]")
        if count is not None and count < 1:
            raise ValueError("count must be at least 1")
        with self._switch_lock:
            self._delay = (seconds, count)

    def fail_sends(self, count: int) -> None:
        """Accept the next `count` submissions, then fail to send them (EBMS:0005), as when
        the receiving access point cannot be reached: they end SEND_FAILURE."""
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._switch_lock:
            self._send_failures = count

    def intermediate_statuses(self, on: bool = True) -> None:
        """Answer getStatus of each later submission with SEND_ENQUEUED, SEND_ATTEMPT_FAILED
        and WAITING_FOR_RETRY, one a query, before its final status."""
        with self._switch_lock:
            self._intermediate_steps = len(INTERMEDIATE) if on else 0

    def _take_send_failure(self) -> bool:
        with self._switch_lock:
            if self._send_failures:
                self._send_failures -= 1
                return True
            return False

    def clear_fault_switches(self) -> None:
        with self._switch_lock:
            self._refusal = None
            self._delay = None
            self._send_failures = 0
            self._intermediate_steps = 0

    def _take_switches(self) -> tuple[float, Refusal | None]:
        """Use up one submission's worth of the switches: (delay, refusal)."""

        def take(
            switch: tuple[Any, int | None] | None,
        ) -> tuple[Any, tuple[Any, int | None] | None]:
            if switch is None:
                return None, None
            value, count = switch
            if count is None:
                return value, switch
            return value, ((value, count - 1) if count > 1 else None)

        with self._switch_lock:
            delay, self._delay = take(self._delay)
            refusal, self._refusal = take(self._refusal)
        return delay or 0.0, refusal

    # Python-side view, for the sandbox and tests.

    def submitted(self, action: str) -> list[Envelope]:
        """What was submitted here under `action`: each ebMS MessageId once, by design."""
        with self._lock:
            return [r.envelope for r in self._sent.values() if r.envelope.action == action]

    def status(self, message_id: str, role: str | None = None) -> str:
        """getStatus: what a client polling this access point would see, in `role`
        (SENDING or RECEIVING; None: whichever it has, the sent one first)."""
        with self._lock:
            self._purge()
            sent, received = self._sent.get(message_id), self._received.get(message_id)
            record = {SENDING: sent, RECEIVING: received}.get(role or "", sent or received)
            if record is None:
                return Status.NOT_FOUND
            if record is sent and self._intermediate.get(message_id):
                left = self._intermediate[message_id]
                self._intermediate[message_id] = left - 1
                return INTERMEDIATE[len(INTERMEDIATE) - left]
            return record.status

    def pending(self, final_recipient: str | None = None, **filters: str) -> list[str]:
        """listPendingMessages: received and not yet downloaded, oldest first; of one
        `final_recipient`, and matching the request's other `filters` (its element names)."""
        with self._lock:
            self._purge()
            waiting = [
                r
                for r in self._received.values()
                if r.status == Status.RECEIVED
                and final_recipient in (None, r.envelope.final_recipient)
                and _matches(r, filters)
            ]
        return [r.envelope.message_id for r in sorted(waiting, key=lambda r: r.changed)]

    def errors(self, message_id: str) -> list[dict[str, str]]:
        """getMessageErrors: entries with the XSD's errorResultImpl fields."""
        with self._lock:
            return [dict(e) for e in self._errors.get(message_id, [])]

    # WSGI.

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        ns = INTERFACE_PATHS.get(environ.get("PATH_INFO", "").rstrip("/") or "/")
        if self.domibus == "4" and ns == WSPLUGIN_NS:
            ns = None  # Domibus 4.x has only the deprecated interface
        if ns is None:
            return respond(start_response, 404, b"No service was found.\n")
        answered: list[str] = []

        def watched(status: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
            answered.extend(v for k, v in headers if k.lower() == "content-type")
            return start_response(status, headers, *rest)

        try:
            answer = self._handle(ns, environ, watched)
        except Fault as fault:
            answer = _fault_response(watched, fault, ns)
        except Exception:  # a bug still answers SOAP, as CXF does
            log.exception("access point failed", party=self.party_id)
            answer = _fault_response(watched, Fault("Internal error"), ns)
        finally:
            self._sync()  # what this request changed is durable before it is answered
        if self.observer is not None:
            self.observer("answer", b"".join(answer), answered[0] if answered else "")
        return answer

    def _handle(
        self, ns: str, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> list[bytes]:
        method = environ.get("REQUEST_METHOD")
        if method == "GET" and environ.get("QUERY_STRING", "").lower().startswith("wsdl"):
            return respond(start_response, 200, _wsdl(ns, environ), "text/xml;charset=UTF-8")
        if method != "POST":
            return respond(
                start_response, 405, b"POST SOAP 1.2 requests\n", headers=[("Allow", "POST")]
            )
        user = self._authorised(environ.get("HTTP_AUTHORIZATION", ""))
        if user is None:  # Domibus's interceptor: a CXF Fault, so HTTP 500
            raise Fault(LOGIN_FAILED)
        media_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if media_type != "application/soap+xml":
            raise Fault(
                f"Content-Type {media_type or 'none'} is not SOAP 1.2 (application/soap+xml)",
                soap_code="Sender",
                http_status=415,
            )
        try:
            body = read_body(environ, MAX_REQUEST_BYTES)
        except ValueError as e:
            raise Fault(str(e), soap_code="Sender", http_status=413) from None
        if self.observer is not None:
            self.observer("request", body, environ.get("CONTENT_TYPE", ""))
        try:
            envelope = parse_xml(body, max_bytes=MAX_REQUEST_BYTES)
        except UnsafeXML as e:
            raise Fault(f"Error reading XMLStreamReader: {e}", soap_code="Sender") from None
        header, request = _split(envelope)
        name = etree.QName(request).localname
        if etree.QName(request).namespace != ns or name not in _OPERATIONS[ns]:
            # CXF picks the operation by the body element (soapAction is empty).
            raise Fault(
                f"Message part {request.tag} was not recognized.  (Does it exist in service WSDL?)",
                soap_code="Sender",
            )
        if name == "submitRequest":
            delay, refusal = self._take_switches()
            if delay:
                time.sleep(delay)
            if refusal == "unavailable":
                return respond(start_response, 503, b"Service Unavailable\n")
            if refusal == "fault":
                raise Fault(
                    SUBMISSION_FAILED, "EBMS:0004", "the access point is refusing submissions"
                )
            answer = self._submit(ns, user, header, request)
        elif name == "listPendingMessagesRequest":
            answer = self._list_pending(ns, user, request)
        elif name == "retrieveMessageRequest":
            return self._retrieve(ns, user, request, start_response)
        elif name == "markMessageAsDownloadedRequest":
            answer = self._mark_downloaded(ns, user, request)
        elif name in ("statusRequest", "statusRequestWithAccessPointRole"):
            answer = self._status(ns, request)
        else:  # getErrorsRequest, getErrorsRequestWithAccessPointRole
            answer = self._message_errors(ns, request)
        return respond(start_response, 200, answer, SOAP_CONTENT_TYPE)

    def _authorised(self, header: str) -> PluginUser | None:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            name, _, password = (
                base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return None
        user = self.users.get(name)
        # The password is compared even for an unknown user: the answer's timing does not
        # say which names exist.
        expected = user.password if user else _NO_PASSWORD
        password_ok = hmac.compare_digest(password.encode(), expected.encode())
        return user if user is not None and password_ok else None

    def _list_pending(self, ns: str, user: PluginUser, request: etree._Element) -> bytes:
        """As Domibus 5.2's WebServiceImpl: unless unsecure login is allowed, the filter
        finalRecipient is the user's originalUser whatever it asked, so an administrator,
        having none, is listed every organisation's messages."""
        filters = {
            etree.QName(child).localname: (child.text or "").strip()
            for child in request
            if isinstance(child.tag, str)
        }
        if ns == BACKEND_NS:
            filters = {}  # BackendService_1_1's request has no filters
        final_recipient = filters.pop("finalRecipient", None)
        if not self.unsecure_login:
            final_recipient = user.original_user
        ids = self.pending(final_recipient, **filters)
        return _answer(ns, _element(ns, "listPendingMessagesResponse", ids=ids))

    def _status(self, ns: str, request: etree._Element) -> bytes:
        message_id = _required_id(request, ns)
        role = _role(request)
        if role is not None and role not in (SENDING, RECEIVING):
            invalid = "Access point role is invalid"
            raise Fault(invalid, "WS_PLUGIN:0007", invalid)
        if role is None and ns == WSPLUGIN_NS:
            with self._lock:
                both = message_id in self._sent and message_id in self._received
            if both:  # sent between two of its organisations: known in both roles
                raise Fault(
                    f"Duplicated message found, id [{message_id}]",
                    "WS_PLUGIN:0007",
                    f"Duplicate message found with Id [{message_id}]",
                )
        return _answer(ns, _element(ns, "getStatusResponse", self.status(message_id, role)))

    # submitMessage

    def _submit(
        self,
        ns: str,
        user: PluginUser,
        header: etree._Element | None,
        request: etree._Element,
    ) -> bytes:
        try:
            message_id = self._submit_checked(user, header, request)
        except Fault as fault:
            if self.domibus == "4" and (fault.message or "").startswith("Could not fetch metadata"):
                # Domibus 4.x: the dynamic discovery failure reaches CXF unwrapped.
                raise Fault(fault.message or "", soap_code="Receiver") from None
            raise
        return _answer(ns, _element(ns, "submitResponse", ids=[message_id]))

    def _submit_checked(
        self, user: PluginUser, header: etree._Element | None, request: etree._Element
    ) -> str:
        user_message = None if header is None else header.find(_eb("Messaging/UserMessage"))
        if user_message is None:
            raise Fault(
                SUBMISSION_FAILED, "EBMS:0004", "the ebMS Messaging header has no UserMessage"
            )
        payload = _payload(user_message, request)
        message_id = (_text(user_message, "MessageInfo/MessageId") or "").strip()
        if not message_id:
            message_id = f"{uuid.uuid4()}@{self.party_id}"  # Domibus: <uuid>@<suffix>
        _check_message_id(message_id)
        with self._lock:
            self._refuse_duplicate(message_id)
            self._reserved.add(message_id)  # the payload is written outside the lock
        try:
            return self._submit_reserved(user, user_message, payload, message_id)
        finally:
            with self._lock:
                self._reserved.discard(message_id)

    def _submit_reserved(
        self, user: PluginUser, user_message: etree._Element, payload: bytes, message_id: str
    ) -> str:
        try:
            envelope = self._check(user_message, payload, message_id)
            if user.original_user not in (None, envelope.original_sender):
                raise _invalid(_not_allowed(user.original_user))
            target = self.route(envelope.final_recipient)
            if target is None:
                raise _no_metadata(envelope.action, envelope.service)
        except Fault as fault:
            if fault.logged is not None:
                with self._lock:
                    self._log_error(message_id, fault.code or "EBMS:0004", fault.logged)
                    self._persist(message_id)
            raise
        envelope = replace(envelope, to_party=target.party_id)
        name = self._store_payload("sent", message_id, payload)
        with self._lock:
            self._sent[message_id] = Record(
                envelope, Status.SEND_ENQUEUED, name, _stamp(self.clock())
            )
            self._persist(message_id)
            if self._intermediate_steps:
                self._intermediate[message_id] = self._intermediate_steps
        log.info("submitted", party=self.party_id, message_id=message_id, to=target.party_id)
        code, problem = "EBMS:0004", None
        try:
            if self._take_send_failure():
                code, problem = "EBMS:0005", "ConnectionFailure: the receiving AP did not answer"
            else:
                problem = target._accept(envelope, payload)
        except OSError as e:  # the receiving side could not store it
            problem = f"delivery failed: {e}"
        with self._lock:
            record = self._sent[message_id]
            status = Status.ACKNOWLEDGED if problem is None else Status.SEND_FAILURE
            self._sent[message_id] = replace(record, status=status, changed=_stamp(self.clock()))
            if problem is not None:
                self._log_error(message_id, code, problem)
            self._persist(message_id)
        return message_id

    def _refuse_duplicate(self, message_id: str) -> None:
        if message_id in self._sent or message_id in self._received or message_id in self._reserved:
            raise Fault(
                SUBMISSION_FAILED,
                "EBMS:0004",
                f"Message with id [{message_id}] already exists."
                " Message identifiers must be unique",
            )

    def _check(self, user_message: etree._Element, payload: bytes, message_id: str) -> Envelope:
        """The UserMessage against Digg's P-Mode, and the XHE against the UserMessage."""
        from_party = user_message.find(_eb("PartyInfo/From/PartyId"))
        if from_party is not None and (
            (from_party.text or "").strip() != self.party_id
            or from_party.get("type", AP_PARTY_TYPE) != AP_PARTY_TYPE
        ):
            raise _refused(
                "EBMS:0010",
                f"The initiator party's name [{(from_party.text or '').strip()}] does not"
                f" correspond to the access point's name [{self.party_id}]",
            )
        service = user_message.find(_eb("CollaborationInfo/Service"))
        service_value = (service.text or "").strip() if service is not None else ""
        service_type = service.get("type", "") if service is not None else ""
        action = (_text(user_message, "CollaborationInfo/Action") or "").strip()
        if (
            service_value != PROCESS_ID
            or service_type != PROCESS_ID_SCHEME
            or action not in ACTIONS
        ):
            raise _refused(
                "EBMS:0010",
                "No matching dynamic discovery processes found for message. (Digg's P-Mode has"
                f" Service {PROCESS_ID} of type {PROCESS_ID_SCHEME} and the Actions"
                f" {DOCUMENT_ID_SCHEME}::<message or kvittens document id>)",
            )
        properties = self._properties(user_message)
        if "finalRecipient" not in properties:
            raise _refused(
                "EBMS:0010",
                "Dynamic discovery processes found for message but finalRecipient information"
                " is missing in messageProperties.",
            )
        if "originalSender" not in properties:
            raise _refused("EBMS:0010", "Required property missing [originalSender]")
        final_recipient, recipient_type = properties["finalRecipient"]
        original_sender, sender_type = properties["originalSender"]
        if sender_type != PARTY_SCHEME:
            raise _invalid(f"originalSender must have type {PARTY_SCHEME}")
        if recipient_type != PARTY_SCHEME:  # Domibus asks the SMP with this scheme: no metadata
            raise _no_metadata(action, service_value)
        if original_sender not in self.organisations:
            authorised = ", ".join(sorted(self.organisations))
            raise _invalid(_not_allowed(authorised))
        header = self._check_envelope(payload, action, original_sender, final_recipient)
        conversation_id = (_text(user_message, "CollaborationInfo/ConversationId") or "").strip()
        if self.conversation_id_rule == "envelope" and conversation_id != header.id:
            raise _invalid("ConversationId must be the XHE Header ID (C3.2.1 §2.7 a)")
        if self.conversation_id_rule == "business" and not conversation_id:
            raise _invalid(
                "ConversationId must be the business message's conversationId (B1.3.3 1.5.2)"
            )
        if len(conversation_id) > MAX_MESSAGE_ID_CHARS:
            raise _refused("EBMS:0003", "Value of ConversationId is longer than 255 characters")
        return Envelope(
            message_id=message_id,
            timestamp=_stamp(self.clock()),
            from_party=self.party_id,
            to_party="",
            service=service_value,
            service_type=service_type,
            action=action,
            conversation_id=conversation_id or str(uuid.uuid4()),  # Domibus makes one up
            original_sender=original_sender,
            final_recipient=final_recipient,
        )

    @staticmethod
    def _properties(user_message: etree._Element) -> dict[str, tuple[str, str]]:
        properties: dict[str, tuple[str, str]] = {}
        for prop in user_message.findall(_eb("MessageProperties/Property")):
            name = prop.get("name", "")
            if name not in ("originalSender", "finalRecipient"):  # Digg's eDeliveryPropertySet
                raise _refused(
                    "EBMS:0010",
                    "Property profiling for this exchange does not include a property"
                    f" named [{name}]",
                )
            if name in properties:
                text = f"Duplicate Message property found for property name [{name}]"
                raise Fault(SUBMISSION_FAILED, "EBMS:0052", text, logged=text)
            properties[name] = ((prop.text or "").strip(), prop.get("type", ""))
        return properties

    @staticmethod
    def _check_envelope(
        payload: bytes, action: str, original_sender: str, final_recipient: str
    ) -> xhe.Header:
        """The payload must be an XHE under Digg's profile that agrees with the ebMS header."""
        try:
            header = xhe.read_header(parse_xml(payload, max_bytes=MAX_ENVELOPE_BYTES))
        except UnsafeXML as e:
            raise _invalid(f"payload [{PAYLOAD_HREF}] is not an XHE envelope: {e}") from None
        except Rejected as e:
            raise _invalid(f"payload [{PAYLOAD_HREF}] is not an XHE envelope: {e.text}") from None
        if header.kind is not ACTIONS[action]:
            raise _invalid("Action does not match the XHE document type (C3.4.6 §3.1.6 c)")
        if header.from_party != original_sender:
            raise _invalid("originalSender does not match the XHE FromParty (C3.4.6 §3.1.6 b)")
        if header.to_party != final_recipient:
            raise _invalid("finalRecipient does not match the XHE ToParty (C3.4.6 §3.1.6 a)")
        return header

    def _accept(self, envelope: Envelope, payload: bytes) -> str | None:
        """Take one message from a sending access point; the ebMS error detail if refused."""
        if envelope.final_recipient not in self.organisations:
            log.info("not serviced", party=self.party_id, recipient=envelope.final_recipient)
            return NOT_SERVICED
        with self._lock:
            known = envelope.message_id in self._received  # AS4 duplicate detection
        if not known:
            name = self._store_payload("received", envelope.message_id, payload)
            with self._lock:
                if envelope.message_id not in self._received:
                    record = Record(envelope, Status.RECEIVED, name, _stamp(self.clock()))
                    self._received[envelope.message_id] = record
                    self._persist(envelope.message_id)
            self._sync()  # durable here before the sending access point is answered
        log.info("received", party=self.party_id, message_id=envelope.message_id)
        return None

    # retrieveMessage, getMessageErrors

    def _retrieve(
        self,
        ns: str,
        user: PluginUser,
        request: etree._Element,
        start_response: Callable[..., Any],
    ) -> list[bytes]:
        """retrieveMessage; with markAsDownloaded="false" (current interface) the message
        stays pending, and may be retrieved again while its payload is there."""
        message_id = _required_id(request, ns)
        keep = ns == WSPLUGIN_NS and request.get("markAsDownloaded", "true").lower() == "false"
        with self._lock:
            self._purge()
            record = self._received.get(message_id)
            if record is None or record.payload_file is None:
                raise _not_found(ns, message_id, "pending for download")
            if record.status == Status.DOWNLOADED and not keep:  # given out once
                raise _not_found(ns, message_id, "was already downloaded")
            _may_handle(user, record.envelope)
            payload = (self._payloads / record.payload_file).read_bytes()
            if not keep:
                self._downloaded(message_id, record)
        log.info("retrieved", party=self.party_id, message_id=message_id, kept=keep)
        body = _element(ns, "retrieveMessageResponse")
        if self.mtom:
            content_type, answer = _mtom_answer(ns, body, _messaging(record.envelope), payload)
            return respond(start_response, 200, answer, content_type)
        answer = _answer(ns, body, _messaging(record.envelope), payload)
        return respond(start_response, 200, answer, SOAP_CONTENT_TYPE)

    def _mark_downloaded(self, ns: str, user: PluginUser, request: etree._Element) -> bytes:
        """markMessageAsDownloaded: a message no longer pending is not found, as Domibus
        deletes its plugin log entry on download."""
        message_id = _required_id(request, ns)
        with self._lock:
            self._purge()
            record = self._received.get(message_id)
            if record is None or record.status != Status.RECEIVED:
                raise _not_found(ns, message_id, "pending for download")
            _may_handle(user, record.envelope)
            self._downloaded(message_id, record)
        log.info("marked downloaded", party=self.party_id, message_id=message_id)
        response = _element(ns, "markMessageAsDownloadedResponse")
        etree.SubElement(response, "messageID").text = message_id
        return _answer(ns, response)

    def _downloaded(self, message_id: str, record: Record) -> None:
        """(Under the lock.) Given out: deleted at once under Digg's P-Mode, else kept for
        the retention."""
        now = _stamp(self.clock())
        if self.retention_downloaded_minutes == 0:  # Digg's P-Mode: retention_downloaded=0
            if record.payload_file:
                (self._payloads / record.payload_file).unlink(missing_ok=True)
            record = replace(record, status=Status.DELETED, payload_file=None, changed=now)
        else:
            record = replace(record, status=Status.DOWNLOADED, changed=now)
        self._received[message_id] = replace(record, downloaded=record.downloaded or now)
        self._persist(message_id)

    def retained_payload(self, message_id: str) -> bytes | None:
        """A downloaded message's payload during its retention, as an administrator gets it
        from Domibus's console (Messages, download); None when there is none."""
        with self._lock:
            self._purge()
            record = self._received.get(message_id)
            if record is None or record.payload_file is None:
                return None
            return (self._payloads / record.payload_file).read_bytes()

    def _message_errors(self, ns: str, request: etree._Element) -> bytes:
        """getMessageErrors; on the current interface, as Domibus 5.2: an unknown id is
        WS_PLUGIN:0009, one known in both roles asked without a role WS_PLUGIN:00010."""
        found = request.find("messageID")
        message_id = (found.text or "").strip() if found is not None else ""
        role = _role(request)
        errors = self.errors(message_id)
        if ns == WSPLUGIN_NS:
            message_id = _required_id(request, ns)
            with self._lock:
                roles = {
                    SENDING: message_id in self._sent or message_id in self._errors,
                    RECEIVING: message_id in self._received,
                }
            if not roles.get(role or "", any(roles.values())):
                raise _not_found(ns, message_id, "")
            if role is None and all(roles.values()):
                text = (
                    f"Duplicate message Id [{message_id}] found. For self sending please call"
                    " the method with access point role to get the errors of the message."
                )
                raise Fault(
                    f"Duplicate message found with Id [{message_id}].", "WS_PLUGIN:00010", text
                )
            errors = [e for e in errors if role in (None, e["mshRole"])]
        response = _element(ns, "getMessageErrorsResponse")
        code_name = "domibusErrorCode" if ns == WSPLUGIN_NS else "errorCode"
        for error in errors:
            item = etree.SubElement(response, "item")
            etree.SubElement(item, code_name).text = error["errorCode"]
            for name in (
                "errorDetail",
                "messageInErrorId",
                "mshRole",
                "notified",
                "timestamp",
            ):
                etree.SubElement(item, name).text = error[name]
        return _answer(ns, response)

    # State.

    def _log_error(self, message_id: str, code: str, detail: str) -> None:
        now = _stamp(self.clock())
        self._errors.setdefault(message_id, []).append(
            {
                "errorCode": code.replace(":", "_"),  # the XSD's errorCode enumeration
                "errorDetail": detail,
                "messageInErrorId": message_id,
                "mshRole": "SENDING",
                "notified": now,
                "timestamp": now,
            }
        )

    def _store_payload(self, role: str, message_id: str, payload: bytes) -> str:
        name = f"{role}-{hashlib.sha256(message_id.encode()).hexdigest()}.xhe"
        write_atomic(self._payloads / name, payload)
        return name

    def _purge(self) -> None:
        """Delete downloaded messages whose retention has run out (Domibus's retention worker)."""
        if self.retention_downloaded_minutes == 0:
            return
        limit = self.clock() - timedelta(minutes=self.retention_downloaded_minutes)
        expired = [
            r
            for r in self._received.values()
            if r.status == Status.DOWNLOADED
            and r.downloaded
            and _parse_stamp(r.downloaded) <= limit
        ]
        for record in expired:
            if record.payload_file:
                (self._payloads / record.payload_file).unlink(missing_ok=True)
            self._received[record.envelope.message_id] = replace(
                record, status=Status.DELETED, payload_file=None, changed=_stamp(self.clock())
            )
            self._persist(record.envelope.message_id)

    def _persist(self, message_id: str) -> None:
        """Append what is known of one message to the journal (under the lock): one line per
        change, so a busy access point does not rewrite all its state each time. `_sync`
        makes it durable before the request is answered."""
        line = json.dumps(self._entry(message_id), ensure_ascii=False) + "\n"
        with self._journal.open("a", encoding="utf-8") as journal:
            journal.write(line)
        self._journaled += 1

    def _sync(self) -> None:
        """fsync the journal once for every line appended so far, outside the state lock:
        requests that arrive together share one fsync (a group commit, as a database does)."""
        with self._sync_lock:
            with self._lock:
                target = self._journaled
            if self._synced >= target:
                return
            descriptor = os.open(self._journal, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            self._synced = target

    def _entry(self, message_id: str) -> dict[str, Any]:
        sent, received = self._sent.get(message_id), self._received.get(message_id)
        return {
            "id": message_id,
            "sent": asdict(sent) if sent else None,
            "received": asdict(received) if received else None,
            "errors": self._errors.get(message_id),
        }

    def _load(self) -> None:
        """Replay the journal (the last line about a message wins), then write it back
        with one line per message, so it does not grow across restarts."""
        if not self._journal.exists():
            return

        def record(data: dict[str, Any]) -> Record:
            return Record(**{**data, "envelope": Envelope(**data["envelope"])})

        for line in self._journal.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            message_id = entry["id"]
            if entry["sent"]:
                self._sent[message_id] = record(entry["sent"])
            if entry["received"]:
                self._received[message_id] = record(entry["received"])
            if entry["errors"]:
                self._errors[message_id] = entry["errors"]
        ids = dict.fromkeys([*self._sent, *self._received, *self._errors])
        compact = "".join(json.dumps(self._entry(i), ensure_ascii=False) + "\n" for i in ids)
        write_atomic(self._journal, compact.encode())


# SOAP and the WS plugin's XML.


def _eb(path: str) -> str:
    """An ElementPath in the ebMS namespace."""
    return "/".join(q(EBMS_NS, step) for step in path.split("/"))


def _text(parent: etree._Element, path: str) -> str | None:
    found = parent.find(_eb(path))
    return None if found is None else (found.text or "")


def _split(envelope: etree._Element) -> tuple[etree._Element | None, etree._Element]:
    """(Header or None, the Body's request element) of a SOAP 1.2 envelope."""
    if envelope.tag == q(SOAP11_NS, "Envelope"):
        raise Fault("SOAP 1.1 is not supported: use SOAP 1.2", soap_code="VersionMismatch")
    if envelope.tag != q(SOAP12_NS, "Envelope"):
        raise Fault("Message part is not a SOAP 1.2 Envelope", soap_code="Sender")
    body = envelope.find(q(SOAP12_NS, "Body"))
    request = None if body is None else next((c for c in body if isinstance(c.tag, str)), None)
    if request is None:
        raise Fault("The SOAP Body holds no request", soap_code="Sender")
    return envelope.find(q(SOAP12_NS, "Header")), request


def _payload(user_message: etree._Element, request: etree._Element) -> bytes:
    """The cid:message payload, found as Domibus's WS plugin finds the PartInfo payloads."""
    payloads = request.findall("payload")
    for element in payloads:
        if not element.get("payloadId", "").strip():
            raise Fault(
                "Invalid request",
                "EBMS_0004",
                "Attribute 'payloadId' of the 'payload' element must not be empty",
            )
    parts = user_message.findall(_eb("PayloadInfo/PartInfo"))
    if not parts:
        raise _refused("EBMS:0010", f"Payload profiling error, missing payload [{PAYLOAD_HREF}]")
    found: bytes | None = None
    for part in parts:
        href = part.get("href", "")
        element = next(
            (p for p in payloads if p.get("payloadId", "").lower() == href.lower()), None
        )
        if element is None:
            raise Fault(
                f"No Payload or Bodyload found for PartInfo with href: {href}", "EBMS_0004", href
            )
        if href != PAYLOAD_HREF:
            raise _refused(
                "EBMS:0010",
                f"Payload profiling for this exchange does not include a payload with CID [{href}]",
            )
        mime_types = [
            (p.text or "").strip()
            for p in part.findall(_eb("PartProperties/Property"))
            if p.get("name") == "MimeType"
        ] or [element.get("contentType", "")]
        if mime_types != [PAYLOAD_MIME_TYPE]:
            raise _refused(
                "EBMS:0010",
                f"Payload profiling for this exchange requires the part [{href}] to declare"
                f" one MimeType property, {PAYLOAD_MIME_TYPE}",
            )
        value = element.find("value")
        try:
            found = base64_text(value) if value is not None else b""
        except (binascii.Error, ValueError):
            raise Fault(
                "Unmarshalling Error: payload value is not base64", soap_code="Sender"
            ) from None
    if found is None:
        raise _refused("EBMS:0010", f"Payload profiling error, missing payload [{PAYLOAD_HREF}]")
    return found


def _check_message_id(message_id: str) -> None:
    """Domibus's MessageId checks: length, and its default pattern (printable ASCII)."""
    if len(message_id) > MAX_MESSAGE_ID_CHARS:
        raise _refused("EBMS:0003", "Value of MessageId is longer than 255 characters")
    if not all(" " <= c <= "~" for c in message_id):
        raise _refused(
            "EBMS:0009",
            "Element eb:Messaging/eb:UserMessage/eb:MessageInfo/eb:MessageId does not conform"
            " to the required MessageIdPattern: ^[\\x20-\\x7E]*$",
        )


def _required_id(request: etree._Element, ns: str) -> str:
    """The request's messageID (unqualified, as the XSD says), or Domibus's empty-id fault."""
    found = request.find("messageID")
    message_id = (found.text or "").strip() if found is not None else ""
    if not message_id:
        code = "WS_PLUGIN:0007" if ns == WSPLUGIN_NS else "EBMS:0004"
        raise Fault("Message ID is empty", code, "MessageId is empty")
    return message_id


def _role(request: etree._Element) -> str | None:
    """The request's accessPointRole, None for an operation without one."""
    found = request.find("accessPointRole")
    return None if found is None else (found.text or "").strip()


def _not_allowed(authorised: str) -> str:
    """Domibus's words for a message its plugin user may not act for."""
    return f"You are not allowed to handle this message. You are authorized as [{authorised}]"


def _may_handle(user: PluginUser, envelope: Envelope) -> None:
    """A ROLE_USER retrieves or marks only its own organisation's messages (as Domibus's
    UserMessageSecurityService checks, a fault with no FaultDetail)."""
    if user.original_user is not None and user.original_user != envelope.final_recipient:
        raise Fault(_not_allowed(user.original_user))


def _not_found(ns: str, message_id: str, how: str) -> Fault:
    """Domibus's answer for a message it cannot give out: WS_PLUGIN:0009 in 5.x."""
    if ns == WSPLUGIN_NS:
        return Fault(
            f"Message not found, id [{message_id}]",
            "WS_PLUGIN:0009",
            f"No message with id [{message_id}] found",
        )
    return Fault(
        f"Message not found, id [{message_id}]",
        "EBMS:0004",
        f"No message with id [{message_id}] pending for download"
        if how == "pending for download"
        else f"Message with id [{message_id}] {how}",
    )


def _element(
    ns: str, name: str, text: str | None = None, ids: Iterable[str] = ()
) -> etree._Element:
    """A response element; its messageID children are unqualified (elementFormDefault)."""
    element = etree.Element(q(ns, name), nsmap={"ns2": ns})
    element.text = text
    for message_id in ids:
        etree.SubElement(element, "messageID").text = message_id
    return element


# The operations of each interface, by request element.
_OPERATIONS = {
    BACKEND_NS: frozenset(
        {
            "submitRequest",
            "listPendingMessagesRequest",
            "retrieveMessageRequest",
            "statusRequest",
            "getErrorsRequest",
        }
    ),
    WSPLUGIN_NS: frozenset(
        {
            "submitRequest",
            "listPendingMessagesRequest",
            "retrieveMessageRequest",
            "markMessageAsDownloadedRequest",
            "statusRequest",
            "statusRequestWithAccessPointRole",
            "getErrorsRequest",
            "getErrorsRequestWithAccessPointRole",
        }
    ),
}


def _matches(record: Record, filters: dict[str, str]) -> bool:
    """listPendingMessages' filters (other than finalRecipient) against one message."""
    envelope = record.envelope
    fields = {
        "messageId": envelope.message_id,
        "conversationId": envelope.conversation_id,
        "fromPartyId": envelope.from_party,
        "originalSender": envelope.original_sender,
        "refToMessageId": "",  # SDK messages carry none at the ebMS level
    }
    for name, wanted in filters.items():
        if name in fields and fields[name] != wanted:
            return False
        if name == "receivedFrom" and _parse_stamp(record.changed) < _parse_stamp(wanted):
            return False
        if name == "receivedTo" and _parse_stamp(record.changed) > _parse_stamp(wanted):
            return False
    return True


def _wsdl(ns: str, environ: dict[str, Any]) -> bytes:
    """A WSDL naming the interface served, enough for a client to tell which it is. (Not
    Domibus's own: the sandbox carries no copy of it.)"""
    location = (
        f"https://{environ.get('HTTP_HOST', 'localhost')}"
        f"{environ.get('SCRIPT_NAME', '')}{environ.get('PATH_INFO', '')}"
    )
    name = "WebServicePlugin" if ns == WSPLUGIN_NS else "BackendService_1_1"
    wsdl_ns, soap12_ns = (
        "http://schemas.xmlsoap.org/wsdl/",
        "http://schemas.xmlsoap.org/wsdl/soap12/",
    )
    root = etree.Element(
        q(wsdl_ns, "definitions"),
        nsmap={"wsdl": wsdl_ns, "soap12": soap12_ns, "tns": ns},
        name=name,
        targetNamespace=ns,
    )
    service = etree.SubElement(root, q(wsdl_ns, "service"), name=name)
    port = etree.SubElement(service, q(wsdl_ns, "port"), name=f"{name}Port", binding=f"tns:{name}")
    etree.SubElement(port, q(soap12_ns, "address"), location=location)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _messaging(envelope: Envelope) -> etree._Element:
    """The ebMS Messaging header Domibus hands back with a retrieved message."""
    messaging = etree.Element(q(EBMS_NS, "Messaging"), nsmap={"eb": EBMS_NS})
    user = etree.SubElement(messaging, q(EBMS_NS, "UserMessage"))

    def sub(
        parent: etree._Element, tag: str, text: str | None = None, /, **attrs: str
    ) -> etree._Element:
        element = etree.SubElement(parent, q(EBMS_NS, tag), attrs)
        element.text = text
        return element

    info = sub(user, "MessageInfo")
    sub(info, "Timestamp", envelope.timestamp)
    sub(info, "MessageId", envelope.message_id)
    party_info = sub(user, "PartyInfo")
    for side, party, role in (
        ("From", envelope.from_party, INITIATOR_ROLE),
        ("To", envelope.to_party, RESPONDER_ROLE),
    ):
        element = sub(party_info, side)
        sub(element, "PartyId", party, type=AP_PARTY_TYPE)
        sub(element, "Role", role)
    collaboration = sub(user, "CollaborationInfo")
    sub(collaboration, "Service", envelope.service, type=envelope.service_type)
    sub(collaboration, "Action", envelope.action)
    sub(collaboration, "ConversationId", envelope.conversation_id)
    properties = sub(user, "MessageProperties")
    sub(properties, "Property", envelope.original_sender, name="originalSender", type=PARTY_SCHEME)
    sub(properties, "Property", envelope.final_recipient, name="finalRecipient", type=PARTY_SCHEME)
    part = sub(sub(user, "PayloadInfo"), "PartInfo", href=PAYLOAD_HREF)
    sub(sub(part, "PartProperties"), "Property", PAYLOAD_MIME_TYPE, name="MimeType")
    return messaging


def _envelope(
    body: etree._Element, header: etree._Element | None = None
) -> tuple[etree._Element, etree._Element | None]:
    """A SOAP 1.2 envelope around `body`, and the payload `value` element of a body that
    carries one (retrieveMessageResponse), empty."""
    envelope = etree.Element(q(SOAP12_NS, "Envelope"), nsmap={"soap": SOAP12_NS})
    if header is not None:
        etree.SubElement(envelope, q(SOAP12_NS, "Header")).append(header)
    etree.SubElement(envelope, q(SOAP12_NS, "Body")).append(body)
    value = None
    if header is not None:
        value = etree.SubElement(etree.SubElement(body, "payload", payloadId=PAYLOAD_HREF), "value")
    return envelope, value


def _answer(
    ns: str,
    body: etree._Element,
    header: etree._Element | None = None,
    payload: bytes | None = None,
) -> bytes:
    """A SOAP 1.2 envelope around `body`; `payload` goes in as Domibus's payload/value."""
    envelope, value = _envelope(body, header if payload is not None else None)
    if value is not None and payload is not None:
        value.text = base64.b64encode(payload).decode("ascii")
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")


def _mtom_answer(
    ns: str, body: etree._Element, header: etree._Element, payload: bytes
) -> tuple[str, bytes]:
    """The same answer as CXF writes it with MTOM on: the payload a binary part."""
    envelope, value = _envelope(body, header)
    assert value is not None
    content_type, chunks = mtom.package(envelope, {value: payload})
    return content_type, b"".join(chunks)


def _fault_response(start_response: Callable[..., Any], fault: Fault, ns: str) -> list[bytes]:
    """A SOAP 1.2 fault as CXF writes it; the detail is the WSDL's tns:FaultDetail."""
    envelope = etree.Element(q(SOAP12_NS, "Envelope"), nsmap={"soap": SOAP12_NS})
    element = etree.SubElement(
        etree.SubElement(envelope, q(SOAP12_NS, "Body")), q(SOAP12_NS, "Fault")
    )
    code = etree.SubElement(etree.SubElement(element, q(SOAP12_NS, "Code")), q(SOAP12_NS, "Value"))
    code.text = f"soap:{fault.soap_code}"
    reason = etree.SubElement(
        etree.SubElement(element, q(SOAP12_NS, "Reason")), q(SOAP12_NS, "Text")
    )
    reason.set(q(XML_NS, "lang"), "en")
    reason.text = fault.reason
    if fault.code is not None:
        detail = etree.SubElement(
            etree.SubElement(element, q(SOAP12_NS, "Detail")),
            q(ns, "FaultDetail"),
            nsmap={"ns2": ns},
        )
        etree.SubElement(detail, "code").text = fault.code
        etree.SubElement(detail, "message").text = fault.message
    body = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
    return respond(start_response, fault.http_status, body, SOAP_CONTENT_TYPE)
