"""Opening a received envelope against its sender's CertPub signing certificates.

Shared by both kinds of envelope the access point hands over: kvittens for what we sent
(`outbound.receipts`) and messages for us (`inbound.processing`). The signer must be a
certificate the AS4 original sender publishes under the kvittens document id (C3.4.5);
before concluding that it is not, the certificates are fetched once more, since the
sender may have rolled over since they were cached. A sender with no SMP registration
gets no kvittens: its envelope goes to quarantine.
"""

import asyncio
import dataclasses

import structlog
from cryptography import x509

from ..registry.client import Registry
from ..registry.errors import NoValidCertificate, RegistryError, RegistryUnavailable
from ..runtime import workers
from ..sdk.sealing import Opened, Receiver, open_envelope
from ..sdk.verdict import Quarantined, Verdict
from ..spool import Received

log = structlog.get_logger(__name__)

NOT_PUBLISHED = "not one the sender publishes in CertPub"  # the verdict text to retry on


async def open_received(
    item: Received,
    registry: Registry,
    receiver: Receiver,
    crypto: workers.CryptoWorkers | None = None,
) -> Opened:
    """Verify (and, with decryption keys in `receiver`, decrypt and validate) `item`.

    Raise RegistryUnavailable when the sender's certificates cannot be looked up now: the
    envelope then waits, unanswered, for the next round.
    """
    opened: Opened | None = None
    for refresh in (False, True):
        try:
            published = await _signing_certificates(registry, item.original_sender, refresh)
        except RegistryUnavailable:
            raise
        except NoValidCertificate as e:  # registered, so it can be answered: SIG/security
            log.warning("sender has no usable signing certificate", id=item.id, error=str(e))
            published = ()
        except RegistryError as e:
            text = f"the sender is not registered in SMP/CertPub ({e})"
            return Opened(Verdict.of(Quarantined(text)))
        checking = dataclasses.replace(receiver, sender_signing_certs=list(published))
        opened = await workers.run(crypto, _open, item.payload, checking, size=len(item.payload))
        if NOT_PUBLISHED not in opened.verdict.text:
            break
    assert opened is not None
    return opened


async def _signing_certificates(
    registry: Registry, sender: str, refresh: bool
) -> tuple[x509.Certificate, ...]:
    """The sender's published signing certificates: from the cache while it holds them, or
    else through a thread, as looking them up may ask SMP."""
    cached = None if refresh else registry.certpub.cached_signing_certificates(sender)
    if cached is not None:
        return cached
    return await asyncio.to_thread(registry.certpub.signing_certificates, sender, refresh=refresh)


def _open(data: bytes, receiver: Receiver) -> Opened:
    """open_envelope, less the decrypted bytes: nothing here reads them (the message is
    parsed), and from a crypto worker they would be one more pickled copy of the message."""
    return open_envelope(data, receiver, keep_plaintext=False)
