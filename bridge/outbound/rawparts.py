"""The bytes of MIME parts as they were received.

The email package parses a mail into objects and writes them out again its own way
(headers refolded, an empty multipart left out), which breaks a signature and alters an
attached message. Where a part must travel byte for byte, the mapping takes its bytes
from the mail itself: `subparts` cuts a multipart's entity at its boundaries as RFC 2046
reads them (a delimiter line starts with "--boundary"; the line break before it belongs
to it), and `body` takes the header block off an entity.
"""

import re

_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_LINE_BREAK = re.compile(rb"\r?\n")


def body(entity: bytes) -> bytes:
    """`entity` without its header block and the blank line after it."""
    if entity.startswith((b"\r\n", b"\n")):  # no header fields at all
        return entity[_LINE_BREAK.match(entity).end() :]  # type: ignore[union-attr]
    blank = _BLANK_LINE.search(entity)
    return entity[blank.end() :] if blank else b""


def subparts(entity: bytes, boundary: str) -> list[bytes] | None:
    """The entities of a multipart between its delimiters; None when the boundary does not
    occur, so the caller falls back to what the parser made of it."""
    content = body(entity)
    dashes = b"--" + boundary.encode("ascii", "replace")
    delimiters = []  # (where the line break before it starts, where its line ends, close)
    at = content.find(dashes)
    while at >= 0:  # bytes.find, not a regex: this runs over 30 MB attachments
        after = at + len(dashes)
        line_end = content.find(b"\n", after)
        line_end = len(content) if line_end < 0 else line_end + 1
        rest = content[after:line_end].rstrip(b" \t\r\n")
        starts_line = at == 0 or content[at - 1 : at] == b"\n"
        if starts_line and rest in (b"", b"--"):
            before = at - (2 if content[at - 2 : at] == b"\r\n" else 1) if at else 0
            delimiters.append((before, line_end, rest == b"--"))
            if rest == b"--":
                break
        at = content.find(dashes, after)
    if not delimiters:
        return None
    parts = []
    for (_, start, close), following in zip(delimiters, [*delimiters[1:], None], strict=True):
        if close:
            break
        parts.append(content[start : following[0] if following else len(content)])
    return parts
