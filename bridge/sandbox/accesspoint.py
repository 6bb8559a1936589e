"""An emulated SDK access point: the Domibus WS plugin backend interface for one organisation.

It answers `BackendService_1_1` (`http://org.ecodex.backend/1_1/`: submitMessage,
listPendingMessages, retrieveMessage, getStatus, getMessageErrors) over SOAP 1.2 with HTTP
Basic auth, the way Domibus 4.x does where a client can tell: the submitter's ebMS MessageId is
kept, a repeated one is refused, faults carry the WSDL's FaultDetail with Domibus's codes and
texts, a message is given out once, and a retrieved message is deleted at once under Digg's
P-Mode (retention_downloaded=0); with a retention, its payload stays for an administrator.

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
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import structlog
from lxml import etree

from ..files import write_atomic
from ..sdk import xhe
from ..sdk.names import (
    DOCUMENT_ID_SCHEME,
    KVITTENS_DOCUMENT_ID,
    MESSAGE_DOCUMENT_ID,
    PARTY_SCHEME,
    PROCESS_ID,
    PROCESS_ID_SCHEME,
    q,
)
from ..sdk.sealing import MAX_ENVELOPE_BYTES
from ..sdk.verdict import Rejected
from ..sdk.xmlsafe import UnsafeXML, base64_text
from ..sdk.xmlsafe import parse as parse_xml
from .web import read_body, respond

log = structlog.get_logger(__name__)

SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
EBMS_NS = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/"
BACKEND_NS = "http://org.ecodex.backend/1_1/"
XML_NS = "http://www.w3.org/XML/1998/namespace"
SOAP_CONTENT_TYPE = "application/soap+xml; charset=UTF-8"

# Digg's P-Mode (domibus-example/P-mode/p-mode.xml) and AS4 profile (C3.2.1 §2.3.1).
AP_PARTY_TYPE = "urn:fdc:digg.se:edelivery:transportprofile:as4:partytype:ap"
INITIATOR_ROLE = EBMS_NS + "initiator"
RESPONDER_ROLE = EBMS_NS + "responder"
PAYLOAD_HREF = "cid:message"
PAYLOAD_MIME_TYPE = "text/xml"
ACTIONS = {
    f"{DOCUMENT_ID_SCHEME}::{MESSAGE_DOCUMENT_ID}": xhe.PayloadKind.MESSAGE,
    f"{DOCUMENT_ID_SCHEME}::{KVITTENS_DOCUMENT_ID}": xhe.PayloadKind.KVITTENS,
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
        username: str,
        password: str,
        route: Callable[[str], "AccessPoint | None"],
        conversation_id_rule: ConversationIdRule = "business",
        retention_downloaded_minutes: int = 0,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        if conversation_id_rule not in CONVERSATION_ID_RULES:
            raise ValueError(f"conversation_id_rule must be one of {CONVERSATION_ID_RULES}")
        if retention_downloaded_minutes < 0:
            raise ValueError("retention_downloaded_minutes must not be negative")
        self.directory = Path(directory)
        self.party_id = party_id
        self.organisations = frozenset(organisations)
        self.username = username
        self.password = password
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

    def status(self, message_id: str) -> str:
        """getStatus: what a client polling this access point would see."""
        with self._lock:
            self._purge()
            record = self._sent.get(message_id) or self._received.get(message_id)
            return record.status if record else Status.NOT_FOUND

    def pending(self) -> list[str]:
        """listPendingMessages: received and not yet downloaded, oldest first."""
        with self._lock:
            self._purge()
            waiting = [r for r in self._received.values() if r.status == Status.RECEIVED]
        return [r.envelope.message_id for r in sorted(waiting, key=lambda r: r.changed)]

    def errors(self, message_id: str) -> list[dict[str, str]]:
        """getMessageErrors: entries with the XSD's errorResultImpl fields."""
        with self._lock:
            return [dict(e) for e in self._errors.get(message_id, [])]

    # WSGI.

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        try:
            return self._handle(environ, start_response)
        except Fault as fault:
            return _fault_response(start_response, fault)
        except Exception:  # a bug still answers SOAP, as CXF does
            log.exception("access point failed", party=self.party_id)
            return _fault_response(start_response, Fault("Internal error"))
        finally:
            self._sync()  # what this request changed is durable before it is answered

    def _handle(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            return respond(
                start_response, 405, b"POST SOAP 1.2 requests\n", headers=[("Allow", "POST")]
            )
        if not self._authorised(environ.get("HTTP_AUTHORIZATION", "")):
            challenge = [("WWW-Authenticate", 'Basic realm="domibus"')]
            return respond(start_response, 401, b"Unauthorized\n", headers=challenge)
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
        try:
            envelope = parse_xml(body, max_bytes=MAX_REQUEST_BYTES)
        except UnsafeXML as e:
            raise Fault(f"Error reading XMLStreamReader: {e}", soap_code="Sender") from None
        header, request = _split(envelope)
        if request.tag == q(BACKEND_NS, "submitRequest"):
            delay, refusal = self._take_switches()
            if delay:
                time.sleep(delay)
            if refusal == "unavailable":
                return respond(start_response, 503, b"Service Unavailable\n")
            if refusal == "fault":
                raise Fault(
                    SUBMISSION_FAILED, "EBMS:0004", "the access point is refusing submissions"
                )
            answer = self._submit(header, request)
        elif request.tag == q(BACKEND_NS, "listPendingMessagesRequest"):
            answer = _answer(_element("listPendingMessagesResponse", ids=self.pending()))
        elif request.tag == q(BACKEND_NS, "retrieveMessageRequest"):
            answer = self._retrieve(request)
        elif request.tag == q(BACKEND_NS, "statusRequest"):
            message_id = _required_id(request)
            answer = _answer(_element("getStatusResponse", self.status(message_id)))
        elif request.tag == q(BACKEND_NS, "getErrorsRequest"):
            answer = self._message_errors(request)
        else:
            raise Fault(f"Unexpected wrapper element {request.tag} found.", soap_code="Sender")
        return respond(start_response, 200, answer, SOAP_CONTENT_TYPE)

    def _authorised(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = (
                base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return False
        # Both compared, always: the answer's timing says nothing about which one was wrong.
        user_ok = hmac.compare_digest(user.encode(), self.username.encode())
        password_ok = hmac.compare_digest(password.encode(), self.password.encode())
        return user_ok and password_ok

    # submitMessage

    def _submit(self, header: etree._Element | None, request: etree._Element) -> bytes:
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
            return self._submit_reserved(user_message, payload, message_id)
        finally:
            with self._lock:
                self._reserved.discard(message_id)

    def _submit_reserved(
        self, user_message: etree._Element, payload: bytes, message_id: str
    ) -> bytes:
        try:
            envelope = self._check(user_message, payload, message_id)
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
        log.info("submitted", party=self.party_id, message_id=message_id, to=target.party_id)
        code = "EBMS:0004"
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
        return _answer(_element("submitResponse", ids=[message_id]))

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
            raise _invalid(
                f"You are not allowed to handle this message. You are authorized as [{authorised}]"
            )
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

    def _retrieve(self, request: etree._Element) -> bytes:
        message_id = _required_id(request)
        with self._lock:
            self._purge()
            record = self._received.get(message_id)
            if record is None or record.payload_file is None:
                raise Fault(
                    f"Message not found, id [{message_id}]",
                    "EBMS:0004",
                    f"No message with id [{message_id}] pending for download",
                )
            if record.status == Status.DOWNLOADED:  # Domibus gives a message out once
                raise Fault(
                    f"Message not found, id [{message_id}]",
                    "EBMS:0004",
                    f"Message with id [{message_id}] was already downloaded",
                )
            payload = (self._payloads / record.payload_file).read_bytes()
            answer = _answer(
                _element("retrieveMessageResponse"), _messaging(record.envelope), payload
            )
            now = _stamp(self.clock())
            if self.retention_downloaded_minutes == 0:  # Digg's P-Mode: retention_downloaded=0
                (self._payloads / record.payload_file).unlink(missing_ok=True)
                record = replace(record, status=Status.DELETED, payload_file=None, changed=now)
            else:
                record = replace(record, status=Status.DOWNLOADED, changed=now)
            self._received[message_id] = replace(record, downloaded=record.downloaded or now)
            self._persist(message_id)
        log.info("retrieved", party=self.party_id, message_id=message_id)
        return answer

    def retained_payload(self, message_id: str) -> bytes | None:
        """A downloaded message's payload during its retention, as an administrator gets it
        from Domibus's console (Messages, download); None when there is none."""
        with self._lock:
            self._purge()
            record = self._received.get(message_id)
            if record is None or record.payload_file is None:
                return None
            return (self._payloads / record.payload_file).read_bytes()

    def _message_errors(self, request: etree._Element) -> bytes:
        found = request.find("messageID")
        message_id = (found.text or "").strip() if found is not None else ""
        response = _element("getMessageErrorsResponse")
        for error in self.errors(message_id):
            item = etree.SubElement(response, "item")
            for name in (
                "errorCode",
                "errorDetail",
                "messageInErrorId",
                "mshRole",
                "notified",
                "timestamp",
            ):
                etree.SubElement(item, name).text = error[name]
        return _answer(response)

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


def _required_id(request: etree._Element) -> str:
    """The request's messageID (unqualified, as the XSD says), or Domibus's empty-id fault."""
    found = request.find("messageID")
    message_id = (found.text or "").strip() if found is not None else ""
    if not message_id:
        raise Fault("Message ID is empty", "EBMS:0004", "MessageId is empty")
    return message_id


def _element(name: str, text: str | None = None, ids: Iterable[str] = ()) -> etree._Element:
    """A backend response element; its messageID children are unqualified (elementFormDefault)."""
    element = etree.Element(q(BACKEND_NS, name), nsmap={"ns2": BACKEND_NS})
    element.text = text
    for message_id in ids:
        etree.SubElement(element, "messageID").text = message_id
    return element


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


def _answer(
    body: etree._Element, header: etree._Element | None = None, payload: bytes | None = None
) -> bytes:
    """A SOAP 1.2 envelope around `body`; `payload` goes in as Domibus's payload/value."""
    envelope = etree.Element(q(SOAP12_NS, "Envelope"), nsmap={"soap": SOAP12_NS})
    if header is not None:
        etree.SubElement(envelope, q(SOAP12_NS, "Header")).append(header)
    etree.SubElement(envelope, q(SOAP12_NS, "Body")).append(body)
    if payload is not None:
        element = etree.SubElement(body, "payload", payloadId=PAYLOAD_HREF)
        etree.SubElement(element, "value").text = base64.b64encode(payload).decode("ascii")
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")


def _fault_response(start_response: Callable[..., Any], fault: Fault) -> list[bytes]:
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
            q(BACKEND_NS, "FaultDetail"),
            nsmap={"ns2": BACKEND_NS},
        )
        etree.SubElement(detail, "code").text = fault.code
        etree.SubElement(detail, "message").text = fault.message
    body = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
    return respond(start_response, fault.http_status, body, SOAP_CONTENT_TYPE)
