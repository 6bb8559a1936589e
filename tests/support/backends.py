"""The set-ups the end-to-end tests run real bridges on: SQLite (the default) and
PostgreSQL, each organisation in a fresh database of the session's throw-away cluster, both
on Domibus 5's current WS plugin interface; and SQLite again on the deprecated interface.

A module takes the parametrized fixture with `spool_backend = backends.spool_backend`
(PostgreSQL's cluster, the plugin's `postgres_server`, is started only for its turn), then
passes `spool_backend.spools()` to `Sandbox` or `LocalRun`. Modules that use the
shared `sandbox` fixture take `sandbox = backends.sandbox` instead of the plugin's, to run
on both. The fixtures are module-scoped, so pytest runs a module through on SQLite, then
again on PostgreSQL.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pytest

from sdk_bridge.lab.sandbox.federation import Sandbox
from sdk_bridge_plugins import postgres_spool
from support import postgres

BACKENDS = ("sqlite", "postgres")  # each on Domibus 5's current WS plugin interface
# The end-to-end, crash and fault tests run once more: SQLite on Domibus 4.x's deprecated
# interface (`bridge_setup`).
WITH_DEPRECATED_INTERFACE = (*BACKENDS, "sqlite-backend-interface")
LABELS = ("a", "b")  # the sandbox's organisations


@dataclass
class SpoolBackend:
    name: str
    server: postgres.PostgreSQL | None  # for "postgres"
    interface: str = "wsplugin"  # the access point interface the bridges speak

    def spools(self, labels: Iterable[str] = LABELS) -> dict[str, dict[str, str]]:
        """`Sandbox(spools=...)`: per label a new database, upgraded as `sdk-bridge db
        upgrade` does it before a first start; nothing for SQLite, the default."""
        if self.server is None:
            return {}
        spools = {}
        for label in labels:
            dsn = self.server.dsn(self.server.database())
            postgres_spool.upgrade({"dsn": dsn})
            spools[label] = {"backend": "postgres", "dsn": dsn}
        return spools


@pytest.fixture(scope="module", params=BACKENDS)
def spool_backend(request: pytest.FixtureRequest) -> SpoolBackend:
    """Each back end in turn; PostgreSQL's cluster only started (or skipped) when needed."""
    return _setup(request)


@pytest.fixture(scope="module", params=WITH_DEPRECATED_INTERFACE)
def bridge_setup(request: pytest.FixtureRequest) -> SpoolBackend:
    """As `spool_backend`, and SQLite again with the bridges on the deprecated interface
    (a module takes it under that name: `spool_backend = backends.bridge_setup`)."""
    return _setup(request)


def _setup(request: pytest.FixtureRequest) -> SpoolBackend:
    if request.param == "postgres":
        return SpoolBackend("postgres", request.getfixturevalue("postgres_server"))
    if request.param == "sqlite-backend-interface":
        return SpoolBackend("sqlite", None, "backend")
    return SpoolBackend("sqlite", None)


@pytest.fixture(scope="module")
def sandbox(
    tmp_path_factory: pytest.TempPathFactory, spool_backend: SpoolBackend
) -> Iterator[Sandbox]:
    """The plugin's `sandbox`, its bridges' configurations naming the module's back end."""
    federation = Sandbox(
        tmp_path_factory.mktemp("sandbox"),
        2,
        key_size=2048,
        spools=spool_backend.spools(),
        interface=spool_backend.interface,
    )
    federation.start()
    yield federation
    federation.stop()
