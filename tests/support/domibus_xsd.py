"""Domibus's own XSDs of the WS plugin, to validate what goes over the wire in tests.

Read from `../shared/reference/domibus-ws-plugin` (never copied into the project); tests
that use them skip with a clear message where it is absent. A SOAP envelope is checked
part by part, as CXF does: the Body's request or answer against the XSD of its interface,
the ebMS Messaging header against Domibus 5.2's header XSD (the same ebMS namespace and
subset for both interfaces).
"""

import base64
import os
from functools import cache
from pathlib import Path

import pytest
from lxml import etree

REFERENCE = Path(
    os.environ.get(
        "DOMIBUS_WS_PLUGIN_DIR",
        Path(__file__).resolve().parents[3] / "shared" / "reference" / "domibus-ws-plugin",
    )
)
SCHEMAS = REFERENCE / "domibus-5.2" / "schemas"
SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
EBMS_NS = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/"
BODY_XSDS = {
    "http://eu.domibus.wsplugin/": SCHEMAS / "webservicePlugin-body.xsd",
    "http://org.ecodex.backend/1_1/": REFERENCE / "domibus-backend.xsd",
}


def need_schemas() -> None:
    if not (SCHEMAS / "webservicePlugin-body.xsd").exists():
        pytest.skip(f"Domibus WS plugin XSDs not found at {REFERENCE} (set DOMIBUS_WS_PLUGIN_DIR)")


@cache
def _schema(namespace: str) -> etree.XMLSchema:
    """The XSD of `namespace` with the ones it imports without a location."""
    imports = [
        ("http://www.w3.org/XML/1998/namespace", SCHEMAS / "xml.xsd"),
        ("http://www.w3.org/2005/05/xmlmime", SCHEMAS / "xmlmime.xsd"),
    ]
    if namespace == EBMS_NS:
        imports.append((EBMS_NS, SCHEMAS / "webservicePlugin-header.xsd"))
    else:
        imports.append((namespace, BODY_XSDS[namespace]))
    lines = "".join(
        f'<xsd:import namespace="{ns}" schemaLocation="{path.as_uri()}"/>' for ns, path in imports
    )
    wrapper = f'<xsd:schema xmlns:xsd="http://www.w3.org/2001/XMLSchema">{lines}</xsd:schema>'
    return etree.XMLSchema(etree.fromstring(wrapper))


def validate(envelope: bytes | etree._Element) -> None:
    """Raise AssertionError naming what in the SOAP 1.2 `envelope` breaks Domibus's XSDs."""
    root = etree.fromstring(envelope) if isinstance(envelope, bytes) else envelope
    assert root.tag == f"{{{SOAP12_NS}}}Envelope", root.tag
    checked = []
    for messaging in root.findall(f"{{{SOAP12_NS}}}Header/{{{EBMS_NS}}}Messaging"):
        checked.append(messaging)
    body = root.find(f"{{{SOAP12_NS}}}Body")
    assert body is not None, "no SOAP Body"
    for child in body:
        if not isinstance(child.tag, str) or child.tag == f"{{{SOAP12_NS}}}Fault":
            if isinstance(child.tag, str):
                detail = child.find(f"{{{SOAP12_NS}}}Detail")
                checked.extend([] if detail is None else list(detail))
            continue
        checked.append(child)
    for element in checked:
        namespace = etree.QName(element).namespace or ""
        schema = _schema(namespace)
        document = etree.fromstring(etree.tostring(element))
        if not schema.validate(document):
            raise AssertionError(
                f"{etree.QName(element).localname} ({namespace}) breaks Domibus's XSD:"
                f" {schema.error_log.filter_from_errors()}"
            )


class Watch:
    """An access point's `observer`: every request and answer on the wire validated, the
    problems kept for the test to assert on (raising in the server's thread would only
    turn into a fault the client sees)."""

    def __init__(self) -> None:
        need_schemas()
        self.problems: list[str] = []
        self.seen = {"request": 0, "answer": 0}

    def __call__(self, direction: str, body: bytes, content_type: str) -> None:
        media_type = content_type.split(";")[0].strip().lower()
        if media_type == "multipart/related":  # validated as its XOP infoset: parts inline
            from sdk_bridge_plugins.domibus_xop import resolve, unpack

            unpacked = unpack(content_type, body)
            root = etree.fromstring(unpacked.root)
            for element, part in resolve(root, unpacked).items():
                element[:] = []
                element.text = base64.b64encode(part).decode("ascii")
            body = etree.tostring(root)
        elif media_type != "application/soap+xml":
            return  # a WSDL, an HTTP error page
        self.seen[direction] += 1
        try:
            validate(body)
        except (AssertionError, etree.XMLSyntaxError) as e:
            self.problems.append(f"{direction}: {e}")

    def check(self) -> None:
        assert self.seen["request"] and self.seen["answer"], self.seen
        assert not self.problems, "\n".join(self.problems[:5])
