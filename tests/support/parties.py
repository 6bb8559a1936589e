"""The two test organisations, A and B, and a complete business message between them."""

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

from sdk_bridge.lab.testpki import Identity
from sdk_bridge.sdk import message as msg
from sdk_bridge.sdk import xhe
from sdk_bridge.sdk.keys import KeyPair

ORG_A = "0203:a.example.se"
ORG_B = "0203:b.example.se"
ADDRESS_A = "registrator.a"
ADDRESS_B = "registrator.b"


def keypair(identity: Identity) -> KeyPair:
    return KeyPair(identity.key, identity.cert)


def make_message(**changes: object) -> msg.BusinessMessage:
    """A message from A to B with every header field set; `changes` override fields."""
    message_id = str(uuid.uuid4())
    fields: dict[str, object] = dict(
        message_id=message_id,
        conversation_id=message_id,
        created=datetime.now(UTC),
        confidential=True,
        label="Ansökan om bygglov",
        generating_system=msg.Identifier("urn:sdk-bridge", "sdk-bridge test"),
        recipient=msg.Party(
            ORG_B,
            msg.Attention(
                ADDRESS_B,
                "Registrator",
                persons=(msg.Person(msg.Identifier("1.2.752.129.2.1.3.1", "191212121212")),),
                references=(msg.Reference(msg.Identifier("diarienummer", "KS 2026/123")),),
            ),
            label="B kommun",
        ),
        sender=msg.Party(ORG_A, msg.Attention(ADDRESS_A, "Registrator"), label="A kommun"),
        documents=(
            msg.Document(
                "SDK-Meddelande",
                texts=("Hej!\n\nHär kommer **underlaget**.",),
                files=(msg.ContentFile("underlag.pdf", "application/pdf", b"%PDF-1.7\n..."),),
                name="SDK-Meddelande",
                index="1",
            ),
        ),
    )
    fields.update(changes)
    return msg.BusinessMessage(**fields)  # type: ignore[arg-type]


def message_header(message: msg.BusinessMessage, **changes: Any) -> xhe.Header:
    """The envelope header our sealing would write for `message`, with `changes`."""
    return dataclasses.replace(xhe.message_header(message), **changes)
