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

from bridge import config
from bridge.sandbox.federation import Sandbox

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
        [sys.executable, "-m", "bridge.cli", "run", "-c", str(sandbox.config_path("a"))],
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
