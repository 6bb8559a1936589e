"""Reading an MTOM/XOP answer from Domibus's WS plugin (Apache CXF, `wsplugin.mtom.enabled`).

With MTOM on, CXF does not answer with `application/soap+xml` but with a MIME
multipart/related package (XOP, https://www.w3.org/TR/xop10/, RFC 2387), written so::

    Content-Type: multipart/related; type="application/xop+xml"; boundary="uuid:<uuid>";
        start="<root.message@cxf.apache.org>"; start-info="application/soap+xml"

    CRLF--uuid:<uuid>CRLF
    Content-Type: application/xop+xml; charset=UTF-8; type="application/soap+xml"CRLF
    Content-Transfer-Encoding: binaryCRLF
    Content-ID: <root.message@cxf.apache.org>CRLF
    CRLF
    <soap:Envelope …><value><xop:Include xmlns:xop="…" href="cid:<uuid>-1@cxf.apache.org"/>…
    CRLF--uuid:<uuid>CRLF
    Content-Type: application/octet-streamCRLF
    Content-Transfer-Encoding: binaryCRLF
    Content-ID: <<uuid>-1@cxf.apache.org>CRLF
    CRLF
    <the payload's own bytes: not base64>
    CRLF--uuid:<uuid>--

`unpack` splits such a package into its root part (the SOAP envelope, for
`sdk_bridge.sdk.xmlsafe.parse`) and its other parts by Content-ID. The parts are memoryviews of
the answer's own bytes: a 40 MB payload is not copied here, so the one copy the caller makes
(`bytes(view)`, when it builds its `Retrieved`) is the only one. `resolve` then maps each
element of the parsed envelope whose content is an `xop:Include` to the bytes of the part it
names, so a `payload/value` is taken straight from its part, raw, with no base64 to decode.

Everything read here comes from the network and is treated as hostile: the work is linear in
the answer (delimiters are found with `bytes.find`, each byte looked at a bounded number of
times), every header block and the number of parts are bounded, and every refusal is an
`XopError` (a `ValueError`) whose text says what is wrong.

Decisions, where the RFCs leave a choice or CXF is laxer than they are:

- Content-Transfer-Encoding binary, 8bit and 7bit (or none, which means 7bit) are taken as
  they are; 7bit is not checked to be 7-bit. base64, quoted-printable and anything else are
  refused: CXF writes `binary` unless its endpoint is configured otherwise, and decoding
  would cost the very copy this module exists to avoid.
- Line breaks are CRLF (RFC 2046); bare LF is tolerated. The line break before a delimiter
  belongs to the delimiter, CR included, so a part never ends with it.
- A delimiter line is `--boundary` at the start of a line followed by optional spaces or
  tabs and the line break; `--boundary` followed by anything else is content. The package
  must end with the close delimiter `--boundary--`; the preamble before the first delimiter
  and the epilogue after the last are ignored.
- The root is the part named by the `start` parameter (with or without angle brackets),
  else the first part. It must be `application/xop+xml` (the multipart's `type`, if given,
  must say so too), with charset UTF-8 or US-ASCII if any: the envelope is read as UTF-8.
- Headers are ASCII, folded lines are unfolded, names are case-insensitive. A repeated
  Content-Type, Content-ID or Content-Transfer-Encoding is refused (two readers could each
  pick a different one), as are duplicate Content-IDs across parts.
- A `cid:` URL is percent-decoded (UTF-8) as RFC 2392 says; if no part has the decoded
  Content-ID, the URL's text as written is tried too, for senders that percent-encode the
  Content-ID header as well.
- An `xop:Include` has exactly one attribute, `href`, a `cid:` URL, no content, and is the
  only content of its parent (XOP 1.0 §3.2); other elements in the XOP namespace are
  refused. A part may be referenced once only (each reference would be one more copy for the
  caller), and the root never. Parts that nothing references are ignored.
"""

import re
import types
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from lxml import etree

XOP_NS: Final = "http://www.w3.org/2004/08/xop/include"
XOP_INCLUDE: Final = f"{{{XOP_NS}}}Include"
XOP_MEDIA_TYPE: Final = "application/xop+xml"

# A retrieveMessage answer holds the envelope, an optional bodyload and its payloads; SDK's
# P-Mode sends one payload. Generous, but bounded.
MAX_PARTS: Final = 16
MAX_PART_HEADER_BYTES: Final = 8192  # one part's header block, blank line excluded
MAX_CONTENT_TYPE_CHARS: Final = 8192  # the HTTP Content-Type header's value

_IDENTITY_ENCODINGS: Final = frozenset({"binary", "8bit", "7bit"})
_UNIQUE_HEADERS: Final = frozenset({"content-type", "content-id", "content-transfer-encoding"})
_UTF8_CHARSETS: Final = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
# RFC 2045 token; RFC 2046 boundary characters (a space allowed, but not last).
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_MEDIA_TYPE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+/[!#$%&'*+.^_`|~0-9a-z-]+")
_BOUNDARY: Final = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_HEADER_TEXT: Final = re.compile(r"[\t\x20-\x7e]*")


class XopError(ValueError):
    """The answer is not an MTOM/XOP package this module reads; the text says why."""


@dataclass(frozen=True)
class Unpacked:
    """An MTOM/XOP package taken apart.

    `root` is the root part's content, the SOAP envelope (a copy: it is small once the
    binaries are out of it, and the XML parser wants bytes). `parts` maps each other part's
    Content-ID, without angle brackets, to a memoryview of its content in the answer's own
    bytes. The views keep the answer alive, and a bytearray answer cannot be resized while
    they exist: `release` them when done.
    """

    root: bytes
    root_id: str | None  # the root's Content-ID, without angle brackets
    envelope_type: str  # the envelope's media type (root's `type`, or `start-info`); may be ""
    parts: Mapping[str, memoryview]

    def part(self, reference: str) -> memoryview:
        """The part named by a `cid:` URL (percent-encoded, RFC 2392) or a Content-ID (with
        or without angle brackets); XopError if there is none, or it names the root."""
        return self.parts[self.content_id(reference)]

    def content_id(self, reference: str) -> str:
        """The Content-ID of the part that `reference` (as for `part`) names."""
        if reference[:4].lower() == "cid:":
            written = reference[4:]
            try:
                decoded = urllib.parse.unquote(written, encoding="utf-8", errors="strict")
            except UnicodeDecodeError:
                raise XopError(f"{reference!r} is not a valid cid: URL (not UTF-8)") from None
            candidates: tuple[str, ...] = (decoded, written)
        else:
            candidates = (_strip_brackets(reference),)
        for content_id in candidates:
            if content_id == self.root_id:
                raise XopError(f"{reference!r} names the root part, not an attachment")
            if content_id in self.parts:
                return content_id
        raise XopError(f"no part has Content-ID <{candidates[0]}> (referenced as {reference!r})")

    def release(self) -> None:
        """Release the parts' views, so that a bytearray answer may be resized or freed;
        `parts` must not be read after this."""
        for view in self.parts.values():
            view.release()


def unpack(content_type: str, body: bytes | bytearray, max_parts: int = MAX_PARTS) -> Unpacked:
    """Split an MTOM/XOP answer: `content_type` is the HTTP Content-Type header's value,
    `body` the whole answer. Raise XopError if it is not a well-formed XOP package of at
    most `max_parts` parts (the root included)."""
    media_type, params = _parse_content_type(content_type)
    if media_type != "multipart/related":
        raise XopError(f"Content-Type {media_type} is not multipart/related")
    package_type = params.get("type")
    if package_type is not None and package_type.strip().lower() != XOP_MEDIA_TYPE:
        raise XopError(f"multipart/related of type {package_type!r} is not an XOP package")
    boundary = params.get("boundary")
    if boundary is None:
        raise XopError("multipart/related without a boundary parameter")
    if not _BOUNDARY.fullmatch(boundary):
        raise XopError(f"boundary {boundary!r} is not a valid MIME boundary (RFC 2046)")
    spans = _split(body, boundary.encode("ascii"), max_parts)

    found: list[tuple[dict[str, str], int, int]] = []
    ids: set[str] = set()
    for start, end in spans:
        headers, content_start = _read_headers(body, start, end)
        content_id = headers.get("content-id")
        if content_id is not None:
            content_id = _strip_brackets(content_id)
            if not content_id:
                raise XopError("a part has an empty Content-ID")
            if content_id in ids:
                raise XopError(f"two parts have Content-ID <{content_id}>")
            ids.add(content_id)
        encoding = headers.get("content-transfer-encoding", "7bit").lower()
        if encoding not in _IDENTITY_ENCODINGS:
            raise XopError(
                f"Content-Transfer-Encoding {encoding!r} is not supported"
                " (binary, 8bit or 7bit; CXF sends binary)"
            )
        found.append((headers, content_start, end))

    start_id = params.get("start")
    if start_id is None:
        root_index = 0
    else:
        wanted = _strip_brackets(start_id.strip())
        root_index = next(
            (
                i
                for i, (headers, _, _) in enumerate(found)
                if _strip_brackets(headers.get("content-id", "")) == wanted
            ),
            -1,
        )
        if root_index < 0:
            raise XopError(f"the start parameter names <{wanted}>, which no part has")
    root_headers, root_start, root_end = found[root_index]
    root_type, root_params = _parse_content_type(root_headers.get("content-type", "text/plain"))
    if root_type != XOP_MEDIA_TYPE:
        raise XopError(f"the root part is {root_type}, not {XOP_MEDIA_TYPE}")
    charset = root_params.get("charset")
    if charset is not None and charset.strip().lower() not in _UTF8_CHARSETS:
        raise XopError(f"the root part's charset {charset!r} is not UTF-8")
    root_id = root_headers.get("content-id")

    view = memoryview(body)
    parts: dict[str, memoryview] = {}
    root = bytes(view[root_start:root_end])  # one copy, even of a bytearray
    for i, (headers, start, end) in enumerate(found):
        content_id = headers.get("content-id")
        if i != root_index and content_id is not None:
            parts[_strip_brackets(content_id)] = view[start:end]
    return Unpacked(
        root=root,
        root_id=None if root_id is None else _strip_brackets(root_id),
        envelope_type=(root_params.get("type") or params.get("start-info") or "").strip(),
        parts=types.MappingProxyType(parts),
    )


def resolve(root: etree._Element, unpacked: Unpacked) -> dict[etree._Element, memoryview]:
    """Each element of the envelope `root` whose content is an `xop:Include`, mapped to the
    bytes of the part it references; XopError if an Include is malformed or its part is
    missing. The tree is not changed.

    The keys are the tree's own element objects, which lxml hands out again as long as they
    are referenced, so `resolve(root, unpacked).get(value_element)` finds a `value` element
    found in the tree by any other means.
    """
    found: dict[etree._Element, memoryview] = {}
    referenced: set[str] = set()
    for element in root.iter(f"{{{XOP_NS}}}*"):
        if element.tag != XOP_INCLUDE:
            raise XopError(f"{element.tag} is not an element of XOP (only xop:Include is)")
        href, parent = _check_include(element)
        content_id = unpacked.content_id(href)
        # Two references to one part would be two copies for the caller: refused.
        if content_id in referenced:
            raise XopError(f"part <{content_id}> is referenced more than once")
        referenced.add(content_id)
        found[parent] = unpacked.parts[content_id]
    return found


def _check_include(include: etree._Element) -> tuple[str, etree._Element]:
    """The href and parent of a well-formed xop:Include, the only content of its parent."""
    attributes = dict(include.attrib)
    href = attributes.pop("href", None)
    if href is None:
        raise XopError("an xop:Include has no href")
    if attributes:
        raise XopError(f"an xop:Include has attributes other than href: {sorted(attributes)}")
    if len(include) or (include.text or "").strip():
        raise XopError("an xop:Include has content; it must be empty")
    if href[:4].lower() != "cid:":
        raise XopError(f"an xop:Include's href {href!r} is not a cid: URL")
    parent = include.getparent()
    if parent is None:
        raise XopError("the envelope is an xop:Include")
    if len(parent) != 1 or (parent.text or "").strip() or (include.tail or "").strip():
        raise XopError(f"the xop:Include in {parent.tag} is not its only content")
    return href, parent


def _split(body: bytes | bytearray, boundary: bytes, max_parts: int) -> list[tuple[int, int]]:
    """The (start, end) in `body` of each part, headers included, between the delimiter
    lines of `boundary`. One pass: every search starts where the last one ended."""
    delimiter = b"--" + boundary
    spans: list[tuple[int, int]] = []
    position = _find_delimiter(body, delimiter, 0)
    if position is None:
        raise XopError("the answer holds no line with its multipart boundary")
    while True:
        line_start, line_end, closing = position
        if spans:  # the previous part ends where this delimiter's line break starts
            start = spans[-1][0]
            end = line_start - 1 if body[line_start - 1 : line_start] == b"\n" else line_start
            if end > start and body[end - 1 : end] == b"\r":
                end -= 1
            spans[-1] = (start, max(start, end))
        if closing:
            break
        if len(spans) >= max_parts:
            raise XopError(f"the answer has more than {max_parts} MIME parts")
        spans.append((line_end, line_end))
        position = _find_delimiter(body, delimiter, line_end)
        if position is None:
            raise XopError("the multipart answer ends without its closing boundary")
    if not spans:
        raise XopError("the multipart answer has no parts")
    return spans


def _find_delimiter(
    body: bytes | bytearray, delimiter: bytes, start: int
) -> tuple[int, int, bool] | None:
    """The next delimiter line at or after `start`: where it starts, where the part after
    it starts, and whether it closes the package; None if there is none."""
    search = start
    while True:
        if search == 0 and body.startswith(delimiter):
            found = 0
        else:
            found = body.find(b"\n" + delimiter, max(search - 1, 0))
            if found < 0:
                return None
            found += 1
        after = found + len(delimiter)
        if body[after : after + 2] == b"--":
            return found, after + 2, True
        # Transport padding, then the line break. `after` only moves forward: no byte of
        # padding is looked at twice, since the next search starts past it.
        while body[after : after + 1] in (b" ", b"\t"):
            after += 1
        if body[after : after + 2] == b"\r\n":
            return found, after + 2, False
        if body[after : after + 1] == b"\n":
            return found, after + 1, False
        search = max(after, found + 1)  # "--boundary" then other text: content, not a line


def _read_headers(body: bytes | bytearray, start: int, end: int) -> tuple[dict[str, str], int]:
    """A part's headers (names lowercased, folded lines joined) and where its content
    starts. The header block ends at the first blank line, within MAX_PART_HEADER_BYTES."""
    if body[start : start + 2] == b"\r\n":
        return {}, start + 2
    if body[start : start + 1] == b"\n":
        return {}, start + 1
    limit = min(end, start + MAX_PART_HEADER_BYTES + 3)
    ends = [
        (at, at + len(blank))
        for blank in (b"\n\r\n", b"\n\n")
        if (at := body.find(blank, start, limit)) != -1
    ]
    if not ends:
        if limit < end:
            raise XopError(f"a part's headers are longer than {MAX_PART_HEADER_BYTES} bytes")
        raise XopError("a part has no blank line after its headers")
    block_end, content_start = min(ends)
    block = bytes(body[start:block_end])
    if not block.isascii():
        raise XopError("a part's headers are not ASCII")
    lines: list[list[str]] = []
    for raw in block.decode("ascii").split("\n"):
        line = raw.removesuffix("\r")
        if not _HEADER_TEXT.fullmatch(line):
            raise XopError("a part's headers hold control characters")
        if line[:1] in (" ", "\t"):  # folded: continues the line before
            if not lines:
                raise XopError("a part's headers start with a continuation line")
            lines[-1].append(line.strip())
        else:
            lines.append([line])
    headers: dict[str, str] = {}
    for pieces in lines:
        name, colon, value = " ".join(pieces).partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise XopError(f"a part has a malformed header line {pieces[0][:80]!r}")
        key = name.lower()
        if key in headers and key in _UNIQUE_HEADERS:
            raise XopError(f"a part has more than one {name} header")
        headers.setdefault(key, value.strip())
    return headers, content_start


def _parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """(media type in lower case, parameters with lower-case names) of a Content-Type
    (RFC 2045: token or quoted-string values, backslash escapes). One pass, bounded."""
    if len(value) > MAX_CONTENT_TYPE_CHARS:
        raise XopError(f"Content-Type is longer than {MAX_CONTENT_TYPE_CHARS} characters")
    head, _, rest = value.partition(";")
    media_type = head.strip().lower()
    if not _MEDIA_TYPE.fullmatch(media_type):
        raise XopError(f"Content-Type {head.strip()[:80]!r} is not a media type")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while True:
        while i < n and rest[i] in " \t;":
            i += 1
        if i >= n:
            return media_type, params
        equals = rest.find("=", i)
        if equals < 0:
            raise XopError(f"Content-Type parameter {rest[i : i + 40]!r} has no value")
        name = rest[i:equals].strip().lower()
        if not _TOKEN.fullmatch(name):
            raise XopError(f"Content-Type has a malformed parameter name {name[:40]!r}")
        i = equals + 1
        while i < n and rest[i] in " \t":
            i += 1
        if rest[i : i + 1] == '"':
            i += 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise XopError(f"Content-Type parameter {name} has an unterminated quote")
                char = rest[i]
                if char == "\\" and i + 1 < n:
                    chars.append(rest[i + 1])
                    i += 2
                elif char == '"':
                    i += 1
                    break
                else:
                    chars.append(char)
                    i += 1
            text = "".join(chars)
            while i < n and rest[i] in " \t":
                i += 1
            if i < n and rest[i] != ";":
                raise XopError(f"Content-Type parameter {name} has text after its quotes")
        else:
            # Unquoted: a token, though CXF-era peers also leave "uuid:…" boundaries bare.
            stop = rest.find(";", i)
            stop = n if stop < 0 else stop
            text = rest[i:stop].strip()
            i = stop
            if not text or any(c in text for c in ' \t"'):
                raise XopError(f"Content-Type parameter {name} has a malformed value")
        if name in params:
            raise XopError(f"Content-Type has parameter {name} twice")
        params[name] = text


def _strip_brackets(content_id: str) -> str:
    """A Content-ID without its angle brackets, if it has them."""
    content_id = content_id.strip()
    if len(content_id) >= 2 and content_id[0] == "<" and content_id[-1] == ">":
        return content_id[1:-1].strip()
    return content_id
