"""`sdk-bridge demo`, README's first command, as a newcomer runs it."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # running bridges or servers: `make test-fast` leaves it out


def test_the_demo_verifies_every_step(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sdk_bridge.cli", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line[:3] for line in lines if line[:3].strip().rstrip(".").isdigit()] == [
        f"{n:2d}." for n in range(1, 9)
    ]
    assert lines[-1].startswith("All steps verified in")
    assert list((tmp_path / "demo" / "sandbox" / "mail" / "b").glob("*/new/*"))


def test_the_demo_refuses_a_used_directory(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    result = subprocess.run(
        [sys.executable, "-m", "sdk_bridge.cli", "demo", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "is not empty" in result.stderr
