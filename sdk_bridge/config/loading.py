"""Loading a configuration: each section read from its nodes into the schema, keys and
certificates loaded on the way (so a bad one fails at load), and what the daemon and the
commands open from it."""

import ipaddress
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509

from .. import plugin
from ..registry.cache import Cache
from ..registry.client import Registry
from ..registry.settings import RegistryConfig
from ..sdk.keys import KeyError_, KeyPair, load_certificates, load_keypair, read_passphrase
from ..sdk.names import ORGANISATION_ID, SDK_FEDERATION
from ..spool import Retention, Spool
from .reader import (
    Node,
    compose,
    existing_file,
    listen,
    listen_one,
    nameserver,
    required,
    strings,
    url,
    whole_number,
)
from .schema import (
    AccessPointConfig,
    AdminConfig,
    Config,
    FunctionalAddressConfig,
    OutboundConfig,
    SMTPConfig,
)

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")  # libpq's


def load(file: Path) -> Config:
    """Read and check `file`: keys and certificates are loaded, so a bad one fails here."""
    root = compose(file)
    sections = root.mapping(
        "organisation",
        "keys",
        "registry",
        "access_point",
        "smtp",
        "functional_addresses",
        "spool",
        "outbound",
        "admin",
        "retention",
    )
    organisation = required(sections, root, "organisation")
    org = organisation.mapping("id", "federation", "sdk_domain")
    org_id = required(org, organisation, "id")
    if not ORGANISATION_ID.fullmatch(org_id.string()):
        raise org_id.error("expected an organisation id such as 0203:kommun.se")
    keys = required(sections, root, "keys")
    key_fields = keys.mapping("signing", "decryption", "trust_anchors")
    signing = _keypair(required(key_fields, keys, "signing"))
    decryption = [_keypair(n) for n in required(key_fields, keys, "decryption").sequence()]
    if not decryption:
        raise key_fields["decryption"].error("at least one decryption key is required")
    spool, spool_backend = (
        _spool(sections["spool"]) if "spool" in sections else (None, ("sqlite", {}))
    )
    return Config(
        organisation_id=org_id.string(),
        federation=org["federation"].string() if "federation" in org else SDK_FEDERATION,
        sdk_domain=org["sdk_domain"].string().strip(".").lower() if "sdk_domain" in org else None,
        signing=signing,
        decryption=decryption,
        trust_anchors=_certificates(required(key_fields, keys, "trust_anchors")),
        registry=_registry(sections["registry"]) if "registry" in sections else None,
        access_point=_access_point(sections["access_point"])
        if "access_point" in sections
        else None,
        smtp=_smtp(sections["smtp"]) if "smtp" in sections else None,
        functional_addresses=tuple(
            _functional_address(n) for n in sections["functional_addresses"].sequence()
        )
        if "functional_addresses" in sections
        else (),
        spool=spool,
        spool_backend=spool_backend,
        outbound=_outbound(sections["outbound"]) if "outbound" in sections else OutboundConfig(),
        admin=_admin(sections["admin"]) if "admin" in sections else None,
        retention=_retention(sections["retention"]) if "retention" in sections else Retention(),
    )


def _keypair(node: Node) -> KeyPair:
    fields = node.mapping("key", "cert", "passphrase_file")
    key = required(fields, node, "key")
    passphrase = None
    if "passphrase_file" in fields:
        try:
            passphrase = read_passphrase(fields["passphrase_file"].path())
        except KeyError_ as e:
            raise fields["passphrase_file"].error(str(e)) from None
    try:
        return load_keypair(
            key.path(), fields["cert"].path() if "cert" in fields else None, passphrase
        )
    except (KeyError_, OSError) as e:
        raise key.error(str(e)) from None


def _certificates(node: Node) -> list[x509.Certificate]:
    certificates = []
    for item in node.sequence():
        try:
            certificates.extend(load_certificates(item.path()))
        except (KeyError_, OSError) as e:
            raise item.error(str(e)) from None
    return certificates


def _smtp(node: Node) -> SMTPConfig:
    fields = node.mapping(
        "hostname",
        "listen",
        "listen_tls",
        "tls_cert",
        "tls_key",
        "allowed_networks",
        "users",
        "forbidden_attachment_types",
        "secrecy_tags",
        "scanner",
        "max_recipients",
        "idle_timeout_seconds",
        "max_connections",
        "max_connections_per_client",
    )
    networks = []
    for item in fields["allowed_networks"].sequence() if "allowed_networks" in fields else ():
        try:
            ipaddress.ip_network(item.string(), strict=False)
        except ValueError:
            raise item.error("expected a network such as 10.0.0.0/8") from None
        networks.append(item.string())
    users = {}
    for item in fields["users"].sequence() if "users" in fields else ():
        user = item.mapping("name", "password_file")
        try:
            password = read_passphrase(required(user, item, "password_file").path()).decode()
        except KeyError_ as e:
            raise user["password_file"].error(str(e)) from None
        users[required(user, item, "name").string()] = password
    tls_cert = existing_file(fields["tls_cert"]) if "tls_cert" in fields else None
    tls_key = existing_file(fields["tls_key"]) if "tls_key" in fields else None
    if (tls_cert is None) != (tls_key is None):
        raise node.error("give both tls_cert and tls_key, or neither")
    listen_tls = listen(fields["listen_tls"]) if "listen_tls" in fields else ()
    if listen_tls and tls_cert is None:
        raise fields["listen_tls"].error("implicit TLS needs tls_cert and tls_key")
    scanner = _plugin_choice(fields["scanner"]) if "scanner" in fields else None
    return SMTPConfig(
        hostname=fields["hostname"].string() if "hostname" in fields else socket.getfqdn(),
        listen=listen(fields["listen"]) if "listen" in fields else (("127.0.0.1", 2525),),
        listen_tls=listen_tls,
        tls_cert=tls_cert,
        tls_key=tls_key,
        allowed_networks=tuple(networks),
        users=users,
        forbidden_types=frozenset(t.lower() for t in strings(fields["forbidden_attachment_types"]))
        if "forbidden_attachment_types" in fields
        else frozenset(),
        secrecy_tags=strings(fields["secrecy_tags"])
        if "secrecy_tags" in fields
        else ("[sekretess]",),
        scanner=scanner,
        max_recipients=whole_number(fields["max_recipients"])
        if "max_recipients" in fields
        else 100,
        idle_timeout=float(whole_number(fields["idle_timeout_seconds"]))
        if "idle_timeout_seconds" in fields
        else 300.0,
        max_connections=whole_number(fields["max_connections"])
        if "max_connections" in fields
        else 500,
        max_connections_per_client=whole_number(fields["max_connections_per_client"])
        if "max_connections_per_client" in fields
        else 50,
    )


def _functional_address(node: Node) -> FunctionalAddressConfig:
    fields = node.mapping("id", "senders", "auth_users", "deliver_to", "address")
    deliver_to = None
    if "deliver_to" in fields:
        deliver_to = _plugin_choice(fields["deliver_to"])
        try:  # builds the plugin once, so a bad setting is reported here with its line
            plugin.load(plugin.MAILBOXES, *deliver_to)
        except plugin.PluginError as e:
            raise fields["deliver_to"].error(str(e)) from None
    return FunctionalAddressConfig(
        id=required(fields, node, "id").string(),
        senders=strings(fields["senders"]) if "senders" in fields else (),
        auth_users=strings(fields["auth_users"]) if "auth_users" in fields else (),
        deliver_to=deliver_to,
        address=fields["address"].string() if "address" in fields else None,
    )


def _plugin_choice(node: Node) -> tuple[str, dict[str, Any]]:
    """`{plugin: <name>, <its settings>...}` as the plugin's name and settings."""
    settings = yaml.safe_load(yaml.serialize(node.node)) or {}
    if not isinstance(settings, dict) or "plugin" not in settings:
        raise node.error("expected a mapping with plugin: <name>")
    return str(settings.pop("plugin")), settings


def _outbound(node: Node) -> OutboundConfig:
    fields = node.mapping(
        "lifetime_hours",
        "delay_warning_hours",
        "smart_host",
        "smart_host_cafile",
        "postmaster",
        "poll_seconds",
        "status_after_seconds",
        "report_domains",
    )

    def number(name: str, default: float) -> float:
        return fields[name].number(above=0) if name in fields else default

    return OutboundConfig(
        lifetime=timedelta(hours=number("lifetime_hours", 120)),
        delay_warning=timedelta(hours=number("delay_warning_hours", 4)),
        smart_host=listen_one(fields["smart_host"]) if "smart_host" in fields else None,
        smart_host_cafile=existing_file(fields["smart_host_cafile"])
        if "smart_host_cafile" in fields
        else None,
        postmaster=fields["postmaster"].string() if "postmaster" in fields else None,
        poll_seconds=number("poll_seconds", 10),
        status_after=timedelta(seconds=number("status_after_seconds", 60)),
        report_domains=tuple(d.lower().strip(".") for d in strings(fields["report_domains"]))
        if "report_domains" in fields
        else (),
    )


def _retention(node: Node) -> Retention:
    fields = node.mapping("content_hours", "held_days", "reports_days", "records_days")
    default = Retention()

    def age(name: str, unit: timedelta, fallback: timedelta, minimum: float) -> timedelta:
        return fields[name].number(minimum) * unit if name in fields else fallback

    hour, day = timedelta(hours=1), timedelta(days=1)
    retention = Retention(
        content=age("content_hours", hour, default.content, 0),
        held=age("held_days", day, default.held, 1),
        reports=age("reports_days", day, default.reports, 1),
        records=age("records_days", day, default.records, 1),
    )
    if retention.records < max(retention.content, retention.held):
        raise (fields.get("records_days") or node).error(
            "records are kept at least as long as content_hours and held_days"
        )
    return retention


def _spool(node: Node) -> tuple[Path, tuple[str, dict[str, Any]]]:
    """`spool: <directory>` (SQLite), or a mapping that names a database back end:
    the directory, and the back end with its settings."""
    if isinstance(node.node, yaml.ScalarNode):
        return node.path(), ("sqlite", {})
    fields = node.mapping(
        "backend",
        "directory",
        "dsn",
        "password_file",
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "lease_seconds",
    )
    backend = required(fields, node, "backend")
    try:
        plugin.factory(plugin.SPOOLS, backend.string())
    except plugin.PluginError as e:
        raise backend.error(str(e)) from None
    directory = required(fields, node, "directory").path()
    if backend.string() == "sqlite":
        extra = sorted(fields.keys() - {"backend", "directory"})
        if extra:
            raise fields[extra[0]].error("only for a database back end (backend: postgres)")
        return directory, ("sqlite", {})
    settings: dict[str, Any] = {"dsn": required(fields, node, "dsn").string()}
    if "password_file" in fields:
        try:
            settings["password"] = read_passphrase(fields["password_file"].path()).decode()
        except KeyError_ as e:
            raise fields["password_file"].error(str(e)) from None
    if "sslmode" in fields:
        settings["sslmode"] = fields["sslmode"].string()
        if settings["sslmode"] not in SSL_MODES:
            raise fields["sslmode"].error(f"expected one of: {', '.join(SSL_MODES)}")
    for name in ("sslrootcert", "sslcert", "sslkey"):
        if name in fields:
            settings[name] = str(existing_file(fields[name]))
    if ("sslcert" in fields) != ("sslkey" in fields):
        raise node.error("give both sslcert and sslkey, or neither")
    if "lease_seconds" in fields:  # below a 30 MB message's judging time, work is done twice
        settings["lease_seconds"] = whole_number(fields["lease_seconds"], minimum=5)
    return directory, (backend.string(), settings)


def _admin(node: Node) -> AdminConfig:
    fields = node.mapping("listen", "certificate_warning_days")
    warning = AdminConfig.certificate_warning
    if "certificate_warning_days" in fields:
        warning = timedelta(days=whole_number(fields["certificate_warning_days"], minimum=0))
    at = listen_one(fields["listen"]) if "listen" in fields else AdminConfig.listen
    return AdminConfig(listen=at, certificate_warning=warning)


def _registry(node: Node) -> RegistryConfig:
    fields = node.mapping(
        "address_book",
        "smp",
        "sml_zone",
        "sml_name_form",
        "sml_nameservers",
        "smp_trust_anchors",
        "tls_trust",
        "cache_dir",
        "revocation",
    )
    if ("smp" in fields) == ("sml_zone" in fields):
        raise node.error("give exactly one of smp (a fixed SMP URL) and sml_zone")
    revocation = fields["revocation"].string() if "revocation" in fields else "hard-fail"
    if revocation not in ("hard-fail", "soft-fail"):
        raise fields["revocation"].error("expected hard-fail or soft-fail")
    name_form = fields["sml_name_form"].string() if "sml_name_form" in fields else "bdxl"
    if name_form not in ("bdxl", "md5"):
        raise fields["sml_name_form"].error("expected bdxl or md5")
    servers = (
        [nameserver(n) for n in fields["sml_nameservers"].sequence()]
        if ("sml_nameservers" in fields)
        else []
    )
    if len({port for _, port in servers}) > 1:
        raise fields["sml_nameservers"].error("all name servers must use the same port")
    return RegistryConfig(
        address_book_url=url(required(fields, node, "address_book")),
        smp_url=url(fields["smp"], ("https://", "http://")) if "smp" in fields else None,
        sml_zone=fields["sml_zone"].string() if "sml_zone" in fields else None,
        sml_name_form=name_form,
        sml_nameservers=tuple(host for host, _ in servers),
        sml_port=servers[0][1] if servers else 53,
        smp_trust_anchors=_certificates(required(fields, node, "smp_trust_anchors")),
        tls_trust=existing_file(fields["tls_trust"]) if "tls_trust" in fields else None,
        cache_dir=fields["cache_dir"].path()
        if "cache_dir" in fields
        else node.file.parent / "state",
        revocation_soft_fail=revocation == "soft-fail",
    )


def _access_point(node: Node) -> AccessPointConfig:
    fields = node.mapping(
        "url",
        "username",
        "password_file",
        "tls_trust",
        "party_id",
        "plugin",
        "client_cert",
        "client_key",
        "interface",
    )
    interface = fields["interface"].string() if "interface" in fields else "wsplugin"
    if interface not in ("wsplugin", "backend"):
        raise fields["interface"].error(
            "must be wsplugin (Domibus 5.x, the url ends in /services/wsplugin) or backend"
            " (the deprecated interface of Domibus 4.x, /services/backend)"
        )
    try:
        password = read_passphrase(required(fields, node, "password_file").path()).decode()
    except KeyError_ as e:
        raise fields["password_file"].error(str(e)) from None
    return AccessPointConfig(
        url=url(required(fields, node, "url")),
        username=required(fields, node, "username").string(),
        password=password,
        tls_trust=existing_file(fields["tls_trust"]) if "tls_trust" in fields else None,
        party_id=required(fields, node, "party_id").string(),
        plugin=fields["plugin"].string() if "plugin" in fields else "domibus-ws",
        client_cert=existing_file(fields["client_cert"]) if "client_cert" in fields else None,
        client_key=existing_file(fields["client_key"]) if "client_key" in fields else None,
        interface=interface,
    )


def open_registry(config: Config, cache: Cache | None = None) -> Registry:
    """The registry the configuration names, for the daemon and the commands alike;
    `cache`: where it keeps what must survive a restart (None: its `cache_dir`)."""
    if config.registry is None:
        raise ValueError("the configuration has no registry section")
    return Registry(config.registry, config.trust_anchors, config.sdk_domain, cache)


def open_spool(config: Config) -> Spool:
    """The spool the configuration names, for the daemon and the admin commands alike.
    Raises plugin.PluginError saying why it cannot be opened (say, a database whose schema
    needs `sdk-bridge db upgrade`)."""
    assert config.spool is not None
    spool: Spool = plugin.load(plugin.SPOOLS, *config.spool_plugin())
    return spool
