"""The XHE 1.0 envelope (`urn:fdc:digg.se:edelivery:xhe:1`, C3.2.2) around every SDK payload.

`build()` makes the envelope; `read_header()` reads it back after checking Digg's profile:
the XSD's structure narrowed to the elements Digg allows (R1, R14) and the business rules
R2–R13 of DIGG-XHE-Business-Rules.
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from lxml import etree

from . import structure as s
from .message import BusinessMessage, format_timestamp
from .names import (
    DOCUMENT_ID_SCHEME,
    DS_NS,
    KVITTENS_DOCUMENT_ID,
    KVITTENS_TYPE_CODE,
    MESSAGE_DOCUMENT_ID,
    MESSAGE_TYPE_CODE,
    PARTY_SCHEME,
    PROCESS_ID,
    PROCESS_ID_SCHEME,
    SDK_FEDERATION,
    UUID,
    XENC_NS,
    XHA_NS,
    XHB_NS,
    XHE_CUSTOMIZATION,
    XHE_NS,
    q,
)
from .structure import path_of
from .verdict import Detail, Reason, Rejected


class PayloadKind(StrEnum):
    MESSAGE = "message"
    KVITTENS = "kvittens"


_DOCUMENT_IDS = {
    PayloadKind.MESSAGE: MESSAGE_DOCUMENT_ID,
    PayloadKind.KVITTENS: KVITTENS_DOCUMENT_ID,
}
_TYPE_CODES = {PayloadKind.MESSAGE: MESSAGE_TYPE_CODE, PayloadKind.KVITTENS: KVITTENS_TYPE_CODE}


@dataclass(frozen=True)
class Header:
    id: str  # for a business message: its messageId
    created: datetime
    kind: PayloadKind
    from_party: str  # "0203:<domain>"
    to_party: str
    handling_service_id: str | None  # the functional address the payload is for
    encrypted: bool
    federation: str = SDK_FEDERATION


def message_header(message: BusinessMessage, federation: str = SDK_FEDERATION) -> Header:
    """A business message's envelope header: ID (= messageId), parties, HandlingServiceID."""
    return Header(
        id=message.message_id,
        created=datetime.now(UTC),
        kind=PayloadKind.MESSAGE,
        from_party=message.sender.organisation_id,
        to_party=message.recipient.organisation_id,
        handling_service_id=message.functional_address,
        encrypted=True,
        federation=federation,
    )


def build(header: Header, payload: etree._Element) -> etree._Element:
    """An unsigned XHE holding `payload` (an EncryptedData or a plain kvittens)."""
    root = etree.Element(q(XHE_NS, "XHE"), nsmap={None: XHB_NS, "xhe": XHE_NS, "xha": XHA_NS})

    def sub(parent: etree._Element, ns: str, name: str, text: str | None = None) -> etree._Element:
        element = etree.SubElement(parent, q(ns, name))
        element.text = text
        return element

    sub(root, XHB_NS, "XHEVersionID", "1.0")
    sub(root, XHB_NS, "CustomizationID", XHE_CUSTOMIZATION)
    head = sub(root, XHA_NS, "Header")
    sub(head, XHB_NS, "ID", header.id)
    sub(head, XHB_NS, "CreationDateTime", format_timestamp(header.created))
    scope = sub(head, XHA_NS, "BusinessScope")
    for code, value in (
        ("DOCUMENTID", _DOCUMENT_IDS[header.kind]),
        ("DOCUMENTID_SCHEME", DOCUMENT_ID_SCHEME),
        ("PROCESSID", PROCESS_ID),
        ("PROCESSID_SCHEME", PROCESS_ID_SCHEME),
        ("FEDERATIONID", header.federation),
    ):
        criterion = sub(scope, XHA_NS, "BusinessScopeCriterion")
        sub(criterion, XHB_NS, "BusinessScopeCriterionTypeCode", code)
        sub(criterion, XHB_NS, "BusinessScopeCriterionValue", value)
    for name, party in (("FromParty", header.from_party), ("ToParty", header.to_party)):
        party_id = sub(sub(sub(head, XHA_NS, name), XHA_NS, "PartyIdentification"), XHB_NS, "ID")
        party_id.text = party
        party_id.set("schemeID", PARTY_SCHEME)
    item = sub(sub(root, XHA_NS, "Payloads"), XHA_NS, "Payload")
    sub(item, XHB_NS, "DocumentTypeCode", _TYPE_CODES[header.kind])
    sub(item, XHB_NS, "ContentTypeCode", "application/xml")
    if header.handling_service_id is not None:
        sub(item, XHB_NS, "HandlingServiceID", header.handling_service_id)
    sub(item, XHB_NS, "InstanceEncryptionIndicator", "true" if header.encrypted else "false")
    sub(item, XHA_NS, "PayloadContent").append(payload)
    return root


# Digg's profile of the OASIS XHE schema.
def _b(name: str, type_: s.Simple = s.string, min_: int = 1, attrs: tuple[str, ...] = ()) -> s.El:
    return s.El(XHB_NS, name, type_, min_, 1, frozenset(attrs))


def _a(name: str, type_: s.Complex, min_: int = 1, max_: int | None = 1) -> s.El:
    return s.El(XHA_NS, name, type_, min_, max_)


_PARTY = s.Complex((_a("PartyIdentification", s.Complex((_b("ID", attrs=("schemeID",)),))),))
ENVELOPE = s.El(
    XHE_NS,
    "XHE",
    s.Complex(
        (
            _b("XHEVersionID"),
            _b("CustomizationID"),
            _a(
                "Header",
                s.Complex(
                    (
                        _b("ID"),
                        _b("CreationDateTime", s.date_time),
                        _a(
                            "BusinessScope",
                            s.Complex(
                                (
                                    _a(
                                        "BusinessScopeCriterion",
                                        s.Complex(
                                            (
                                                _b("BusinessScopeCriterionTypeCode"),
                                                _b("BusinessScopeCriterionValue"),
                                            )
                                        ),
                                        1,
                                        None,
                                    ),
                                )
                            ),
                        ),
                        _a("FromParty", _PARTY),
                        _a("ToParty", _PARTY),
                    )
                ),
            ),
            _a(
                "Payloads",
                s.Complex(
                    (
                        _a(
                            "Payload",
                            s.Complex(
                                (
                                    _b("DocumentTypeCode"),
                                    _b("ContentTypeCode"),
                                    _b("HandlingServiceID", min_=0),
                                    _b("InstanceEncryptionIndicator", s.boolean),
                                    _a("PayloadContent", s.Complex((), open=True)),
                                )
                            ),
                        ),
                    )
                ),
            ),
            s.El(DS_NS, "Signature", s.Complex((), open=True), 0, None),
        )
    ),
)

_NS = {"x": XHE_NS, "xha": XHA_NS, "xhb": XHB_NS}
_SCOPE_CODES = ("DOCUMENTID", "DOCUMENTID_SCHEME", "PROCESSID", "PROCESSID_SCHEME", "FEDERATIONID")


def _text(root: etree._Element, path: str) -> str | None:
    found = root.find(path, _NS)
    return (found.text or "").strip() if found is not None else None


def identity(root: etree._Element) -> tuple[str | None, str | None, str | None]:
    """(Header/ID, FromParty, ToParty), read leniently: enough to decide who to answer."""
    if root.tag != q(XHE_NS, "XHE"):
        return None, None, None
    party = "xha:Header/xha:{}/xha:PartyIdentification/xhb:ID"
    return (
        _text(root, "xha:Header/xhb:ID") or None,
        _text(root, party.format("FromParty")) or None,
        _text(root, party.format("ToParty")) or None,
    )


def carries_kvittens(root: etree._Element) -> bool:
    """Whether the envelope names the kvittens document type (read before verifying it,
    to know whether a failure may be answered: a kvittens never is)."""
    return any(
        (value.text or "").strip() == KVITTENS_DOCUMENT_ID
        for value in root.iter(etree.QName(XHB_NS, "BusinessScopeCriterionValue").text)
    )


def _rule(text: str, path: str = "/XHE") -> Rejected:
    return Rejected(Reason.BV, Detail.INVARIANT, text, path)


def read_header(root: etree._Element) -> Header:
    """Check the envelope against Digg's XHE profile and return its header.

    Raise Rejected: SV/structure for the schema and the profile's cardinalities, BV/invariant
    for Digg's business rules. Run after the signature check, so the content is the sender's.
    """
    try:
        s.check(root, ENVELOPE)
    except s.StructureError as e:
        raise Rejected(Reason.SV, Detail.STRUCTURE, f"In {e.path}, {e.text}", e.path) from None
    empty = root.xpath(
        "//*[not(*) and not(normalize-space()) and not(ancestor::xha:PayloadContent)]"
        " | //@*[not(normalize-space())]",
        namespaces=_NS,
    )
    for node in empty:
        element = node.getparent() if isinstance(node, etree._ElementUnicodeResult) else node
        if etree.QName(element).namespace not in (XENC_NS, DS_NS):
            raise _rule("R2-XHE: empty elements and attributes are not allowed", path_of(element))
    if _text(root, "xhb:XHEVersionID") != "1.0":
        raise _rule("R9-XHE: XHEVersionID must be 1.0", "/XHE/XHEVersionID")
    if _text(root, "xhb:CustomizationID") != XHE_CUSTOMIZATION:
        raise _rule(f"R3-XHE: CustomizationID must be {XHE_CUSTOMIZATION}", "/XHE/CustomizationID")
    scope: dict[str, str] = {}
    for criterion in root.findall("xha:Header/xha:BusinessScope/xha:BusinessScopeCriterion", _NS):
        code = _text(criterion, "xhb:BusinessScopeCriterionTypeCode") or ""
        scope[code] = _text(criterion, "xhb:BusinessScopeCriterionValue") or ""
    for number, code in enumerate(_SCOPE_CODES, 4):
        if code not in scope:
            raise _rule(f"R{number}-XHE: a BusinessScopeCriterion {code} is required")
    if len(root.findall("xha:Header/xha:BusinessScope/xha:BusinessScopeCriterion", _NS)) != 5:
        raise Rejected(
            Reason.SV,
            Detail.STRUCTURE,
            "BusinessScope must hold exactly one criterion of each of the five types",
            "/XHE/Header/BusinessScope",
        )
    for name in ("FromParty", "ToParty"):
        element = root.find(f"xha:Header/xha:{name}/xha:PartyIdentification/xhb:ID", _NS)
        if element.get("schemeID", "").strip() != PARTY_SCHEME:
            raise _rule(f"R10-XHE: {name} ID must have schemeID {PARTY_SCHEME}", path_of(element))
    encrypted = _text(root, "xha:Payloads/xha:Payload/xhb:InstanceEncryptionIndicator") in (
        "true",
        "1",
    )
    content = root.find("xha:Payloads/xha:Payload/xha:PayloadContent", _NS)
    has_encrypted_data = content.find(q(XENC_NS, "EncryptedData")) is not None
    if encrypted and not has_encrypted_data:
        raise _rule("R12-XHE: PayloadContent must hold EncryptedData when encrypted is true")
    if not encrypted and has_encrypted_data:
        raise _rule("R13-XHE: PayloadContent must not hold EncryptedData when encrypted is false")
    kinds = {v: k for k, v in _DOCUMENT_IDS.items()}
    if scope["DOCUMENTID"] not in kinds or scope["DOCUMENTID_SCHEME"] != DOCUMENT_ID_SCHEME:
        raise Rejected(Reason.BV, Detail.NOT_SUPPORTED, "the document type is not supported")
    if scope["PROCESSID"] != PROCESS_ID or scope["PROCESSID_SCHEME"] != PROCESS_ID_SCHEME:
        raise Rejected(Reason.BV, Detail.NOT_SUPPORTED, "the process is not supported")
    kind = kinds[scope["DOCUMENTID"]]
    if _text(root, "xha:Payloads/xha:Payload/xhb:DocumentTypeCode") != _TYPE_CODES[kind]:
        raise _rule("DocumentTypeCode does not match the document id", "/XHE/Payloads/Payload")
    if _text(root, "xha:Payloads/xha:Payload/xhb:ContentTypeCode") != "application/xml":
        raise _rule("ContentTypeCode must be application/xml", "/XHE/Payloads/Payload")
    message_id, from_party, to_party = identity(root)
    if not UUID.fullmatch(message_id or ""):
        raise _rule("Header ID must be a UUID", "/XHE/Header/ID")
    created = datetime.fromisoformat(
        (_text(root, "xha:Header/xhb:CreationDateTime") or "").replace("Z", "+00:00")
    )
    if created.tzinfo is None:
        raise _rule("CreationDateTime must include a time zone", "/XHE/Header/CreationDateTime")
    return Header(
        id=message_id or "",
        created=created,
        kind=kind,
        from_party=from_party or "",
        to_party=to_party or "",
        handling_service_id=_text(root, "xha:Payloads/xha:Payload/xhb:HandlingServiceID"),
        encrypted=encrypted,
        federation=scope["FEDERATIONID"],
    )


def payload_content(root: etree._Element) -> list[etree._Element]:
    """The element children of PayloadContent."""
    content = root.find("xha:Payloads/xha:Payload/xha:PayloadContent", _NS)
    return [] if content is None else [c for c in content if isinstance(c.tag, str)]
