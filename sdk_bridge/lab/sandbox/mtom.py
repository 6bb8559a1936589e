"""Answering as Domibus's WS plugin does with MTOM on (`wsplugin.mtom.enabled=true`).

Domibus's web services run on Apache CXF. With MTOM enabled, an answer whose body holds
base64Binary content marked `xmime:expectedContentTypes` (the WS plugin's `LargePayloadType`
`value`) is sent as an XOP package (https://www.w3.org/TR/xop10/): the binary moves to a MIME
part of its own, raw, and the element keeps only an `xop:Include` pointing at it. This module
writes that package byte for byte as CXF's `AttachmentSerializer` does:

- HTTP Content-Type `multipart/related; type="application/xop+xml"; boundary="uuid:<uuid4>";
  start="<root.message@cxf.apache.org>"; start-info="application/soap+xml"`;
- the body: CRLF, `--boundary`, the root part (`application/xop+xml; charset=UTF-8;
  type="application/soap+xml"`, `Content-Transfer-Encoding: binary`, `Content-ID:
  <root.message@cxf.apache.org>`) holding the envelope, without an XML declaration; then each
  binary as `application/octet-stream`, `binary`, `Content-ID: <uuid-N@cxf.apache.org>`; and
  `CRLF--boundary--` with nothing after it.

CXF makes an attachment's Content-ID from a UUID, a counter and the host of the element's
namespace (`cxf.apache.org` for the WS plugin's unqualified `value`), URL-encoding each half
for the `href` and writing the header decoded; a namespace without a host (a URN) makes a
Content-ID whose href is percent-encoded (`cid:…-1@urn%3Aexample`), which `cid_url` writes.

The body is a list of chunks, for a WSGI application to return as it is: the binaries are
chunks of their own and are not copied; its length, for Content-Length, is the sum of the
chunks'.

This is the sandbox's own encoder; the bridge's reader (sdk_bridge_plugins/domibus_xop.py) is
written separately on purpose, so that each checks the other.
"""

import urllib.parse
import uuid
from collections.abc import Mapping
from typing import Final

from lxml import etree

XOP_NS: Final = "http://www.w3.org/2004/08/xop/include"
ROOT_CONTENT_ID: Final = "root.message@cxf.apache.org"  # CXF's AttachmentUtil.BODY_ATTACHMENT_ID
CXF_DOMAIN: Final = "cxf.apache.org"  # the Content-ID domain for an unqualified element
SOAP12_MEDIA_TYPE: Final = "application/soap+xml"
OCTET_STREAM: Final = "application/octet-stream"  # LargePayloadType's expectedContentTypes


def pack(
    envelope: bytes,
    parts: Mapping[str, bytes],
    *,
    boundary: str | None = None,
    envelope_type: str = SOAP12_MEDIA_TYPE,
) -> tuple[str, list[bytes]]:
    """The HTTP Content-Type and body of an XOP package, as CXF writes it: `envelope` (which
    already holds an `xop:Include` for each part) as the root, then each of `parts`, keyed by
    Content-ID without angle brackets, as an application/octet-stream part, in order.

    `boundary` defaults to a new `uuid:<uuid4>`, as CXF's. ValueError if a Content-ID could
    not be written in a header, or if `boundary` occurs in the envelope or a part.
    """
    for content_id in (ROOT_CONTENT_ID, *parts):
        _check_content_id(content_id)
    if ROOT_CONTENT_ID in parts:
        raise ValueError(f"Content-ID <{ROOT_CONTENT_ID}> is the root's")
    contents = (envelope, *parts.values())
    if boundary is None:
        boundary = _boundary(contents)
    elif not 0 < len(boundary) <= 70 or not all(" " <= c <= "~" and c != '"' for c in boundary):
        raise ValueError(f"boundary {boundary!r} is not 1 to 70 printable characters")
    elif any(f"--{boundary}".encode("ascii") in content for content in contents):
        raise ValueError(f"boundary {boundary!r} occurs in the content")
    content_type = (
        f'multipart/related; type="application/xop+xml"; boundary="{boundary}";'
        f' start="<{ROOT_CONTENT_ID}>"; start-info="{envelope_type}"'
    )
    root_type = f'application/xop+xml; charset=UTF-8; type="{envelope_type}"'
    body = [_part_head(boundary, root_type, ROOT_CONTENT_ID), envelope]
    for content_id, data in parts.items():
        body += [_part_head(boundary, OCTET_STREAM, content_id), data]
    body.append(f"\r\n--{boundary}--".encode("ascii"))
    return content_type, body


def package(
    envelope: etree._Element,
    binaries: Mapping[etree._Element, bytes],
    *,
    domain: str = CXF_DOMAIN,
) -> tuple[str, list[bytes]]:
    """`pack` an envelope tree whose elements in `binaries` are to hold those bytes: each such
    element's content becomes an `xop:Include` of a new part (`include`), named as CXF names
    it, `<uuid>-<n>@<domain>`. The tree is changed so.

    This is what an answer with a base64Binary `value` becomes with MTOM on: build the tree
    with the `value` element empty and pass its bytes here, rather than their base64.
    """
    stem = uuid.uuid4()
    parts: dict[str, bytes] = {}
    for n, (element, data) in enumerate(binaries.items(), 1):
        content_id = f"{stem}-{n}@{domain}"
        include(element, content_id)
        parts[content_id] = data
    # CXF writes the root without an XML declaration; its charset is in the part's header.
    serialised = etree.tostring(envelope, encoding="UTF-8", xml_declaration=False)
    return pack(serialised, parts)


def include(element: etree._Element, content_id: str) -> None:
    """Make `element`'s content an `xop:Include` of the part `content_id`, as CXF's JAXB
    marshaller does; whatever text it had (its base64, say) is dropped. ValueError if it has
    child elements."""
    if len(element):
        raise ValueError(f"{element.tag} has child elements; only a text becomes a part")
    element.text = None
    etree.SubElement(
        element, f"{{{XOP_NS}}}Include", {"href": cid_url(content_id)}, nsmap={"xop": XOP_NS}
    )


def cid_url(content_id: str) -> str:
    """The `cid:` URL of a Content-ID as CXF writes it in an href: the parts before and after
    the last "@" percent-encoded (RFC 2392), the "@" kept, e.g. `cid:…-1@urn%3Aexample`."""
    local, at, domain = content_id.rpartition("@")
    if not at:
        return "cid:" + _encode(content_id)
    return f"cid:{_encode(local)}@{_encode(domain)}"


def _encode(text: str) -> str:
    # Java's URLEncoder leaves letters, digits and "-._*" as they are; "~" too here (RFC 3986).
    return urllib.parse.quote(text, safe="-._*")


def _check_content_id(content_id: str) -> None:
    """A Content-ID must go between angle brackets in a header line as it is."""
    printable = content_id and all("!" <= c <= "~" for c in content_id)
    if not printable or "<" in content_id or ">" in content_id:
        raise ValueError(f"{content_id!r} cannot be a Content-ID (printable ASCII, no <>)")


def _boundary(contents: tuple[bytes, ...]) -> str:
    """A new `uuid:<uuid4>` boundary that occurs in none of `contents` (a random one would
    not, but the check is cheap next to sending the bytes)."""
    while True:
        boundary = f"uuid:{uuid.uuid4()}"
        delimiter = f"--{boundary}".encode("ascii")
        if not any(delimiter in content for content in contents):
            return boundary


def _part_head(boundary: str, content_type: str, content_id: str) -> bytes:
    """What CXF writes before a part's content: the delimiter and the part's headers."""
    return (
        f"\r\n--{boundary}"
        f"\r\nContent-Type: {content_type}"
        "\r\nContent-Transfer-Encoding: binary"
        f"\r\nContent-ID: <{content_id}>"
        "\r\n\r\n"
    ).encode("ascii")
