"""The suite's pytest plugin (`-p support.plugin`, pyproject.toml): the shared fixtures
(one test PKI per session, A's and B's identities, a sandbox per module, one PostgreSQL
per session), the attack catalogue's count, and the check that a run leaves no process of
its own behind."""

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from sdk_bridge.lab.sandbox.federation import Sandbox
from sdk_bridge.lab.testpki import Identity, TestPKI, make_pki
from sdk_bridge.sdk.sealing import Receiver
from support.hostile import HOSTILE_CASES
from support.parties import ADDRESS_B, ORG_B, keypair

if TYPE_CHECKING:
    from support import clamd, postgres


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_pki(tmp_path_factory.mktemp("pki"), key_size=3072)


@pytest.fixture(scope="session")
def alice(pki: TestPKI) -> Identity:
    """Organisation A's function certificate (signs what A sends)."""
    return pki.issue("a.example.se")


@pytest.fixture(scope="session")
def bob(pki: TestPKI) -> Identity:
    """Organisation B's function certificate (A encrypts to it)."""
    return pki.issue("b.example.se")


@pytest.fixture(scope="session")
def bob_next(pki: TestPKI) -> Identity:
    """B's next certificate, during a rollover."""
    return pki.issue("b.example.se next")


@pytest.fixture(scope="session")
def mallory(pki: TestPKI) -> Identity:
    """A valid certificate from the same CA that belongs to neither A nor B."""
    return pki.issue("mallory.example.se")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A running local federation (two organisations, 2048-bit keys for speed), per module."""
    federation = Sandbox(tmp_path_factory.mktemp("sandbox"), 2, key_size=2048)
    federation.start()
    yield federation
    federation.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator["postgres.PostgreSQL"]:
    """The throw-away PostgreSQL of tests/support/postgres.py, started once for the session and
    only when a test asks for it. Defined here, not taken into each module, so that the
    modules share it instead of each starting a cluster of its own."""
    from support import postgres

    yield from postgres.session_cluster()


@pytest.fixture(scope="session")
def clamd_server() -> Iterator["clamd.Clamd"]:
    """One clamd for the whole run, started when a test first asks for it (its signature
    database takes seconds to load)."""
    from support import clamd

    yield from clamd.session_clamd()


@pytest.fixture
def receiver_b(pki: TestPKI, alice: Identity, bob: Identity) -> Receiver:
    """B as it opens what A sends: A's published certificate, the test CA as trust anchor."""
    return Receiver(
        decryption_keys=[keypair(bob)],
        sender_signing_certs=[alice.cert],
        trust_anchors=[pki.issuing_ca.cert, pki.root.cert],
        our_parties={ORG_B},
        our_functional_addresses={ADDRESS_B},
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Tests marked `hostile(category)` count as cases tried, and handled when they pass."""
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("hostile")
    if marker is not None and report.when == "call":
        HOSTILE_CASES[marker.args[0]]["tried"] += 1
        HOSTILE_CASES[marker.args[0]]["handled"] += report.passed


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if LEFT_RUNNING:
        terminalreporter.section("processes the tests left running (killed now)", red=True)
        for line in LEFT_RUNNING:
            terminalreporter.write_line(line)
    if not HOSTILE_CASES:
        return
    terminalreporter.section("hostile input")
    for case, counts in sorted(HOSTILE_CASES.items()):
        terminalreporter.write_line(
            f"{case}: {counts['tried']} cases tried, {counts['handled']} handled"
        )


# Every process the tests start inherits this mark in its environment: at the end of the
# run none may be left (a bridge, its crypto workers, a Dovecot, a PostgreSQL, a clamd).
RUN_MARK = "SDK_BRIDGE_TEST_RUN"
LEFT_GRACE_SECONDS = 15.0  # for what was told to stop a moment ago
LEFT_RUNNING: list[str] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    os.environ[RUN_MARK] = uuid.uuid4().hex


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail a run that leaves any of its processes behind; they are killed."""
    deadline = time.monotonic() + LEFT_GRACE_SECONDS
    while (left := _ours_running()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid, command in left.items():
        LEFT_RUNNING.append(f"{pid}: {command}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if left and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _ours_running() -> dict[int, str]:
    """pid -> command line of the processes carrying this run's mark, but this one."""
    mark = f"{RUN_MARK}={os.environ.get(RUN_MARK)}".encode()
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int(proc.name) == os.getpid() or mark not in (proc / "environ").read_bytes():
                continue
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        if command:  # a zombie has none: it is gone, its parent not yet told
            found[int(proc.name)] = command.strip()[:200]
    return found
