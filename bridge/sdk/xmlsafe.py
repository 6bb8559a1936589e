"""Parsing XML from strangers: no DTDs, no entities, no network, bounded size and depth.

SDK payloads may hold a 30 MB base64 text node, beyond libxml2's default 10 MB node limit,
so the parser runs with `huge_tree`, which lifts libxml2's own size and depth limits. Ours
are checked instead, the cheap ones before libxml2 builds a tree; and since SDK documents
never need a DTD, any document type declaration is refused outright.
"""

import base64
import binascii
import re

from lxml import etree

MAX_DEPTH = 64
MAX_ELEMENTS = 100_000


class UnsafeXML(ValueError):
    """Not well-formed, or well-formed but carrying something we never parse."""


_PROLOG_ITEM = re.compile(rb"\s+|<\?.*?\?>|<!--.*?-->", re.DOTALL)
_ENCODING = re.compile(rb"""^<\?xml[^>]*encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


def _check_prolog(data: bytes) -> None:
    """Refuse DOCTYPE (hence entities and DTDs) and encodings other than UTF-8."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    elif data[:2] in (b"\xff\xfe", b"\xfe\xff") or data[:1] == b"\x00":
        raise UnsafeXML("only UTF-8 is accepted")
    match = _ENCODING.match(data)
    if match and match.group(1).lower() not in (b"utf-8", b"utf8", b"us-ascii", b"ascii"):
        raise UnsafeXML("only UTF-8 is accepted")
    pos = 0
    while item := _PROLOG_ITEM.match(data, pos):
        pos = item.end()
    if data.startswith(b"<!DOCTYPE", pos) or data.startswith(b"<!ENTITY", pos):
        raise UnsafeXML("document type declarations (DTD, entities) are not accepted")


def parse(data: bytes, *, max_bytes: int) -> etree._Element:
    """Parse `data` or raise `UnsafeXML` with a reason that is safe to show anyone."""
    if len(data) > max_bytes:
        raise UnsafeXML(f"document is larger than {max_bytes} bytes")
    if data.count(b"<") > MAX_ELEMENTS:  # base64 and ciphertext never contain "<"
        raise UnsafeXML(f"more than {MAX_ELEMENTS} XML nodes")
    _check_prolog(data)
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=True,
        remove_comments=True,  # c14n as SDK uses it ignores comments too
    )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as e:
        raise UnsafeXML(f"not well-formed XML (line {e.lineno})") from None
    if root.getroottree().docinfo.internalDTD is not None:
        raise UnsafeXML("document type declarations (DTD, entities) are not accepted")
    _check_shape(root)
    return root


def _check_shape(root: etree._Element) -> None:
    for count, element in enumerate(root.iter(), 1):
        if count > MAX_ELEMENTS:
            raise UnsafeXML(f"more than {MAX_ELEMENTS} XML nodes")
        if isinstance(element, etree._Entity):
            raise UnsafeXML("entity references are not accepted")
    depth_of = {root: 1}
    for element in root.iter():
        depth = depth_of[element]
        if depth > MAX_DEPTH:
            raise UnsafeXML(f"elements nested deeper than {MAX_DEPTH}")
        for child in element:
            depth_of[child] = depth + 1


def base64_text(element: etree._Element) -> bytes:
    """An element's base64 content, line breaks allowed; raise ValueError if it is not base64."""
    return decode_base64(element.text or "")


def decode_base64(text: str) -> bytes:
    """`base64_text` for a text already taken out of its element."""
    try:
        # Most payloads are one unbroken line: decoded straight from the str, without the
        # copies that splitting and encoding a 40 MB text would make.
        return binascii.a2b_base64(text, strict_mode=True)
    except ValueError:
        return base64.b64decode("".join(text.split()), validate=True)
