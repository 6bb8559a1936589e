"""The kvittens (meddelandekvittens): UBL 2.1 ApplicationResponse profiled by Digg (C3.2.4).

A receiving message service answers every business message it can attribute with one:
ACCEPTED, or REJECTED with one or more lines (reason code, detail code, path, text).
"""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from lxml import etree

from . import structure as s
from .names import APP_NS, CAC_NS, CBC_NS, KVITTENS_CUSTOMIZATION, PARTY_SCHEME, PROCESS_ID, q
from .verdict import Detail, Outcome, Reason, Rejected, Verdict


@dataclass(frozen=True)
class Line:
    reason: Reason
    detail: Detail | None
    text: str
    path: str = "NA"


@dataclass(frozen=True)
class Kvittens:
    id: str
    issued: datetime
    sender: str  # the organisation that answers: the original message's recipient
    receiver: str  # the original message's sender
    refers_to: str  # the XHE Header/ID of the message answered
    accepted: bool
    lines: tuple[Line, ...] = ()

    @classmethod
    def answering(
        cls, verdict: Verdict, *, refers_to: str, sender: str, receiver: str
    ) -> "Kvittens":
        """The kvittens a verdict calls for (never for NO-KVITTENS)."""
        if verdict.outcome is Outcome.NO_KVITTENS:
            raise ValueError("this verdict must not be answered with a kvittens")
        lines: tuple[Line, ...] = ()
        if verdict.outcome is Outcome.REJECTED:
            assert verdict.reason is not None
            lines = (Line(verdict.reason, verdict.detail, verdict.text, verdict.path),)
        return cls(
            id=str(uuid.uuid4()),
            issued=datetime.now(UTC).replace(microsecond=0),  # IssueTime has seconds
            sender=sender,
            receiver=receiver,
            refers_to=refers_to,
            accepted=verdict.outcome is Outcome.ACCEPTED,
            lines=lines,
        )

    def summary(self) -> str:
        if self.accepted:
            return f"ACCEPTED for {self.refers_to}"
        first = self.lines[0]
        return f"REJECTED {first.reason} {first.detail or '-'} for {self.refers_to}: {first.text}"


def to_element(kvittens: Kvittens) -> etree._Element:
    root = etree.Element(
        q(APP_NS, "ApplicationResponse"), nsmap={None: APP_NS, "cac": CAC_NS, "cbc": CBC_NS}
    )

    def cbc(parent: etree._Element, name: str, text: str) -> etree._Element:
        element = etree.SubElement(parent, q(CBC_NS, name))
        element.text = text
        return element

    def cac(parent: etree._Element, name: str) -> etree._Element:
        return etree.SubElement(parent, q(CAC_NS, name))

    issued = kvittens.issued.astimezone(UTC)
    cbc(root, "CustomizationID", KVITTENS_CUSTOMIZATION)
    cbc(root, "ProfileID", PROCESS_ID)
    cbc(root, "ID", kvittens.id)
    cbc(root, "IssueDate", issued.strftime("%Y-%m-%d"))
    cbc(root, "IssueTime", issued.strftime("%H:%M:%SZ"))
    for name, party in (("SenderParty", kvittens.sender), ("ReceiverParty", kvittens.receiver)):
        cbc(cac(root, name), "EndpointID", party).set("schemeID", PARTY_SCHEME)
    document_response = cac(root, "DocumentResponse")
    cbc(
        cac(document_response, "Response"),
        "ResponseCode",
        "ACCEPTED" if kvittens.accepted else "REJECTED",
    )
    cbc(cac(document_response, "DocumentReference"), "ID", kvittens.refers_to)
    for line in kvittens.lines:
        line_response = cac(document_response, "LineResponse")
        cbc(cac(line_response, "LineReference"), "LineID", line.path or "NA")
        response = cac(line_response, "Response")
        cbc(response, "ResponseCode", line.reason.value)
        status = cac(response, "Status")
        if line.detail:
            cbc(status, "StatusReasonCode", line.detail.value)
        cbc(status, "StatusReason", line.text)
    return root


def _cbc(name: str, type_: s.Simple = s.string, min_: int = 1, attrs: tuple[str, ...] = ()) -> s.El:
    return s.El(CBC_NS, name, type_, min_, 1, frozenset(attrs))


def _cac(name: str, type_: s.Complex, min_: int = 1, max_: int | None = 1) -> s.El:
    return s.El(CAC_NS, name, type_, min_, max_)


_PARTY = s.Complex((_cbc("EndpointID", attrs=("schemeID",)),))
_RESPONSE = s.Complex((_cbc("ResponseCode"),))
PROFILE = s.El(
    APP_NS,
    "ApplicationResponse",
    s.Complex(
        (
            _cbc("CustomizationID"),
            _cbc("ProfileID"),
            _cbc("ID"),
            _cbc("IssueDate", s.date),
            _cbc("IssueTime", s.time),
            _cac("SenderParty", _PARTY),
            _cac("ReceiverParty", _PARTY),
            _cac(
                "DocumentResponse",
                s.Complex(
                    (
                        _cac("Response", _RESPONSE),
                        _cac("DocumentReference", s.Complex((_cbc("ID"),))),
                        _cac(
                            "LineResponse",
                            s.Complex(
                                (
                                    _cac("LineReference", s.Complex((_cbc("LineID"),))),
                                    _cac(
                                        "Response",
                                        s.Complex(
                                            (
                                                _cbc("ResponseCode"),
                                                _cac(
                                                    "Status",
                                                    s.Complex(
                                                        (
                                                            _cbc("StatusReasonCode", min_=0),
                                                            _cbc("StatusReason"),
                                                        )
                                                    ),
                                                ),
                                            )
                                        ),
                                    ),
                                )
                            ),
                            0,
                            None,
                        ),
                    )
                ),
            ),
        )
    ),
)

_NS = {"cac": CAC_NS, "cbc": CBC_NS}
_DETAILS = {detail.value: detail for detail in Detail}


def _rule(rule: str, text: str, path: str = "/ApplicationResponse") -> Rejected:
    return Rejected(Reason.BV, Detail.INVARIANT, f"{rule}: {text}", path)


def from_element(root: etree._Element) -> Kvittens:
    """Read a kvittens after checking Digg's profile (R1–R9 of DIGG-AppRes-Business-Rules)."""
    try:
        s.check(root, PROFILE)
    except s.StructureError as e:
        raise Rejected(Reason.SV, Detail.STRUCTURE, f"In {e.path}, {e.text}", e.path) from None
    for node in root.xpath("//*[not(*) and not(normalize-space())] | //@*[not(normalize-space())]"):
        element = node.getparent() if isinstance(node, etree._ElementUnicodeResult) else node
        raise _rule("R2-APP", "empty elements and attributes are not allowed", s.path_of(element))

    def text(element: etree._Element, path: str) -> str:
        found = element.find(path, _NS)
        return (found.text or "").strip() if found is not None else ""

    if text(root, "cbc:CustomizationID") != KVITTENS_CUSTOMIZATION:
        raise _rule("R3-APP", f"CustomizationID must be {KVITTENS_CUSTOMIZATION}")
    if text(root, "cbc:ProfileID") != PROCESS_ID:
        raise _rule("R4-APP", f"ProfileID must be {PROCESS_ID}")
    code = text(root, "cac:DocumentResponse/cac:Response/cbc:ResponseCode")
    if code not in ("ACCEPTED", "REJECTED"):
        raise _rule("R5-APP", "ResponseCode must be ACCEPTED or REJECTED")
    lines = []
    for line in root.findall("cac:DocumentResponse/cac:LineResponse", _NS):
        reason = text(line, "cac:Response/cbc:ResponseCode")
        if reason not in Reason.__members__:
            raise _rule("R6-APP", "the reason code must be SV, BV or SIG")
        detail = text(line, "cac:Response/cac:Status/cbc:StatusReasonCode")
        lines.append(
            Line(
                reason=Reason(reason),
                detail=_DETAILS.get(detail),  # other parties may use codes of their own
                text=text(line, "cac:Response/cac:Status/cbc:StatusReason"),
                path=text(line, "cac:LineReference/cbc:LineID"),
            )
        )
    if code == "ACCEPTED" and lines:
        raise _rule("R7-APP", "an ACCEPTED kvittens must not carry reason codes")
    if code == "REJECTED" and not lines:
        raise _rule("R8-APP", "a REJECTED kvittens must carry at least one reason code")
    for name in ("SenderParty", "ReceiverParty"):
        if root.find(f"cac:{name}/cbc:EndpointID", _NS).get("schemeID") != PARTY_SCHEME:
            raise _rule("R9-APP", f"{name} EndpointID must have schemeID {PARTY_SCHEME}")
    issued = datetime.fromisoformat(
        f"{text(root, 'cbc:IssueDate')[:10]}T{text(root, 'cbc:IssueTime')}".replace("Z", "+00:00")
    )
    if issued.tzinfo is None:
        raise _rule(
            "C3.2.4 3.1 [c]", "IssueTime must include a time zone", "/ApplicationResponse/IssueTime"
        )
    return Kvittens(
        id=text(root, "cbc:ID"),
        issued=issued,
        sender=text(root, "cac:SenderParty/cbc:EndpointID"),
        receiver=text(root, "cac:ReceiverParty/cbc:EndpointID"),
        refers_to=text(root, "cac:DocumentResponse/cac:DocumentReference/cbc:ID"),
        accepted=code == "ACCEPTED",
        lines=tuple(lines),
    )
