"""The registry's DNS path: SML U-NAPTR lookups against a real local DNS server (dnsmasq)."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdk_bridge import config
from sdk_bridge.lab.sandbox.federation import Sandbox
from sdk_bridge.registry.errors import NotRegistered, RegistryUnavailable
from sdk_bridge.registry.smp import Locator

if not shutil.which("dnsmasq", path="/usr/sbin:/usr/bin:/sbin:/bin"):
    pytest.skip("needs dnsmasq (Debian package dnsmasq-base)", allow_module_level=True)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    federation = Sandbox(tmp_path_factory.mktemp("sml-sandbox"), 2, key_size=2048, sml=True)
    federation.start()
    yield federation
    federation.stop()


def test_smp_is_found_through_the_sml(sandbox: Sandbox) -> None:
    assert sandbox.sml is not None
    locator = Locator(sml_zone=sandbox.sml.zone, nameservers=("127.0.0.1",), port=sandbox.sml.port)
    assert locator.smp_url("0203:B.sandbox.test") == f"{sandbox.https.url}/smp"
    with pytest.raises(NotRegistered, match="not registered in the SML"):
        locator.smp_url("0203:nowhere.sandbox.test")


def test_registry_configured_for_the_sml(sandbox: Sandbox, tmp_path: Path) -> None:
    loaded = config.load(sandbox.config_path("a"))
    assert loaded.registry is not None and sandbox.sml is not None
    assert loaded.registry.smp_url is None and loaded.registry.sml_zone == sandbox.sml.zone
    with config.open_registry(loaded) as registry:
        (found,) = registry.lookup("0203:b.sandbox.test")
        assert not found.problems
        assert found.encryption_certificates == (sandbox.organisations["b"].encryption[0].cert,)


def test_dns_server_down_is_a_temporary_failure(sandbox: Sandbox) -> None:
    assert sandbox.sml is not None
    locator = Locator(sml_zone=sandbox.sml.zone, nameservers=("127.0.0.1",), port=1, timeout=1)
    with pytest.raises(RegistryUnavailable, match="SML lookup"):
        locator.smp_url("0203:b.sandbox.test")
