"""What `check-config` checks beyond the file itself.

`certificate_warnings` works offline: certificates that expire within the warning period
(the daemon logs the same at start and on reload); so does `exposure_warnings`: secret
files others may read, an admin port off loopback. `online` reaches every service the
bridge depends on and says for each whether it works: the address book (and our
functional addresses in it), SMP (our registration for the message and the kvittens
document ids), CertPub (the certificates published for us are ours, none revoked), the
access point (its credentials) and each functional address's mailbox.
"""

import asyncio
import dataclasses
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .. import plugin
from ..config import Config, open_registry
from ..plugin.settings import is_loopback
from ..registry.client import Registry
from ..registry.errors import RegistryError
from ..sdk.certs import CertificateProblem, issuer_among
from ..sdk.names import KVITTENS_DOCUMENT_ID, MESSAGE_DOCUMENT_ID

DEFAULT_WARNING = timedelta(days=30)


@dataclass(frozen=True)
class Finding:
    ok: bool
    what: str  # "address book", "SMP", …
    detail: str


def certificates(config: Config) -> dict[str, x509.Certificate]:
    """Every certificate the bridge works with, named for an administrator."""
    found = {"signing": config.signing.cert}
    for number, keypair in enumerate(config.decryption, start=1):
        found[f"decryption {number}"] = keypair.cert
    if config.smtp is not None and config.smtp.tls_cert is not None:
        found["smtp tls"] = x509.load_pem_x509_certificate(config.smtp.tls_cert.read_bytes())
    return found


def certificate_warnings(config: Config, within: timedelta | None = None) -> list[str]:
    """Certificates that expire within `within` (the admin section's warning period, or
    30 days), or have already."""
    if within is None:
        within = config.admin.certificate_warning if config.admin else DEFAULT_WARNING
    return expiring(certificates(config), within)


def expiring(named: dict[str, x509.Certificate], within: timedelta) -> list[str]:
    """One line for each certificate that expires within `within`, or has already (for
    check-config, the log and /readyz alike)."""
    now = datetime.now(UTC)
    warnings = []
    for name, certificate in named.items():
        left = certificate.not_valid_after_utc - now
        if left < within:
            when = f"{certificate.not_valid_after_utc:%Y-%m-%d}"
            warnings.append(
                f"certificate {name}: expired {when}"
                if left < timedelta(0)
                else f"certificate {name}: expires {when} ({left.days} days left)"
            )
    return warnings


SECRET_KEYS = frozenset(
    {"key", "tls_key", "client_key", "sslkey", "passphrase_file", "password_file"}
)


def exposure_warnings(config: Config, file: Path) -> list[str]:
    """Secrets others may read, and an admin port off loopback (plain HTTP, no login):
    check-config prints them, the daemon logs them at start."""
    warnings = []
    for name, path in secret_files(yaml.safe_load(file.read_text()), file.parent):
        try:
            mode = path.stat().st_mode
        except OSError:
            continue  # the loader said what is missing
        if mode & 0o077:
            warnings.append(
                f"{name} {path} can be read or written by others (mode {mode & 0o777:04o}):"
                f" chmod 600 {path}"
            )
    if config.admin is not None and not is_loopback(config.admin.listen[0]):
        host, port = config.admin.listen
        warnings.append(
            f"admin.listen {host}:{port} is not on loopback: /metrics and /readyz are plain"
            " HTTP without a login; keep it on 127.0.0.1 behind a proxy or a firewall"
        )
    return warnings


def secret_files(node: Any, directory: Path, key: str = "") -> list[tuple[str, Path]]:
    """(setting, path) of every secret file the configuration names, wherever it is."""
    found = []
    if isinstance(node, dict):
        for name, value in node.items():
            where = f"{key}.{name}" if key else str(name)
            if name in SECRET_KEYS and isinstance(value, str):
                path = Path(os.path.expandvars(value))
                found.append((where, path if path.is_absolute() else directory / path))
            else:
                found.extend(secret_files(value, directory, where))
    elif isinstance(node, list):
        for number, item in enumerate(node):
            found.extend(secret_files(item, directory, f"{key}[{number}]"))
    return found


def online(config: Config) -> list[Finding]:
    """Reach everything; never raises for a service that fails, says so instead."""
    findings: list[Finding] = []
    if config.registry is not None:
        # A cache of its own: answers fresh from the services (not an hour-old OCSP
        # answer), and nothing written into the running daemon's cache.
        with tempfile.TemporaryDirectory(prefix="sdk-bridge-check-") as cache:
            fresh = dataclasses.replace(config.registry, cache_dir=Path(cache))
            with open_registry(dataclasses.replace(config, registry=fresh)) as registry:
                findings += _registry(config, registry)
    if config.access_point is not None:
        findings.append(asyncio.run(_access_point(config)))
    for address in config.functional_addresses:
        if address.deliver_to is not None:
            findings.append(asyncio.run(_mailbox(address.id, *address.deliver_to)))
    return findings


def _registry(config: Config, registry: Registry) -> list[Finding]:
    findings = []
    try:
        registry.book.refresh()
        organisation = registry.book.organisation(config.organisation_id)
        listed = {a.identifier for a in organisation.addresses}
        missing = [fa.id for fa in config.functional_addresses if fa.id not in listed]
        findings.append(
            Finding(
                not missing,
                "address book",
                f"{organisation.name}: {len(listed)} functional addresses"
                + (f"; not listed: {', '.join(missing)}" if missing else ""),
            )
        )
    except RegistryError as e:
        findings.append(Finding(False, "address book", str(e)))
    ours = config.organisation_id
    for name, document in (("message", MESSAGE_DOCUMENT_ID), ("kvittens", KVITTENS_DOCUMENT_ID)):
        try:
            metadata = registry.smp.service_metadata(ours, document)
            urls = ", ".join(e.url for e in metadata.endpoints)
            findings.append(Finding(True, f"SMP ({name})", f"registered; access point {urls}"))
        except RegistryError as e:
            findings.append(Finding(False, f"SMP ({name})", str(e)))
    pairs = (
        ("CertPub signing", [config.signing.cert], registry.certpub.signing_certificates),
        (
            "CertPub encryption",
            [k.cert for k in config.decryption],
            registry.certpub.encryption_certificates,
        ),
    )
    for what, mine, published in pairs:
        try:
            found = published(ours, refresh=True)
        except RegistryError as e:
            findings.append(Finding(False, what, str(e)))
            continue
        ders = {_der(c) for c in found}
        match = any(_der(c) in ders for c in mine)
        findings.append(
            Finding(
                match,
                what,
                "publishes our certificate" if match else "publishes none of our certificates",
            )
        )
    for name, certificate in certificates(config).items():
        if name == "smtp tls":
            continue  # a web PKI certificate: not one SDK's revocation services know
        issuer = issuer_among(certificate, config.trust_anchors)
        if issuer is None:
            findings.append(Finding(False, f"revocation ({name})", "no trust anchor issued it"))
            continue
        try:
            registry.revocation.check(certificate, issuer)
            findings.append(Finding(True, f"revocation ({name})", "not revoked"))
        except (CertificateProblem, RegistryError) as e:
            findings.append(Finding(False, f"revocation ({name})", str(e)))
    return findings


async def _access_point(config: Config) -> Finding:
    assert config.access_point is not None
    try:
        access_point = plugin.load(
            plugin.ACCESS_POINTS, config.access_point.plugin, config.access_point.plugin_settings()
        )
    except plugin.PluginError as e:
        return Finding(False, "access point", str(e))
    try:
        mismatch = await _interface_mismatch(access_point, config.access_point.interface)
        if mismatch:
            return Finding(False, "access point", mismatch)
        waiting = await access_point.pending([config.organisation_id])
        return Finding(True, "access point", f"answers; {len(waiting)} messages waiting")
    except (plugin.TemporaryFailure, plugin.PermanentFailure) as e:
        return Finding(False, "access point", str(e))
    finally:
        await access_point.close()


async def _interface_mismatch(access_point: Any, configured: str) -> str | None:
    """What is wrong when the url serves the other WS plugin interface (its WSDL says
    which), None when it matches or a connector cannot tell."""
    served_by = getattr(access_point, "interface_served", None)
    if served_by is None:
        return None
    served = await served_by()
    if served is None or served == configured:
        return None
    path = "/services/wsplugin" if configured == "wsplugin" else "/services/backend"
    return (
        f"the url serves the {served!r} interface, not the configured {configured!r}: set"
        f" access_point.interface: {served}, or point the url at Domibus's {path}"
    )


async def _mailbox(address: str, name: str, settings: dict) -> Finding:
    what = f"mailbox of {address}"
    try:
        mailbox = plugin.load(plugin.MAILBOXES, name, settings)
    except plugin.PluginError as e:
        return Finding(False, what, str(e))
    try:
        await mailbox.check()
        return Finding(True, what, f"{name}: reachable")
    except (plugin.TemporaryFailure, plugin.PermanentFailure) as e:
        return Finding(False, what, str(e))
    finally:
        await mailbox.close()


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)
