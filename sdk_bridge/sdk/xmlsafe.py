"""Parsing XML from strangers: no DTDs, no entities, no network, bounded size and depth.

SDK payloads may hold a 30 MB base64 text node, beyond libxml2's default 10 MB node limit,
so the parser runs with `huge_tree`, which lifts libxml2's own size and depth limits. Ours
are checked instead, the cheap ones before libxml2 builds a tree; and since SDK documents
never need a DTD, any document type declaration is refused outright.
"""

import base64
import binascii
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

from lxml import etree

MAX_DEPTH = 64
MAX_ELEMENTS = 100_000


class UnsafeXML(ValueError):
    """Not well-formed, or well-formed but carrying something we never parse."""


_PROLOG_ITEM = re.compile(rb"\s+|<\?.*?\?>|<!--.*?-->", re.DOTALL)
_ENCODING = re.compile(rb"""^<\?xml[^>]*encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


def _check_prolog(data: bytes | bytearray) -> None:
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


def _check_size(data: bytes | bytearray, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise UnsafeXML(f"document is larger than {max_bytes} bytes")
    if data.count(b"<") > MAX_ELEMENTS:  # base64 and ciphertext never contain "<"
        raise UnsafeXML(f"more than {MAX_ELEMENTS} XML nodes")


def _parser(recover: bool = False) -> etree.XMLParser:
    """No entities, DTDs or network, ever; `recover`: what a truncated document holds."""
    return etree.XMLParser(
        recover=recover,
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=not recover,  # a whole envelope may be 40 MB; a beginning is small
        remove_comments=True,  # c14n as SDK uses it ignores comments too
    )


def parse(data: bytes | bytearray, *, max_bytes: int) -> etree._Element:
    """Parse `data` or raise `UnsafeXML` with a reason that is safe to show anyone."""
    _check_size(data, max_bytes)
    _check_prolog(data)
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as e:
        raise UnsafeXML(f"not well-formed XML (line {e.lineno})") from None
    if root.getroottree().docinfo.internalDTD is not None:
        raise UnsafeXML("document type declarations (DTD, entities) are not accepted")
    _check_shape(root)
    return root


def parse_beginning(data: bytes | bytearray, *, max_bytes: int) -> etree._Element:
    """The tree of what the beginning of a document holds (libxml2's recovery closes what
    the cut left open), with the same refusals as `parse`: for the first bytes of a
    message too large to take, to learn who sent it. Raise `UnsafeXML` when nothing can
    be read."""
    _check_size(data, max_bytes)
    _check_prolog(data)
    try:
        root = etree.fromstring(bytes(data), _parser(recover=True))
    except etree.XMLSyntaxError as e:
        raise UnsafeXML(f"not XML (line {e.lineno})") from None
    if root is None:
        raise UnsafeXML("no element in the beginning of the document")
    if root.getroottree().docinfo.internalDTD is not None:
        raise UnsafeXML("document type declarations (DTD, entities) are not accepted")
    _check_shape(root)
    return root


@dataclass(frozen=True)
class Apart:
    """A document's long base64 text, left out of its parsed tree: `placeholder` (random,
    so that no sender can write it) stands in the tree where `text`, a view of the
    document's own bytes, was."""

    placeholder: str
    text: memoryview


# What a text may hold to be taken apart: the characters that parsing, c14n and
# serialisation all leave exactly as they are ("&", "<", ">" and CR are not among them),
# and no "]]>" or markup, so the text is plain character data; and not only whitespace,
# which is also allowed where text is not (before and after the root).
_PLAIN_TEXT = re.compile(rb"[\t\n ]*[A-Za-z0-9+/=][A-Za-z0-9+/=\t\n ]*")


def parse_apart(
    data: bytes | bytearray, *, max_bytes: int, min_text: int
) -> tuple[etree._Element, Apart | None]:
    """`parse`, with the document's longest text of at least `min_text` characters of
    base64 and whitespace taken apart (None: there is none, the document is parsed whole).

    A 40 MB CipherValue would otherwise be held by libxml2's tree, again as the str lxml
    makes of it, and again by c14n's output. Only the parsing is changed: the caller must
    check that the placeholder landed where it expects the text, as the whole content of
    the one element it reads (an element's text made only of these characters between its
    tags is exactly what was between them in `data`), and parse `data` whole otherwise.
    """
    _check_size(data, max_bytes)
    span = _longest_text(data, min_text)
    if span is None:
        return parse(data, max_bytes=max_bytes), None
    start, end = span
    placeholder = secrets.token_hex(16)
    rest = b"".join((data[:start], placeholder.encode(), data[end:]))
    try:
        root = parse(rest, max_bytes=max_bytes)
    except UnsafeXML:  # so is `data`, but its own line numbers are for the reason
        return parse(data, max_bytes=max_bytes), None
    return root, Apart(placeholder, memoryview(data)[start:end])


def _longest_text(data: bytes | bytearray, min_text: int) -> tuple[int, int] | None:
    """The longest run of `_PLAIN_TEXT` between a ">" and the next "<", if it has at least
    `min_text` characters. Linear in `data`: one step per "<", whose count is bounded."""
    found: tuple[int, int] | None = None
    longest = min_text - 1
    end = 0
    while (start := data.find(b">", end) + 1) and (end := data.find(b"<", start)) != -1:
        if end - start > longest and _PLAIN_TEXT.fullmatch(data, start, end):
            found, longest = (start, end), end - start
    return found


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


def decode_base64(text: str | memoryview) -> bytes:
    """`base64_text` for a text already taken out of its element, or left apart from it
    (`Apart.text`, which is ASCII)."""
    try:
        # Most payloads are one unbroken line: decoded straight from the str or the view,
        # without the copies that splitting and encoding a 40 MB text would make.
        return binascii.a2b_base64(text, strict_mode=True)
    except ValueError:
        if isinstance(text, memoryview):
            return b"".join(decode_base64_pieces(text))
        return base64.b64decode("".join(text.split()), validate=True)


# The ASCII characters str.split() takes for whitespace.
_ASCII_WHITESPACE = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"
_PIECE = 1 << 20  # characters decoded at a time


def decode_base64_pieces(text: memoryview, piece: int = _PIECE) -> Iterator[bytes]:
    """`decode_base64` of an ASCII text, a piece at a time: neither the text nor its bytes
    are copied whole. Raise ValueError (on the way) where `decode_base64` would."""
    carry, padding = b"", 0  # padding: the "=" seen so far, after which only "=" may follow
    for start in range(0, len(text), piece):
        stripped = text[start : start + piece].tobytes().translate(None, _ASCII_WHITESPACE)
        if padding:
            if stripped.count(b"=") != len(stripped):
                raise ValueError("data after base64 padding")
            padding += len(stripped)
            continue
        stripped = carry + stripped
        if (first := stripped.find(b"=")) != -1:
            padding = len(stripped) - first
            if stripped.count(b"=", first) != padding:
                raise ValueError("data after base64 padding")
            stripped = stripped[:first]
        # The last quantum is held back, to be decoded with the padding as one text.
        keep = len(stripped) % 4 or 4
        ready, carry = stripped[:-keep], stripped[-keep:]
        if ready:
            yield binascii.a2b_base64(ready, strict_mode=True)
    yield decode_base64((carry + b"=" * padding).decode("ascii"))
