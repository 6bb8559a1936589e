"""Micro-benchmark of the message core: seal/open throughput beside the raw RSA rate.

RSA private-key operations dominate: sealing costs one signature, opening one decryption
(plus a public-key verification). Printing the machine's raw RSA sign rate from the same
run shows how close seal/open come to that ceiling.
"""

import functools
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from statistics import median

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from ..sdk import message as msg
from ..sdk import sealing
from ..sdk.keys import KeyPair
from .testpki import make_pki

PROFILES = {"10KB": 10_000, "1MB": 1_000_000}


def _seal(xml: bytes, signer: KeyPair, recipient_cert: x509.Certificate) -> bytes:
    return sealing.seal_message(xml, signer=signer, recipient_cert=recipient_cert)


def rate(operation: Callable[[], object], seconds: float) -> float:
    """Operations per second: the median of five slices of `seconds / 5`."""
    rates = []
    for _ in range(5):
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 5 or count == 0:
            operation()
            count += 1
        rates.append(count / elapsed)
    return median(rates)


def _message(size: int) -> msg.BusinessMessage:
    message_id = str(uuid.uuid4())
    text = "Lorem ipsum dolor sit amet. " * (min(size, 10_000) // 28)
    files: tuple[msg.ContentFile, ...] = ()
    if size > 10_000:
        pdf = b"%PDF-1.7\n" + b"\0" * (size * 3 // 4)  # base64 brings it back to `size`
        files = (msg.ContentFile("bilaga.pdf", "application/pdf", pdf),)
    return msg.BusinessMessage(
        message_id=message_id,
        conversation_id=message_id,
        created=datetime.now(UTC),
        confidential=False,
        label="Benchmark",
        recipient=msg.Party("0203:b.example.se", msg.Attention("registrator.b")),
        sender=msg.Party("0203:a.example.se", msg.Attention("registrator.a")),
        documents=(msg.Document("SDK-Meddelande", texts=(text,), files=files),),
    )


def run_core_benchmark(seconds: float = 2.0, key_size: int = 3072) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as directory:
        pki = make_pki(Path(directory), key_size=key_size)
        a, b = pki.issue("a.example.se"), pki.issue("b.example.se")
    sender, recipient = KeyPair(a.key, a.cert), KeyPair(b.key, b.cert)
    data = b"x" * 32
    result: dict[str, object] = {
        "key_size": key_size,
        "rsa_sign_per_s": round(
            rate(lambda: sender.key.sign(data, padding.PKCS1v15(), hashes.SHA256()), seconds), 1
        ),
    }
    receiver = sealing.Receiver(decryption_keys=[recipient], sender_signing_certs=[a.cert])
    for name, size in PROFILES.items():
        xml = msg.to_xml(_message(size))
        sealed = sealing.seal_message(xml, signer=sender, recipient_cert=b.cert)
        opened = sealing.open_envelope(sealed, receiver)
        assert opened.verdict.outcome == "ACCEPTED", opened.verdict.line()
        result[name] = {
            "message_bytes": len(xml),
            "envelope_bytes": len(sealed),
            "seal_msgs_per_s": round(
                rate(functools.partial(_seal, xml, sender, b.cert), seconds),
                1,
            ),
            "open_msgs_per_s": round(
                rate(functools.partial(sealing.open_envelope, sealed, receiver), seconds), 1
            ),
        }
    return result


def format_table(result: dict[str, object]) -> str:
    lines = [
        f"RSA-{result['key_size']} raw signatures: {result['rsa_sign_per_s']}/s",
        f"{'profile':<8} {'message':>12} {'envelope':>12} {'seal/s':>9} {'open/s':>9}",
    ]
    for name in PROFILES:
        row = result[name]
        assert isinstance(row, dict)
        lines.append(
            f"{name:<8} {row['message_bytes']:>12,} {row['envelope_bytes']:>12,} "
            f"{row['seal_msgs_per_s']:>9} {row['open_msgs_per_s']:>9}"
        )
    return "\n".join(lines)
