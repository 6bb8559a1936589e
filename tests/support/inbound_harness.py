"""B's inbound stage in the test process, with A's side played by hand: shared by the
inbound tests and the attack catalogue, which both drive the same real path."""

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdk_bridge import config
from sdk_bridge.inbound.processing import Inbound, InboundSettings
from sdk_bridge.lab.sandbox.federation import Sandbox
from sdk_bridge.plugin import Scanner, Submission
from sdk_bridge.retrieval.intake import Intake
from sdk_bridge.sdk import kvittens as kv
from sdk_bridge.sdk import message as msg
from sdk_bridge.sdk.keys import KeyPair
from sdk_bridge.sdk.names import KVITTENS_ACTION, MESSAGE_ACTION
from sdk_bridge.sdk.sealing import Receiver, open_envelope, seal_message
from sdk_bridge.spool import SQLiteSpool
from support.outbound import access_point
from support.parties import make_message
from support.registries import registry_for
from support.sandboxed import ORG_A, ORG_B

MAILBOX_B = "registrator@b.sandbox.test"


def message(**changes: object) -> msg.BusinessMessage:
    """A message from A's registrator to B's, with a case reference each way."""
    fields: dict[str, object] = dict(
        recipient=msg.Party(
            ORG_B,
            msg.Attention(
                "b.registrator",
                references=(msg.Reference(msg.Identifier("dnr", "B 2026/7")),),
            ),
        ),
        sender=msg.Party(
            ORG_A,
            msg.Attention(
                "a.registrator", references=(msg.Reference(msg.Identifier("dnr", "A 2026/3")),)
            ),
        ),
    )
    fields.update(changes)
    return make_message(**fields)


class Harness:
    """B's inbound stage in this process; A's side is played by hand."""

    def __init__(self, sandbox: Sandbox, tmp_path: Path, scanner: Scanner | None = None) -> None:
        self.sandbox = sandbox
        self.tmp_path = tmp_path
        self.spool = SQLiteSpool(tmp_path / "spool-b")
        self.a = config.load(sandbox.config_path("a"))
        self.b = config.load(sandbox.config_path("b"))
        self.scanner = scanner
        self.handling_service_ids: list[str | None] = []  # of the kvittens A received
        self._drain("a")  # kvittens left by earlier tests are not ours
        self._drain("b")

    def seal(self, business: msg.BusinessMessage, signer: KeyPair | None = None) -> bytes:
        recipient = self.sandbox.organisations["b"].encryption[-1].cert
        return seal_message(business, signer=signer or self.a.signing, recipient_cert=recipient)

    def send(self, payload: bytes, ebms_id: str | None = None, action: str = MESSAGE_ACTION) -> str:
        """Submit `payload` as A to B (a message, or under another action); its ebMS
        MessageId."""
        ebms_id = ebms_id or str(uuid.uuid4())

        async def submit() -> None:
            ap = access_point(self.sandbox, "a")
            try:
                await ap.submit(Submission(ebms_id, payload, action, ORG_A, ORG_B, ebms_id))
            finally:
                await ap.close()

        asyncio.run(submit())
        return ebms_id

    def process(self, forbidden_types: frozenset[str] = frozenset()) -> None:
        """B's bridge: retrieve, judge, answer."""

        async def run() -> None:
            ap = access_point(self.sandbox, "b")
            try:
                await Intake(ap, self.spool, [ORG_B]).fetch()
                with registry_for(self.sandbox, "b", self.tmp_path / "cache-b") as registry:
                    settings = InboundSettings(
                        organisation_id=ORG_B,
                        sdk_domain="sdk.b.sandbox.test",
                        mailbox_addresses={"b.registrator": MAILBOX_B},
                        decryption_keys=self.b.decryption,
                        signer=self.b.signing,
                        trust_anchors=self.b.trust_anchors,
                        federation=self.b.federation,
                        forbidden_types=forbidden_types,
                    )
                    inbound = Inbound(settings, self.spool, registry, ap, self.scanner)
                    await inbound.judge_pending()
                    await inbound.answer()
            finally:
                await ap.close()

        asyncio.run(run())

    def kvittens_at_a(self) -> list[kv.Kvittens]:
        """What arrived at A's access point, verified as A's bridge would."""
        with registry_for(self.sandbox, "a", self.tmp_path / "cache-a") as registry:
            signing = list(registry.certpub.signing_certificates(ORG_B))
        receiver = Receiver(
            sender_signing_certs=signing,
            trust_anchors=self.a.trust_anchors,
            our_parties={ORG_A},
        )
        found = []
        for action, payload in self._drain("a"):
            assert action == KVITTENS_ACTION
            opened = open_envelope(payload, receiver)
            assert opened.verdict.line() == "ACCEPTED", opened.verdict.line()
            assert opened.header is not None
            assert opened.kvittens is not None
            self.handling_service_ids.append(opened.header.handling_service_id)
            found.append(opened.kvittens)
        return found

    def _drain(self, label: str) -> list[tuple[str, bytes]]:
        async def fetch() -> list[tuple[str, bytes]]:
            ap = access_point(self.sandbox, label)
            try:
                items = []
                for message_id in await ap.pending():
                    items.append(await ap.retrieve(message_id))
                    await ap.acknowledge(message_id)  # taken: no longer pending
                return [(item.action, item.payload) for item in items]
            finally:
                await ap.close()

        return asyncio.run(fetch())

    def states(self) -> dict[str, str]:
        with self.spool._lock:  # read-only look for the test
            rows = self.spool._db.execute("SELECT id, state FROM received").fetchall()
        return {row["id"]: row["state"] for row in rows}


@pytest.fixture
def harness(sandbox: Sandbox, tmp_path: Path) -> Iterator[Harness]:
    running = Harness(sandbox, tmp_path)
    yield running
    running.spool.close()


def rejected(found: list[kv.Kvittens], refers_to: str) -> str:
    (only,) = found
    assert only.refers_to == refers_to and not only.accepted
    line = only.lines[0]
    return f"{line.reason} {line.detail}: {line.text}"
