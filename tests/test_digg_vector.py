"""Digg's real signed, encrypted XHE (the base64 <value> in as4_xhe_encrypted.xml).

It verifies with our code at a time inside its certificate's validity (the certificates
expired in 2023), and any change to a signed byte makes it fail with REJECTED SIG.
"""

import random
from datetime import UTC, datetime

import pytest
from support.digg import signed_vector, spec_file

from sdk_bridge.sdk import sealing
from sdk_bridge.sdk.keys import load_certificates
from sdk_bridge.sdk.verdict import ACCEPTED

INSIDE_VALIDITY = datetime(2022, 10, 14, 12, 0, tzinfo=UTC)
O2O = ("certificate-chains", "Certifikatkedjor OpenTest", "CAs", "Certifikatskedjor O2O")


@pytest.fixture(scope="module")
def vector() -> bytes:
    return signed_vector()


@pytest.fixture(scope="module")
def opentest_o2o() -> list:
    return [
        cert
        for name in ("testsithseidfunctioncav1.cer", "testsithseidrootcav2.cer")
        for cert in load_certificates(spec_file(*O2O, name))
    ]


def test_vector_verifies_at_a_time_inside_validity(vector: bytes, opentest_o2o: list) -> None:
    receiver = sealing.Receiver(trust_anchors=opentest_o2o, at=INSIDE_VALIDITY)
    opened = sealing.open_envelope(vector, receiver, decrypt=False)
    assert opened.verdict == ACCEPTED
    assert opened.header is not None and opened.signer is not None
    assert opened.header.id == "70c5ea37-f4a9-4771-b0c7-09becd024bda"
    assert opened.header.handling_service_id == "sdk.testbed.0203:testa.testbed.inera.se"
    assert "testb.e2e.inera.se" in opened.signer.subject.rfc4514_string()


def test_vector_signer_is_expired_today(vector: bytes) -> None:
    opened = sealing.open_envelope(vector, sealing.Receiver(), decrypt=False)
    assert opened.verdict.line().startswith(
        "REJECTED SIG security: the signing certificate is not valid"
    )


def test_vector_without_our_key_is_quarantined(vector: bytes) -> None:
    opened = sealing.open_envelope(vector, sealing.Receiver(at=INSIDE_VALIDITY))
    assert opened.verdict.line().startswith("NO-KVITTENS quarantine: payload cannot be decrypted")


def test_vector_with_an_unrelated_trust_anchor_fails(vector: bytes, pki) -> None:
    receiver = sealing.Receiver(trust_anchors=[pki.root.cert], at=INSIDE_VALIDITY)
    opened = sealing.open_envelope(vector, receiver, decrypt=False)
    assert opened.verdict.line().startswith(
        "REJECTED SIG security: the signing certificate does not chain"
    )


def _signed_text_positions(vector: bytes) -> list[int]:
    """Offsets of letters and digits in text and attribute values, outside the Signature."""
    end = vector.index(b"<dsig:Signature")
    positions = []
    in_tag = False
    for offset in range(end):
        char = vector[offset : offset + 1]
        if char == b"<":
            in_tag = True
        elif char == b">":
            in_tag = False
        elif not in_tag and char.isalnum():
            positions.append(offset)
    return positions


def test_any_change_to_a_signed_byte_is_rejected_sig(vector: bytes) -> None:
    positions = _signed_text_positions(vector)
    receiver = sealing.Receiver(at=INSIDE_VALIDITY)
    for offset in random.Random(4711).sample(positions, 40):
        original = vector[offset : offset + 1]
        replacement = b"A" if original != b"A" else b"B"
        changed = vector[:offset] + replacement + vector[offset + 1 :]
        opened = sealing.open_envelope(changed, receiver, decrypt=False)
        assert opened.verdict.line().startswith("REJECTED SIG security: signature:"), offset


def test_change_to_the_signed_info_is_rejected_sig(vector: bytes) -> None:
    receiver = sealing.Receiver(at=INSIDE_VALIDITY)
    changed = vector.replace(b"Rn5aMDU3", b"Rn5aMDU4")  # the DigestValue
    opened = sealing.open_envelope(changed, receiver, decrypt=False)
    assert opened.verdict.line().startswith("REJECTED SIG security: signature:")


def test_pretty_printed_copy_does_not_verify() -> None:
    """Digg's re-indented xhe_encrypted_payload.xml was changed after signing."""
    path = spec_file("message-v3", "sdk-meddelande-v3.1", "example", "xhe_encrypted_payload.xml")
    receiver = sealing.Receiver(at=INSIDE_VALIDITY)
    opened = sealing.open_envelope(path.read_bytes(), receiver, decrypt=False)
    assert opened.verdict.line().startswith("REJECTED SIG security: signature:")
