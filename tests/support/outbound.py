"""Driving the outbound stage against a sandbox: mail queued, the worker run, what
B's access point received."""

import asyncio
import email.policy
from email.message import EmailMessage
from pathlib import Path

from sdk_bridge import config
from sdk_bridge.lab.sandbox.federation import Sandbox
from sdk_bridge.outbound.worker import OutboundSettings, Worker
from sdk_bridge.plugin import ACCESS_POINTS, load
from sdk_bridge.sdk.sealing import Receiver, open_envelope
from sdk_bridge.sdk.verdict import ACCEPTED
from sdk_bridge.spool import Envelope, RecipientRecord, SQLiteSpool
from support.registries import registry_for
from support.sandboxed import ORG_A, ORG_B

TO_B = RecipientRecord("registrator@b.sandbox.test.sdk.a.sandbox.test", ORG_B, "b.registrator")


def access_point(sandbox: Sandbox, label: str):
    loaded = config.load(sandbox.config_path(label))
    assert loaded.access_point is not None
    return load(ACCESS_POINTS, "domibus-ws", loaded.access_point.plugin_settings())


def run_worker(sandbox: Sandbox, spool: SQLiteSpool, cache: Path) -> None:
    """One pass of A's worker over everything due."""
    a = config.load(sandbox.config_path("a"))

    async def once() -> None:
        ap = access_point(sandbox, "a")
        with registry_for(sandbox, "a", cache) as registry:
            worker = Worker(OutboundSettings(ORG_A), spool, registry, ap, a.signing)
            for delivery in spool.claim_due(100):
                await worker.deliver(delivery)
        await ap.close()

    asyncio.run(once())


def received_by_b(sandbox: Sandbox, cache: Path) -> list:
    """B retrieves everything pending and opens it with its own key."""
    b = config.load(sandbox.config_path("b"))

    async def fetch() -> list[bytes]:
        ap = access_point(sandbox, "b")
        payloads = []
        for message_id in await ap.pending():
            payloads.append((await ap.retrieve(message_id)).payload)
            await ap.acknowledge(message_id)  # taken: no longer pending
        await ap.close()
        return payloads

    with registry_for(sandbox, "b", cache) as registry:
        receiver = Receiver(
            decryption_keys=b.decryption,
            sender_signing_certs=list(registry.certpub.signing_certificates(ORG_A)),
            trust_anchors=b.trust_anchors,
            our_parties={ORG_B},
        )
    opened = [open_envelope(p, receiver) for p in asyncio.run(fetch())]
    assert all(o.verdict == ACCEPTED for o in opened), [o.verdict.line() for o in opened]
    return [o.message for o in opened]


def queue(spool: SQLiteSpool, mail: EmailMessage, recipient: RecipientRecord = TO_B) -> None:
    envelope = Envelope(
        mail_from="anna@kommun-a.se",
        sender_address="a.registrator",
        mail_message_id=(mail["Message-ID"] or "").strip("<>") or None,
    )
    spool.accept(envelope, [recipient], mail.as_bytes(policy=email.policy.SMTP))


def new_mail(subject: str, text: str | None = "Hej!", **headers: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "anna@kommun-a.se", TO_B.address, subject
    for name, value in headers.items():
        mail[name.replace("_", "-")] = value
    if text is not None:
        mail.set_content(text)
    return mail
