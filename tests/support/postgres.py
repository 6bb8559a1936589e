"""A throw-away PostgreSQL (Debian package postgresql) on loopback, for the spool tests.

`PostgreSQL(directory)` runs initdb into `directory/data` (trust authentication for the
superuser `postgres`, fsync off: the cluster is thrown away) and starts `postgres` in the
foreground as a child, listening on 127.0.0.1 at a free port, its Unix socket inside
`directory`; it polls with a connection until the server answers. PostgreSQL refuses to run
as root, so as root (CI) the server runs as the system user `postgres` that the Debian
package creates, and `directory` is handed to it. Starting skips the test with the reason
when the server binaries are missing (scripts/install-system-packages installs them).

The session fixture `postgres_server` (in support/plugin.py, so that every module shares the one
cluster `session_cluster()` starts) serves every test; `database()` makes a fresh database.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sdk_bridge.lab.sandbox.ports import free_tcp_port
from support.processes import stop_process

SERVER_USER = "postgres"  # made by the Debian package; PostgreSQL will not run as root
START_TIMEOUT = 30.0  # seconds
STOP_TIMEOUT = 10.0
COMMAND_TIMEOUT = 60.0  # initdb


def binaries() -> Path | None:
    """The directory with initdb and postgres: Debian's, else the one on PATH."""
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found and shutil.which("postgres") else None


def require_postgres() -> Path:
    """Skip the calling test unless a PostgreSQL server can be started here."""
    found = binaries()
    if found is None:
        pytest.skip("PostgreSQL not installed (scripts/install-system-packages: postgresql)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            pytest.skip(f"running as root, and there is no user {SERVER_USER} to run PostgreSQL")
    return found


class PostgreSQL:
    """One PostgreSQL cluster serving 127.0.0.1:`port`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.port = free_tcp_port()
        self.log = directory / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None

    def dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def database(self, template: str | None = None) -> str:
        """A new database (a copy of `template`, else empty); its name."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        copy = f" TEMPLATE {template}" if template else ""
        with psycopg.connect(self.dsn(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}{copy}")
        return name

    def start(self) -> PostgreSQL:
        bin_directory = require_postgres()
        user: int | None = None
        group: int | None = None
        extra_groups: list[int] | None = None
        if os.geteuid() == 0:
            account = pwd.getpwnam(SERVER_USER)
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            user, group, extra_groups = account.pw_uid, account.pw_gid, []
        subprocess.run(
            [
                str(bin_directory / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
            user=user,
            group=group,
            extra_groups=extra_groups,
        )
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    str(bin_directory / "postgres"),
                    "-D",
                    str(self.data),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.directory),
                    "-c",
                    "fsync=off",
                    "-c",
                    "full_page_writes=off",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                user=user,
                group=group,
                extra_groups=extra_groups,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.process.poll() is None:
            if self.ping():
                return self
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"PostgreSQL did not start within {START_TIMEOUT} s:\n{self.log.read_text()}")

    def ping(self) -> bool:
        try:
            with psycopg.connect(self.dsn(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        stop_process(self.process, STOP_TIMEOUT)

    def __enter__(self) -> PostgreSQL:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def session_cluster() -> Iterator[PostgreSQL]:
    """One cluster for the session, in a temporary directory the server user may use."""
    require_postgres()
    with (
        tempfile.TemporaryDirectory(prefix="postgres-") as directory,
        PostgreSQL(Path(directory)) as server,
    ):
        yield server
