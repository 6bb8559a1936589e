"""The whole local federation, composed: `sdk-bridge sandbox --dir DIR`.

One HTTPS port serves the address book (`/addressbook`), the SMP with CertPub (`/smp`)
and one access point per organisation (`/ap/<label>`, its WS plugin at
`/ap/<label>/services/wsplugin` and, deprecated, `/services/backend`), or with
`shared_access_point` one for them all (`/ap/shared`), as a service provider runs one
Domibus for several organisations; one plain HTTP port serves the
CRLs and OCSP responders (`/o2o`, `/smp`), as real revocation services do. Three test
PKIs are kept apart as in Digg's federation: O2O (organisations' signing and encryption
certificates), SMP (the metadata signer) and TLS. Everything lives in DIR, so a restarted
sandbox has the same ports, keys, messages and revocations.
"""

import json
import secrets
import ssl
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from ...registry.addressbook import FunctionalAddress
from ...registry.addresses import slug
from ...runtime.files import write_private
from ...sdk.keys import KeyPair
from ..testpki import Identity, TestPKI, load_pki, make_pki
from .accesspoint import AccessPoint, Generation, PluginUser
from .addressbook import AddressBookAPI
from .ports import free_tcp_port, free_udp_port
from .revocation import RevocationApp, revocation_urls
from .sml import SMLZone
from .smp import SMP, Registration
from .web import Router, Server

STATE_FILE = "sandbox.json"
READY_FILE = "ready"
DOMAIN = "sandbox.test"
HOST = "127.0.0.1"
# A's registrator, and B's as A's people write to it (B's address under A's SDK domain).
FROM_A = f"registrator@a.{DOMAIN}"
TO_B = f"registrator@b.{DOMAIN}.sdk.a.{DOMAIN}"
FUNCTIONS = ("Registrator", "Socialtjänsten")
SHARED = "shared"  # the label of the one access point of a shared sandbox
INTERFACE_PATHS = {"wsplugin": "/services/wsplugin", "backend": "/services/backend"}


@dataclass
class Organisation:
    label: str  # "a"
    id: str  # "0203:a.sandbox.test"
    name: str
    signing: list[Identity]  # published; more than one during a rollover
    encryption: list[Identity]
    ap_password: str

    @property
    def addresses(self) -> list[FunctionalAddress]:
        return [
            FunctionalAddress(f"{self.label}.{function.lower()}", function, self.id, self.name)
            for function in FUNCTIONS
        ]


def _labels(count: int) -> list[str]:
    return [string.ascii_lowercase[i] for i in range(count)]


class Sandbox:
    def __init__(
        self,
        directory: Path,
        organisations: int | None = None,
        key_size: int | None = None,
        *,
        sml: bool | None = None,
        conversation_id_rule: str | None = None,
        retention_minutes: int | None = None,
        spools: Mapping[str, Mapping[str, str]] | None = None,
        shared_access_point: bool | None = None,
        admin_plugin_users: bool | None = None,
        interface: str = "wsplugin",
        mtom: bool = False,
        domibus: Generation = "5",
        intermediate_statuses: bool = False,
    ) -> None:
        """A new sandbox in `directory`, or the one already there. For an existing one the
        settings given must match how it was created (None: as it was). `spools`: per
        organisation label, the spool back end its configuration names beside its directory
        (`{"backend": "postgres", "dsn": ...}`), for running the bridges on a database;
        SQLite for the others. Not kept in `directory`: the configurations say it.

        `shared_access_point`: one access point for every organisation; `admin_plugin_users`:
        the bridges' plugin users are administrators (see every organisation's messages)
        instead of ROLE_USERs with their organisation as originalUser. `interface`: which WS
        plugin interface the configurations name; `mtom`: retrieve answers as MTOM/XOP;
        `domibus="4"`: the access points answer as Domibus 4.x (the deprecated interface
        only, its fault shapes); `intermediate_statuses`: a submission's status goes
        through SEND_ENQUEUED, SEND_ATTEMPT_FAILED and WAITING_FOR_RETRY first."""
        if domibus not in ("4", "5"):
            raise ValueError("domibus must be 4 or 5")
        if domibus == "4" and interface == "wsplugin":
            raise ValueError("Domibus 4.x serves only the deprecated interface (backend)")
        if interface not in INTERFACE_PATHS:
            raise ValueError(f"interface must be one of {sorted(INTERFACE_PATHS)}")
        self.interface = interface
        self.directory = directory.resolve()
        self.spools = dict(spools or {})
        self.directory.mkdir(parents=True, exist_ok=True)
        wanted = {
            "organisations": organisations,
            "key_size": key_size,
            "sml": sml,
            "conversation_id_rule": conversation_id_rule,
            "retention_minutes": retention_minutes,
            "shared_access_point": shared_access_point,
            "admin_plugin_users": admin_plugin_users,
        }
        state_file = self.directory / STATE_FILE
        if state_file.exists():
            self.state = json.loads(state_file.read_text())
            self.state.setdefault("shared_access_point", False)  # made before there were
            self.state.setdefault("admin_plugin_users", False)
            for name, value in wanted.items():
                if value is not None and value != self.state[name]:
                    raise ValueError(
                        f"{self.directory} holds a sandbox made with {name}={self.state[name]}; "
                        "start it without that option, or use another directory"
                    )
        else:
            defaults = {
                "organisations": 2,
                "key_size": 3072,
                "sml": False,
                "conversation_id_rule": "business",
                "retention_minutes": 0,
                "shared_access_point": False,
                "admin_plugin_users": False,
            }
            self.state = {k: defaults[k] if v is None else v for k, v in wanted.items()}
            self.state.update(https_port=0, http_port=0, sml_port=None)
            # Each organisation's bridge gets an SMTP port, kept across restarts.
            self.state["smtp_ports"] = {
                label: free_tcp_port() for label in _labels(self.state["organisations"])
            }
            if self.state["sml"]:
                self.state["sml_port"] = free_udp_port()
        self.state.setdefault(  # and an admin port (a sandbox made before they had one, too)
            "admin_ports",
            {label: free_tcp_port() for label in _labels(self.state["organisations"])},
        )
        if not 1 <= self.state["organisations"] <= 26:
            raise ValueError("a sandbox has between 1 and 26 organisations")
        self.key_size = self.state["key_size"]
        self.tls_pki = self._pki("tls")
        self.tls = self._identity(self.tls_pki, "tls-server", "sign", hosts=[HOST, "localhost"])
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls.cert_pem, self.tls.key_pem)
        # Bound first: the PKIs' revocation URLs and the SMP's endpoints need the ports.
        self._https_routes, self._http_routes = Router(), Router()
        self.https = Server(self._https_routes, HOST, self.state["https_port"], tls=context)
        self.http = Server(self._http_routes, HOST, self.state["http_port"])
        self.state.update(https_port=self.https.port, http_port=self.http.port)

        self.revocation = {name: RevocationApp() for name in ("o2o", "smp")}
        self.o2o_pki = self._pki("o2o", revocation_urls(f"{self.http.url}/o2o"))
        self.smp_pki = self._pki("smp", revocation_urls(f"{self.http.url}/smp"))
        self.revocation["o2o"].pki, self.revocation["smp"].pki = self.o2o_pki, self.smp_pki
        self.organisations = {
            label: self._organisation(label) for label in _labels(self.state["organisations"])
        }
        signer = self._identity(self.smp_pki, "smp-signer", "sign")
        self.smp = SMP(KeyPair(signer.key, signer.cert), self._registrations())
        self.address_book = AddressBookAPI(
            [a for o in self.organisations.values() for a in o.addresses]
        )
        served = (
            {SHARED: list(self.organisations.values())}
            if self.state["shared_access_point"]
            else {label: [o] for label, o in self.organisations.items()}
        )
        self.access_points = {
            label: AccessPoint(
                self.directory / "ap" / label,
                party_id=f"ap-{label}",
                organisations={o.id for o in organisations},
                users={
                    o.label: PluginUser(
                        o.ap_password, None if self.state["admin_plugin_users"] else o.id
                    )
                    for o in organisations
                },
                route=self._route,
                conversation_id_rule=self.state["conversation_id_rule"],
                retention_downloaded_minutes=self.state["retention_minutes"],
                mtom=mtom,
                domibus=domibus,
            )
            for label, organisations in served.items()
        }
        for access_point in self.access_points.values():
            access_point.intermediate_statuses(intermediate_statuses)
        self._https_routes.routes.update(
            addressbook=self.address_book, smp=self.smp, ap=Router(dict(self.access_points))
        )
        self._http_routes.routes.update(self.revocation)
        smp_urls = {o.id: f"{self.https.url}/smp" for o in self.organisations.values()}
        self.sml = SMLZone(self.state["sml_port"], smp_urls) if self.state.get("sml_port") else None
        self.save()

    # --- running --------------------------------------------------------------------------

    def start(self) -> None:
        """Serve; on failure, whatever did start is stopped again."""
        try:
            self.https.start()
            self.http.start()
            if self.sml:
                self.sml.start()
        except BaseException:
            self.stop()
            raise
        self.write_configs()
        (self.directory / READY_FILE).write_text(self.https.url + "\n")

    def stop(self) -> None:
        (self.directory / READY_FILE).unlink(missing_ok=True)
        if self.sml:
            self.sml.stop()
        self.https.stop()
        self.http.stop()

    def save(self) -> None:
        (self.directory / STATE_FILE).write_text(json.dumps(self.state, indent=2))

    # --- switches for tests -----------------------------------------------------------------

    def rollover(self, label: str, kind: str, stage: str) -> Identity:
        """Publish a new `kind` ("signing"/"encryption") certificate beside the old one
        (stage "both"), then alone (stage "new"). Returns the new identity."""
        organisation = self.organisations[label]
        names = self.state["published"][label][kind]
        generation = len(names) if stage == "both" else len(names) - 1
        new_name = f"org-{label}-{kind}-{generation + 1}"
        usage = "sign" if kind == "signing" else "encrypt"
        new = self._identity(self.o2o_pki, new_name, usage)
        names[:] = [names[-1], new_name] if stage == "both" else [new_name]
        setattr(organisation, kind, [self._identity(self.o2o_pki, n, usage) for n in names])
        self.save()
        self.smp.registrations.update(self._registrations())
        self.write_configs()
        return new

    def revoke_smp_signer(self) -> None:
        """Revoke the certificate the SMP signs its metadata with."""
        self.smp_pki.revoke(self.smp.signer.cert)

    def revoke(self, label: str, kind: str) -> None:
        """Revoke the organisation's current `kind` certificate(s)."""
        for identity in getattr(self.organisations[label], kind):
            self.o2o_pki.revoke(identity.cert)

    # --- configurations ---------------------------------------------------------------------

    def config_path(self, label: str) -> Path:
        return self.directory / f"org-{label}.yaml"

    def write_configs(self) -> None:
        for organisation in self.organisations.values():
            self.config_path(organisation.label).write_text(
                "# Written by `sdk-bridge sandbox`; rewritten when the sandbox starts.\n"
                + yaml.safe_dump(self._config(organisation), sort_keys=False, allow_unicode=True)
            )

    def _config(self, organisation: Organisation) -> dict[str, object]:
        def relative(path: Path) -> str:
            return str(path.relative_to(self.directory))

        def keypair(identity: Identity) -> dict[str, str]:
            return {"key": relative(identity.key_pem), "cert": relative(identity.cert_pem)}

        tls_trust = relative(self.tls_pki.chain_pem)
        return {
            "organisation": {
                "id": organisation.id,
                "sdk_domain": f"sdk.{organisation.label}.{DOMAIN}",
            },
            "keys": {
                "signing": keypair(organisation.signing[-1]),
                "decryption": [keypair(i) for i in reversed(organisation.encryption)],
                "trust_anchors": [relative(self.o2o_pki.chain_pem)],
            },
            "registry": {
                "address_book": f"{self.https.url}/addressbook{AddressBookAPI.PATH}",
                **(
                    {"sml_zone": self.sml.zone, "sml_nameservers": [f"{HOST}:{self.sml.port}"]}
                    if self.sml
                    else {"smp": f"{self.https.url}/smp"}
                ),
                "smp_trust_anchors": [relative(self.smp_pki.chain_pem)],
                "tls_trust": tls_trust,
                "cache_dir": f"state/{organisation.label}",
            },
            "access_point": {
                "url": f"{self.https.url}/ap/{self.ap_label(organisation.label)}"
                + INTERFACE_PATHS[self.interface],
                "interface": self.interface,
                "username": organisation.label,
                "password_file": f"orgs/{organisation.label}/ap.pass",
                "party_id": f"ap-{self.ap_label(organisation.label)}",
                "tls_trust": tls_trust,
            },
            "smtp": {
                "hostname": f"bridge.{organisation.label}.{DOMAIN}",
                "listen": [f"{HOST}:{self.state['smtp_ports'][organisation.label]}"],
                "allowed_networks": [f"{HOST}/32"],
            },
            "functional_addresses": [
                {
                    "id": address.identifier,
                    "senders": [f"{slug(address.name)}@{organisation.label}.{DOMAIN}"],
                    "deliver_to": {"plugin": "maildir", "path": str(self.maildir(address))},
                }
                for address in organisation.addresses
            ],
            "spool": self._spool(organisation.label),
            "admin": {"listen": f"{HOST}:{self.state['admin_ports'][organisation.label]}"},
        }

    def _spool(self, label: str) -> str | dict[str, str]:
        """`spool:` for `label`: a directory (SQLite), or the back end `spools` names with
        that directory for the mail still arriving over SMTP."""
        directory = f"state/{label}/spool"
        if label not in self.spools:
            return directory  # SQLite, the default
        backend = dict(self.spools[label])
        return {"backend": backend.pop("backend"), "directory": directory, **backend}

    def maildir(self, address: FunctionalAddress) -> Path:
        """Where the bridge of `address`'s organisation delivers its incoming mail."""
        label = address.identifier.split(".", 1)[0]
        return self.directory / "mail" / label / address.identifier

    def ap_label(self, label: str) -> str:
        """The access point that serves organisation `label`."""
        return SHARED if self.state["shared_access_point"] else label

    def access_point(self, label: str) -> AccessPoint:
        """Organisation `label`'s access point (the shared one, in a shared sandbox)."""
        return self.access_points[self.ap_label(label)]

    # --- state ----------------------------------------------------------------------------

    def _pki(self, name: str, urls: dict[str, str] | None = None) -> TestPKI:
        directory = self.directory / "pki" / name
        if (directory / "pki.json").exists():
            return load_pki(directory)
        return make_pki(directory, self.key_size, **(urls or {}))

    def _identity(
        self, pki: TestPKI, name: str, usage: str, hosts: list[str] | None = None
    ) -> Identity:
        return pki.issued(name) or pki.issue(name, key_usage=usage, hosts=hosts or ())

    def _organisation(self, label: str) -> Organisation:
        secrets_file = self.directory / "orgs" / label / "ap.pass"
        if not secrets_file.exists():
            secrets_file.parent.mkdir(parents=True, exist_ok=True)
            write_private(secrets_file, (secrets.token_urlsafe(18) + "\n").encode())
        published = self.state.setdefault("published", {}).setdefault(
            label, {"signing": [f"org-{label}-signing"], "encryption": [f"org-{label}-encryption"]}
        )
        return Organisation(
            label=label,
            id=f"0203:{label}.{DOMAIN}",
            name=f"Sandbox kommun {label.upper()}",
            signing=[self._identity(self.o2o_pki, n, "sign") for n in published["signing"]],
            encryption=[
                self._identity(self.o2o_pki, n, "encrypt") for n in published["encryption"]
            ],
            ap_password=secrets_file.read_text().strip(),
        )

    def _registrations(self) -> dict[str, Registration]:
        return {
            o.id: Registration(
                endpoint_url=f"{self.https.url}/ap/{self.ap_label(o.label)}",
                access_point_cert=self.tls.cert,
                signing_certs=[i.cert for i in o.signing],
                encryption_certs=[i.cert for i in o.encryption],
            )
            for o in self.organisations.values()
        }

    def _route(self, participant: str) -> AccessPoint | None:
        """The access point the SMP publishes for `participant`, as dynamic discovery finds it."""
        registration = self.smp.find(participant)
        if registration is None:
            return None
        label = registration.endpoint_url.rstrip("/").rsplit("/", 1)[-1]
        return self.access_points.get(label)
