"""The whole sandbox, as a bridge meets it: the registry client over HTTPS against the
address book, SMP and CertPub, revocation by OCSP and by CRL, a certificate rollover, and a
message from A's access point to B's.
"""

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.parties import make_message
from support.registries import MemoryCache, registry_for
from support.sandboxed import ORG_A, ORG_B
from support.wsplugin import Client

from sdk_bridge import cli, config
from sdk_bridge.lab.sandbox.accesspoint import WSPLUGIN_NS
from sdk_bridge.lab.sandbox.federation import Sandbox
from sdk_bridge.lab.sandbox.web import Faults
from sdk_bridge.registry.client import Registry
from sdk_bridge.registry.errors import (
    NotRegistered,
    NoValidCertificate,
    RegistryUnavailable,
    UnknownFunctionalAddress,
)
from sdk_bridge.sdk import message as msg
from sdk_bridge.sdk.sealing import Receiver, open_envelope, seal_message
from sdk_bridge.sdk.verdict import ACCEPTED

pytestmark = pytest.mark.slow  # running bridges or servers: `make test-fast` leaves it out

B_REGISTRATOR = "registrator@b.sandbox.test.sdk.a.sandbox.test"


@pytest.fixture(autouse=True)
def _switches_off(sandbox: Sandbox) -> None:
    sandbox.smp.faults, sandbox.smp.tamper = Faults(), False
    sandbox.address_book.faults = Faults()
    for app in sandbox.revocation.values():
        app.fail("crl", None)
        app.fail("ocsp", None)


@pytest.fixture
def registry_a(sandbox: Sandbox, tmp_path: Path) -> Iterator[Registry]:
    with registry_for(sandbox, "a", tmp_path) as registry:
        yield registry


def test_configurations_load(sandbox: Sandbox) -> None:
    for label in ("a", "b"):
        loaded = config.load(sandbox.config_path(label))
        assert loaded.organisation_id == f"0203:{label}.sandbox.test"
        assert loaded.access_point is not None
        assert loaded.access_point.url.endswith(f"/ap/{label}/services/wsplugin")
        assert loaded.decryption[0].cert == sandbox.organisations[label].encryption[-1].cert
    assert (sandbox.directory / "ready").read_text().strip() == sandbox.https.url


def test_lookup_by_email_id_and_name(registry_a: Registry, sandbox: Sandbox) -> None:
    (by_email,) = registry_a.lookup(B_REGISTRATOR)
    assert by_email.organisation.id == ORG_B
    assert not by_email.problems
    b = sandbox.organisations["b"]
    assert by_email.encryption_certificates == tuple(i.cert for i in b.encryption)
    assert by_email.signing_certificates == tuple(i.cert for i in b.signing)
    assert by_email.endpoints[0].url == f"{sandbox.https.url}/ap/b"
    assert registry_a.lookup(ORG_B)[0].organisation.name == "Sandbox kommun B"
    assert {f.organisation.id for f in registry_a.lookup("Sandbox kommun")} == {ORG_A, ORG_B}
    with pytest.raises(UnknownFunctionalAddress):
        registry_a.lookup("ekonomi@b.sandbox.test.sdk.a.sandbox.test")


def test_instances_share_a_cache_passed_in(sandbox: Sandbox, tmp_path: Path) -> None:
    """Given a cache (the shared spool's, when several bridges run), the registry keeps
    nothing in cache_dir, and a second instance finds the address book and revocation
    answers the first fetched."""
    shared = MemoryCache()

    def revocation_requests() -> int:
        return sum(app.requests.total() for app in sandbox.revocation.values())

    with registry_for(sandbox, "a", tmp_path / "one", shared) as registry:
        assert registry.lookup(B_REGISTRATOR)[0].signing_certificates
    assert not (tmp_path / "one").exists()
    assert "addressbook.json" in shared.blobs
    assert any(name.startswith("revocation/") for name in shared.blobs)
    sandbox.address_book.faults.fail_with = 503
    asked = revocation_requests()
    with registry_for(sandbox, "a", tmp_path / "two", shared) as registry:
        assert registry.book.refresh() is False
        (found,) = registry.lookup(B_REGISTRATOR)
        assert found.signing_certificates and not found.problems
    assert revocation_requests() == asked  # answered from the shared cache


def test_tampered_smp_metadata_is_refused(registry_a: Registry, sandbox: Sandbox) -> None:
    sandbox.smp.tamper = True
    with pytest.raises(RegistryUnavailable, match="not trustworthy"):
        registry_a.certpub.encryption_certificates(ORG_B)


def test_registry_outages(registry_a: Registry, sandbox: Sandbox) -> None:
    """The address book serves from its cache; CertPub answers from its cache until a
    forced refresh, which then fails temporarily, never as "unknown"."""
    certificates = registry_a.certpub.encryption_certificates(ORG_B)
    assert registry_a.book.refresh()
    sandbox.address_book.faults.fail_with = 503
    sandbox.smp.faults.fail_with = 503
    assert registry_a.book.refresh() is False
    assert registry_a.book.organisation(ORG_B).name == "Sandbox kommun B"
    assert registry_a.certpub.encryption_certificates(ORG_B) == certificates
    with pytest.raises(RegistryUnavailable, match="HTTP 503"):
        registry_a.certpub.encryption_certificates(ORG_B, refresh=True)


def test_cached_signing_certificates_never_ask_smp(registry_a: Registry, sandbox: Sandbox) -> None:
    """The event loop's shortcut: what the cache holds, or None; SMP is not asked either way."""
    assert registry_a.certpub.cached_signing_certificates(ORG_B) is None
    certificates = registry_a.certpub.signing_certificates(ORG_B)
    sandbox.smp.faults.fail_with = 503
    assert registry_a.certpub.cached_signing_certificates(ORG_B) == certificates
    assert registry_a.certpub.cached_signing_certificates(ORG_A) is None


def test_unregistered_organisation(registry_a: Registry) -> None:
    with pytest.raises(NotRegistered):
        registry_a.certpub.encryption_certificates("0203:nowhere.sandbox.test")


def test_rollover_is_followed_without_a_restart(registry_a: Registry, sandbox: Sandbox) -> None:
    old = sandbox.organisations["b"].encryption[-1]
    assert registry_a.certpub.encryption_certificates(ORG_B) == (old.cert,)
    new = sandbox.rollover("b", "encryption", "both")
    assert registry_a.certpub.encryption_certificates(ORG_B, refresh=True) == (old.cert, new.cert)
    sandbox.rollover("b", "encryption", "new")
    assert registry_a.certpub.encryption_certificates(ORG_B, refresh=True) == (new.cert,)
    b_config = config.load(sandbox.config_path("b"))
    assert b_config.decryption[0].cert == new.cert  # B's bridge gets the new key


def test_revoked_certificate_is_refused_via_ocsp_and_via_crl(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    o2o = sandbox.revocation["o2o"]
    with registry_for(sandbox, "a", tmp_path / "before") as registry:
        assert registry.certpub.signing_certificates(ORG_B)
    sandbox.revoke("b", "signing")
    try:
        for source, failing in (("ocsp", None), ("crl", "ocsp")):
            if failing:
                o2o.fail(failing, "error")
            asked = o2o.requests[source]
            with (
                registry_for(sandbox, "a", tmp_path / source) as registry,  # nothing cached
                pytest.raises(NoValidCertificate, match="no valid, trusted and unrevoked"),
            ):
                registry.certpub.signing_certificates(ORG_B)
            assert o2o.requests[source] > asked
        o2o.fail("crl", "error")  # nothing answers: a temporary failure, never "valid"
        with (
            registry_for(sandbox, "a", tmp_path / "none") as registry,
            pytest.raises(RegistryUnavailable, match="revocation status"),
        ):
            registry.certpub.signing_certificates(ORG_B)
    finally:
        o2o.fail("ocsp", None)
        o2o.fail("crl", None)
        new = sandbox.rollover("b", "signing", "new")  # leave B with a good certificate
    with registry_for(sandbox, "a", tmp_path / "after") as registry:
        assert registry.certpub.signing_certificates(ORG_B) == (new.cert,)


def test_message_from_a_to_b_through_the_access_points(
    registry_a: Registry, sandbox: Sandbox
) -> None:
    """Sealed for B with the certificate from CertPub, submitted to A's access point,
    pending at B, retrieved byte-identical, opened by B with its own key."""
    a, b = config.load(sandbox.config_path("a")), config.load(sandbox.config_path("b"))
    assert registry_a.addresses is not None and b.registry is not None
    recipient = registry_a.addresses.resolve(B_REGISTRATOR)
    message = make_message(
        sender=msg.Party(ORG_A, msg.Attention("a.registrator")),
        recipient=msg.Party(ORG_B, msg.Attention(recipient.address.identifier)),
    )
    (encryption_cert,) = registry_a.certpub.encryption_certificates(ORG_B)
    sealed = seal_message(message, signer=a.signing, recipient_cert=encryption_cert)

    def client(loaded: config.Config) -> Client:
        ap = loaded.access_point
        assert ap is not None
        verify = ssl.create_default_context(cafile=str(ap.tls_trust))
        base = ap.url.rsplit("/services/", 1)[0]  # the client adds its interface's path
        return Client(base, verify, ap.username, ap.password, ns=WSPLUGIN_NS)

    message_id = client(a).submit(
        sealed,
        from_party="ap-a",
        original_sender=ORG_A,
        final_recipient=ORG_B,
        conversation_id=message.conversation_id,
    )
    assert message_id in client(b).pending()
    _, payload = client(b).retrieve(message_id)
    assert payload == sealed
    with registry_for(sandbox, "b", Path(b.registry.cache_dir)) as registry_b:
        receiver = Receiver(
            decryption_keys=b.decryption,
            sender_signing_certs=list(registry_b.certpub.signing_certificates(ORG_A)),
            trust_anchors=b.trust_anchors,
            our_parties={ORG_B},
        )
    opened = open_envelope(payload, receiver)
    assert opened.verdict == ACCEPTED
    assert opened.message is not None
    assert opened.message.message_id == message.message_id


def test_sandbox_command_and_lookup_command(tmp_path: Path) -> None:
    """`sdk-bridge sandbox` says when it is ready, `lookup` answers, SIGTERM stops it;
    a restart keeps the ports."""
    command = [
        sys.executable,
        "-m",
        "sdk_bridge.cli",
        "sandbox",
        "--dir",
        str(tmp_path),
        "--key-size",
        "2048",
    ]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ports = []
    for _ in range(2):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environment)
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("sandbox ready at https://127.0.0.1:"), line
            ports.append(line.split()[3])
            lookup = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "sdk_bridge.cli",
                    "lookup",
                    "-c",
                    str(tmp_path / "org-a.yaml"),
                    B_REGISTRATOR,
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert lookup.returncode == 0, lookup.stderr
            assert "Sandbox kommun B (0203:b.sandbox.test)" in lookup.stdout
            assert "SHA-256" in lookup.stdout
            missing = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "sdk_bridge.cli",
                    "lookup",
                    "-c",
                    str(tmp_path / "org-a.yaml"),
                    "ekonomi@b.sandbox.test.sdk.a.sandbox.test",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert missing.returncode == 1
            assert "has no functional address 'ekonomi'" in missing.stderr
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        assert not (tmp_path / "ready").exists()
    assert ports[0] == ports[1]


def test_a_silent_client_does_not_stall_the_sandbox(registry_a: Registry, sandbox: Sandbox) -> None:
    """TLS handshakes happen per connection, not in the accepting thread."""
    with socket.create_connection(("127.0.0.1", sandbox.https.port)):
        started = time.monotonic()
        assert registry_a.certpub.encryption_certificates(ORG_B, refresh=True)
        assert time.monotonic() - started < 5


def test_certpub_cache_and_forced_refresh(registry_a: Registry, sandbox: Sandbox) -> None:
    registry_a.certpub.signing_certificates(ORG_B)
    before = sandbox.smp.requests
    registry_a.certpub.signing_certificates(ORG_B)
    assert sandbox.smp.requests == before  # from the cache (TTL)
    registry_a.certpub.signing_certificates(ORG_B, refresh=True)
    assert sandbox.smp.requests == before + 1


def test_unusable_published_encryption_certificates_are_not_handed_out(
    registry_a: Registry, sandbox: Sandbox
) -> None:
    registration = sandbox.smp.registrations[ORG_B]
    saved = registration.encryption_certs
    now = datetime.now(UTC)
    o2o = sandbox.o2o_pki
    sign_only = o2o.issued("b-sign-only") or o2o.issue("b-sign-only", key_usage="sign")
    expired = o2o.issued("b-expired") or o2o.issue(
        "b-expired",
        key_usage="encrypt",
        not_before=now - timedelta(days=1),
        not_after=now - timedelta(hours=1),
    )
    untrusted = sandbox.smp_pki.issued("b-untrusted") or sandbox.smp_pki.issue(
        "b-untrusted", key_usage="encrypt"
    )
    try:
        for bad in (sign_only, expired, untrusted):
            registration.encryption_certs = [bad.cert]
            with pytest.raises(NoValidCertificate):
                registry_a.certpub.encryption_certificates(ORG_B, refresh=True)
        registration.encryption_certs = [sign_only.cert, *saved]
        assert registry_a.certpub.encryption_certificates(ORG_B, refresh=True) == tuple(saved)
    finally:
        registration.encryption_certs = saved


def test_revoked_encryption_certificate_is_not_handed_out(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.revoke("b", "encryption")
    try:
        with (
            registry_for(sandbox, "a", tmp_path / "revoked") as registry,
            pytest.raises(NoValidCertificate, match="encryption certificate"),
        ):
            registry.certpub.encryption_certificates(ORG_B)
    finally:
        new = sandbox.rollover("b", "encryption", "new")
    with registry_for(sandbox, "a", tmp_path / "after") as registry:
        assert registry.certpub.encryption_certificates(ORG_B) == (new.cert,)


def test_lookup_exit_status(sandbox: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    config_file = str(sandbox.config_path("a"))
    assert cli.main(["lookup", "-c", config_file, ORG_B]) == 0
    sandbox.smp.faults.fail_with = 503
    assert cli.main(["lookup", "-c", config_file, ORG_B]) == 75  # temporary failure
    assert "problem: SMP at" in capsys.readouterr().out
    sandbox.smp.faults.fail_with = None
    registration = sandbox.smp.registrations.pop(ORG_B)
    try:
        assert cli.main(["lookup", "-c", config_file, ORG_B]) == 1  # cannot receive
        assert "not registered in SMP" in capsys.readouterr().out
    finally:
        sandbox.smp.registrations[ORG_B] = registration


def test_revoked_smp_signer_makes_metadata_untrustworthy(tmp_path: Path) -> None:
    federation = Sandbox(tmp_path / "sandbox", 1, key_size=2048)
    federation.start()
    try:
        with registry_for(federation, "a", tmp_path / "cache") as registry:
            assert registry.certpub.signing_certificates(ORG_A)
        federation.revoke_smp_signer()
        with (
            registry_for(federation, "a", tmp_path / "fresh") as registry,
            pytest.raises(RegistryUnavailable, match="the SMP's signing certificate"),
        ):
            registry.certpub.signing_certificates(ORG_A)
    finally:
        federation.stop()


def test_restart_refuses_other_settings(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError, match="made with organisations=2"):
        Sandbox(sandbox.directory, organisations=3)


def test_background_refresh_keeps_the_address_book_fresh(sandbox: Sandbox, tmp_path: Path) -> None:
    with registry_for(sandbox, "a", tmp_path) as registry:
        registry.start_background_refresh(interval=0.1)
        for _ in range(100):
            if registry.book.refreshed_at is not None:
                break
            time.sleep(0.05)
        assert registry.book.refreshed_at is not None
        first = registry.book.refreshed_at
        for _ in range(100):
            if registry.book.refreshed_at != first:
                break
            time.sleep(0.05)
        assert registry.book.refreshed_at > first


def test_a_domibus_4_sandbox_on_the_deprecated_interface(tmp_path: Path) -> None:
    """Started as Domibus 4.x: configurations for `/services/backend`, access points that
    serve nothing else; asking for 4.x with the current interface is refused."""
    with pytest.raises(ValueError, match="only the deprecated interface"):
        Sandbox(tmp_path / "sandbox", 1, key_size=2048, domibus="4")
    old = Sandbox(
        tmp_path / "sandbox",
        1,
        key_size=2048,
        interface="backend",
        domibus="4",
        intermediate_statuses=True,
    )
    try:
        settings = old._config(old.organisations["a"])["access_point"]
        assert isinstance(settings, dict)
        assert settings["interface"] == "backend"
        assert str(settings["url"]).endswith("/ap/a/services/backend")
        assert {ap.domibus for ap in old.access_points.values()} == {"4"}
    finally:
        old.stop()
