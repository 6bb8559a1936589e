"""Kvittens as B's bridge would send them."""

import asyncio

from sdk_bridge import config
from sdk_bridge.lab.sandbox.federation import Sandbox
from sdk_bridge.plugin import Submission
from sdk_bridge.sdk import kvittens as kv
from sdk_bridge.sdk.keys import KeyPair
from sdk_bridge.sdk.names import KVITTENS_ACTION
from sdk_bridge.sdk.sealing import seal_kvittens
from sdk_bridge.sdk.verdict import Detail, Outcome, Reason, Verdict
from support.outbound import access_point
from support.sandboxed import ORG_A, ORG_B


def send_kvittens(
    sandbox: Sandbox,
    verdict: Verdict,
    refers_to: str,
    signer: KeyPair | None = None,
    handling_service_id: str = "b.registrator",
) -> None:
    """What B's bridge would send back: a signed kvittens through B's access point."""
    b = config.load(sandbox.config_path("b"))
    kvittens = kv.Kvittens.answering(verdict, refers_to=refers_to, sender=ORG_B, receiver=ORG_A)
    sealed = seal_kvittens(
        kvittens, signer=signer or b.signing, handling_service_id=handling_service_id
    )

    async def submit() -> None:
        ap = access_point(sandbox, "b")
        await ap.submit(Submission(kvittens.id, sealed, KVITTENS_ACTION, ORG_B, ORG_A, refers_to))
        await ap.close()

    asyncio.run(submit())


REJECTED = Verdict(Outcome.REJECTED, Reason.BV, Detail.NOT_SUPPORTED, "file type not accepted")
