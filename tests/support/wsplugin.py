"""A small client of the Domibus WS plugin interface, as a message service would write one.

It sends what Digg's example `as4_xhe_encrypted.xml` sends (plus a ConversationId); the
tests of the sandbox access point and of the whole sandbox use it.
"""

import base64
import ssl
import uuid
from typing import Any

import httpx
from lxml import etree

from sdk_bridge.lab.sandbox.accesspoint import (
    AP_PARTY_TYPE,
    BACKEND_NS,
    EBMS_NS,
    SOAP12_NS,
    WSPLUGIN_NS,
)
from sdk_bridge.sdk.names import (
    MESSAGE_ACTION,
    PARTY_SCHEME,
    PROCESS_ID,
    PROCESS_ID_SCHEME,
    q,
)
from support.parties import ORG_A, ORG_B

XMLMIME_NS = "http://www.w3.org/2005/05/xmlmime"
SOAP_CONTENT_TYPE = "application/soap+xml; charset=UTF-8"
PARTY_A, PARTY_B = "AP-A-SANDBOX", "AP-B-SANDBOX"
STALE_ORG = "0203:stale.example.se"  # the SMP points at B, which does not serve it


class SoapFault(Exception):
    def __init__(
        self, http_status: int, value: str, reason: str, code: str | None, text: str | None
    ):
        super().__init__(f"{http_status} {value} {reason}: {code} {text}")
        self.http_status = http_status
        self.value = value  # soap:Receiver / soap:Sender
        self.reason = reason
        self.code = code  # FaultDetail/code
        self.text = text  # FaultDetail/message


def submit_envelope(
    payload: bytes,
    *,
    message_id: str | None = None,
    from_party: str | None = PARTY_A,
    service: str = PROCESS_ID,
    service_type: str = PROCESS_ID_SCHEME,
    action: str = MESSAGE_ACTION,
    conversation_id: str | None = None,
    original_sender: str | None = ORG_A,
    final_recipient: str | None = ORG_B,
    property_type: str = PARTY_SCHEME,
    extra_properties: tuple[tuple[str, str], ...] = (),
    href: str = "cid:message",
    payload_id: str = "cid:message",
    mime_type: str = "text/xml",
    value: str | None = None,
    ns: str = BACKEND_NS,
) -> bytes:
    """A submitRequest shaped like Digg's as4_xhe_encrypted.xml, plus a ConversationId."""
    envelope = etree.Element(
        q(SOAP12_NS, "Envelope"),
        nsmap={"soap": SOAP12_NS, "ns": EBMS_NS, "_1": ns, "xm": XMLMIME_NS},
    )

    def sub(parent: etree._Element, tag: str, text: str | None = None, /, **attrs: str) -> Any:
        element = etree.SubElement(parent, q(EBMS_NS, tag), attrs)
        element.text = text
        return element

    user = sub(sub(etree.SubElement(envelope, q(SOAP12_NS, "Header")), "Messaging"), "UserMessage")
    if message_id is not None:
        sub(sub(user, "MessageInfo"), "MessageId", message_id)
    if from_party is not None:
        sender = sub(sub(user, "PartyInfo"), "From")
        sub(sender, "PartyId", from_party, type=AP_PARTY_TYPE)
        sub(sender, "Role", EBMS_NS + "initiator")
    collaboration = sub(user, "CollaborationInfo")
    sub(collaboration, "Service", service, type=service_type)
    sub(collaboration, "Action", action)
    if conversation_id is not None:
        sub(collaboration, "ConversationId", conversation_id)
    properties = sub(user, "MessageProperties")
    for name, party in (("originalSender", original_sender), ("finalRecipient", final_recipient)):
        if party is not None:
            sub(properties, "Property", party, name=name, type=property_type)
    for name, text in extra_properties:
        sub(properties, "Property", text, name=name, type=property_type)
    part = sub(sub(user, "PayloadInfo"), "PartInfo", href=href)
    sub(sub(part, "PartProperties"), "Property", mime_type, name="MimeType")
    request = etree.SubElement(
        etree.SubElement(envelope, q(SOAP12_NS, "Body")), q(ns, "submitRequest")
    )
    element = etree.SubElement(request, "payload", payloadId=payload_id, contentType="text/xml")
    etree.SubElement(element, "value").text = value or base64.b64encode(payload).decode()
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")


def request_envelope(
    operation: str,
    message_id: str | None = None,
    *,
    ns: str = BACKEND_NS,
    fields: tuple[tuple[str, str], ...] = (),
    attributes: dict[str, str] | None = None,
) -> bytes:
    envelope = etree.Element(q(SOAP12_NS, "Envelope"), nsmap={"soap": SOAP12_NS})
    body = etree.SubElement(envelope, q(SOAP12_NS, "Body"))
    request = etree.SubElement(body, q(ns, operation), attributes or {}, nsmap={"_1": ns})
    if message_id is not None:
        etree.SubElement(request, "messageID").text = message_id
    for name, text in fields:
        etree.SubElement(request, name).text = text
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")


PATHS = {BACKEND_NS: "/services/backend", WSPLUGIN_NS: "/services/wsplugin"}


class Client:
    """A plain client of one interface (`ns`, the deprecated one unless told)."""

    def __init__(
        self, url: str, verify: ssl.SSLContext, user: str, password: str, ns: str = BACKEND_NS
    ) -> None:
        self.ns = ns
        self.http = httpx.Client(base_url=url, verify=verify, auth=(user, password), timeout=30)

    def post(self, body: bytes, content_type: str = SOAP_CONTENT_TYPE) -> httpx.Response:
        return self.http.post(PATHS[self.ns], content=body, headers={"Content-Type": content_type})

    def call(self, body: bytes) -> etree._Element:
        """The response envelope; a SOAP fault raises SoapFault."""
        response = self.post(body)
        assert response.headers["content-type"].startswith("application/soap+xml")
        envelope = etree.fromstring(response.content)
        fault = envelope.find(f"{q(SOAP12_NS, 'Body')}/{q(SOAP12_NS, 'Fault')}")
        if fault is None:
            assert response.status_code == 200
            return envelope
        detail = fault.find(f"{q(SOAP12_NS, 'Detail')}/{q(self.ns, 'FaultDetail')}")
        raise SoapFault(
            response.status_code,
            fault.findtext(f"{q(SOAP12_NS, 'Code')}/{q(SOAP12_NS, 'Value')}") or "",
            fault.findtext(f"{q(SOAP12_NS, 'Reason')}/{q(SOAP12_NS, 'Text')}") or "",
            None if detail is None else detail.findtext("code"),
            None if detail is None else detail.findtext("message"),
        )

    def submit(self, payload: bytes, **fields: Any) -> str:
        fields.setdefault("message_id", str(uuid.uuid4()))
        fields.setdefault("conversation_id", str(uuid.uuid4()))
        response = self.call(submit_envelope(payload, ns=self.ns, **fields))
        ids = response.findall(f".//{q(self.ns, 'submitResponse')}/messageID")
        assert len(ids) == 1
        return ids[0].text or ""

    def pending(self, **filters: str) -> list[str]:
        request = request_envelope(
            "listPendingMessagesRequest", ns=self.ns, fields=tuple(filters.items())
        )
        response = self.call(request)
        path = f".//{q(self.ns, 'listPendingMessagesResponse')}/messageID"
        return [e.text or "" for e in response.findall(path)]

    def retrieve(self, message_id: str, mark: bool = True) -> tuple[etree._Element, bytes]:
        """(the ebMS UserMessage header, the payload bytes)."""
        keep = {} if mark else {"markAsDownloaded": "false"}
        request = request_envelope(
            "retrieveMessageRequest", message_id, ns=self.ns, attributes=keep
        )
        response = self.call(request)
        user = response.find(
            f"{q(SOAP12_NS, 'Header')}/{q(EBMS_NS, 'Messaging')}/{q(EBMS_NS, 'UserMessage')}"
        )
        payloads = response.findall(f".//{q(self.ns, 'retrieveMessageResponse')}/payload")
        assert user is not None and len(payloads) == 1
        assert payloads[0].get("payloadId") == "cid:message"
        return user, base64.b64decode(payloads[0].findtext("value") or "")

    def mark(self, message_id: str) -> None:
        self.call(request_envelope("markMessageAsDownloadedRequest", message_id, ns=self.ns))

    def status(self, message_id: str, role: str | None = None) -> str:
        if role is None:
            request = request_envelope("statusRequest", message_id, ns=self.ns)
        else:
            fields = (("accessPointRole", role),)
            request = request_envelope(
                "statusRequestWithAccessPointRole", message_id, ns=self.ns, fields=fields
            )
        response = self.call(request)
        return response.findtext(f".//{q(self.ns, 'getStatusResponse')}") or ""

    def errors(self, message_id: str) -> list[dict[str, str]]:
        response = self.call(request_envelope("getErrorsRequest", message_id, ns=self.ns))
        items = response.findall(f".//{q(self.ns, 'getMessageErrorsResponse')}/item")
        return [{child.tag: child.text or "" for child in item} for item in items]
