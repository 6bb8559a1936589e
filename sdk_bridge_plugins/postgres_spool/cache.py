"""The registry's cache, kept in the spool database for every instance."""

from datetime import datetime
from typing import TYPE_CHECKING

import psycopg

from sdk_bridge.plugin.spools import SpoolUnavailable

if TYPE_CHECKING:
    from .spool import PostgresSpool


class SharedRegistryCache:
    """The registry's cache (sdk_bridge.registry.cache.Cache) in the spool database: what one
    instance fetched (the address book, revocation answers) every other serves too, even
    one started while the registry cannot be reached. The database not answering is an
    OSError, as a cache directory's would be: the registry logs it and goes on."""

    def __init__(self, spool: "PostgresSpool") -> None:
        self.spool = spool

    def get(self, name: str) -> tuple[bytes, datetime] | None:
        try:
            with self.spool._connection() as db:
                row = db.execute(
                    "SELECT data, stored_at FROM registry_cache WHERE name = %s",
                    (name,),
                    binary=True,
                ).fetchone()
        except (SpoolUnavailable, psycopg.Error) as e:  # a cache: the registry goes on
            raise OSError(f"the registry cache in the spool database: {e}") from e
        return (bytes(row["data"]), row["stored_at"]) if row else None

    def put(self, name: str, data: bytes) -> None:
        try:
            with self.spool._connection() as db:
                db.execute(
                    "INSERT INTO registry_cache (name, data, stored_at) VALUES (%s, %b, now())"
                    " ON CONFLICT (name) DO UPDATE SET data = excluded.data,"
                    " stored_at = excluded.stored_at",
                    (name, data),
                )
        except (SpoolUnavailable, psycopg.Error) as e:  # a cache: the registry goes on
            raise OSError(f"the registry cache in the spool database: {e}") from e
