"""Signed mail (S/MIME, PGP/MIME) kept verifiable across the bridge.

A signature covers the exact bytes of the signed entity, and the mapping otherwise takes
mail apart into text and files. So the signed entity travels whole, byte for byte, as one
more file (`SIGNED_FILE_NAME`, message/rfc822), which `openssl smime -verify` or gpg
verifies at the other side; its text and files are also read as usual, for the reader.

- multipart/signed (S/MIME detached, PGP/MIME): the part's bytes as received
  (`sdk_bridge.mapping.rawparts`), the whole mail when it is the signed part.
- application/pkcs7-mime signed-data (S/MIME opaque, "smime.p7m"): the file is itself
  the signed entity; `opaque_content` reads the signed MIME entity out of it.
"""

from typing import Final

SIGNED_FILE_NAME: Final = "signerat-meddelande.eml"
# ContentInfo's contentType for SignedData, 1.2.840.113549.1.7.2, DER-encoded.
_SIGNED_DATA: Final = bytes.fromhex("06092a864886f70d010702")
_MAX_NESTING: Final = 16  # constructed OCTET STRINGs in BER: chunks of chunks
# Elements one indefinite-length or chunked element may hold: openssl streams 1 KB chunks
# and more (30 MB: 30,000); a million one-byte chunks would be walked several times over.
_MAX_ELEMENTS: Final = 100_000


def opaque_content(der: bytes) -> bytes | None:
    """The signed content of an S/MIME signed-data object (DER or BER), or None when
    `der` is not one or carries no content (detached)."""
    try:
        content_info = _children(der, 0, len(der), 1)[0]
        if content_info.tag != 0x30:
            return None
        kind, explicit = _children(der, content_info.start, content_info.end, 2)
        if der[kind.header : kind.end] != _SIGNED_DATA or explicit.tag != 0xA0:
            return None
        (signed_data,) = _children(der, explicit.start, explicit.end, 1)
        fields = _children(der, signed_data.start, signed_data.end, 3)
        encapsulated = _children(der, fields[2].start, fields[2].end, 2)
        if len(encapsulated) < 2 or encapsulated[1].tag != 0xA0:
            return None
        (octets,) = _children(der, encapsulated[1].start, encapsulated[1].end, 1)
        return _octets(der, octets, 0)
    except (IndexError, ValueError, RecursionError):
        return None


class _Element:
    """One BER element: its tag, where its header and content start, and where it ends."""

    def __init__(self, tag: int, header: int, start: int, end: int, after: int):
        self.tag, self.header, self.start, self.end, self.after = tag, header, start, end, after


def _children(data: bytes, start: int, end: int, wanted: int) -> list[_Element]:
    """The first `wanted` elements inside data[start:end] (an indefinite-length content
    ends at its end-of-contents octets, so `end` is only a bound)."""
    found: list[_Element] = []
    position = start
    while len(found) < wanted and position < end:
        if data[position : position + 2] == b"\0\0":
            break
        element = _element(data, position, end)
        found.append(element)
        position = element.after
    if len(found) < wanted:
        raise ValueError("too few elements")
    return found


def _element(data: bytes, position: int, bound: int) -> _Element:
    tag = data[position]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte tags are not used by CMS's outer structure")
    length = data[position + 1]
    start = position + 2
    if length == 0x80:  # indefinite: children up to the end-of-contents octets
        if not tag & 0x20:
            raise ValueError("a primitive element cannot have an indefinite length")
        inner, count = start, 0
        while data[inner : inner + 2] != b"\0\0":
            inner = _element(data, inner, bound).after
            count += 1
            if inner >= bound or count > _MAX_ELEMENTS:
                raise ValueError("no end-of-contents, or too many elements")
        return _Element(tag, position, start, inner, inner + 2)
    if length & 0x80:
        count = length & 0x7F
        if count > 4:
            raise ValueError("a length too large")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > bound:
        raise ValueError("an element past its container")
    return _Element(tag, position, start, end, end)


def _octets(data: bytes, element: _Element, depth: int) -> bytes:
    """An OCTET STRING's bytes, its BER chunks joined."""
    if element.tag == 0x04:
        return data[element.start : element.end]
    if element.tag != 0x24 or depth > _MAX_NESTING:
        raise ValueError("not an OCTET STRING")
    chunks: list[bytes] = []
    position = element.start
    while position < element.end:
        if len(chunks) >= _MAX_ELEMENTS:
            raise ValueError("too many chunks")
        chunk = _element(data, position, element.end)
        chunks.append(_octets(data, chunk, depth + 1))
        position = chunk.after
    return b"".join(chunks)
