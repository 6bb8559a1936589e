"""`sdk-bridge demo`: the whole loop on one machine, each step checked and shown.

A sandbox federation (address book, SMP/CertPub, access points) runs in this process;
organisations A and B each get a real bridge (`sdk-bridge run`, a child process). A user
at A mails B's registrator over SMTP; the demo watches the mail arrive in B's Maildir,
the ACCEPTED kvittens reach A, then answers from B as a mail client would (Reply, with
In-Reply-To) and watches the reply land in A's Maildir in the same thread. It exits 0
only when every step was seen; the directory is kept for a look around.
"""

import email.policy
import os
import tempfile
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import TypeVar

from .local import LocalRun, LocalRunFailed
from .sandbox.federation import DOMAIN, FROM_A, HOST, TO_B

STEP_TIMEOUT = 30.0  # seconds any one step may take
KEY_SIZE = 2048  # the demo's own keys: quick to make (the product takes 3072 and more)
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"

T = TypeVar("T")


def run(directory: Path | None = None, out: Callable[[str], None] = print) -> int:
    """Run the demo in `directory` (new: a temporary one); 0 when every step was seen."""
    started = time.monotonic()
    directory = (
        Path(tempfile.mkdtemp(prefix="sdk-bridge-demo-")) if directory is None else directory
    )
    out(f"sdk-bridge demo in {directory}")
    local = LocalRun(directory, KEY_SIZE)
    try:
        local.start()
        out(f" 1. SDK federation (sandbox) up at {local.sandbox.https.url}: address book,")
        out("    SMP/CertPub, one access point for each of Sandbox kommun A and B")
        a, b = local.bridges["a"], local.bridges["b"]
        out(f" 2. Bridges running: A with SMTP on {HOST}:{a.port}, B with SMTP on {HOST}:{b.port}")
        _loop(local, out)
    except LocalRunFailed as e:
        out(f"FAILED: {e}")
        for bridge in local.bridges.values():
            out(f"    {bridge.label.upper()}'s log: {bridge.log}")
        return 1
    finally:
        local.stop()
    out(f"All steps verified in {time.monotonic() - started:.1f} s. Files: {directory}")
    return 0


def _loop(local: LocalRun, out: Callable[[str], None]) -> None:
    to_b, from_a = TO_B, FROM_A
    first = EmailMessage()
    first["From"] = f"Registrator A <{from_a}>"
    first["To"] = to_b
    first["Subject"] = "Ansökan om bygglov – Åsa Öberg"
    first["Message-ID"] = f"<demo-{os.getpid()}-{int(time.time())}@a.{DOMAIN}>"
    first["X-SDK-Reference"] = "dnr=BN 2026/117"
    first.set_content(
        "Hej!\n\nHär kommer ansökan med **ritning** bifogad.\n\nMed vänlig hälsning\nA"
    )
    first.add_attachment(PDF, maintype="application", subtype="pdf", filename="ritning.pdf")
    local.send("a", from_a, to_b, first)
    out(f" 3. A user at A mailed {to_b} over SMTP: 250, queued")

    path, delivered = _wait(lambda: _one_mail(local.maildir("b")), "the mail in B's Maildir")
    sdk_id = str(delivered["X-SDK-Message-ID"])
    _expect(delivered["Subject"] == first["Subject"], "the subject arrived unchanged")
    _expect(
        any(
            p.get_filename() == "ritning.pdf" and p.get_content() == PDF
            for p in delivered.iter_attachments()
        ),
        "the PDF arrived byte for byte",
    )
    out(f" 4. B verified, decrypted and accepted SDK message {sdk_id}")
    out(f"    and delivered it to B's Maildir: {path}")
    out(f"    From: {delivered['From']}")
    out(f"    Subject: {delivered['Subject']}   ({delivered['X-SDK-Reference']})")

    _wait(lambda: _accepted(local, "a", sdk_id), "the ACCEPTED kvittens at A")
    out(f" 5. A received B's kvittens ACCEPTED for {sdk_id}; A's message is delivered")

    reply = EmailMessage()
    reply["From"] = f"Registrator B <registrator@b.{DOMAIN}>"
    reply["To"] = str(delivered["From"])
    reply["Subject"] = f"Sv: {delivered['Subject']}"
    reply["In-Reply-To"] = str(delivered["Message-ID"])
    reply["References"] = str(delivered["Message-ID"])
    reply.set_content("Tack, ansökan är mottagen och diarieförd.")
    reply_to = reply["To"].addresses[0].addr_spec
    local.send("b", f"registrator@b.{DOMAIN}", reply_to, reply)
    out(f" 6. B's registrator replied from the mail client to {reply_to}")

    path, answer = _wait(lambda: _one_mail(local.maildir("a")), "the reply in A's Maildir")
    reply_id = str(answer["X-SDK-Message-ID"])
    _expect(answer["In-Reply-To"] == first["Message-ID"], "the reply threads under A's mail")
    _expect(
        answer["X-SDK-Conversation-ID"] == delivered["X-SDK-Conversation-ID"],
        "the reply continues the SDK conversation",
    )
    _expect(
        answer["X-SDK-Sender-Reference"] == first["X-SDK-Reference"],
        "the reply carries B's case reference back",
    )
    out(f" 7. A accepted the reply, SDK message {reply_id}, and delivered it: {path}")
    out(f"    In-Reply-To: {answer['In-Reply-To']} (A's original mail)")
    out(f"    same SDK conversation: {answer['X-SDK-Conversation-ID']}")
    out(f"    B's case reference came back with it: {answer['X-SDK-Sender-Reference']}")

    _wait(lambda: _accepted(local, "b", reply_id), "the ACCEPTED kvittens at B")
    out(f" 8. B received A's kvittens ACCEPTED for the reply {reply_id}")


def _wait(probe: Callable[[], T | None], what: str) -> T:
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.1)
    raise LocalRunFailed(f"timed out waiting for {what}")


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise LocalRunFailed(f"not as expected: {what}")


def _one_mail(maildir: Path) -> tuple[Path, EmailMessage] | None:
    files = sorted((maildir / "new").glob("*")) if (maildir / "new").is_dir() else []
    if not files:
        return None
    mail = BytesParser(policy=email.policy.default).parsebytes(files[0].read_bytes())
    assert isinstance(mail, EmailMessage)
    return files[0], mail


def _accepted(local: LocalRun, label: str, sdk_message_id: str) -> bool | None:
    return True if local.kvittens(label).get(sdk_message_id) == "ACCEPTED" else None
