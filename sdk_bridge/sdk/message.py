"""SDK business message v3 (`urn:riv:infrastructure:messaging:MessageWithAttachments:3`).

A typed model, `to_xml()` that builds it and `parse()` that reads it. Both run the same
checks: the XSD's structure (a violation is kvittens SV/structure) and Digg's schematron
`MessageConstraints.xml` plus the limits of B1.3.3 (BV/invariant, BV/too-long).
"""

import binascii
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lxml import etree

from . import structure as s
from .names import (
    FUNCTIONAL_ADDRESS_ROOT,
    MAX_LABEL_CHARS,
    MAX_MESSAGE_BYTES,
    MSG_NS,
    ORGANISATION_ID,
    PARTY_SCHEME,
    UUID,
    q,
)
from .structure import path_of
from .verdict import Detail, Reason, Rejected
from .xmlsafe import decode_base64
from .xmlsafe import parse as parse_xml


@dataclass(frozen=True)
class Identifier:
    """An HL7-style II: a root (the identifier system) and an extension (the value)."""

    root: str
    extension: str


@dataclass(frozen=True)
class Person:
    id: Identifier | None = None
    label: str | None = None


@dataclass(frozen=True)
class Reference:
    """A reference such as a case or diary number (diarienummer)."""

    id: Identifier
    label: str | None = None


@dataclass(frozen=True)
class Attention:
    functional_address: str  # subOrganization/organizationId/extension
    functional_address_label: str | None = None
    persons: tuple[Person, ...] = ()
    references: tuple[Reference, ...] = ()


@dataclass(frozen=True)
class Party:
    organisation_id: str  # "0203:<domain>"
    attention: Attention | None = None  # required for the recipient
    label: str | None = None


@dataclass(frozen=True)
class ContentFile:
    file_name: str
    content_type: str
    content: bytes


@dataclass(frozen=True)
class Document:
    document_id: str
    texts: tuple[str, ...] = ()
    files: tuple[ContentFile, ...] = ()
    name: str | None = None
    index: str | None = None


@dataclass(frozen=True)
class BusinessMessage:
    message_id: str
    conversation_id: str
    created: datetime
    confidential: bool
    recipient: Party
    sender: Party
    documents: tuple[Document, ...]
    label: str | None = None
    ref_to_message_id: str | None = None
    generating_system: Identifier | None = None

    @property
    def functional_address(self) -> str | None:
        """The recipient's functional address: the XHE HandlingServiceID."""
        return self.recipient.attention.functional_address if self.recipient.attention else None


def format_timestamp(moment: datetime) -> str:
    """The `YYYY-MM-DDThh:mm:ss.sZ` form Digg's schematron requires (UTC, milliseconds)."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


class InvalidMessage(ValueError):
    """A message we were asked to build breaks SDK's rules."""

    def __init__(self, problem: Rejected) -> None:
        super().__init__(f"{problem.path}: {problem.text}")
        self.problem = problem

    def __reduce__(self) -> tuple[object, ...]:  # from a crypto worker, whole
        return type(self), (self.problem,), self.__dict__


# ---------------------------------------------------------------------------------------
# Structure: infrastructure_messaging_MessageWithAttachments_3.0.xsd


def _el(name: str, type_: s.Complex | s.Simple, min_: int = 1, max_: int | None = 1) -> s.El:
    return s.El(MSG_NS, name, type_, min_, max_)


_II = s.Complex((_el("root", s.string), _el("extension", s.string)))
_LABEL = _el("label", s.max_length(MAX_LABEL_CHARS), 0)
_ATTENTION = s.Complex(
    (
        _el("person", s.Complex((_el("personId", _II, 0), _LABEL), any_other=True), 0, None),
        _el(
            "subOrganization",
            s.Complex((_el("organizationId", _II), _LABEL), any_other=True),
        ),
        _el("reference", s.Complex((_el("referenceId", _II), _LABEL), any_other=True), 0, None),
    ),
    any_other=True,
)
_HEADER = s.Complex(
    (
        _el("creationDateTime", s.date_time),
        _el("messageId", s.string),
        _el("conversationId", s.string),
        _el("refToMessageId", s.string, 0),
        _el("label", s.string, 0),
        _el("confidentiality", s.boolean),
        _el("generatingSystem", _II, 0),
        _el(
            "recipient",
            s.Complex((_el("recipientID", _II), _LABEL, _el("attention", _ATTENTION)), True),
        ),
        _el(
            "sender",
            s.Complex((_el("senderID", _II), _LABEL, _el("attention", _ATTENTION, 0)), True),
        ),
    ),
    any_other=True,
)
_DOCUMENT = s.Complex(
    (
        _el("documentID", s.string),
        _el("documentName", s.string, 0),
        _el("index", s.string, 0),
        _el(
            "ContentFiles",
            s.Complex(
                (_el("fileName", s.string), _el("contentType", s.string), _el("content", s.string)),
                any_other=True,
            ),
            0,
            None,
        ),
        _el(
            "ContentText",
            s.Complex((_el("characterSequence", s.string),), any_other=True),
            0,
            None,
        ),
    ),
    any_other=True,
)
PAYLOAD = _el(
    "messagePayload",
    s.Complex(
        (
            _el(
                "message",
                s.Complex(
                    (
                        _el("messageHeader", _HEADER),
                        _el(
                            "messageBody", s.Complex((_el("documents", _DOCUMENT, 1, None),), True)
                        ),
                    ),
                    any_other=True,
                ),
            ),
        )
    ),
)


# ---------------------------------------------------------------------------------------
# Rules: MessageConstraints.xml and B1.3.3


_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{1,3}Z")


def _invariant(path: str, text: str) -> Rejected:
    return Rejected(Reason.BV, Detail.INVARIANT, f"In {path}, {text}", path)


def _check_rules(root: etree._Element) -> None:
    """Digg's MessageConstraints.xml, rule for rule, and the B1.3.3 limits."""
    for element in root.iter("*"):
        # Text by text rather than joined: an attachment's ancestors would each copy it.
        if not any(text.strip() for text in element.itertext()):
            raise _invariant(path_of(element), "element is included but empty")
    for element in _CREATION_TIMES(root):
        if not _TIMESTAMP.fullmatch(element.text or ""):
            raise _invariant(path_of(element), "timestamp must match YYYY-MM-DD'T'hh:mm:ss.s'Z'")
    for element in _IDS(root):
        if not UUID.fullmatch(element.text or ""):
            raise _invariant(path_of(element), "value is not a valid UUID")
    for element in _LABELS(root):
        if len(element.text or "") > MAX_LABEL_CHARS:
            raise _invariant(path_of(element), f"string length exceeds {MAX_LABEL_CHARS}")
    for element in _PARTY_ROOTS(root):
        if element.text != PARTY_SCHEME:
            raise _invariant(path_of(element), f"value must be '{PARTY_SCHEME}'")
    for element in _PARTY_EXTENSIONS(root):
        if not ORGANISATION_ID.fullmatch(element.text or ""):
            raise _invariant(path_of(element), "value must be an organisation id '0203:<domain>'")
    for element in _FUNCTIONAL_ADDRESS_ROOTS(root):
        if element.text != FUNCTIONAL_ADDRESS_ROOT:
            raise _invariant(path_of(element), f"value must be '{FUNCTIONAL_ADDRESS_ROOT}'")


def _xpath(expression: str) -> etree.XPath:
    return etree.XPath(expression, namespaces={"m": MSG_NS})  # compiled once, not per message


_CREATION_TIMES = _xpath("//m:creationDateTime")
_IDS = _xpath("//m:messageId | //m:conversationId | //m:refToMessageId")
_LABELS = _xpath("//m:messageHeader/m:label")
_PARTY_ROOTS = _xpath("//m:recipientID/m:root | //m:senderID/m:root")
_PARTY_EXTENSIONS = _xpath("//m:recipientID/m:extension | //m:senderID/m:extension")
_FUNCTIONAL_ADDRESS_ROOTS = _xpath("//m:subOrganization/m:organizationId/m:root")


def _check(root: etree._Element) -> None:
    """Raise Rejected (SV structure, BV invariant) for the first problem found."""
    try:
        s.check(root, PAYLOAD)
    except s.StructureError as e:
        raise Rejected(Reason.SV, Detail.STRUCTURE, f"In {e.path}, {e.text}", e.path) from None
    _check_rules(root)


# ---------------------------------------------------------------------------------------
# Build


def _sub(parent: etree._Element, name: str, text: str | bytes | None = None) -> etree._Element:
    element = etree.SubElement(parent, q(MSG_NS, name))
    if text is not None:
        element.text = text
    return element


def _add_identifier(parent: etree._Element, name: str, value: Identifier) -> None:
    element = _sub(parent, name)
    _sub(element, "root", value.root)
    _sub(element, "extension", value.extension)


def _add_attention(parent: etree._Element, attention: Attention) -> None:
    element = _sub(parent, "attention")
    for person in attention.persons:
        person_element = _sub(element, "person")
        if person.id:
            _add_identifier(person_element, "personId", person.id)
        if person.label is not None:
            _sub(person_element, "label", person.label)
    sub_organization = _sub(element, "subOrganization")
    _add_identifier(
        sub_organization,
        "organizationId",
        Identifier(FUNCTIONAL_ADDRESS_ROOT, attention.functional_address),
    )
    if attention.functional_address_label is not None:
        _sub(sub_organization, "label", attention.functional_address_label)
    for reference in attention.references:
        reference_element = _sub(element, "reference")
        _add_identifier(reference_element, "referenceId", reference.id)
        if reference.label is not None:
            _sub(reference_element, "label", reference.label)


def _add_party(parent: etree._Element, name: str, id_name: str, party: Party) -> None:
    element = _sub(parent, name)
    _add_identifier(element, id_name, Identifier(PARTY_SCHEME, party.organisation_id))
    if party.label is not None:
        _sub(element, "label", party.label)
    if party.attention:
        _add_attention(element, party.attention)


def to_element(message: BusinessMessage, placeholder: bytes | None = None) -> etree._Element:
    """Build the message tree; raise InvalidMessage if it breaks SDK's rules.

    With `placeholder`, each non-empty file's content is that text instead of its base64
    (see `serialize`); the rules give the same verdict, as both are non-empty.
    """
    root = etree.Element(q(MSG_NS, "messagePayload"), nsmap={"sdk": MSG_NS})
    header = _sub(_sub(root, "message"), "messageHeader")
    _sub(header, "creationDateTime", format_timestamp(message.created))
    _sub(header, "messageId", message.message_id)
    _sub(header, "conversationId", message.conversation_id)
    if message.ref_to_message_id is not None:
        _sub(header, "refToMessageId", message.ref_to_message_id)
    if message.label is not None:
        _sub(header, "label", message.label)
    _sub(header, "confidentiality", "true" if message.confidential else "false")
    if message.generating_system:
        _add_identifier(header, "generatingSystem", message.generating_system)
    _add_party(header, "recipient", "recipientID", message.recipient)
    _add_party(header, "sender", "senderID", message.sender)
    body = _sub(root[0], "messageBody")
    for document in message.documents:
        element = _sub(body, "documents")
        _sub(element, "documentID", document.document_id)
        if document.name is not None:
            _sub(element, "documentName", document.name)
        if document.index is not None:
            _sub(element, "index", document.index)
        for file in document.files:
            file_element = _sub(element, "ContentFiles")
            _sub(file_element, "fileName", file.file_name)
            _sub(file_element, "contentType", file.content_type)
            if placeholder is not None and file.content:
                _sub(file_element, "content", placeholder)
            else:  # ASCII bytes go into the tree as they are: no str copy of a 30 MB text
                _sub(file_element, "content", binascii.b2a_base64(file.content, newline=False))
        for text in document.texts:
            _sub(_sub(element, "ContentText"), "characterSequence", text)
    try:
        _check(root)
    except Rejected as problem:
        raise InvalidMessage(problem) from None
    return root


def to_xml(message: BusinessMessage) -> bytes:
    """Serialize the message as UTF-8 XML; raise InvalidMessage if it breaks SDK's rules."""
    return b"".join(serialize(message, **_UTF8))


def check(message: BusinessMessage) -> None:
    """Raise InvalidMessage exactly when `to_xml` would, without serialising the files."""
    _check_size(*_template(message, _UTF8))


_UTF8: dict[str, Any] = {"xml_declaration": True, "encoding": "UTF-8"}


def _check_size(template: list[bytes], contents: list[bytes]) -> None:
    base64_size = sum(4 * ((len(content) + 2) // 3) for content in contents)
    if sum(map(len, template)) + base64_size > MAX_MESSAGE_BYTES:
        raise InvalidMessage(too_long())


def serialize(message: BusinessMessage, **options: Any) -> Iterator[bytes]:
    """`etree.tostring(to_element(message), **options)` in pieces, the files' base64 among
    them, made one file at a time. libxml2 would hold a 30 MB attachment as a text node and
    again in an output buffer that grows to twice the document, before Python copies it.
    Raises InvalidMessage at once, as `to_xml` does."""
    template, contents = _template(message, options)
    _check_size(template, contents)
    return _pieces(template, contents)


def _template(message: BusinessMessage, options: dict[str, Any]) -> tuple[list[bytes], list[bytes]]:
    """The serialised message split around its non-empty files' content, and those files."""
    placeholder = uuid.uuid4().hex.encode()  # random: no text in the message can equal it
    template = etree.tostring(to_element(message, placeholder), **options).split(placeholder)
    contents = [f.content for d in message.documents for f in d.files if f.content]
    if len(template) != len(contents) + 1:
        raise AssertionError("each file's placeholder must occur exactly once")
    return template, contents


def _pieces(template: list[bytes], contents: list[bytes]) -> Iterator[bytes]:
    yield template[0]
    for content, after in zip(contents, template[1:], strict=True):
        yield binascii.b2a_base64(content, newline=False)  # never escaped in XML
        yield after


def too_long() -> Rejected:
    """B1.3.3: more than 30 MB, attachments included."""
    return Rejected(Reason.BV, Detail.TOO_LONG, "Message size too large.")


# ---------------------------------------------------------------------------------------
# Parse


def parse(data: bytes) -> BusinessMessage:
    """Read a business message; raise Rejected for anything SDK forbids.

    XML that is not well-formed raises xmlsafe.UnsafeXML: Digg sends no kvittens for it.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise too_long()
    return from_element(parse_xml(data, max_bytes=MAX_MESSAGE_BYTES), consume=True)


def from_element(root: etree._Element, *, consume: bool = False) -> BusinessMessage:
    """The message `root` holds; raise Rejected for anything SDK forbids.

    `consume`: the caller reads the tree no more, so each file's base64 is taken out of it
    as it is decoded. A 30 MB attachment is otherwise held by libxml2, by the str lxml
    makes of it and as its bytes, all at once.
    """
    _check(root)
    m = {"m": MSG_NS}

    def text(element: etree._Element, path: str) -> str | None:
        found = element.find(path, m)
        return found.text if found is not None else None

    def identifier(element: etree._Element | None) -> Identifier | None:
        if element is None:
            return None
        return Identifier(text(element, "m:root") or "", text(element, "m:extension") or "")

    def attention(element: etree._Element | None) -> Attention | None:
        if element is None:
            return None
        sub_organization = element.find("m:subOrganization", m)
        return Attention(
            functional_address=text(sub_organization, "m:organizationId/m:extension") or "",
            functional_address_label=text(sub_organization, "m:label"),
            persons=tuple(
                Person(identifier(p.find("m:personId", m)), text(p, "m:label"))
                for p in element.findall("m:person", m)
            ),
            references=tuple(
                Reference(identifier(r.find("m:referenceId", m)), text(r, "m:label"))  # type: ignore[arg-type]
                for r in element.findall("m:reference", m)
            ),
        )

    def party(element: etree._Element, id_name: str) -> Party:
        return Party(
            organisation_id=text(element, f"m:{id_name}/m:extension") or "",
            attention=attention(element.find("m:attention", m)),
            label=text(element, "m:label"),
        )

    header = root.find("m:message/m:messageHeader", m)
    documents = tuple(
        Document(
            document_id=text(d, "m:documentID") or "",
            name=text(d, "m:documentName"),
            index=text(d, "m:index"),
            texts=tuple(t.text or "" for t in d.findall("m:ContentText/m:characterSequence", m)),
            files=tuple(
                ContentFile(
                    file_name=text(f, "m:fileName") or "",
                    content_type=text(f, "m:contentType") or "",
                    content=_decode_base64(f.find("m:content", m), consume),
                )
                for f in d.findall("m:ContentFiles", m)
            ),
        )
        for d in root.findall("m:message/m:messageBody/m:documents", m)
    )
    return BusinessMessage(
        message_id=text(header, "m:messageId") or "",
        conversation_id=text(header, "m:conversationId") or "",
        ref_to_message_id=text(header, "m:refToMessageId"),
        created=datetime.fromisoformat((text(header, "m:creationDateTime") or "").strip()),
        label=text(header, "m:label"),
        confidential=(text(header, "m:confidentiality") or "").strip() in ("true", "1"),
        generating_system=identifier(header.find("m:generatingSystem", m)),
        recipient=party(header.find("m:recipient", m), "recipientID"),
        sender=party(header.find("m:sender", m), "senderID"),
        documents=documents,
    )


def _decode_base64(element: etree._Element, consume: bool) -> bytes:
    text = element.text or ""
    if consume:
        element.text = None  # libxml2's copy goes before the bytes are made
    try:
        return decode_base64(text)
    except ValueError:
        raise _invariant(path_of(element), "must be a valid base64 encoded string") from None
