"""The systemd unit and what the daemon does for systemd: the unit verifies and is hardened
to an exposure of 2.0 or lower (with the port-25 drop-in too); the daemon says READY=1,
feeds the watchdog and says STOPPING=1; private keys are read from $CREDENTIALS_DIRECTORY."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sdk_bridge import config
from sdk_bridge.lab.sandbox.federation import Sandbox
from sdk_bridge.ops import checks

UNITS = Path(__file__).parent.parent / "systemd"
MAX_EXPOSURE = 2.0


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze not installed (scripts/install-system-packages: systemd)")
    return found


def with_drop_in(unit: str, drop_in: str) -> str:
    """The unit as systemd sees it with the drop-in's [Service] lines added."""
    lines = [line for line in drop_in.splitlines(True) if line.strip() != "[Service]"]
    return unit.replace("[Install]", "".join(lines) + "\n[Install]")


def exposure(unit_file: Path) -> float:
    result = subprocess.run(
        [analyze(), "security", "--offline=true", str(unit_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    return float(found.group(1))


@pytest.mark.parametrize("drop_in", [None, "port-25.conf", "maildir.conf"])
def test_the_unit_is_hardened(tmp_path: Path, drop_in: str | None) -> None:
    unit = (UNITS / "sdk-bridge.service").read_text()
    if drop_in:
        unit = with_drop_in(unit, (UNITS / drop_in).read_text())
    (tmp_path / "sdk-bridge.service").write_text(unit)
    assert exposure(tmp_path / "sdk-bridge.service") <= MAX_EXPOSURE


def test_the_unit_verifies(tmp_path: Path) -> None:
    unit = (UNITS / "sdk-bridge.service").read_text()
    assert "ExecStart=/usr/local/bin/sdk-bridge " in unit
    # verify needs the program to exist: the one installed here stands in.
    here = shutil.which("sdk-bridge") or str(Path(sys.executable).parent / "sdk-bridge")
    unit = unit.replace("/usr/local/bin/sdk-bridge", here)
    (tmp_path / "sdk-bridge.service").write_text(unit)
    result = subprocess.run(
        [analyze(), "verify", str(tmp_path / "sdk-bridge.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_keys_from_the_credentials_directory(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = yaml.safe_load(sandbox.config_path("a").read_text())
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for name, pair in (("signing", settings["keys"]["signing"]),):
        shutil.copy(sandbox.directory / pair["key"], credentials / f"{name}.key")
        pair["key"] = f"$CREDENTIALS_DIRECTORY/{name}.key"
    config_file = sandbox.directory / "org-a-credentials.yaml"
    config_file.write_text(yaml.safe_dump(settings, allow_unicode=True))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert config.load(config_file).signing.cert is not None
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(config.ConfigError, match="environment variable that is not set"):
        config.load(config_file)


def through_credentials(node: object, base: Path, credentials: Path, key: str = "") -> list[str]:
    """Put every secret file the settings name where systemd's LoadCredential= puts
    /etc/sdk-bridge/secrets/<name> (as `secrets_<name>`), and name it there; the settings
    moved."""
    moved = []
    if isinstance(node, dict):
        for name, value in node.items():
            where = f"{key}.{name}" if key else str(name)
            if name in checks.SECRET_KEYS and isinstance(value, str):
                target = "secrets_" + re.sub(r"[^a-z0-9_.]", "_", where)
                shutil.copy(base / value, credentials / target)  # base / absolute: absolute
                node[name] = f"$CREDENTIALS_DIRECTORY/{target}"
                moved.append(where)
            else:
                moved += through_credentials(value, base, credentials, where)
    elif isinstance(node, list):
        for number, item in enumerate(node):
            moved += through_credentials(item, base, credentials, f"{key}[{number}]")
    return moved


def test_every_secret_comes_as_a_credential(sandbox: Sandbox, tmp_path: Path) -> None:
    """The unit loads /etc/sdk-bridge/secrets as credentials: keys, passphrases, the
    access point's and mailboxes' passwords, the SMTP TLS key; a bridge whose configuration
    names them all under $CREDENTIALS_DIRECTORY starts, reading nothing else."""
    unit = (UNITS / "sdk-bridge.service").read_text()
    assert "\nLoadCredential=secrets:/etc/sdk-bridge/secrets\n" in unit
    settings = yaml.safe_load(sandbox.config_path("a").read_text())
    (tmp_path / "imap.pass").write_text("hemligt\n")
    settings["functional_addresses"][0]["deliver_to"] = {
        "plugin": "imap",
        "host": "127.0.0.1",
        "port": 993,
        "user": "registrator",
        "password_file": str(tmp_path / "imap.pass"),
    }
    settings["smtp"].update(tls_cert=str(sandbox.tls.cert_pem), tls_key=str(sandbox.tls.key_pem))
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    moved = through_credentials(settings, sandbox.directory, credentials)
    assert {
        "keys.signing.key",
        "keys.decryption[0].key",
        "access_point.password_file",
        "smtp.tls_key",
        "functional_addresses[0].deliver_to.password_file",
    } <= set(moved)
    config_file = sandbox.directory / "org-a-all-credentials.yaml"  # certificates: relative
    config_file.write_text(yaml.safe_dump(settings, allow_unicode=True))
    process = subprocess.Popen(
        [sys.executable, "-m", "sdk_bridge.cli", "run", "-c", str(config_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CREDENTIALS_DIRECTORY": str(credentials)},
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        line = process.stdout.readline()
        assert line.startswith("sdk-bridge ready"), process.stderr.read()
    finally:
        process.terminate()
        process.communicate(timeout=60)
    assert process.returncode == 0


def test_the_daemon_talks_to_systemd(sandbox: Sandbox, tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.settimeout(30)
    environment = {
        **os.environ,
        "NOTIFY_SOCKET": str(tmp_path / "notify"),
        "WATCHDOG_USEC": "1000000",  # one pulse every half second
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "sdk_bridge.cli", "run", "-c", str(sandbox.config_path("a"))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment,
    )
    try:
        messages = [listener.recv(100).decode()]
        deadline = time.monotonic() + 10
        while messages.count("WATCHDOG=1") < 3 and time.monotonic() < deadline:
            messages.append(listener.recv(100).decode())
        assert messages[0] == "READY=1"
        assert messages.count("WATCHDOG=1") >= 3
        process.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in messages:
            messages.append(listener.recv(100).decode())
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        listener.close()


def test_the_unit_bounds_its_resources() -> None:
    """Issue 16: a flood meets the bridge's own limits, not the kernel's defaults."""
    unit = (UNITS / "sdk-bridge.service").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and line[0] != "#"
    )
    assert int(settings["LimitNOFILE"]) >= 2 * 500 + 256  # smtp.max_connections' default fits
    assert settings["MemoryMax"] and settings["TasksMax"]
