"""MTOM/XOP answers: the bridge's reader (sdk_bridge_plugins/domibus_xop.py) against a CXF answer
written out by hand, against the sandbox's independent writer (sdk_bridge/lab/sandbox/mtom.py), and
against hostile packages; the writer checked by the standard library's MIME parser."""

import contextlib
import email.policy
import os
import re
import time
import tracemalloc
from collections.abc import Callable
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from sdk_bridge.lab.sandbox import mtom
from sdk_bridge.sdk.xmlsafe import parse
from sdk_bridge_plugins.domibus_xop import MAX_PART_HEADER_BYTES, XopError, resolve, unpack

SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
BACKEND_NS = "http://org.ecodex.backend/1_1/"
XOP_NS = "http://www.w3.org/2004/08/xop/include"
BOUNDARY = "uuid:6b62cda1-4f5e-4a1c-9d0b-3c2e1f0a9b87"
PART_ID = "5d9f8a8e-7c3f-4bfa-9a63-6ac0e2c6b1f7-1@cxf.apache.org"
HOSTILE = pytest.mark.hostile("malformed MTOM/XOP answers")

# What CXF 3.x/4.x sends for retrieveMessage with wsplugin.mtom.enabled=true: the HTTP
# Content-Type, and a body that starts with CRLF and ends with the close delimiter, nothing
# after it (AttachmentSerializer). The payload part is the XHE's own bytes, not base64.
CXF_CONTENT_TYPE = (
    f'multipart/related; type="application/xop+xml"; boundary="{BOUNDARY}";'
    ' start="<root.message@cxf.apache.org>"; start-info="application/soap+xml"'
)
CXF_PAYLOAD = (
    b'<?xml version="1.0" encoding="UTF-8"?>\r\n'
    b'<xhe:XHE xmlns:xhe="http://docs.oasis-open.org/bdxr/ns/XHE/1/ExchangeHeaderEnvelope">'
    b"<xhe:Payloads>\r\n--not the boundary\r\n</xhe:Payloads></xhe:XHE>"
)
CXF_ANSWER = (
    b"\r\n"
    b"--uuid:6b62cda1-4f5e-4a1c-9d0b-3c2e1f0a9b87\r\n"
    b'Content-Type: application/xop+xml; charset=UTF-8; type="application/soap+xml"\r\n'
    b"Content-Transfer-Encoding: binary\r\n"
    b"Content-ID: <root.message@cxf.apache.org>\r\n"
    b"\r\n"
    b'<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope"><soap:Header>'
    b'<ns3:Messaging xmlns:ns3="http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/"'
    b' xmlns:ns2="http://org.ecodex.backend/1_1/"><ns3:UserMessage><ns3:MessageInfo>'
    b"<ns3:MessageId>7c9c1e2a@sdk.example</ns3:MessageId></ns3:MessageInfo>"
    b'<ns3:PayloadInfo><ns3:PartInfo href="cid:message"/></ns3:PayloadInfo>'
    b"</ns3:UserMessage></ns3:Messaging></soap:Header><soap:Body>"
    b'<ns2:retrieveMessageResponse xmlns:ns2="http://org.ecodex.backend/1_1/"'
    b' xmlns:xmime="http://www.w3.org/2005/05/xmlmime"><payload payloadId="cid:message">'
    b'<value><xop:Include xmlns:xop="http://www.w3.org/2004/08/xop/include"'
    b' href="cid:5d9f8a8e-7c3f-4bfa-9a63-6ac0e2c6b1f7-1@cxf.apache.org"/></value></payload>'
    b"</ns2:retrieveMessageResponse></soap:Body></soap:Envelope>\r\n"
    b"--uuid:6b62cda1-4f5e-4a1c-9d0b-3c2e1f0a9b87\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: binary\r\n"
    b"Content-ID: <5d9f8a8e-7c3f-4bfa-9a63-6ac0e2c6b1f7-1@cxf.apache.org>\r\n"
    b"\r\n" + CXF_PAYLOAD + b"\r\n"
    b"--uuid:6b62cda1-4f5e-4a1c-9d0b-3c2e1f0a9b87--"
)
VALUE_PATH = f"{{{SOAP12_NS}}}Body/{{{BACKEND_NS}}}retrieveMessageResponse/payload/value"


def payload_of(content_type: str, body: bytes | bytearray) -> memoryview:
    """What the connector will do: unpack, parse the root hardened, take `value`'s part."""
    unpacked = unpack(content_type, body)
    root = parse(unpacked.root, max_bytes=len(body))
    value = root.find(VALUE_PATH)
    assert value is not None
    return resolve(root, unpacked)[value]


def cxf(old: bytes, new: bytes, count: int = -1) -> bytes:
    replaced = CXF_ANSWER.replace(old, new, count)
    assert replaced != CXF_ANSWER
    return replaced


# --- reading what CXF writes ------------------------------------------------------------------


def test_a_cxf_answer_as_written() -> None:
    body = bytes(CXF_ANSWER)
    unpacked = unpack(CXF_CONTENT_TYPE, body)
    assert unpacked.root.startswith(b"<soap:Envelope") and unpacked.root.endswith(b"Envelope>")
    assert unpacked.root_id == "root.message@cxf.apache.org"
    assert unpacked.envelope_type == "application/soap+xml"
    assert list(unpacked.parts) == [PART_ID]
    view = unpacked.part(f"cid:{PART_ID}")
    assert view == CXF_PAYLOAD
    assert view.obj is body  # a view of the answer, not a copy
    assert unpacked.part(f"<{PART_ID}>") is view and unpacked.part(PART_ID) is view
    root = parse(unpacked.root, max_bytes=len(body))
    found = resolve(root, unpacked)
    value = root.find(VALUE_PATH)
    assert list(found) == [value]  # keyed by the tree's own element
    assert found[value] == CXF_PAYLOAD
    assert value is not None and value[0].tag == f"{{{XOP_NS}}}Include"  # tree unchanged


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(lambda b: b.replace(b"\r\n", b"\n"), id="bare LF everywhere"),
        pytest.param(lambda b: b"a preamble\r\nof two lines\r\n" + b, id="preamble"),
        pytest.param(lambda b: b[2:], id="no CRLF before the first delimiter"),
        pytest.param(lambda b: b + b"\r\nan epilogue\r\n--uuid:x--\r\n", id="epilogue"),
        pytest.param(
            lambda b: b.replace(f"--{BOUNDARY}\r\n".encode(), f"--{BOUNDARY} \t\r\n".encode()),
            id="transport padding",
        ),
        pytest.param(
            lambda b: (
                b.replace(
                    b"Content-Type: application/xop+xml;", b"CONTENT-type:  application/xop+xml;"
                )
                .replace(b"Content-ID: <5", b"content-id: <5")
                .replace(b"Content-Transfer-Encoding: binary", b"content-TRANSFER-encoding: BINARY")
            ),
            id="header names and values in any case",
        ),
        pytest.param(
            lambda b: b.replace(b"charset=UTF-8; type=", b"charset=UTF-8;\r\n\ttype="),
            id="folded header",
        ),
        pytest.param(
            lambda b: b.replace(
                b"Content-ID: <5d9f8a8e-7c3f-4bfa-9a63-6ac0e2c6b1f7-1@cxf.apache.org>",
                b"Content-ID: 5d9f8a8e-7c3f-4bfa-9a63-6ac0e2c6b1f7-1@cxf.apache.org",
            ),
            id="Content-ID without angle brackets",
        ),
        pytest.param(
            lambda b: b.replace(b"Content-Transfer-Encoding: binary\r\n", b"", 1).replace(
                b"Content-Transfer-Encoding: binary", b"Content-Transfer-Encoding: 8bit"
            ),
            id="7bit by default, 8bit",
        ),
        pytest.param(
            lambda b: b.replace(
                b"\r\nContent-Type: application/octet-stream",
                b"\r\nX-Extra: 1\r\nContent-Type: application/octet-stream",
            ),
            id="other headers",
        ),
    ],
)
def test_cxf_answer_variants_read_the_same(variant: Callable[[bytes], bytes]) -> None:
    body = variant(CXF_ANSWER)
    expected = CXF_PAYLOAD.replace(b"\r\n", b"\n") if b"\r\n" not in body else CXF_PAYLOAD
    assert payload_of(CXF_CONTENT_TYPE, body) == expected


@pytest.mark.parametrize(
    "content_type",
    [
        CXF_CONTENT_TYPE.replace(f'"{BOUNDARY}"', BOUNDARY),  # unquoted, as some peers send it
        CXF_CONTENT_TYPE.replace("; start=", ";\tSTART = ").replace("boundary=", "Boundary="),
        CXF_CONTENT_TYPE.replace(
            'start="<root.message@cxf.apache.org>"', 'start="root.message@cxf.apache.org"'
        ),
        CXF_CONTENT_TYPE.replace('; start="<root.message@cxf.apache.org>"', ""),  # first part
        CXF_CONTENT_TYPE.replace('; type="application/xop+xml"', "") + ";",
        'Multipart/Related; boundary="uuid:6b62cda1-4f5e-4a1c-9d0b-3c2e1f0a9b87";'
        r' start-info="application/soap+xml; action=\"urn:x\""',
    ],
)
def test_content_type_variants(content_type: str) -> None:
    assert payload_of(content_type, CXF_ANSWER) == CXF_PAYLOAD


def test_start_chooses_the_root_wherever_it_is() -> None:
    head, root, attachment = CXF_ANSWER.split(f"\r\n--{BOUNDARY}".encode())[:3]
    body = (
        b"".join(
            [head, f"\r\n--{BOUNDARY}".encode(), attachment, f"\r\n--{BOUNDARY}".encode(), root]
        )
        + f"\r\n--{BOUNDARY}--".encode()
    )
    assert payload_of(CXF_CONTENT_TYPE, body) == CXF_PAYLOAD
    # Without start, the first part is the root: here the attachment, which is not XOP.
    without_start = CXF_CONTENT_TYPE.replace('; start="<root.message@cxf.apache.org>"', "")
    with pytest.raises(XopError, match="root part is application/octet-stream"):
        unpack(without_start, body)


def test_near_misses_of_the_boundary_are_content() -> None:
    tricky = (
        f"\r\n--{BOUNDARY}x\r\n--{BOUNDARY[:-1]}\r\n{BOUNDARY}\r\n-- {BOUNDARY}\r\n--{BOUNDARY}"
    ).encode()  # the last is a delimiter only at the start of a line, and it is not
    body = CXF_ANSWER.replace(CXF_PAYLOAD, tricky + b"x" + CXF_PAYLOAD)
    assert payload_of(CXF_CONTENT_TYPE, body) == tricky + b"x" + CXF_PAYLOAD


def test_a_part_ends_before_the_delimiters_line_break() -> None:
    body = cxf(CXF_PAYLOAD + b"\r\n--", CXF_PAYLOAD + b"\r\r\n--")
    assert payload_of(CXF_CONTENT_TYPE, body) == CXF_PAYLOAD + b"\r"
    empty = cxf(CXF_PAYLOAD, b"")
    assert payload_of(CXF_CONTENT_TYPE, empty) == b""


def test_release_frees_a_bytearray_answer() -> None:
    body = bytearray(CXF_ANSWER)
    unpacked = unpack(CXF_CONTENT_TYPE, body)
    assert unpacked.part(f"cid:{PART_ID}").obj is body
    with pytest.raises(BufferError):
        body += b"x"  # exported: as the module says
    unpacked.release()
    body += b"x"


# --- the sandbox's writer ---------------------------------------------------------------------


def retrieve_answer(
    domain: str = mtom.CXF_DOMAIN, payload: bytes = CXF_PAYLOAD
) -> tuple[str, list[bytes]]:
    """An answer as accesspoint._answer builds it, with `value` left empty for MTOM."""
    envelope = etree.Element(f"{{{SOAP12_NS}}}Envelope", nsmap={"soap": SOAP12_NS})
    body = etree.SubElement(envelope, f"{{{SOAP12_NS}}}Body")
    response = etree.SubElement(body, f"{{{BACKEND_NS}}}retrieveMessageResponse")
    element = etree.SubElement(response, "payload", payloadId="cid:message")
    value = etree.SubElement(element, "value")
    value.text = "QUJD"  # base64 that MTOM replaces
    return mtom.package(envelope, {value: payload}, domain=domain)


def test_the_writer_writes_as_cxf_does() -> None:
    content_type, chunks = retrieve_answer()
    assert chunks[1] is not CXF_PAYLOAD and chunks[3] is CXF_PAYLOAD  # the payload, uncopied
    body = b"".join(chunks)
    boundary = content_type.split('boundary="')[1].split('"')[0]
    assert content_type == CXF_CONTENT_TYPE.replace(BOUNDARY, boundary)
    assert boundary.startswith("uuid:") and len(boundary) == 41
    content_id = body.split(b"Content-ID: <")[2].split(b">")[0].decode()
    stem, _, domain = content_id.rpartition("-1@")
    assert domain == "cxf.apache.org" and len(stem) == 36
    # Byte for byte the hand-written answer, but for the ids and the envelope's own XML.
    root = body.split(b"\r\n\r\n", 1)[1].split(f"\r\n--{boundary}".encode())[0]
    assert not root.startswith(b"<?xml") and f'href="cid:{content_id}"'.encode() in root
    expected = CXF_ANSWER.replace(BOUNDARY.encode(), boundary.encode()).replace(
        PART_ID.encode(), content_id.encode()
    )
    expected_root = expected.split(b"\r\n\r\n", 1)[1].split(f"\r\n--{boundary}".encode())[0]
    assert body == expected.replace(expected_root, root)


def test_the_standard_librarys_mime_parser_reads_what_the_writer_writes() -> None:
    payload = bytes(range(256)) * 64 + b"\r\n--uuid:\r\n\n\r" + os.urandom(1 << 16)
    content_type, chunks = retrieve_answer(payload=payload)
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + b"".join(chunks)
    )
    assert isinstance(message, EmailMessage) and not message.defects
    assert message.get_content_type() == "multipart/related"
    assert message.get_param("type") == "application/xop+xml"
    assert message.get_param("start") == "<root.message@cxf.apache.org>"
    assert message.get_param("start-info") == "application/soap+xml"
    root, attachment = message.iter_parts()
    assert not root.defects and not attachment.defects
    assert root.get_content_type() == "application/xop+xml"
    assert root.get_param("charset") == "UTF-8" and root.get_param("type") == "application/soap+xml"
    assert root["Content-ID"] == "<root.message@cxf.apache.org>"
    assert root["Content-Transfer-Encoding"] == attachment["Content-Transfer-Encoding"] == "binary"
    envelope = etree.fromstring(root.get_payload(decode=True))
    include = envelope.find(f".//value/{{{XOP_NS}}}Include")
    assert include is not None
    assert attachment.get_content_type() == "application/octet-stream"
    assert include.get("href") == "cid:" + attachment["Content-ID"].strip("<>")
    assert attachment.get_payload(decode=True) == payload


def test_a_percent_encoded_href() -> None:
    """A Content-ID whose domain is a URN, as CXF makes for a namespace without a host: its
    href is percent-encoded (RFC 2392), the header is not."""
    content_type, chunks = retrieve_answer(domain="urn:eu:domibus:wsplugin")
    body = b"".join(chunks)
    assert b"@urn%3Aeu%3Adomibus%3Awsplugin" in body and b"-1@urn:eu:domibus:wsplugin>" in body
    assert payload_of(content_type, body) == CXF_PAYLOAD
    assert mtom.cid_url("a b/c@d%e") == "cid:a%20b%2Fc@d%25e"


def test_hrefs_are_percent_decoded_and_then_tried_as_written() -> None:
    encoded = cxf(b'-1@cxf.apache.org"', b'-1%40cxf.apache.org"')  # RFC 2392's "@" as %40
    assert payload_of(CXF_CONTENT_TYPE, encoded) == CXF_PAYLOAD
    # A peer that writes the encoded form in the Content-ID header too is still understood.
    both = cxf(b"-1@cxf.apache.org", b"-1%40cxf.apache.org")
    assert payload_of(CXF_CONTENT_TYPE, both) == CXF_PAYLOAD


def test_several_parts_round_trip() -> None:
    parts = {f"p{n}@example": os.urandom(n * 100) for n in range(5)}
    hrefs = "".join(
        f'<v{n}><xop:Include xmlns:xop="{XOP_NS}" href="{mtom.cid_url(cid)}"/></v{n}>'
        for n, cid in enumerate(parts)
    )
    content_type, chunks = mtom.pack(f"<e>{hrefs}</e>".encode(), parts)
    unpacked = unpack(content_type, b"".join(chunks))
    found = resolve(etree.fromstring(unpacked.root), unpacked)
    assert {element.tag: bytes(data) for element, data in found.items()} == {
        f"v{n}": data for n, data in enumerate(parts.values())
    }


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_a_40_mb_part_is_not_copied(kind: type[bytes] | type[bytearray]) -> None:
    payload = os.urandom(40_000_000)
    content_type, chunks = retrieve_answer(payload=payload)
    body = kind(b"".join(chunks))
    tracemalloc.start()
    try:
        found = payload_of(content_type, body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found.obj is body and found == payload
    assert peak < 2_000_000, f"unpacking a 40 MB answer allocated {peak} bytes"


@pytest.mark.parametrize(
    ("parts", "boundary", "problem"),
    [
        ({"a b@c": b""}, None, "cannot be a Content-ID"),
        ({"<a@c>": b""}, None, "cannot be a Content-ID"),
        ({"a@c\r\nX-Evil: 1": b""}, None, "cannot be a Content-ID"),
        ({"": b""}, None, "cannot be a Content-ID"),
        ({mtom.ROOT_CONTENT_ID: b""}, None, "root"),
        ({"a@c": b"\r\n--fixed\r\n"}, "fixed", "occurs in the content"),
        ({}, 'a"b', "printable"),
        ({}, "x" * 71, "printable"),
    ],
)
def test_the_writer_refuses_what_it_cannot_write(
    parts: dict[str, bytes], boundary: str | None, problem: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        mtom.pack(b"<e/>", parts, boundary=boundary)


def test_include_refuses_an_element_with_children() -> None:
    element = etree.fromstring(b"<value><x/></value>")
    with pytest.raises(ValueError, match="child elements"):
        mtom.include(element, "a@b")


# --- hostile packages -------------------------------------------------------------------------


@HOSTILE
@pytest.mark.parametrize(
    ("content_type", "body", "problem"),
    [
        ("application/soap+xml", CXF_ANSWER, "not multipart/related"),
        ("multipart/mixed; boundary=x", CXF_ANSWER, "not multipart/related"),
        ("", CXF_ANSWER, "not a media type"),
        ('multipart/related; type="application/soap+xml"; boundary=x', CXF_ANSWER, "not an XOP"),
        ('multipart/related; type="application/xop+xml"', CXF_ANSWER, "without a boundary"),
        ("multipart/related; boundary=" + "x" * 71, CXF_ANSWER, "not a valid MIME boundary"),
        ('multipart/related; boundary="x "', CXF_ANSWER, "not a valid MIME boundary"),
        ('multipart/related; boundary="a\x00b"', CXF_ANSWER, "not a valid MIME boundary"),
        ('multipart/related; boundary="unterminated', CXF_ANSWER, "unterminated quote"),
        ('multipart/related; boundary="x"y', CXF_ANSWER, "text after its quotes"),
        ("multipart/related; boundary=x; boundary=y", CXF_ANSWER, "twice"),
        ("multipart/related; boundary", CXF_ANSWER, "has no value"),
        ("multipart/related; boundary=", CXF_ANSWER, "malformed value"),
        ("multipart/related; b(x)=1; boundary=x", CXF_ANSWER, "malformed parameter name"),
        ("multipart/related; boundary=x" + ";" * 9000, CXF_ANSWER, "longer than"),
        (CXF_CONTENT_TYPE, b"", "no line with its multipart boundary"),
        (CXF_CONTENT_TYPE.replace(BOUNDARY, "other"), CXF_ANSWER, "no line with"),
        (CXF_CONTENT_TYPE, CXF_ANSWER[: -len(BOUNDARY) - 4], "without its closing boundary"),
        (CXF_CONTENT_TYPE, CXF_ANSWER[:-2], "without its closing boundary"),
        (CXF_CONTENT_TYPE, CXF_ANSWER[:100], "without its closing boundary"),
        (CXF_CONTENT_TYPE, f"--{BOUNDARY}--".encode(), "no parts"),
        (CXF_CONTENT_TYPE, CXF_ANSWER.replace(b"\r\n\r\n<soap", b"\r\n<soap"), "blank line"),
        (
            CXF_CONTENT_TYPE,
            CXF_ANSWER.replace(
                b"Content-ID: <root",
                b"X: " + b"y" * MAX_PART_HEADER_BYTES + b"\r\nContent-ID: <root",
            ),
            "longer than 8192",
        ),
        (
            CXF_CONTENT_TYPE,
            CXF_ANSWER.replace(b"binary\r\nContent-ID: <5", b"binary\r\nContent-ID: <\xc3\xa5"),
            "not ASCII",
        ),
        (
            CXF_CONTENT_TYPE,
            CXF_ANSWER.replace(b"binary\r\nContent-ID: <5", b"binary\r\nContent-ID: <\x005"),
            "control",
        ),
        (
            CXF_CONTENT_TYPE,
            CXF_ANSWER.replace(b"binary\r\nContent-ID: <5", b"binary\rContent-ID: <5"),
            "control",
        ),
        (
            CXF_CONTENT_TYPE,
            CXF_ANSWER.replace(b"Content-Type: application/oct", b" Content-Type: application/oct"),
            "continuation",
        ),
        (
            CXF_CONTENT_TYPE,
            CXF_ANSWER.replace(b"Content-Type: application/oct", b"Content-Type application/oct"),
            "malformed header",
        ),
        (
            CXF_CONTENT_TYPE,
            CXF_ANSWER.replace(b"Content-Type: application/oct", b"Content Type: application/oct"),
            "malformed header",
        ),
        (
            CXF_CONTENT_TYPE,
            CXF_ANSWER.replace(b"Content-ID: <5", b"Content-ID: <x>\r\nContent-ID: <5"),
            "more than one Content-ID",
        ),
        (
            CXF_CONTENT_TYPE,
            CXF_ANSWER.replace(
                b"Content-Type: application/oct",
                b"Content-type: text/plain\r\nContent-Type: application/oct",
            ),
            "more than one Content-Type",
        ),
        (
            CXF_CONTENT_TYPE,
            CXF_ANSWER.replace(PART_ID.encode(), b"root.message@cxf.apache.org"),
            "two parts have",
        ),
        (
            CXF_CONTENT_TYPE,
            CXF_ANSWER.replace(
                b"Content-ID: <5d9f8a8e-7c3f-4bfa-9a63-6ac0e2c6b1f7-1@cxf.apache.org>",
                b"Content-ID: <>",
            ),
            "empty Content-ID",
        ),
        (CXF_CONTENT_TYPE.replace("<root.", "<other."), CXF_ANSWER, "no part has"),
        (
            CXF_CONTENT_TYPE,
            CXF_ANSWER.replace(b"application/xop+xml;", b"application/soap+xml;"),
            "not application/xop+xml",
        ),
        (CXF_CONTENT_TYPE, CXF_ANSWER.replace(b"charset=UTF-8", b"charset=ISO-8859-1"), "charset"),
        (
            CXF_CONTENT_TYPE,
            CXF_ANSWER.replace(b'soap+xml"\r\n', b"soap+xml\r\n"),
            "unterminated quote",
        ),
    ],
)
def test_malformed_packages_are_refused(content_type: str, body: bytes, problem: str) -> None:
    with pytest.raises(XopError, match=re.escape(problem)):
        unpack(content_type, body)


@HOSTILE
@pytest.mark.parametrize("encoding", ["base64", "quoted-printable", "x-gzip", "BASE64"])
def test_encoded_parts_are_refused(encoding: str) -> None:
    body = cxf(
        b"Content-Transfer-Encoding: binary\r\nContent-ID: <5",
        f"Content-Transfer-Encoding: {encoding}\r\nContent-ID: <5".encode(),
    )
    with pytest.raises(
        XopError, match=f"Content-Transfer-Encoding '{encoding.lower()}' is not supported"
    ):
        unpack(CXF_CONTENT_TYPE, body)


@HOSTILE
def test_too_many_parts_are_refused() -> None:
    extra = f"\r\n--{BOUNDARY}\r\nContent-ID: <x@y>\r\n\r\n".encode()
    body = cxf(f"\r\n--{BOUNDARY}--".encode(), extra + f"\r\n--{BOUNDARY}--".encode())
    assert unpack(CXF_CONTENT_TYPE, body, max_parts=3).parts.keys() == {PART_ID, "x@y"}
    with pytest.raises(XopError, match="more than 2 MIME parts"):
        unpack(CXF_CONTENT_TYPE, body, max_parts=2)
    many = CXF_ANSWER[: -len(BOUNDARY) - 6] + f"\r\n--{BOUNDARY}\r\n\r\n".encode() * 100_000
    started = time.monotonic()
    with pytest.raises(XopError, match="more than 16 MIME parts"):
        unpack(CXF_CONTENT_TYPE, many)
    assert time.monotonic() - started < 1


@HOSTILE
def test_near_misses_cost_linear_time() -> None:
    """Two hundred thousand lines that start like a delimiter are looked at once each."""
    near = f"\r\n--{BOUNDARY}x".encode() * 100_000
    body = cxf(CXF_PAYLOAD, near)
    started = time.monotonic()
    assert payload_of(CXF_CONTENT_TYPE, body) == near
    assert time.monotonic() - started < 5


def include_variant(old: bytes, new: bytes) -> bytes:
    return cxf(old, new, 1)


INCLUDE = b'<xop:Include xmlns:xop="http://www.w3.org/2004/08/xop/include"'
HREF = b' href="cid:5d9f8a8e-7c3f-4bfa-9a63-6ac0e2c6b1f7-1@cxf.apache.org"'


@HOSTILE
@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            include_variant(b'-1@cxf.apache.org"/>', b'-2@cxf.apache.org"/>'),
            "no part has Content-ID",
        ),
        (include_variant(HREF, b' href="cid:root.message@cxf.apache.org"'), "names the root"),
        (include_variant(HREF, b' href="cid:%ff"'), "not UTF-8"),
        (include_variant(HREF, b' href="http://example/x"'), "not a cid: URL"),
        (include_variant(HREF, b""), "no href"),
        (include_variant(HREF, HREF + b' id="x"'), "attributes other than href"),
        (include_variant(HREF, HREF + b' xop:href="x"'), "attributes other than href"),
        (include_variant(HREF + b"/>", HREF + b"><x/></xop:Include>"), "has content"),
        (include_variant(HREF + b"/>", HREF + b">QUJD</xop:Include>"), "has content"),
        (include_variant(b"<value>", b"<value>QUJD"), "not its only content"),
        (include_variant(b"/></value>", b"/>QUJD</value>"), "not its only content"),
        (include_variant(b"/></value>", b"/><x/></value>"), "not its only content"),
        (include_variant(b"/></value>", b"/>" + INCLUDE + HREF + b"/></value>"), "not its only"),
        (
            include_variant(
                b"</payload>",
                b"</payload><payload><value>" + INCLUDE + HREF + b"/></value></payload>",
            ),
            "referenced more than once",
        ),
        (include_variant(b"<xop:Include", b"<xop:Includes"), "not an element of XOP"),
    ],
)
def test_malformed_includes_are_refused(body: bytes, problem: str) -> None:
    with pytest.raises(XopError, match=re.escape(problem)):
        payload_of(CXF_CONTENT_TYPE, body)


@HOSTILE
def test_an_include_as_the_root_is_refused() -> None:
    unpacked = unpack(CXF_CONTENT_TYPE, CXF_ANSWER)
    with pytest.raises(XopError, match="the envelope is an xop:Include"):
        resolve(etree.fromstring(INCLUDE + HREF + b"/>"), unpacked)


@HOSTILE
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.tuples(st.integers(0, len(CXF_ANSWER)), st.binary(max_size=12)), max_size=4)
)
def test_mangled_answers_fail_only_with_xop_errors(cuts: list[tuple[int, bytes]]) -> None:
    body = CXF_ANSWER
    for at, junk in cuts:
        body = body[:at] + junk + body[at + len(junk) // 2 :]
    try:
        unpacked = unpack(CXF_CONTENT_TYPE, body)
        root = etree.fromstring(unpacked.root)
    except (XopError, etree.XMLSyntaxError):
        return
    with contextlib.suppress(XopError):
        resolve(root, unpacked)


@HOSTILE
@settings(max_examples=300, deadline=None)
@given(content_type=st.text(max_size=120))
def test_any_content_type_fails_only_with_xop_errors(content_type: str) -> None:
    with contextlib.suppress(XopError):
        unpack(content_type, CXF_ANSWER)
