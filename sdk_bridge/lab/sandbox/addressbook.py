"""The sandbox's address book: a read-only JSON:API `addresses` collection with paging.

It is the shape `registry.addressbook.JsonApiSource` reads; Digg's real JSON is not public.
"""

import json
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode

from ...registry.addressbook import FunctionalAddress
from .web import Faults, respond

MAX_PAGE_SIZE = 500


class AddressBookAPI:
    """A WSGI app serving `entries` at `/api/v1/addresses`."""

    PATH = "/api/v1/addresses"

    def __init__(self, entries: list[FunctionalAddress]) -> None:
        self.entries = entries
        self.lock = threading.Lock()
        self.faults = Faults()
        self.requests = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        self.requests += 1
        if fault := self.faults.answer(start_response, "address book"):
            return fault
        if environ["REQUEST_METHOD"] != "GET" or environ.get("PATH_INFO") != self.PATH:
            return respond(start_response, 404)
        query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        try:
            number = max(1, int(query.get("page[number]", "1")))
            size = min(MAX_PAGE_SIZE, max(1, int(query.get("page[size]", "50"))))
        except ValueError:
            return respond(start_response, 400, b"page[number] and page[size] must be numbers")
        search = query.get("filter[search]", "").casefold()
        with self.lock:
            matching = [
                e
                for e in self.entries
                if not search
                or search in e.organisation_name.casefold()
                or search in e.organisation_id.casefold()
                or search in e.name.casefold()
            ]
        page = matching[(number - 1) * size : number * size]
        base = f"{environ['wsgi.url_scheme']}://{environ['HTTP_HOST']}{self.PATH}"
        next_query = {"page[number]": number + 1, "page[size]": size}
        if search:
            next_query["filter[search]"] = search
        document = {
            "data": [
                {
                    "type": "addresses",
                    "id": e.identifier,
                    "attributes": {
                        "name": e.name,
                        "organization": {
                            "identifier": e.organisation_id,
                            "name": e.organisation_name,
                        },
                    },
                }
                for e in page
            ],
            "links": {
                "next": f"{base}?{urlencode(next_query)}" if number * size < len(matching) else None
            },
            "meta": {"total": len(matching)},
        }
        body = json.dumps(document, ensure_ascii=False).encode()
        return respond(start_response, 200, body, "application/vnd.api+json")
