"""Mail to SDK business message v3: the outbound half of PRODUCT.md's mapping table.

Pure functions without I/O. The worker resolves the parties (who may send as which
functional address, who receives) and the threading ids from its store; everything that
can be read from the mail itself is decided here, so the same mail always gives the same
message (apart from the ids and the clock the caller hands in).

Decisions, in the order of the table:

- **Subject → label.** Configured secrecy tags ("[sekretess]", matched case-insensitively
  anywhere in the subject) are removed and whitespace collapsed. A subject over 256
  characters is cut at the last word boundary and ends in "…", at most 256 characters
  including the "…" (`cut_label`). The full subject then opens the text as
  ``Ämne: <full subject>`` followed by a blank line (`SUBJECT_PREFIX`), so nothing is lost
  and the inbound side can recognise it. An empty subject gives no label at all: the
  element is optional and SDK forbids empty elements.
- **Confidentiality** is true for ``Sensitivity: Private`` or ``Company-Confidential``
  (case-insensitive) or a secrecy tag in the subject; ``Personal`` is not secrecy.
- **Writer and context.** The From address, unless it is a functional address's own
  mailbox, is the sender's attention `person` (label "Name (address)"). Cc, Reply-To and a
  To of several addresses open the text as "Kopia: …", "Svara till: …", "Till: …" lines
  (`context_lines`; B1.3.3 has no field for them).
- **Body.** The text/plain part wins (the text/plain alternative of a
  multipart/alternative; format=flowed is unwrapped). HTML-only mail is converted to the
  Markdown subset of B1.3.3 (`sdk_bridge.mapping.htmltext`: links, tables and images as
  readable text). Text is decoded by its declared charset (iso-8859-1 read as its
  superset windows-1252), falling back to UTF-8, windows-1252 and latin-1; line endings
  become "\\n"; characters XML cannot carry are removed; several body parts (mixed) are
  joined by a blank line. Plain text is written as Markdown that renders exactly as
  written (`sdk_bridge.sdk.markdown.escape`: Markdown characters escaped, every line break a
  hard break); so are the full subject atop the text and the notes of empty files.
  Outlook's "[cid:…]" markers and HTML's cid images read "[bild: <file name>]". A
  multipart whose boundary never comes is read as its text.
- **No text.** With attachments the ContentText is left out (B1.3.3 wants text and/or
  files). With neither, the text is `EMPTY_BODY` ("(inget meddelande)"): whitespace alone
  is an empty element to SDK.
- **Attachments.** Every non-text leaf part, and text parts that are attachments or have
  a file name, become ContentFiles: file name decoded (RFC 2231 and RFC 2047, NFC,
  directory parts removed; a missing name becomes ``bilaga-<n><ext>``, an invite's
  ``inbjudan.ics``; clashing names get " (2)"), content type lower-case with only the
  parameters a reader needs (`KEPT_PARAMETERS`: charset, an invite's method, smime-type;
  application/octet-stream refined by a known file extension), content byte for byte.
  Parts of an alternative we did not choose give their files (inline cid images, the
  text/calendar of an invite). message/rfc822 parts become ``.eml`` files (CRLF), other
  message/* parts files of their body; message/external-body and message/partial, which
  only point elsewhere, text files of their header lines. Signed mail travels whole as
  well (`sdk_bridge.mapping.signed`). Zero-byte files cannot be carried (an empty element);
  they are left out and named in a note at the end of the text.
- **One document**: documentID and documentName ``SDK-Meddelande``, index ``1``.
- **References.** Each ``X-SDK-Reference`` header (repeatable, one reference each) is a
  reference in the recipient's attention: ``root=extension`` (split at the first "="),
  or a bare value whose root is `reference_root` (default ``dnr``, B1.3.3's code for a
  diarienummer). An extension longer than 256 characters is refused (`MappingError`).
"""

import binascii
import dataclasses
import email
import email.policy
import re
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.feedparser import BytesFeedParser
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.policy import EmailPolicy
from typing import Any, cast

from sdk_bridge.sdk import markdown
from sdk_bridge.sdk.message import (
    Attention,
    BusinessMessage,
    ContentFile,
    Document,
    Identifier,
    Party,
    Person,
    Reference,
)
from sdk_bridge.sdk.names import MAX_LABEL_CHARS

from . import rawparts
from .htmltext import cid_mark, cid_marks_removed, cid_marks_replaced, html_to_markdown
from .signed import SIGNED_FILE_NAME, opaque_content

DOCUMENT_ID = "SDK-Meddelande"
SUBJECT_PREFIX = "Ämne: "
EMPTY_BODY = "(inget meddelande)"
EMPTY_FILE_NOTE = "(Tom bilaga utelämnad: {name})"
CALENDAR_FILE_NAME = "inbjudan.ics"  # a meeting invite's unnamed text/calendar part
MAX_MIME_DEPTH = 50  # parts within parts; real mail stays far below
MAX_FILE_BYTES = 64 * 1024 * 1024  # what a mail's parts may hold once read: twice SDK's 30 MB
# The header fields a signed mail travels with (S/MIME checks From against the certificate).
SIGNED_HEADERS = frozenset(
    {b"mime-version", b"content-type", b"content-transfer-encoding", b"from", b"to", b"cc",
     b"date", b"subject", b"message-id"}
)  # fmt: skip
ELLIPSIS = "…"
REFERENCE_HEADER = "X-SDK-Reference"
DEFAULT_REFERENCE_ROOT = "dnr"
MAX_REFERENCE_CHARS = 256  # B1.3.3, reference/referenceId
CONTEXT_HEADERS = (("To", "Till"), ("Cc", "Kopia"), ("Reply-To", "Svara till"))
CONFIDENTIAL_SENSITIVITY = frozenset({"private", "company-confidential"})

# Characters XML 1.0 cannot carry (lxml refuses them), and other C0 controls in names.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f\ufffe\uffff\ud800-\udfff]")
_WHITESPACE = re.compile(r"\s+")
_MESSAGE_ID = re.compile(r"<\s*([^<>\s]+?)\s*>")
_CID_MARKER = re.compile(r"\[cid:([^\]\s]+)\]")  # Outlook's plain text, where an image stood
_BAD_FILE_CHARS = re.compile(r'[\\/:*?"<>|]')
_CONTENT_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")

# Well-known types: refine application/octet-stream by extension, name unnamed parts.
_TYPES_BY_EXTENSION = {
    ".pdf": "application/pdf",
    ".txt": "text/plain",
    ".csv": "text/csv",
    ".html": "text/html",
    ".htm": "text/html",
    ".xml": "application/xml",
    ".json": "application/json",
    ".rtf": "application/rtf",
    ".doc": "application/msword",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".xls": "application/vnd.ms-excel",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".ppt": "application/vnd.ms-powerpoint",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".odt": "application/vnd.oasis.opendocument.text",
    ".ods": "application/vnd.oasis.opendocument.spreadsheet",
    ".odp": "application/vnd.oasis.opendocument.presentation",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".svg": "image/svg+xml",
    ".zip": "application/zip",
    ".eml": "message/rfc822",
    ".ics": "text/calendar",
    ".vcf": "text/vcard",
}
_EXTENSION_BY_TYPE: dict[str, str] = {
    "message/delivery-status": ".txt",
    "message/disposition-notification": ".txt",
}
for _extension, _type in _TYPES_BY_EXTENSION.items():
    _EXTENSION_BY_TYPE.setdefault(_type, _extension)

# Content-Type parameters a file keeps, by main type or full type.
KEPT_PARAMETERS: dict[str, tuple[str, ...]] = {
    "text": ("charset",),
    "text/calendar": ("method",),
    "application/pkcs7-mime": ("smime-type",),
    "application/x-pkcs7-mime": ("smime-type",),
}
# Parts that only point at content elsewhere: a text file of their headers, so named.
_REFERENCE_ONLY = {
    "message/external-body": "extern-referens.txt",
    "message/partial": "meddelandedel.txt",
}
_OPAQUE_SIGNED = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]{1,64}")
_CRLF = email.policy.default.clone(linesep="\r\n")
_LATIN1 = frozenset({"iso-8859-1", "iso8859-1", "latin-1", "latin1", "l1"})
_FEED_BYTES = 1 << 16  # a mail is parsed this much at a time


class MappingError(ValueError):
    """The mail cannot become an SDK message; the sender should hear why (a 5xx or DSN)."""


# ---------------------------------------------------------------------------------------
# Public API


@dataclass(frozen=True)
class MappedMail:
    """What a mail says, mapped once (at ingress): its SDK message but for the ids, the
    parties and the time, which `business_message` adds for each recipient."""

    label: str | None
    confidential: bool
    document: Document
    writer: tuple[str, str] | None  # the one From address, as (name, address)
    references: tuple[Reference, ...]  # its X-SDK-Reference headers
    thread_ids: tuple[str, ...]  # the Message-IDs it answers (`thread_ids`)

    @property
    def size(self) -> int:
        """Bytes of its files and its text (as UTF-8)."""
        files = sum(len(file.content) for file in self.document.files)
        return files + sum(len(text.encode()) for text in self.document.texts)


def to_business_message(
    mail: Message,
    *,
    message_id: str,
    conversation_id: str,
    ref_to_message_id: str | None,
    sender: Party,
    recipient: Party,
    secrecy_tags: Sequence[str] = ("[sekretess]",),
    generating_system: Identifier | None = None,
    now: datetime | None = None,
    reference_root: str = DEFAULT_REFERENCE_ROOT,
    shared_mailboxes: Collection[str] = (),
    raw: bytes | None = None,
) -> BusinessMessage:
    """Map one mail to the SDK message for one recipient (see the module docstring):
    `map_mail` and `business_message` in one."""
    mapped = map_mail(mail, secrecy_tags=secrecy_tags, reference_root=reference_root, raw=raw)
    return business_message(
        mapped,
        message_id=message_id,
        conversation_id=conversation_id,
        ref_to_message_id=ref_to_message_id,
        sender=sender,
        recipient=recipient,
        generating_system=generating_system,
        now=now,
        shared_mailboxes=shared_mailboxes,
    )


def map_mail(
    mail: Message,
    *,
    secrecy_tags: Sequence[str] = ("[sekretess]",),
    reference_root: str = DEFAULT_REFERENCE_ROOT,
    raw: bytes | None = None,
) -> MappedMail:
    """What of an SDK message a mail gives, the same for each of its recipients.

    `mail` is best parsed with email.policy.default; any other Message (compat32, MIME*
    classes) is re-read with it so that headers and names are decoded the same way.
    `raw` is the mail's bytes as received, from which signed parts are cut byte for byte
    (`sdk_bridge.mapping.signed`).
    """
    mail = _as_email_message(mail)
    subject = one_line(str(mail.get("Subject", "")))
    subject, tagged = strip_secrecy_tags(subject, secrecy_tags)
    label = cut_label(subject) if subject else None

    parts = _Parts()
    _collect(mail, parts, body=True, raw=None if raw is None else rawparts.Slice.of(raw))
    files, names_by_cid = parts.all_files()

    sections = []
    if label is not None and label != subject:
        sections.append(SUBJECT_PREFIX + markdown.escape(subject))
    context = context_lines(mail)
    if context:
        sections.append(markdown.escape("\n".join(context)))
    body = "\n\n".join(text for text in parts.texts if text)
    if body:
        sections.append(cid_marks_replaced(body, names_by_cid))
    if parts.empty_files:
        notes = (EMPTY_FILE_NOTE.format(name=n) for n in parts.empty_files)
        sections.append(markdown.escape("\n".join(notes)))
    text = "\n\n".join(sections)
    if not text and not files:
        text = EMPTY_BODY

    document = Document(
        document_id=DOCUMENT_ID,
        name=DOCUMENT_ID,
        index="1",
        texts=(text,) if text else (),
        files=files,
    )
    return MappedMail(
        label=label,
        confidential=tagged or is_sensitive(mail),
        document=document,
        writer=writer(mail),
        references=references(mail, reference_root),
        thread_ids=tuple(thread_ids(mail)),
    )


def business_message(
    mapped: MappedMail,
    *,
    message_id: str,
    conversation_id: str,
    ref_to_message_id: str | None,
    sender: Party,
    recipient: Party,
    generating_system: Identifier | None = None,
    now: datetime | None = None,
    shared_mailboxes: Collection[str] = (),
) -> BusinessMessage:
    """The SDK message of a mapped mail for one recipient. `shared_mailboxes` are our
    functional addresses' own mailboxes (casefolded): mail written from one of them
    names no person. The result has not been validated: `sdk_bridge.sdk.message.to_xml`
    does that."""
    return BusinessMessage(
        message_id=message_id,
        conversation_id=conversation_id,
        ref_to_message_id=ref_to_message_id,
        created=_creation_time(now),
        label=mapped.label,
        confidential=mapped.confidential,
        generating_system=generating_system,
        recipient=_with_references(recipient, mapped.references),
        sender=_with_writer(sender, mapped.writer, shared_mailboxes),
        documents=(mapped.document,),
    )


def parse_mail(data: bytes) -> EmailMessage:
    """`BytesParser(policy=email.policy.default).parsebytes(data)`, fed a piece at a time,
    each header field parsed once (`_ReadOnce`).

    parsebytes turns a 30 MB mail into one str and reads it through a StringIO that holds
    it at four bytes a character; the feed parser is what it runs on either way.
    """
    parser = BytesFeedParser(policy=_ReadOnce())
    for start in range(0, len(data), _FEED_BYTES):
        parser.feed(data[start : start + _FEED_BYTES])
    return cast(EmailMessage, parser.close())


class _ReadOnce(EmailPolicy):
    """policy.default that parses each header field of one mail once. The email package
    parses a field again at every read, and the mapping reads a part's Content-Type many
    times (its type, charset, format, file name). One per mail: nothing of one mail is
    kept for the next."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        object.__setattr__(self, "_parsed", {})  # a policy is immutable to others

    def __repr__(self) -> str:  # not the mail's header fields, should it ever be logged
        return f"{type(self).__name__}()"

    def header_fetch_parse(self, name: str, value: str) -> Any:
        parsed: dict[tuple[str, str], Any] = self._parsed  # type: ignore[attr-defined]
        key = (name, value)
        if key not in parsed:
            parsed[key] = super().header_fetch_parse(name, value)
        return parsed[key]


def thread_ids(mail: Message) -> list[str]:
    """Message-IDs this mail answers, newest first and without angle brackets.

    In-Reply-To (the parent) comes first, then References from its last (newest) entry
    back; duplicates are dropped. The worker looks them up in its store to find
    refToMessageId and conversationId.
    """
    ids: list[str] = []
    for name in ("In-Reply-To", "References"):
        found = [i for value in mail.get_all(name) or () for i in _message_ids(str(value))]
        if name == "References":
            found.reverse()
        ids.extend(i for i in found if i not in ids)
    return ids


def cut_label(subject: str, limit: int = MAX_LABEL_CHARS) -> str:
    """`subject` if it fits in `limit` characters, else cut at a word boundary + "…".

    The result, ellipsis included, is at most `limit` characters. A cut that would keep
    less than half (one enormous word, such as a URL) cuts inside the word instead.
    """
    if limit < 2:
        raise ValueError("a label limit must leave room for a character and the ellipsis")
    if len(subject) <= limit:
        return subject
    room = limit - len(ELLIPSIS)
    head = subject[:room]
    if not subject[room].isspace():
        boundary = max(head.rfind(" "), head.rfind("\t"))
        if boundary >= room // 2:
            head = head[:boundary]
    head = head.rstrip(" \t,;:-–—") or subject[:room]
    return head + ELLIPSIS


def strip_secrecy_tags(subject: str, tags: Iterable[str]) -> tuple[str, bool]:
    """The subject without any of `tags` (case-insensitive), and whether one was there."""
    patterns = [re.escape(tag.strip()) for tag in tags if tag.strip()]
    if not patterns:
        return subject, False
    cleaned, count = re.subn("|".join(patterns), " ", subject, flags=re.IGNORECASE)
    return one_line(cleaned), count > 0


def is_sensitive(mail: Message) -> bool:
    """`Sensitivity: Private` or `Company-Confidential` (RFC 2156), any case."""
    for value in mail.get_all("Sensitivity") or ():
        words = str(value).split()
        if words and words[0].lower() in CONFIDENTIAL_SENSITIVITY:
            return True
    return False


def references(mail: Message, root: str = DEFAULT_REFERENCE_ROOT) -> tuple[Reference, ...]:
    """The `X-SDK-Reference` headers: ``root=extension`` or a bare value under `root`."""
    found: list[Reference] = []
    for value in mail.get_all(REFERENCE_HEADER) or ():
        text = one_line(str(value))
        if not text:
            continue
        if "=" in text:
            given_root, _, extension = (s.strip() for s in text.partition("="))
        else:
            given_root, extension = "", text
        if not extension:
            raise MappingError(f"{REFERENCE_HEADER} {text!r} has no value")
        if len(extension) > MAX_REFERENCE_CHARS:
            raise MappingError(
                f"{REFERENCE_HEADER} is longer than {MAX_REFERENCE_CHARS} characters"
            )
        reference = Reference(Identifier(given_root or root, extension))
        if reference not in found:
            found.append(reference)
    return tuple(found)


def writer(mail: Message) -> tuple[str, str] | None:
    """The one address in From as (name, address), None without one clear address."""
    addresses = _addresses(mail, "From")
    if addresses is None or len(addresses) != 1 or not one_line(addresses[0].addr_spec):
        return None
    return _text(addresses[0].display_name), _text(addresses[0].addr_spec)


def context_lines(mail: Message) -> list[str]:
    """Who else got the mail and where answers should go, as lines atop the text (B1.3.3
    has no field for them): "Till:" when the mail went to several, "Kopia:", "Svara till:".
    A field the parser cannot read is shown as it came."""
    lines = []
    for header, title in CONTEXT_HEADERS:
        addresses = _addresses(mail, header)
        if addresses is None:
            shown = [_text(v) for k, v in mail.raw_items() if k.lower() == header.lower()]
        else:
            shown = [_text(str(a)) for a in addresses if a.addr_spec]
        if shown and (header != "To" or len(shown) > 1 or addresses is None):
            lines.append(f"{title}: {', '.join(shown)}")
    return lines


def _text(value: str) -> str:
    """A header's text as one line, raw 8-bit bytes (SMTPUTF8 mail; the parser keeps them
    as surrogates) read as UTF-8, else windows-1252."""
    raw = value.encode("utf-8", "surrogateescape")
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        decoded = raw.decode("cp1252", "replace")
    return one_line(decoded)


# ---------------------------------------------------------------------------------------
# Header helpers


def _as_email_message(mail: Message) -> EmailMessage:
    """The mail as an EmailMessage under policy.default: decoded headers and names."""
    if isinstance(mail, EmailMessage) and isinstance(mail.policy, EmailPolicy):
        return mail
    return email.message_from_bytes(mail.as_bytes(), policy=email.policy.default)


def one_line(value: str) -> str:
    """A header value as one clean line: whitespace collapsed, XML-illegal chars gone."""
    return _WHITESPACE.sub(" ", _XML_ILLEGAL.sub("", value)).strip()


def _addresses(mail: Message, header: str) -> list[Address] | None:
    """The addresses of every `header` field; None where a field cannot be read."""
    try:
        values = mail.get_all(header) or ()
        return [a for value in values for a in getattr(value, "addresses", ())]
    except (IndexError, ValueError, TypeError, AttributeError):  # the parser on hostile input
        return None


def _message_ids(value: str) -> list[str]:
    bracketed = _MESSAGE_ID.findall(value)
    if bracketed:
        return bracketed
    # Some clients leave out the brackets: take what looks like an address.
    return [token for token in value.split() if "@" in token]


def _creation_time(now: datetime | None) -> datetime:
    """UTC with millisecond precision: what the message carries, so a parse gives it back."""
    moment = datetime.now(UTC) if now is None else now
    if moment.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _with_writer(sender: Party, author: tuple[str, str] | None, shared: Collection[str]) -> Party:
    """The sender with the writer as its attention's person (B1.3.3's field for who in
    the organisation sent it), labelled "Name (address)" or the address alone; not when
    the writer is a functional address's own mailbox (`shared`)."""
    attention = sender.attention
    if author is None or attention is None:
        return sender
    name, address = author
    if address.casefold() in shared:
        return sender
    person = Person(label=cut_label(f"{name} ({address})" if name else address))
    return dataclasses.replace(
        sender, attention=dataclasses.replace(attention, persons=(*attention.persons, person))
    )


def _with_references(recipient: Party, found: tuple[Reference, ...]) -> Party:
    """The recipient with the mail's references added to its attention."""
    if not found:
        return recipient
    if recipient.attention is None:
        raise MappingError("references need the recipient's attention (functional address)")
    attention: Attention = recipient.attention
    added = tuple(r for r in found if r not in attention.references)
    return dataclasses.replace(
        recipient, attention=dataclasses.replace(attention, references=attention.references + added)
    )


# ---------------------------------------------------------------------------------------
# MIME structure


@dataclass
class _Parts:
    """What the walk found: body texts, and files with their Content-IDs, those of
    alternatives we did not choose kept apart; and how many bytes the files hold, which
    may not grow past `MAX_FILE_BYTES` (what is read out of parts, opaque S/MIME, adds up)."""

    texts: list[str] = field(default_factory=list)
    files: list[tuple[ContentFile, str]] = field(default_factory=list)
    alternative_files: list[tuple[ContentFile, str]] = field(default_factory=list)
    empty_files: list[str] = field(default_factory=list)
    size: int = 0

    def add_file(self, file: ContentFile, part: EmailMessage, *, unchosen: bool) -> None:
        content_id = str(part.get("Content-ID", "")).strip().strip("<>").casefold()
        self.size += len(file.content)
        if self.size > MAX_FILE_BYTES:
            raise MappingError("its parts hold more than SDK's 30 MB")
        if not file.content:
            self.empty_files.append(file.file_name or "namnlös bilaga")
        elif unchosen:
            self.alternative_files.append((file, content_id))
        else:
            self.files.append((file, content_id))

    def all_files(self) -> tuple[tuple[ContentFile, ...], dict[str, str]]:
        """Files in mail order, and the file name for each Content-ID. An alternative's
        copy of a file we already have is dropped (its Content-ID names the kept one), and
        clashing names are made unique so a receiver saving by name loses nothing."""
        have = {f.content: index for index, (f, _) in enumerate(self.files)}
        found = list(self.files)
        copies = []  # (Content-ID, index in found of the file it copies)
        for file, cid in self.alternative_files:
            if file.content in have:
                copies.append((cid, have[file.content]))
            else:
                found.append((file, cid))
        used: set[str] = set()
        unique = []
        for number, (file, _) in enumerate(found, start=1):
            name = _unique_name(file.file_name or _default_name(file, number), used)
            used.add(name.casefold())
            unique.append(dataclasses.replace(file, file_name=name))
        names = {cid: unique[i].file_name for i, (_, cid) in enumerate(found) if cid}
        for cid, index in copies:
            if cid:
                names.setdefault(cid, unique[index].file_name)
        return tuple(unique), names


def _default_name(file: ContentFile, number: int) -> str:
    content_type = base_type(file.content_type)
    if content_type == "text/calendar":
        return CALENDAR_FILE_NAME
    fallback = ".txt" if content_type.startswith("text/") else ".bin"
    return f"bilaga-{number}{_EXTENSION_BY_TYPE.get(content_type, fallback)}"


def _collect(
    part: EmailMessage,
    parts: _Parts,
    *,
    body: bool,
    raw: rawparts.Slice | None,
    depth: int = 0,
    opaque: bool = True,
) -> None:
    """Walk the MIME tree; `body` is false inside an alternative we did not choose, `raw`
    is the part's place in the bytes as received (None where it could not be told),
    `opaque` whether an opaque S/MIME object's content is read (not inside another)."""
    if depth > MAX_MIME_DEPTH:
        raise MappingError(f"its MIME parts are nested more than {MAX_MIME_DEPTH} deep")
    content_type = part.get_content_type()
    maintype = part.get_content_maintype()
    unchosen = not body
    if part.is_multipart() and maintype == "multipart":
        subparts = cast(list[EmailMessage], list(part.iter_parts()))
        boundary = part.get_boundary()
        found = raw.subparts(boundary) if raw is not None and boundary else None
        raws: list[rawparts.Slice | None] = list(found or ())
        if len(raws) != len(subparts):
            raws = [None] * len(subparts)
        if content_type == "multipart/signed":  # whole, and its content read as usual
            entity = part.as_bytes() if raw is None else _signed_entity(raw, depth)
            parts.add_file(ContentFile(SIGNED_FILE_NAME, "message/rfc822", entity), part,
                           unchosen=unchosen)  # fmt: skip
            subparts, raws = subparts[:1], raws[:1]  # the signature is in the entity
        chosen = _choose_alternative(subparts) if content_type == "multipart/alternative" else None
        for subpart, subpart_raw in zip(subparts, raws, strict=True):
            chosen_here = body and (chosen is None or subpart is chosen)
            _collect(subpart, parts, body=chosen_here, raw=subpart_raw, depth=depth + 1,
                     opaque=opaque)  # fmt: skip
    elif maintype == "message":
        parts.add_file(_file_of(part, raw), part, unchosen=unchosen)
    elif maintype == "multipart":  # no boundary found: its text is all there is
        if body:
            parts.texts.append(_plain_text(part))
    elif _is_body_text(part):
        if body:
            parts.texts.append(_body_text(part))
    else:
        file = _file_of(part, raw)
        parts.add_file(file, part, unchosen=unchosen)
        inner = opaque_content(file.content) if opaque and _opaque_signed(file) else None
        if inner is not None:  # its text and files, once: not those of one inside it
            inner_raw = rawparts.Slice.of(inner)
            _collect(parse_mail(inner), parts, body=body, raw=inner_raw, depth=depth + 1,
                     opaque=False)  # fmt: skip


def _signed_entity(raw: rawparts.Slice, depth: int) -> bytes:
    """The signed entity as received. Where it is the whole mail, only the header fields
    a verifier uses go with it: Received lines, Bcc and the like stay home (a signature
    covers the body only)."""
    entity = raw.bytes()
    return rawparts.headers_kept(entity, SIGNED_HEADERS) if depth == 0 else entity


def _opaque_signed(file: ContentFile) -> bool:
    return base_type(file.content_type) in _OPAQUE_SIGNED


def _is_body_text(part: EmailMessage) -> bool:
    """text/plain or text/html meant to be read, not a file that happens to be text."""
    return (
        part.get_content_type() in ("text/plain", "text/html")
        and part.get_content_disposition() != "attachment"
        and part.get_filename() is None
    )


def _choose_alternative(subparts: list[EmailMessage]) -> EmailMessage | None:
    """text/plain over text/html over anything else; among equals the last (RFC 2046)."""

    def rank(part: EmailMessage) -> int:
        kinds = _body_kinds(part)
        return 0 if "text/plain" in kinds else 1 if "text/html" in kinds else 2

    best: EmailMessage | None = None
    for subpart in subparts:
        if best is None or rank(subpart) <= rank(best):
            best = subpart
    return best


def _body_kinds(part: EmailMessage) -> set[str]:
    if part.get_content_type() == "message/rfc822":
        return set()
    if part.is_multipart():
        return set().union(*(_body_kinds(p) for p in part.iter_parts()))  # type: ignore[arg-type]
    if not _is_body_text(part):
        return set()
    if part.get_content_type() == "text/plain" and not _decoded_text(part).strip():
        return set()  # an empty plain alternative: the HTML has the text
    return {part.get_content_type()}


# ---------------------------------------------------------------------------------------
# Text


def _body_text(part: EmailMessage) -> str:
    if part.get_content_type() == "text/html":
        return _tidy(html_to_markdown(_decoded_text(part)))
    return _plain_text(part)


def _plain_text(part: EmailMessage) -> str:
    """Plain text as it was written, Outlook's "[cid:…]" image markers as `cid_mark`s."""
    text = _decoded_text(part)
    if _content_type_param(part, "format") == "flowed":
        text = _unflow(text, delsp=_content_type_param(part, "delsp") == "yes")
    text = _CID_MARKER.sub(lambda marker: cid_mark(marker[1]), text)
    return markdown.escape(_tidy(text, collapse=False))


def _decoded_text(part: EmailMessage) -> str:
    text = _decode(_payload_bytes(part), part.get_content_charset())
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    return cid_marks_removed(text)


def _decode(data: bytes, charset: str | None) -> str:
    """The declared charset first, then the likely ones; latin-1 last, as it cannot fail.

    Latin-1 is read as its superset windows-1252, as browsers do (Outlook's “quotes”);
    undeclared or "ASCII" 8-bit text is tried as UTF-8 first, what most clients send.
    """
    declared = (charset or "").lower()
    if declared in ("", "us-ascii", "ascii"):
        candidates = ["utf-8", "cp1252"]
    elif declared in _LATIN1:
        candidates = ["cp1252"]
    else:
        candidates = [declared, "utf-8", "cp1252"]
    for candidate in candidates:
        try:
            return data.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("latin-1")


def _content_type_param(part: EmailMessage, name: str) -> str:
    header: Any = part.get("Content-Type")
    params = getattr(header, "params", None) or {}
    return str(params.get(name, "")).strip().lower()


def _unflow(text: str, *, delsp: bool) -> str:
    """Join the soft line breaks of format=flowed (RFC 3676), quote depth kept."""
    lines: list[str] = []
    pending: str | None = None
    pending_depth = 0
    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        if content.startswith(" "):
            content = content[1:]  # space-stuffing
        flowed = content.endswith(" ") and content != "-- "
        if flowed and delsp:
            content = content[:-1]
        if pending is not None and depth == pending_depth:
            pending += content
        else:
            if pending is not None:
                lines.append(_quoted(pending, pending_depth))
            pending, pending_depth = content, depth
        if not flowed:
            lines.append(_quoted(pending, pending_depth))
            pending = None
    if pending is not None:
        lines.append(_quoted(pending, pending_depth))
    return "\n".join(lines)


def _quoted(content: str, depth: int) -> str:
    return ">" * depth + (" " if depth and content else "") + content


def _tidy(text: str, *, collapse: bool = True) -> str:
    """XML-safe, whitespace-only lines emptied, no edge blanks; with `collapse` at most one
    blank line (HTML's paragraphs), else every blank line as the writer left it."""
    text = _XML_ILLEGAL.sub("", text)
    text = "\n".join("" if not line.strip() else line for line in text.split("\n"))
    if collapse:
        text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n").rstrip()


# ---------------------------------------------------------------------------------------
# Files


def _file_of(part: EmailMessage, raw: rawparts.Slice | None) -> ContentFile:
    """A part as a ContentFile; an empty name is filled in by `_Parts.all_files`. A
    message/* part's content is its body as received (`raw`) where known."""
    content_type = part.get_content_type()
    name = _clean_file_name(part.get_filename() or "")
    if content_type == "message/rfc822":
        content = _message_bytes(part) if raw is None else raw.body().bytes()
        if not name:
            name = _name_from_subject(part)
        if name and not name.lower().endswith(".eml"):
            name += ".eml"
        return ContentFile(name, content_type, content)
    if content_type in _REFERENCE_ONLY:  # no content of its own: its headers, readable
        return ContentFile(name or _REFERENCE_ONLY[content_type], "text/plain", _entity(part))
    if part.get_content_maintype() == "message":  # delivery-status and the like
        content = _message_body(part) if raw is None else raw.body().bytes()
        return ContentFile(name, content_type, content)
    content = _payload_bytes(part)
    if not _CONTENT_TYPE.fullmatch(content_type):  # garbage in the header: a plain file
        content_type = "application/octet-stream"
    if content_type == "application/octet-stream" and "." in name:
        content_type = _TYPES_BY_EXTENSION.get(name[name.rfind(".") :].lower(), content_type)
    return ContentFile(name, _with_parameters(content_type, part), content)


def _with_parameters(content_type: str, part: EmailMessage) -> str:
    """The type with the parameters a reader needs (`KEPT_PARAMETERS`): a text file's
    charset, a meeting invite's method, an S/MIME object's smime-type."""
    kept = []
    for name in kept_parameters(content_type):
        value = _content_type_param(part, name)
        if _TOKEN.fullmatch(value):
            kept.append(f"; {name}={value.upper() if name == 'method' else value}")
    return content_type + "".join(kept)


def base_type(content_type: str) -> str:
    """A content type without its parameters, lower case: "text/plain; charset=x" -> text/plain."""
    return content_type.partition(";")[0].strip().lower()


def kept_parameters(content_type: str) -> tuple[str, ...]:
    """The parameters (`KEPT_PARAMETERS`) a file of `content_type` (no parameters) keeps."""
    main = content_type.partition("/")[0]
    return KEPT_PARAMETERS.get(main, ()) + KEPT_PARAMETERS.get(content_type, ())


def _message_body(part: EmailMessage) -> bytes:
    """The body of a message/* part other than rfc822, CRLF line ends. The parser reads
    delivery-status and disposition-notification as blocks of header fields; they are
    written back as such, the values as they came."""
    payload = part.get_payload()
    if not isinstance(payload, list):
        data = part.get_payload(decode=True)
        return data if isinstance(data, bytes) else b""
    blocks = []
    for block in payload:
        if not isinstance(block, Message):
            continue
        fields = "".join(f"{name}: {value}\n" for name, value in block.raw_items())
        blocks.append(re.sub(r"\r?\n", "\r\n", fields))
    return "\r\n".join(blocks).encode("utf-8", "surrogateescape")


def _entity(part: EmailMessage) -> bytes:
    """The part, headers and body, as the email package writes it with CRLF line ends."""
    return part.as_bytes(policy=_CRLF)


def _payload_bytes(part: EmailMessage) -> bytes:
    """`part.get_payload(decode=True)` (b"" for none), base64 decoded straight from the
    parsed text where it is valid: the email package encodes that text, splits it into
    lines and joins them first, several copies of a 30 MB attachment."""
    payload = part.get_payload()
    cte = str(part.get("content-transfer-encoding", "")).lower()  # as get_payload reads it
    if isinstance(payload, str) and cte == "base64":
        try:
            return binascii.a2b_base64(payload)  # line breaks are skipped
        except ValueError:
            pass  # broken base64 or 8-bit text: the email package's lenient decoding
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _message_bytes(part: EmailMessage) -> bytes:
    """An attached message as an .eml file: the message itself, CRLF line ends."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload:
        inner = cast(Message, payload[0])
        return inner.as_bytes(policy=_CRLF)
    data = part.get_payload(decode=True)  # a message/rfc822 the parser did not open
    return data if isinstance(data, bytes) else b""


def _name_from_subject(part: EmailMessage) -> str:
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload else None
    subject = one_line(str(inner.get("Subject", ""))) if isinstance(inner, Message) else ""
    return _BAD_FILE_CHARS.sub("_", subject)[:100].strip() or "meddelande"


def _clean_file_name(name: str) -> str:
    """The last path component, NFC, without control characters or edge whitespace."""
    name = unicodedata.normalize("NFC", _CONTROL.sub("", name))
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return "" if name in (".", "..") else name


def _unique_name(name: str, used: set[str]) -> str:
    """`name`, or `name (2)`, `name (3)`… before the extension if the name is taken."""
    if name.casefold() not in used:
        return name
    dot = name.rfind(".")
    stem, extension = (name[:dot], name[dot:]) if dot > 0 else (name, "")
    number = 2
    while f"{stem} ({number}){extension}".casefold() in used:
        number += 1
    return f"{stem} ({number}){extension}"
