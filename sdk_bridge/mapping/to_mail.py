"""SDK business message v3 to mail: the inbound half of PRODUCT.md's mapping table.

Pure functions without I/O. The caller resolves the addresses (the sender's reply-able
alias and display name, the mailbox of our functional address) and the Message-ID that
refToMessageId names, since only its store knows them.

Decisions:

- **From** is the sender's functional address as its alias under our SDK domain with the
  display name "<organisation> – <functional address> (SDK)", so Reply goes back through
  the bridge; a sender person (the writer) follows: "… (SDK), <name>" (after the
  organisation, so a name cannot pose as one), and opens the text as "Från: …". The
  "Kopia:", "Svara till:" lines outbound writes atop the text join these header lines;
  they never become headers, so Reply All stays with the bridge.
  **To** is the mailbox of our functional address.
- **Subject** is the label; a label that outbound cut ("…") and whose full form opens
  the text as "Ämne: …" gets its full subject back, and that line leaves the text.
  With confidentiality=true the subject starts with the secrecy prefix ("[sekretess] ")
  and the mail has `Sensitivity: Company-Confidential`; `X-SDK-Confidentiality` is
  always there (true or false), so rules in Outlook or Exchange can sort on it.
- **Ids**: `Message-ID: <messageId@sdk-domain>`; `In-Reply-To` and `References` name the
  mail that refToMessageId points at. `X-SDK-Message-ID` and `X-SDK-Conversation-ID` carry
  the SDK ids for administrators and for tracing a reply.
- **References and persons** from the recipient's attention are kept as `X-SDK-Reference`
  headers in the very form the outbound side reads ("root=extension"), as `X-SDK-Person`
  headers, and as lines at the top of the text, so a reader sees them without looking at
  headers. The sender's own reference ids become `X-SDK-Sender-Reference` headers and
  "Avsändarens referens" lines (a reply returns them; the inbox stores them for that).
- **Body**: the ContentText (several joined by a blank line) as text/plain that reads like
  the original (`sdk_bridge.sdk.markdown.plain`: no escapes, no hard-break marks), and as HTML
  of B1.3.3's Markdown subset and nothing else (`sdk_bridge.sdk.markdown.render`): raw HTML,
  links, images, code and quotes stay visible as text, so nothing in the mail can run or
  load remote content.
- **Attachments**: every ContentFile, byte for byte, with its file name (`safe_file_name`:
  no path, control characters as spaces, at most 200 bytes; "bilaga-<n>" when empty), its
  type and the parameters outbound keeps (charset, method, smime-type);
  application/octet-stream for a type not of the form type/subtype, multipart/*,
  text/html, and a message/* whose bytes are not 7-bit lines (RFC 2046 lets
  message/rfc822, delivery-status and disposition-notification travel only as
  themselves). A meeting invite (text/calendar with a method) is also the last part of the
  multipart/alternative, which is what makes Outlook show it as one. The mail is 7-bit
  (quoted-printable or base64 parts) with headers folded at 78 characters.

The mail is written directly, not built as an EmailMessage and generated: that cost more
than everything else of opening a message. The email package still writes each file
part's fields (RFC 2231 names), display names longer than one encoded word, and header
fields of plain ASCII too long for one line.
"""

import binascii
import email.policy
import html
import io
import re
import uuid
from collections.abc import Iterator, Sequence
from email.generator import BytesGenerator
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from sdk_bridge.mapping.to_sdk import (
    CONTEXT_HEADERS,
    ELLIPSIS,
    REFERENCE_HEADER,
    SUBJECT_PREFIX,
    base_type,
    cut_label,
    kept_parameters,
    one_line,
)
from sdk_bridge.registry.addresses import DOT_ATOM, PLAIN_DOMAIN
from sdk_bridge.sdk import markdown
from sdk_bridge.sdk.message import (
    Attention,
    BusinessMessage,
    ContentFile,
    Identifier,
    Person,
    Reference,
)

SECRECY_PREFIX = "[sekretess] "
CONFIDENTIALITY_HEADER = "X-SDK-Confidentiality"
PERSON_HEADER = "X-SDK-Person"
SENDER_REFERENCE_HEADER = "X-SDK-Sender-Reference"
SDK_MESSAGE_ID_HEADER = "X-SDK-Message-ID"
SDK_CONVERSATION_HEADER = "X-SDK-Conversation-ID"
_TYPE = re.compile(r"([a-z0-9][a-z0-9!#$&^_.+-]*)/([a-z0-9][a-z0-9!#$&^_.+-]*)")
_PARAMETER = re.compile(r"(?i)\s*([a-z0-9-]+)\s*=\s*\"?([A-Za-z0-9!#$%&'*+.^_`{|}~-]{1,64})\"?\s*")
_INVITE_METHOD = re.compile(rb"(?m)^METHOD:([A-Za-z-]{1,32})\r?$")
_WRITER_ADDRESS = re.compile(r"^(.+?) \([^()\s]+@[^()\s]+\)$")  # the outbound side's label
_NOT_IN_NAMES = re.compile(r'[<>@"]')
MAX_WRITER_NAME = 64
_INVITE_HEAD = 1 << 16  # METHOD comes first in a calendar; no need to search 30 MB
# message/* files carried as themselves when their bytes allow it (`_seven_bit`).
_MESSAGE_FILES = frozenset(
    {"message/rfc822", "message/delivery-status", "message/disposition-notification"}
)
_FIRST_SECTION_CHARS = 64 * 1024  # the "Ämne:" line and the "Kopia:" block are short
MAX_FILE_NAME_BYTES = 200  # below the 255 most file systems allow, room for " (2)"
_ID_HEADERS = frozenset({"message-id", "in-reply-to", "references"})


class _MailPolicy(email.policy.EmailPolicy):
    """7bit (Swedish text goes out quoted-printable, so a server without 8BITMIME takes it
    too), headers folded at 78 characters (RFC 5322), except message ids: folding would
    encode a long one (RFC 2047), and then no client threads on it."""

    def fold_binary(self, name: str, value: str) -> bytes:
        if name.lower() in _ID_HEADERS:
            return _UNFOLDED.fold_binary(name, value)
        return super().fold_binary(name, value)

    def fold(self, name: str, value: str) -> str:
        if name.lower() in _ID_HEADERS:
            return _UNFOLDED.fold(name, value)
        return super().fold(name, value)


_LONGEST_LINE = 998  # RFC 5322's limit, for message ids
_HEADER_LINE = 78  # where header fields are folded
_PART_LINE = 76  # RFC 2045's lines of quoted-printable and base64
_UNFOLDED = email.policy.SMTP.clone(cte_type="7bit", max_line_length=_LONGEST_LINE)
_POLICY = _MailPolicy(linesep="\r\n", cte_type="7bit", max_line_length=_HEADER_LINE)
# A file's part is encoded in lines of _PART_LINE; the mail is then written with _POLICY,
# which only folds the headers.
_PARTS_POLICY = _POLICY.clone(max_line_length=_PART_LINE)
_BASE64_LINE = 57  # bytes a 76-character base64 line holds
_BASE64_CHUNK = _BASE64_LINE * 1024


def to_email(
    message: BusinessMessage,
    *,
    sender: str,
    sender_name: str,
    recipient: str,
    sdk_domain: str,
    replying_to: str | None = None,
    secrecy_prefix: str = SECRECY_PREFIX,
) -> bytes:
    """The mail for `message`, CRLF line ends, ready for any mailbox plugin.

    `sender` is the reply-able alias of the sender's functional address and
    `sender_name` its address-book name; `replying_to` the Message-ID (without angle
    brackets) of the mail that refToMessageId names, by default `<ref@sdk_domain>`.
    """
    raw = "\n\n".join(t for d in message.documents for t in d.texts)
    subject, raw = _subject(message.label or "", raw)
    context, raw = _context(raw)
    text = markdown.plain(raw)
    writers = message.sender.attention.persons if message.sender.attention else ()
    shown_as = f"{sender_name} (SDK)"
    if len(writers) == 1 and writers[0].label:  # after the organisation: it cannot pose as one
        shown_as = f"{shown_as}, {_name_of(writers[0].label)}"
    headers = _Headers()
    headers.add_address("From", one_line(shown_as), sender)
    headers.add("To", str(Address(addr_spec=recipient)))
    headers.add("Subject", one_line((secrecy_prefix if message.confidential else "") + subject))
    headers.add("Date", format_datetime(message.created))
    headers.add("Message-ID", f"<{message.message_id}@{sdk_domain}>")
    if message.ref_to_message_id is not None:
        parent = replying_to or f"{message.ref_to_message_id}@{sdk_domain}"
        headers.add("In-Reply-To", f"<{parent}>")
        headers.add("References", f"<{parent}>")
    if message.confidential:
        headers.add("Sensitivity", "Company-Confidential")
    headers.add(CONFIDENTIALITY_HEADER, "true" if message.confidential else "false")
    headers.add(SDK_MESSAGE_ID_HEADER, message.message_id)
    headers.add(SDK_CONVERSATION_HEADER, message.conversation_id)
    attention = message.recipient.attention
    sender_attention = message.sender.attention
    sender_references = sender_attention.references if sender_attention else ()
    lines = (
        [f"Från: {_person(person)}" for person in writers]
        + context
        + _attention_lines(attention)
        + [f"Avsändarens referens: {_reference(reference)}" for reference in sender_references]
    )
    for reference in sender_references:
        headers.add(SENDER_REFERENCE_HEADER, one_line(_identifier(reference.id)))
    if attention is not None:
        for reference in attention.references:
            headers.add(REFERENCE_HEADER, one_line(_identifier(reference.id)))
        for person in attention.persons:
            if person.id is not None:
                headers.add(PERSON_HEADER, one_line(_identifier(person.id)))
    headers.add("MIME-Version", "1.0")
    body = "\n".join(lines) + ("\n\n" if lines and text else "") + text
    alternatives = [_text_part("plain", body or " "), _text_part("html", _html(lines, raw))]
    files = [file for document in message.documents for file in document.files]
    placeholders: list[tuple[bytes, bytes, bool]] = []  # (placeholder, content, as base64)
    invite = next((file for file in files if _is_invite(file)), None)
    if invite is not None:  # what makes Outlook show an invitation: an alternative part
        alternatives.append(_file_part(invite, "text", "calendar", None, placeholders))
    entity = _multipart("alternative", alternatives)
    if files:
        attachments = []
        for number, file in enumerate(files, start=1):
            maintype, subtype = _attachment_type(file)
            name = safe_file_name(file.file_name, number)
            attachments.append(_file_part(file, maintype, subtype, name, placeholders))
        entity = _multipart("mixed", [entity, *attachments])
    template = headers.block() + entity
    return _spliced(template, placeholders)


class _Headers:
    """A mail's header block. A field that is short printable ASCII (most are) is written
    as it is; text with other characters as RFC 2047 encoded words (a display name, or
    an unstructured field from its first such word on); anything else folded by the
    email package. Message ids are never folded."""

    def __init__(self) -> None:
        self._lines: list[bytes] = []

    def add(self, name: str, value: str) -> None:
        unfolded = name.lower() in _ID_HEADERS
        line = f"{name}: {value}"
        limit = _LONGEST_LINE if unfolded else _HEADER_LINE
        unstructured = name.lower() not in _STRUCTURED
        # Text that looks like an encoded word is encoded itself: a reader would decode it.
        as_words = unstructured and (not value.isascii() or "=?" in value)
        if len(line) <= limit and _PLAIN_FIELD.fullmatch(value) and not as_words:
            self._lines.append(line.encode("ascii") + b"\r\n")
        elif as_words:
            room = _HEADER_LINE - len(name) - 2
            plain, space, rest = _plain_start(value, room - _SHORTEST_WORD)
            words = _encoded_words(rest, room - len(plain) - len(space))
            self._write(f"{name}: {plain}{space}" + "\r\n ".join(words))
        else:
            policy = _UNFOLDED if unfolded else _POLICY
            self._lines.append(policy.fold_binary(name, policy.header_store_parse(name, value)[1]))

    def add_address(self, name: str, display_name: str, address: str) -> None:
        """A display name that fits one encoded word is one, before a plain address; a
        longer name, or another address, is left to the email package (whose reader, as
        some others, does not join encoded words in a name as RFC 2047 says it should)."""
        words = _encoded_words(display_name, _HEADER_LINE - len(name) - 2)
        if display_name.isascii() or not _PLAIN_ADDRESS.fullmatch(address) or len(words) > 1:
            self.add(name, str(Address(display_name, addr_spec=address)))
        else:
            self._write(f"{name}: {words[0]}\r\n <{address}>")

    def _write(self, field: str) -> None:
        self._lines.append(field.encode("ascii") + b"\r\n")

    def block(self) -> bytes:
        return b"".join(self._lines)


_PLAIN_FIELD = re.compile(r"[!-~]+(?: [!-~]+)*")  # printable ASCII, single spaces inside
_PLAIN_ADDRESS = re.compile(rf"{DOT_ATOM}@{PLAIN_DOMAIN}")
_STRUCTURED = frozenset({"from", "to", "date"} | _ID_HEADERS)
_ENCODED_WORD = "=?utf-8?b?{}?="
_ENCODED_WORD_ROOM = len(_ENCODED_WORD) - 2  # what it adds to its base64
_LONGEST_WORD = 75  # RFC 2047's limit for an encoded word
_SHORTEST_WORD = 24  # the room the first encoded word gets at least


def _plain_start(value: str, room: int) -> tuple[str, str, str]:
    """An unstructured field's words before its first one that is not printable ASCII
    (kept readable: "[sekretess] Ansökan" stays "[sekretess] =?utf-8?b?…?="), the space
    after them, and the rest, which is encoded. Only a start that fits `room` is kept so,
    and none that looks like an encoded word."""
    cut = next((i for i, c in enumerate(value) if not " " <= c <= "~"), len(value))
    space = value.rfind(" ", 0, cut)
    plain = value[:space]
    if space <= 0 or not _PLAIN_FIELD.fullmatch(plain) or len(plain) + 1 > room or "=?" in plain:
        return "", "", value
    return plain, " ", value[space + 1 :]


def _encoded_words(text: str, first_room: int) -> list[str]:
    """`text` as UTF-8 base64 encoded words (RFC 2047), each on its own line: the first
    within `first_room` characters, the others after a folding space. Words end only
    between characters, never inside one's UTF-8 bytes; the whitespace between encoded
    words is not part of the text, so nothing is added or lost."""
    words: list[str] = []
    chunk: list[str] = []
    room, size = min(max(first_room, _SHORTEST_WORD), _LONGEST_WORD), 0
    for character in text:
        length = len(character.encode("utf-8"))
        if chunk and _b64_length(size + length) + _ENCODED_WORD_ROOM > room:
            words.append(_encoded_word("".join(chunk)))
            room, chunk, size = min(_HEADER_LINE - 1, _LONGEST_WORD), [], 0
        chunk.append(character)
        size += length
    if chunk or not words:
        words.append(_encoded_word("".join(chunk)))
    return words


def _b64_length(size: int) -> int:
    return (size + 2) // 3 * 4


def _encoded_word(text: str) -> str:
    encoded = binascii.b2a_base64(text.encode("utf-8"), newline=False)
    return _ENCODED_WORD.format(encoded.decode("ascii"))


def _text_part(subtype: str, text: str) -> bytes:
    """A text part in UTF-8: 7bit when it is ASCII in short lines, else quoted-printable,
    or base64 where that is shorter (scripts other than Latin)."""
    data = b"\r\n".join(text.encode("utf-8").splitlines()) + b"\r\n"
    head = f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: '
    if data.isascii() and max(map(len, data.split(b"\r\n"))) <= _PART_LINE:
        return head.encode() + b"7bit\r\n\r\n" + data
    encoded = _within_lines(binascii.b2a_qp(data, istext=True))
    if len(encoded) <= len(data) * 4 // 3 + len(data) // _BASE64_LINE * 2:
        return head.encode() + b"quoted-printable\r\n\r\n" + encoded
    return head.encode() + b"base64\r\n\r\n" + b"".join(_base64_lines(data)) + b"\r\n"


def _within_lines(encoded: bytes) -> bytes:
    """Quoted-printable in lines of at most 76: binascii goes one over where it encodes a
    line's trailing space (`x…x=20`); such a line gets a soft break before its last
    character or escape."""
    lines = encoded.split(b"\r\n")
    if max(map(len, lines)) <= _PART_LINE:
        return encoded
    fitted = []
    for line in lines:
        while len(line) > _PART_LINE:
            cut = _PART_LINE - 1
            cut -= 1 if line[cut - 1 : cut] == b"=" else 2 if line[cut - 2 : cut - 1] == b"=" else 0
            fitted.append(line[:cut] + b"=")
            line = line[cut:]
        fitted.append(line)
    return b"\r\n".join(fitted)


def _file_part(
    file: ContentFile,
    maintype: str,
    subtype: str,
    file_name: str | None,
    placeholders: list[tuple[bytes, bytes, bool]],
) -> bytes:
    """A file's part with a placeholder for its content (`_fill`), its header fields
    made by the email package: RFC 2231 file names and parameters."""
    part = EmailMessage(policy=_PARTS_POLICY)
    if file_name is None:
        part.set_content(b"", maintype=maintype, subtype=subtype)
    else:
        part.set_content(
            b"", maintype=maintype, subtype=subtype, disposition="attachment", filename=file_name
        )
    del part["MIME-Version"]
    _fill(part, file, placeholders)
    written = io.BytesIO()
    _Generator(written, mangle_from_=False, policy=_POLICY).flatten(part)
    return written.getvalue()


def _multipart(subtype: str, parts: Sequence[bytes]) -> bytes:
    """A multipart entity of `parts` (each a whole entity: header fields and body). The
    boundary is random: "=_" cannot occur in quoted-printable or base64, and a 7bit part
    would have to hold these 128 random bits."""
    boundary = f"=_{uuid.uuid4().hex}".encode()
    delimiter = b"--" + boundary + b"\r\n"
    body = b"".join(delimiter + part + b"\r\n" for part in parts)
    head = f'Content-Type: multipart/{subtype};\r\n boundary="{boundary.decode()}"\r\n\r\n'
    return head.encode() + body + b"--" + boundary + b"--\r\n"


class _Generator(BytesGenerator):
    """The email package's generator, which also writes a message/delivery-status part
    whose body is a placeholder (it expects parsed header blocks). It overrides the
    generator's `_handle_*` dispatch, private but unchanged from CPython 3.8 to 3.13;
    tests/test_inbound_mapping.py writes such a part."""

    def _handle_message_delivery_status(self, msg: EmailMessage) -> None:
        if isinstance(msg.get_payload(), str):
            self._handle_text(msg)  # type: ignore[attr-defined]
        else:
            super()._handle_message_delivery_status(msg)  # type: ignore[misc]


def safe_file_name(name: str, number: int) -> str:
    """A received file name a mail client or a Maildir tool can save as it is: the last
    path component, control characters as spaces, no leading dots, at most
    `MAX_FILE_NAME_BYTES` of UTF-8 (the extension kept); "bilaga-<n>" when nothing is left."""
    name = one_line("".join(c if c.isprintable() else " " for c in name))
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip().lstrip(".").strip()
    if len(name.encode()) > MAX_FILE_NAME_BYTES:
        stem, dot, extension = name.rpartition(".")
        extension = dot + extension if stem and len(extension) <= 16 else ""
        stem = name[: len(name) - len(extension)] if extension else name
        room = MAX_FILE_NAME_BYTES - len(extension.encode())
        name = stem.encode()[:room].decode("utf-8", "ignore").rstrip() + extension
    return name or f"bilaga-{number}"


def _fill(
    part: EmailMessage, file: ContentFile, placeholders: list[tuple[bytes, bytes, bool]]
) -> None:
    """Give `part` the parameters a reader needs and a placeholder for `file`'s content,
    which `_spliced` replaces: base64, or the bytes themselves for a message/* part."""
    for name, value in _kept_parameters(file, part.get_content_type()):
        part.set_param(name, value)
    if not file.content:
        return
    placeholder = uuid.uuid4().hex  # random: nothing else in the mail can equal it
    part.set_payload(placeholder)
    as_itself = part.get_content_maintype() == "message"
    if as_itself:
        part.replace_header("Content-Transfer-Encoding", "7bit")
    placeholders.append((placeholder.encode(), file.content, not as_itself))


def _spliced(template: bytes, placeholders: list[tuple[bytes, bytes, bool]]) -> bytes:
    """The mail with each placeholder replaced by its file's base64, made here a piece at a
    time: the email package would hold a 30 MB attachment several times over (its lines,
    their join, the generator's buffer). Each piece goes into one buffer as it is made,
    whose bytes `getvalue` hands over without copying them: pieces kept to be joined at the
    end would hold the mail twice."""
    mail, rest = io.BytesIO(), template
    for placeholder, content, base64 in placeholders:
        head, rest = rest.split(placeholder, 1)
        mail.write(head)
        if not base64:
            mail.write(content)
            continue
        for piece in _base64_lines(content):
            mail.write(piece)
    mail.write(rest)
    return mail.getvalue()


def _base64_lines(content: bytes) -> Iterator[bytes]:
    """`content` in base64 lines of 76 characters, CRLF between them (not after the last)."""
    view = memoryview(content)
    for start in range(0, len(view), _BASE64_CHUNK):
        if start:
            yield b"\r\n"
        chunk = view[start : start + _BASE64_CHUNK]
        yield b"\r\n".join(
            binascii.b2a_base64(chunk[at : at + _BASE64_LINE], newline=False)
            for at in range(0, len(chunk), _BASE64_LINE)
        )


def _attachment_type(file: ContentFile) -> tuple[str, str]:
    """The sender's type when it is a plain type/subtype that a mail client will only
    offer as a file; anything else (multipart/*, a message/* whose bytes cannot be carried
    as themselves, HTML a client might render, garbage) as a neutral type."""
    match = _TYPE.fullmatch(base_type(file.content_type))
    if match is None or match[1] == "multipart" or match[0] == "text/html":
        return "application", "octet-stream"
    if match[1] == "message" and (match[0] not in _MESSAGE_FILES or not _seven_bit(file.content)):
        return "application", "octet-stream"
    return match[1], match[2]


def _kept_parameters(file: ContentFile, carried_as: str) -> list[tuple[str, str]]:
    """The sender's parameters that tell how to read the file (outbound's
    `KEPT_PARAMETERS`), where the file keeps its type; an invite's method from its
    content where the type did not say it."""
    if base_type(file.content_type) != carried_as:
        return []
    allowed = kept_parameters(carried_as)
    _, _, given = file.content_type.partition(";")
    kept = []
    for parameter in given.split(";"):
        match = _PARAMETER.fullmatch(parameter)
        if match and match[1].lower() in allowed:
            kept.append((match[1].lower(), match[2]))
    if carried_as == "text/calendar" and "method" not in dict(kept):
        found = _INVITE_METHOD.search(file.content[:_INVITE_HEAD])
        if found:
            kept.append(("method", found[1].decode().upper()))
    return kept


def _is_invite(file: ContentFile) -> bool:
    """A calendar file with a method (REQUEST, CANCEL, REPLY…): a meeting message."""
    return base_type(file.content_type) == "text/calendar" and any(
        name == "method" for name, _ in _kept_parameters(file, "text/calendar")
    )


def _seven_bit(content: bytes) -> bool:
    """ASCII in CRLF lines of at most 998 characters: a body RFC 2046 lets a message/*
    part carry as itself."""
    if not content.isascii() or b"\0" in content:
        return False
    pairs = content.count(b"\r\n")
    if content.count(b"\r") != pairs or content.count(b"\n") != pairs:  # a bare CR or LF
        return False
    return max(map(len, content.split(b"\r\n"))) <= 998


def _subject(label: str, text: str) -> tuple[str, str]:
    """The label, or the full subject when outbound cut it and put it atop the text."""
    if not label.endswith(ELLIPSIS):
        return label, text
    first, rest = _first_section(text)
    first = markdown.plain(first)
    if first.startswith(SUBJECT_PREFIX):
        full = first.removeprefix(SUBJECT_PREFIX)
        if full.startswith(label.removesuffix(ELLIPSIS).rstrip()):
            return full, rest
    return label, text


def _first_section(text: str) -> tuple[str, str]:
    """The text's first paragraph and the rest after the blank line; ("", text) when the
    first paragraph is longer than what outbound writes there (no need to read 30 MB)."""
    first, found, _ = text[:_FIRST_SECTION_CHARS].partition("\n\n")
    if found:
        return first, text[len(first) + 2 :]
    return (text, "") if len(text) <= _FIRST_SECTION_CHARS else ("", text)


def _context(text: str) -> tuple[list[str], str]:
    """The lines outbound writes atop the text ("Kopia: …", `CONTEXT_HEADERS`), to join
    the header lines, and the rest of the text."""
    titles = tuple(f"{title}: " for _, title in CONTEXT_HEADERS)
    if not text.startswith(titles):  # as escaped: the titles hold nothing Markdown escapes
        return [], text
    first, rest = _first_section(text)
    lines = markdown.plain(first).split("\n")
    if first and all(line.startswith(titles) for line in lines):
        return lines, rest
    return [], text


def _attention_lines(attention: Attention | None) -> list[str]:
    if attention is None:
        return []
    lines = [f"Referens: {_reference(reference)}" for reference in attention.references]
    for person in attention.persons:
        lines.append(f"Person: {_person(person)}")
    return lines


def _person(person: Person) -> str:
    identified = f"{person.id.extension} ({person.id.root})" if person.id else ""
    return " ".join(part for part in (person.label or "", identified) if part)


def _name_of(label: str) -> str:
    """A writer's name for the From display name: without the address outbound puts after
    it ("Name (address)"), without what could pass for an address or for our "(SDK)" mark,
    at most `MAX_WRITER_NAME` characters."""
    match = _WRITER_ADDRESS.fullmatch(label)
    name = _NOT_IN_NAMES.sub("", (match[1] if match else label).replace("(SDK)", ""))
    return cut_label(" ".join(name.split()), MAX_WRITER_NAME)


def _reference(reference: Reference) -> str:
    label = f"{reference.label} " if reference.label else ""
    return f"{label}{reference.id.extension} ({reference.id.root})"


def _identifier(identifier: Identifier) -> str:
    return f"{identifier.root}={identifier.extension}"


def _html(lines: Sequence[str], text: str) -> str:
    header = "".join(f"<p>{html.escape(line)}</p>\n" for line in lines)
    separator = "<hr>\n" if lines and text else ""
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head><body>\n'
        f"{header}{separator}{markdown.render(text)}</body></html>\n"
    )
