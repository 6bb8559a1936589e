"""The bytes of MIME parts as they were received.

The email package parses a mail into objects and writes them out again its own way
(headers refolded, an empty multipart left out), which breaks a signature and alters an
attached message. Where a part must travel byte for byte, the mapping takes its bytes
from the mail itself. A `Slice` is a part's place in the mail's bytes: `subparts` cuts a
multipart at its boundaries as RFC 2046 reads them (a delimiter line starts with
"--boundary"; the line break before it belongs to it), `body` takes the header block off.
Slices are offsets into the one copy of the mail; bytes are copied only for the part that
travels (`bytes`), however deep it is.
"""

import re
from dataclasses import dataclass

_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_LINE_BREAK = re.compile(rb"\r?\n")
_FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")


@dataclass(frozen=True)
class Slice:
    data: bytes  # the whole mail
    start: int
    end: int

    @classmethod
    def of(cls, data: bytes) -> "Slice":
        return cls(data, 0, len(data))

    def bytes(self) -> bytes:
        return self.data[self.start : self.end]

    def body(self) -> "Slice":
        """The entity without its header block and the blank line after it."""
        at = _LINE_BREAK.match(self.data, self.start, self.end)
        if at is not None:  # no header fields at all
            return Slice(self.data, at.end(), self.end)
        blank = _BLANK_LINE.search(self.data, self.start, self.end)
        return Slice(self.data, blank.end() if blank else self.end, self.end)

    def subparts(self, boundary: str) -> list["Slice"] | None:
        """The entities of a multipart between its delimiters; None when the boundary does
        not occur, so the caller falls back to what the parser made of it."""
        data, content = self.data, self.body()
        dashes = b"--" + boundary.encode("ascii", "replace")
        delimiters = []  # (where the line break before it starts, where its line ends, close)
        at = data.find(dashes, content.start, content.end)
        while at >= 0:  # bytes.find, not a regex: this runs over 30 MB attachments
            after = at + len(dashes)
            line_end = data.find(b"\n", after, content.end)
            line_end = content.end if line_end < 0 else line_end + 1
            rest = data[after:line_end].rstrip(b" \t\r\n")  # short: the end of one line
            starts_line = at == content.start or data[at - 1 : at] == b"\n"
            if starts_line and rest in (b"", b"--"):
                before = at - (2 if data[at - 2 : at] == b"\r\n" else 1)
                delimiters.append((max(before, content.start), line_end, rest == b"--"))
                if rest == b"--":
                    break
            at = data.find(dashes, after, content.end)
        if not delimiters:
            return None
        parts = []
        for number, (_, start, close) in enumerate(delimiters):
            if close:  # the epilogue follows
                break
            end = delimiters[number + 1][0] if number + 1 < len(delimiters) else content.end
            parts.append(Slice(data, start, end))
        return parts


def headers_kept(entity: bytes, names: frozenset[bytes]) -> bytes:
    """`entity` with only the header fields in `names` (lower case), each with its
    continuation lines, as they came; the body untouched."""
    blank = _BLANK_LINE.search(entity)
    if blank is None:
        return entity
    kept, keeping = [], False
    for line in entity[: blank.start()].splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):  # a folded continuation of the field before
            if keeping:
                kept.append(line)
            continue
        name = _FIELD_NAME.match(line)
        keeping = name is not None and name[1].lower() in names
        if keeping:
            kept.append(line)
    return b"".join(kept).rstrip(b"\r\n") + entity[blank.start() :]
