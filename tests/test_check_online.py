"""`sdk-bridge check-config --online` against the sandbox: everything reachable and ours
reports ok; a wrong access point password, a functional address the address book does not
list, a mailbox that cannot be written and a revoked certificate each report FAIL."""

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from sdk_bridge import config
from sdk_bridge.lab.sandbox.federation import Sandbox
from sdk_bridge.ops import checks


def check(config_file: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sdk_bridge.cli", "check-config", "-c", str(config_file)]
    return subprocess.run([*command, "--online"], capture_output=True, text=True, timeout=120)


def lines(result: subprocess.CompletedProcess[str], start: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(start)]


def test_everything_reachable(sandbox: Sandbox) -> None:
    result = check(sandbox.config_path("a"))
    assert result.returncode == 0, result.stdout + result.stderr
    found = {line[6:].split(":")[0] for line in lines(result, "ok")}
    assert {
        "address book",
        "SMP (message)",
        "SMP (kvittens)",
        "CertPub signing",
        "CertPub encryption",
        "revocation (signing)",
        "revocation (decryption 1)",
        "access point",
        "mailbox of a.registrator",
    } <= found
    assert lines(result, "FAIL") == []


def test_what_is_wrong_is_named(sandbox: Sandbox, tmp_path: Path) -> None:
    settings = yaml.safe_load(sandbox.config_path("a").read_text())
    wrong_password = tmp_path / "ap.pass"
    wrong_password.write_text("not-the-password\n")
    settings["access_point"]["password_file"] = str(wrong_password)
    settings["functional_addresses"].append({"id": "a.finns-inte"})
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the Maildir should be")
    settings["functional_addresses"][0]["deliver_to"] = {"plugin": "maildir", "path": str(blocked)}
    config_file = sandbox.directory / "org-a-wrong.yaml"
    config_file.write_text(yaml.safe_dump(settings, allow_unicode=True))
    result = check(config_file)
    assert result.returncode == 1
    failed = "\n".join(lines(result, "FAIL"))
    assert "address book" in failed and "not listed: a.finns-inte" in failed
    assert "access point" in failed
    assert "mailbox of a.registrator" in failed
    assert result.stdout.rstrip().endswith("3 checks failed")


def test_the_interface_the_url_serves_is_told(sandbox: Sandbox) -> None:
    """The deprecated interface's URL with `interface: wsplugin` (the default): the WSDL
    there says which it is, and the check names the fix."""
    settings = yaml.safe_load(sandbox.config_path("a").read_text())
    url = settings["access_point"]["url"]
    settings["access_point"]["url"] = url.replace("/services/wsplugin", "/services/backend")
    config_file = sandbox.directory / "org-a-other-interface.yaml"
    config_file.write_text(yaml.safe_dump(settings, allow_unicode=True))
    result = check(config_file)
    assert result.returncode == 1
    (failed,) = lines(result, "FAIL")
    assert "serves the 'backend' interface, not the configured 'wsplugin'" in failed
    assert "access_point.interface: backend" in failed
    settings["access_point"]["interface"] = "backend"
    config_file.write_text(yaml.safe_dump(settings, allow_unicode=True))
    result = check(config_file)
    assert result.returncode == 0, result.stdout + result.stderr


def test_certificates_expiring_soon_are_warned_about(sandbox: Sandbox) -> None:
    loaded = config.load(sandbox.config_path("a"))
    assert checks.certificate_warnings(loaded) == []
    later = datetime.now(UTC) + timedelta(days=3650)
    warnings = checks.certificate_warnings(loaded, within=later - datetime.now(UTC))
    assert {w.split(": expires")[0] for w in warnings} == {
        "certificate signing",
        "certificate decryption 1",
    }


def test_a_revoked_certificate(sandbox: Sandbox) -> None:
    """Last in this module: the revocation stays."""
    sandbox.revoke("a", "signing")
    result = check(sandbox.config_path("a"))
    assert result.returncode == 1
    failed = lines(result, "FAIL")
    assert any(line.startswith("FAIL  revocation (signing): ") for line in failed), failed
    assert any(line.startswith("FAIL  CertPub signing: ") for line in failed), failed
