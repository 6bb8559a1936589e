"""Issue 15's acceptance: mail reads the same on the other side. Every mail of
support/mailcorpus.py (CPython's own e-mail test corpus, and what Outlook, S/MIME, PGP/MIME and
a person with a Cc list send) goes over SMTP into A's running bridge, through the sandbox
federation, out of B's bridge into B's IMAP folder (a real Dovecot), and each is checked
there: its text equal line for line below B's header block (only trailing whitespace
normalised), every part present with its type, file name, charset and SHA-256, signatures
still verifiable with openssl and gpg, the HTML part parsed and nothing outside B1.3.3's
subset in it, and B's reply to a person's mail back in A's INBOX.

One test per mail (its name is the corpus file or the mail's name in mailcorpus.py); each
reports every difference it finds, not only the first. A corpus mail the bridge refuses at
SMTP time with a 5xx and an enhanced status code passes, and its reply is recorded (the
`smtp_refusal` property, and printed with -s).
"""

import email.policy
import imaplib
import re
import smtplib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser
from html.parser import HTMLParser
from pathlib import Path

import pytest
from support import dovecot, mailcorpus
from support.dovecot import Dovecot
from support.e2e import Bridge
from support.mailcorpus import Attachment, Mail, RawPart, Signer, raw_tree
from support.sandboxed import FROM_B
from support.waiting import eventually

from sdk_bridge.lab.sandbox.federation import Sandbox

pytestmark = pytest.mark.slow  # running bridges or servers: `make test-fast` leaves it out

B_FOLDER = "SDK/Registrator"
IMAP_B_FOLDER = "SDK.Registrator"  # as Dovecot's Maildir layout names it
A_AT_B = "registrator@a.sandbox.test.sdk.b.sandbox.test"  # A's functional address at B
ARRIVAL_SECONDS = 75.0  # for the whole corpus to arrive at B
MARKER = re.compile(r"\[fid-([A-Za-z0-9_.-]+)\]")
ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}\b")
# B1.3.3's Markdown subset as HTML, and the document around it.
ALLOWED_ELEMENTS = {
    "html", "head", "meta", "body", "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6",
    "strong", "em", "ul", "ol", "li",
}  # fmt: skip
URL_ATTRIBUTES = {"src", "href", "srcset", "background", "action", "formaction", "poster", "data"}

NAMES = mailcorpus.built_names() + (mailcorpus.corpus_names() or ["cpython-corpus"])


dovecot_server = dovecot.dovecot_server  # one Dovecot for this module; the plugin's sandbox


@pytest.fixture(scope="module")
def bridges(sandbox: Sandbox, dovecot_server: Dovecot) -> Iterator[dict[str, Bridge]]:
    """A and B on SQLite, the access points on Domibus 5's current WS plugin interface."""
    running = {
        "a": Bridge(sandbox, "a", dovecot_server, "alice", "INBOX"),
        "b": Bridge(sandbox, "b", dovecot_server, "bob", B_FOLDER),
    }
    try:
        for bridge in running.values():
            bridge.start()
        yield running
    finally:
        for bridge in running.values():
            code = bridge.stop() if bridge.process is not None else 0
            bridge.close()
            assert code == 0, bridge.log.read_text()[-3000:]


@pytest.fixture(scope="module")
def signer() -> Iterator[Signer]:
    keys = Signer()
    yield keys
    keys.close()


@pytest.fixture(scope="module")
def corpus(signer: Signer) -> dict[str, Mail]:
    return mailcorpus.build_all(signer)


@dataclass
class Outcome:
    refused: tuple[int, str] | None = None  # the SMTP reply of a refusal
    received: list[bytes] = field(default_factory=list)  # B's mails with the marker
    kept: Path | None = None  # the first of them, as a file to look at


def send_raw(bridge: Bridge, raw: bytes, sender: str, recipient: str) -> tuple[int, str] | None:
    """As an MTA sends: a 4xx is tried again; a 5xx is returned (None: accepted)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", bridge.smtp_port, timeout=30) as smtp:
                smtp.sendmail(sender, [recipient], raw)
            return None
        except smtplib.SMTPRecipientsRefused as e:
            code, text = next(iter(e.recipients.values()))
        except (smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as e:
            assert isinstance(e.smtp_error, bytes)
            code, text = e.smtp_code, e.smtp_error
        except (smtplib.SMTPServerDisconnected, OSError) as e:
            code, text = 421, str(e).encode()
        if code >= 500:
            return code, text.decode(errors="replace")
        if time.monotonic() > deadline:
            raise AssertionError(f"not accepted: {code} {text!r}")
        time.sleep(0.3)


def fetch(server: Dovecot, user: str, folder: str, what: str) -> list[bytes]:
    """`what` (an IMAP fetch item) of every message in the folder."""
    try:
        with server.imap(user) as imap:
            status, _ = imap.select(f'"{folder}"', readonly=True)
            if status != "OK":
                return []
            _, found = imap.search(None, "ALL")
            if not found[0]:
                return []
            _, data = imap.fetch(",".join(found[0].decode().split()), f"({what})")
            return [item[1] for item in data if isinstance(item, tuple)]
    except (imaplib.IMAP4.error, OSError):
        return []


def markers(headers: list[bytes]) -> list[str]:
    found = []
    for head in headers:
        subject = BytesParser(policy=email.policy.default).parsebytes(head)["Subject"]
        match = MARKER.search(str(subject or ""))
        if match:
            found.append(match[1])
    return found


@pytest.fixture(scope="module")
def delivered(
    bridges: dict[str, Bridge],
    dovecot_server: Dovecot,
    corpus: dict[str, Mail],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Outcome]:
    """Every mail sent to B, then B's folder read until each accepted one is there. What
    was sent and what arrived are kept as <name>.sent.eml and <name>.eml to look at."""
    kept = tmp_path_factory.mktemp("fidelity")
    outcomes = {}
    for name, mail in corpus.items():
        if mail.skip is None:
            refused = send_raw(bridges["a"], mail.raw, mailcorpus.FUNCTIONAL_A, mailcorpus.B_ALIAS)
            outcomes[name] = Outcome(refused)
    wanted = {name for name, outcome in outcomes.items() if outcome.refused is None}

    def subjects() -> list[bytes]:
        return fetch(dovecot_server, "bob", IMAP_B_FOLDER, "BODY.PEEK[HEADER.FIELDS (SUBJECT)]")

    deadline = time.monotonic() + ARRIVAL_SECONDS
    while not wanted <= set(markers(subjects())) and time.monotonic() < deadline:
        time.sleep(0.5)
    for raw in fetch(dovecot_server, "bob", IMAP_B_FOLDER, "BODY.PEEK[]"):
        for name in markers([raw]):
            if name in outcomes:
                outcomes[name].received.append(raw)
    for name, outcome in outcomes.items():
        (kept / f"{name}.sent.eml").write_bytes(corpus[name].raw)
        if outcome.received:
            outcome.kept = kept / f"{name}.eml"
            outcome.kept.write_bytes(outcome.received[0])
    return outcomes


# --- reading B's mail ----------------------------------------------------------------------


def _disposition(part: RawPart) -> str | None:
    return part.headers.get_content_disposition()


def _decoded(part: RawPart) -> bytes:
    """The part's content: decoded from its transfer encoding; a message/* part's body."""
    if part.headers.get_content_maintype() == "message":
        encoding = str(part.headers.get("Content-Transfer-Encoding", "")).strip().lower()
        if encoding not in ("base64", "quoted-printable"):
            return part.body
    parsed = BytesParser(policy=email.policy.compat32).parsebytes(part.raw)
    payload = parsed.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _text(part: RawPart) -> str:
    charset = part.headers.get_content_charset() or "us-ascii"
    return _decoded(part).decode(charset, "replace")


def _leaves(tree: RawPart) -> list[RawPart]:
    return [part for part in tree.walk() if not part.children]


def _attachments(tree: RawPart) -> list[RawPart]:
    return [
        part
        for part in _leaves(tree)
        if _disposition(part) == "attachment" or part.headers.get_filename()
    ]


def _body(tree: RawPart, subtype: str) -> RawPart | None:
    for part in _leaves(tree):
        if part.headers.get_content_type() == f"text/{subtype}" and part not in _attachments(tree):
            return part
    return None


def _normalised(text: str) -> list[str]:
    """Lines without trailing whitespace, no blank lines at the end."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def header_block(text: str) -> tuple[list[str], list[str]]:
    """B's text as (its leading header lines, the rest), both normalised."""
    lines = _normalised(text)
    count = 0
    while count < len(lines) and lines[count].startswith(mailcorpus.HEADER_PREFIXES):
        count += 1
    rest = lines[count:]
    if count and rest and not rest[0]:
        rest = rest[1:]
    return lines[:count], rest


def _message_bytes(content: bytes) -> list[str]:
    return _normalised(content.decode("utf-8", "replace"))


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, attrs))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, attrs))


def html_problems(html: str) -> list[str]:
    parser = _Elements()
    parser.feed(html)
    parser.close()
    problems = []
    for tag, attrs in parser.elements:
        if tag not in ALLOWED_ELEMENTS:
            problems.append(f"HTML: element <{tag}> is outside B1.3.3's subset")
        for name, value in attrs:
            if name in URL_ATTRIBUTES or "://" in (value or ""):
                problems.append(f"HTML: <{tag} {name}={value!r}> references a URL")
    return problems


def _lines_in_order(wanted: list[list[str]], lines: list[str]) -> list[str]:
    """Each block of `wanted` appears in `lines`, whole and in order."""
    problems, at = [], 0
    for number, block in enumerate(wanted, start=1):
        while block and not block[0]:
            block = block[1:]
        if not block:
            continue
        found = next(
            (
                i
                for i in range(at, len(lines) - len(block) + 1)
                if lines[i : i + len(block)] == block
            ),
            None,
        )
        if found is not None:
            at = found + len(block)
            continue
        # Where does it go wrong? The longest run of the block from its first line.
        best, best_at = 0, None
        for i in range(len(lines)):
            run = 0
            while run < len(block) and i + run < len(lines) and lines[i + run] == block[run]:
                run += 1
            if run > best:
                best, best_at = run, i
        if best_at is None:
            problems.append(f"text part {number}: its first line {block[0]!r} is not in B's text")
        else:
            seen = lines[best_at + best] if best_at + best < len(lines) else "<end of text>"
            problems.append(
                f"text part {number}: line {best + 1} expected {block[best]!r}, B has {seen!r}"
            )
    return problems


def _exact(expected: str, lines: list[str]) -> list[str]:
    wanted = _normalised(expected)
    if wanted == lines:
        return []
    for number, (want, got) in enumerate(zip(wanted, lines, strict=False), start=1):
        if want != got:
            return [f"text line {number}: expected {want!r}, B has {got!r}"]
    return [f"text: expected {len(wanted)} lines, B has {len(lines)} (tail {lines[-3:]!r})"]


def _describe(part: RawPart) -> str:
    headers = part.headers
    params = "".join(f"; {k}={v}" for k, v in (headers.get_params() or [])[1:] if k != "name")
    name = headers.get_filename()
    return f"{headers.get_content_type()}{params}" + (f" {name!r}" if name else "")


def _matches(expected: Attachment, part: RawPart, content: bytes) -> list[str]:
    """How `part` differs from `expected` (nothing: it is the one)."""
    differences = []
    if part.headers.get_content_type() != expected.content_type:
        differences.append(f"type {part.headers.get_content_type()}")
    if expected.filename is not None and not _same_name(expected.filename, part):
        differences.append(f"file name {part.headers.get_filename()!r}")
    for name, value in expected.params.items():
        got = part.headers.get_param(name)
        if not isinstance(got, str) or got.lower() != value.lower():
            differences.append(f"{name}={got!r} (want {value})")
    if expected.whole and not _same_content(expected, content):
        if expected.is_message and _unfolded(content) == _unfolded(expected.content):
            differences.append("its header lines folded anew (the same when unfolded)")
        else:
            differences.append("other content")
    return differences


def _unfolded(content: bytes) -> list[str]:
    """A message's lines with its header fields unfolded, whitespace runs as one space."""
    head, _, body = content.replace(b"\r\n", b"\n").partition(b"\n\n")
    head = re.sub(rb"\n[ \t]+", b" ", head)
    text = (head + b"\n\n" + body).decode("utf-8", "replace")
    return [re.sub(r"[ \t]+", " ", line) for line in _normalised(text)]


def _same_name(wanted: str, part: RawPart) -> bool:
    """The name, or the name made unique as the bridge does when two files share one
    ("msg.txt", "msg (2).txt")."""
    name = part.headers.get_filename() or ""
    stem, dot, extension = wanted.rpartition(".")
    if not dot:
        stem, extension = wanted, ""
    suffix = f".{extension}" if dot else ""
    return (
        name == wanted
        or re.fullmatch(re.escape(stem) + r" \(\d+\)" + re.escape(suffix), name) is not None
    )


def _same_content(expected: Attachment, content: bytes) -> bool:
    if expected.within:
        received = _message_bytes(content)
        return not _lines_in_order([_message_bytes(expected.content)], received)
    return content == expected.content


def attachment_problems(
    expected: list[Attachment], tree: RawPart, text_lines: list[str]
) -> tuple[list[str], dict[int, RawPart]]:
    """Each expected attachment matched to one of B's, by content, type, name and charset."""
    received = _attachments(tree)
    contents = [_decoded(part) for part in received]
    used: dict[int, RawPart] = {}  # index in `expected` -> B's part
    problems = []
    for index, want in enumerate(expected):
        free = [i for i in range(len(received)) if received[i] not in used.values()]
        exact = [i for i in free if not _matches(want, received[i], contents[i])]
        if exact:
            used[index] = received[exact[0]]
            continue
        if want.or_text is not None and not _lines_in_order(
            [_normalised(want.or_text)], text_lines
        ):
            continue  # arrived as text, which is as good
        same = [i for i in free if want.whole and _same_content(want, contents[i])]
        named = [
            i for i in free if want.filename and received[i].headers.get_filename() == want.filename
        ]
        typed = [i for i in free if received[i].headers.get_content_type() == want.content_type]
        if same or named or typed:
            i = (same or named or typed)[0]
            differences = ", ".join(_matches(want, received[i], contents[i]))
            problems.append(
                f"attachment {want.describe()}: arrived as {_describe(received[i])} "
                f"({len(contents[i])} bytes), differing in {differences}"
            )
        else:
            problems.append(f"attachment {want.describe()}: missing")
    return problems, used


def _calendar_alternative(tree: RawPart) -> bool:
    for part in tree.walk():
        if part.headers.get_content_type() == "multipart/alternative":
            for child in part.children:
                method = child.headers.get_param("method")
                if child.headers.get_content_type() == "text/calendar" and (
                    isinstance(method, str) and method.upper() == "REQUEST"
                ):
                    return True
    return False


def signature_problems(
    mail: Mail, expected: list[Attachment], used: dict[int, RawPart], signer: Signer
) -> list[str]:
    problems = []
    for index, want in enumerate(expected):
        part = used.get(index)
        if part is None:
            continue
        content = _decoded(part)
        if want.signed_part is not None:
            entity = raw_tree(content)
            if not entity.children or entity.children[0].raw != want.signed_part:
                problems.append(
                    f"{want.filename}: its first part is not the signed part byte for byte"
                )
            elif mail.signed == "smime" and (error := signer.verify_cms(content)):
                problems.append(f"{want.filename}: openssl cms -verify fails: {error[-300:]}")
            elif mail.signed == "pgp":
                signature = _decoded(entity.children[1]) if len(entity.children) > 1 else b""
                if error := signer.verify_pgp(entity.children[0].raw, signature):
                    problems.append(f"{want.filename}: gpg --verify fails: {error[-300:]}")
        opaque = mail.signed == "opaque" and want.content_type == "application/pkcs7-mime"
        if opaque and (error := signer.verify_cms(content, der=True)):
            problems.append(
                f"{want.filename}: openssl cms -verify -inform DER fails: {error[-300:]}"
            )
    return problems


def display_name(value: str) -> tuple[str, str]:
    """A From header's display name and address, decoded as RFC 2047 says (the space
    between two encoded words is not part of the text; the headerregistry parser of Python
    3.11 keeps it)."""
    decoded = str(make_header(decode_header(value))).strip()
    name, _, address = decoded.rpartition("<")
    name = name.strip()
    if len(name) > 1 and name[0] == name[-1] == '"':
        name = name[1:-1].replace('\\"', '"')
    return name, address.rstrip(">").strip()


def mail_problems(mail: Mail, raw: bytes, signer: Signer) -> list[str]:
    """Everything in B's `raw` that differs from what `mail` promises."""
    problems: list[str] = []
    parsed = BytesParser(policy=email.policy.default).parsebytes(raw)
    tree = raw_tree(raw)
    plain = _body(tree, "plain")
    if plain is None:
        return ["no text/plain part at B", *attachment_problems(mail.attachments, tree, [])[0]]
    head, lines = header_block(_text(plain))
    text = "\n".join(lines)
    if mail.text is not None:
        problems += _exact(mail.text, lines)
    else:
        problems += _lines_in_order([_normalised(t) for t in mail.texts], lines)
    if "[cid:" in text:
        problems.append("'[cid:' left in B's text")
    for line in mail.header_lines:
        if line not in head:
            problems.append(f"header block: {line!r} missing (B has {head!r})")
    writer = [line for line in head if line.startswith("Från: ")]
    if not mail.corpus and writer and not any(h.startswith("Från: ") for h in mail.header_lines):
        problems.append(f"header block: {writer[0]!r} for a mail from the functional address")
    if mail.display_name is not None:
        name, address = display_name(tree.headers.get("From", ""))
        if name != mail.display_name:
            problems.append(f"From's name {name!r}, want {mail.display_name!r}")
        if address != A_AT_B:
            problems.append(f"From's address {address!r}, want {A_AT_B!r}")
        if parsed["Cc"] is not None:
            problems.append(f"B's mail has a Cc header: {parsed['Cc']}")
    html = _body(tree, "html")
    if html is None:
        problems.append("no text/html part at B")
    else:
        problems += html_problems(_text(html))
    if mail.calendar and not _calendar_alternative(tree):
        problems.append("no text/calendar; method=REQUEST alternative in B's multipart/alternative")
    found, used = attachment_problems(mail.attachments, tree, lines)
    problems += found
    problems += signature_problems(mail, mail.attachments, used, signer)
    return problems


# --- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_the_mail_arrives_as_it_was_written(
    name: str,
    corpus: dict[str, Mail],
    delivered: dict[str, Outcome],
    signer: Signer,
    record_property: Callable[[str, object], None],
) -> None:
    if name == "cpython-corpus":
        pytest.skip(f"CPython's e-mail test corpus is not installed here ({mailcorpus.CORPUS})")
    mail = corpus[name]
    if mail.skip is not None:
        pytest.skip(mail.skip)
    outcome = delivered[name]
    if outcome.refused is not None:
        code, text = outcome.refused
        assert mail.corpus, f"refused at SMTP: {code} {text}"
        assert ENHANCED.match(text), f"refused without an enhanced status code: {code} {text}"
        record_property("smtp_refusal", f"{code} {text}")
        print(f"{name}: refused at SMTP: {code} {text}")
        return
    assert len(outcome.received) == 1, (
        f"{len(outcome.received)} mails with {mail.marker} at B (want exactly one)"
    )
    problems = mail_problems(mail, outcome.received[0], signer)
    assert not problems, f"{name} (B's mail: {outcome.kept}):\n  " + "\n  ".join(problems)


def test_the_reply_to_a_persons_mail_goes_back_through_the_bridge(
    bridges: dict[str, Bridge],
    dovecot_server: Dovecot,
    corpus: dict[str, Mail],
    delivered: dict[str, Outcome],
) -> None:
    mail = corpus["cc"]
    outcome = delivered["cc"]
    assert outcome.refused is None and outcome.received, "the mail never reached B"
    received = BytesParser(policy=email.policy.default).parsebytes(outcome.received[0])
    assert isinstance(received, EmailMessage)
    reply = EmailMessage()
    reply["From"], reply["To"] = FROM_B, str(received["From"])
    reply["Subject"] = f"Sv: {received['Subject']}"
    reply["In-Reply-To"] = reply["References"] = str(received["Message-ID"])
    reply.set_content("Tack, vi har tagit emot det.\n")
    address = received["From"].addresses[0].addr_spec
    assert send_raw(bridges["b"], reply.as_bytes(policy=email.policy.SMTP), FROM_B, address) is None

    def answered() -> bool:
        headers = fetch(dovecot_server, "alice", "INBOX", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
        return "cc" in markers(headers)

    eventually(answered, 60)
    assert mail.marker in str(received["Subject"])
