"""The configuration file: YAML, checked key by key, every error naming the key and its line.

Only the sections the code uses exist; each later stage adds its own.
"""

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509

from . import plugin
from .registry.addresses import encoded, is_local_part
from .registry.cache import Cache
from .registry.client import Registry
from .registry.settings import RegistryConfig
from .sdk.keys import KeyError_, KeyPair, load_certificates, load_keypair, read_passphrase
from .sdk.names import ORGANISATION_ID, SDK_FEDERATION
from .spool import Retention, Spool

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")  # libpq's


MAX_NUMBER = 1_000_000  # hours, days or seconds: far above any setting's sense


class ConfigError(ValueError):
    def __init__(self, file: Path, line: int | None, key: str, problem: str) -> None:
        where = f"{file}:{line}" if line else str(file)
        super().__init__(f"{where}: {key}: {problem}")
        self.file, self.line, self.key, self.problem = file, line, key, problem


@dataclass(frozen=True)
class AccessPointConfig:
    url: str  # the Domibus WS plugin endpoint
    username: str
    password: str
    tls_trust: Path | None
    party_id: str  # the access point's own PartyId (the ebMS From party)
    plugin: str = "domibus-ws"  # the connector plugin (entry point sdk_bridge.access_points)
    client_cert: Path | None = None  # for mutual TLS
    client_key: Path | None = None
    # Which WS plugin interface the url serves: wsplugin (Domibus 5.x) or backend (4.x).
    interface: str = "wsplugin"

    def plugin_settings(self) -> dict[str, Any]:
        """The connector plugin's settings."""
        settings: dict[str, Any] = {
            "url": self.url,
            "username": self.username,
            "password": self.password,
            "party_id": self.party_id,
            "interface": self.interface,
        }
        for name in ("tls_trust", "client_cert", "client_key"):
            if getattr(self, name) is not None:
                settings[name] = str(getattr(self, name))
        return settings


@dataclass(frozen=True)
class SMTPConfig:
    hostname: str
    listen: tuple[tuple[str, int], ...]  # plain SMTP, with STARTTLS when a certificate is set
    listen_tls: tuple[tuple[str, int], ...]  # implicit TLS
    tls_cert: Path | None
    tls_key: Path | None
    allowed_networks: tuple[str, ...]  # CIDR; others must authenticate
    users: dict[str, str]  # SMTP AUTH user -> password
    forbidden_types: frozenset[str]  # attachment MIME types refused (PDF always allowed)
    secrecy_tags: tuple[str, ...]
    scanner: tuple[str, dict[str, Any]] | None  # plugin name and its settings
    max_recipients: int = 100  # per message; more get 452 4.5.3
    idle_timeout: float = 300.0  # seconds a silent client keeps its connection
    max_connections: int = 500  # at once, all clients (and below the descriptor limit)
    max_connections_per_client: int = 50  # at once, one address (IPv6: one /64)


@dataclass(frozen=True)
class OutboundConfig:
    lifetime: timedelta = timedelta(days=5)  # retried this long, then the sender is told
    delay_warning: timedelta = timedelta(hours=4)  # no kvittens by then: a delay report
    smart_host: tuple[str, int] | None = None  # where DSNs go (the organisation's Exchange)
    smart_host_cafile: Path | None = None  # its TLS certificate's CA, else the system's CAs
    postmaster: str | None = None  # the From of DSNs
    # Domains DSNs may go to (and their subdomains); empty: those of the senders patterns.
    report_domains: tuple[str, ...] = ()
    poll_seconds: float = 10.0  # how often the access point is asked for kvittens


@dataclass(frozen=True)
class AdminConfig:
    listen: tuple[str, int] = ("127.0.0.1", 9025)  # /metrics, /healthz, /readyz
    certificate_warning: timedelta = timedelta(days=14)  # /readyz fails this long before


@dataclass(frozen=True)
class FunctionalAddressConfig:
    id: str  # the address-book identifier of one of our functional addresses
    senders: tuple[str, ...]  # envelope senders that may send as it ("*@kommun.se")
    auth_users: tuple[str, ...]  # SMTP AUTH users that may send as it
    # The mailbox plugin (entry point sdk_bridge.mailboxes) for its incoming mail, and
    # the plugin's settings.
    deliver_to: tuple[str, dict[str, Any]] | None = None
    address: str | None = None  # the To of its incoming mail

    def mailbox_address(self, sdk_domain: str) -> str:
        """`address`, else the first sender without a wildcard, else one under our SDK
        domain: the To its incoming mail shows."""
        plain = [s for s in self.senders if "*" not in s]
        local = self.id if is_local_part(self.id) else encoded(self.id)
        return self.address or (plain[0] if plain else f"{local}@{sdk_domain}")


@dataclass(frozen=True)
class Config:
    organisation_id: str
    federation: str
    sdk_domain: str | None  # the mail domain SDK recipients live under
    signing: KeyPair
    decryption: list[KeyPair]  # more than one during a certificate rollover
    trust_anchors: list[x509.Certificate]
    registry: RegistryConfig | None
    access_point: AccessPointConfig | None
    smtp: SMTPConfig | None = None
    functional_addresses: tuple[FunctionalAddressConfig, ...] = ()
    # The spool directory: all of the SQLite spool; with a database back end, this
    # machine's own files (mail still arriving, Maildirs of addresses without deliver_to).
    spool: Path | None = None
    # The back end (entry point sdk_bridge.spools) and its settings but the directory.
    spool_backend: tuple[str, dict[str, Any]] = field(default_factory=lambda: ("sqlite", {}))
    outbound: OutboundConfig = OutboundConfig()
    admin: AdminConfig | None = None  # no admin port unless configured
    retention: Retention = field(default_factory=Retention)

    def spool_plugin(self) -> tuple[str, dict[str, Any]]:
        """The spool back end's name and its settings, the directory among them."""
        name, settings = self.spool_backend
        return name, {**settings, "directory": str(self.spool)}


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


class _Node:
    """A YAML value with its key path and line, for errors that point at the file."""

    def __init__(self, file: Path, key: str, node: yaml.Node) -> None:
        self.file, self.key, self.node = file, key, node

    @property
    def line(self) -> int:
        return self.node.start_mark.line + 1

    def error(self, problem: str) -> ConfigError:
        return ConfigError(self.file, self.line, self.key, problem)

    def mapping(self, *allowed: str) -> dict[str, "_Node"]:
        if not isinstance(self.node, yaml.MappingNode):
            raise self.error("expected a mapping of keys")
        children: dict[str, _Node] = {}
        for key_node, value_node in self.node.value:
            name = str(key_node.value)
            path = f"{self.key}.{name}" if self.key else name
            if name in children:
                raise ConfigError(self.file, key_node.start_mark.line + 1, path, "duplicate key")
            if name not in allowed:
                raise ConfigError(
                    self.file,
                    key_node.start_mark.line + 1,
                    path,
                    f"unknown key (expected one of: {', '.join(allowed)})",
                )
            children[name] = _Node(self.file, path, value_node)
        return children

    def sequence(self) -> list["_Node"]:
        if not isinstance(self.node, yaml.SequenceNode):
            raise self.error("expected a list")
        return [_Node(self.file, f"{self.key}[{i}]", n) for i, n in enumerate(self.node.value)]

    def string(self) -> str:
        if not isinstance(self.node, yaml.ScalarNode) or not str(self.node.value).strip():
            raise self.error("expected a non-empty text")
        return str(self.node.value)

    def number(self, minimum: float = 0, *, above: float | None = None) -> float:
        """A number of at least `minimum` (or more than `above`), and at most MAX_NUMBER:
        no setting needs more, and `inf` or `nan` would break the timers."""
        try:
            value = float(self.string())
        except ValueError:
            raise self.error("expected a number") from None
        low_enough = value > above if above is not None else value >= minimum
        if not (low_enough and value <= MAX_NUMBER):  # also false for nan
            least = f"above {above:g}" if above is not None else f"of at least {minimum:g}"
            raise self.error(f"expected a number {least} and at most {MAX_NUMBER:g}")
        return value

    def path(self) -> Path:
        """A file path; relative ones from the configuration file's directory. Environment
        variables are expanded: keys under systemd are `$CREDENTIALS_DIRECTORY/<name>`."""
        expanded = os.path.expandvars(self.string())
        if "$" in expanded:
            raise self.error(
                f"{expanded}: names an environment variable that is not set"
                " ($CREDENTIALS_DIRECTORY is set by systemd's LoadCredential=)"
            )
        path = Path(expanded)
        return path if path.is_absolute() else self.file.parent / path


def _required(children: dict[str, _Node], parent: _Node, name: str) -> _Node:
    if name not in children:
        key = f"{parent.key}.{name}" if parent.key else name
        raise ConfigError(parent.file, parent.line, key, "required key is missing")
    return children[name]


def _keypair(node: _Node) -> KeyPair:
    fields = node.mapping("key", "cert", "passphrase_file")
    key = _required(fields, node, "key")
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


def load(file: Path) -> Config:
    """Read and check `file`: keys and certificates are loaded, so a bad one fails here."""
    try:
        document = yaml.compose(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(file, None, "-", f"cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise ConfigError(file, line, "-", f"not valid YAML: {e}") from None
    if document is None:
        raise ConfigError(file, None, "-", "the file is empty")
    root = _Node(file, "", document)
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
    organisation = _required(sections, root, "organisation")
    org = organisation.mapping("id", "federation", "sdk_domain")
    org_id = _required(org, organisation, "id")
    if not ORGANISATION_ID.fullmatch(org_id.string()):
        raise org_id.error("expected an organisation id such as 0203:kommun.se")
    keys = _required(sections, root, "keys")
    key_fields = keys.mapping("signing", "decryption", "trust_anchors")
    signing = _keypair(_required(key_fields, keys, "signing"))
    decryption = [_keypair(n) for n in _required(key_fields, keys, "decryption").sequence()]
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
        trust_anchors=_certificates(_required(key_fields, keys, "trust_anchors")),
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


def _strings(node: _Node) -> tuple[str, ...]:
    return tuple(item.string() for item in node.sequence())


def _listen(node: _Node) -> tuple[tuple[str, int], ...]:
    return tuple(_listen_one(item) for item in node.sequence())


def _listen_one(node: _Node) -> tuple[str, int]:
    host, _, port = node.string().rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        return host.strip("[]"), int(port)
    except ValueError:
        raise node.error("expected address:port, e.g. 127.0.0.1:2525") from None


def _smtp(node: _Node) -> SMTPConfig:
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
            password = read_passphrase(_required(user, item, "password_file").path()).decode()
        except KeyError_ as e:
            raise user["password_file"].error(str(e)) from None
        users[_required(user, item, "name").string()] = password
    tls_cert = _existing_file(fields["tls_cert"]) if "tls_cert" in fields else None
    tls_key = _existing_file(fields["tls_key"]) if "tls_key" in fields else None
    if (tls_cert is None) != (tls_key is None):
        raise node.error("give both tls_cert and tls_key, or neither")
    listen_tls = _listen(fields["listen_tls"]) if "listen_tls" in fields else ()
    if listen_tls and tls_cert is None:
        raise fields["listen_tls"].error("implicit TLS needs tls_cert and tls_key")
    scanner = _plugin_choice(fields["scanner"]) if "scanner" in fields else None
    return SMTPConfig(
        hostname=fields["hostname"].string() if "hostname" in fields else socket.getfqdn(),
        listen=_listen(fields["listen"]) if "listen" in fields else (("127.0.0.1", 2525),),
        listen_tls=listen_tls,
        tls_cert=tls_cert,
        tls_key=tls_key,
        allowed_networks=tuple(networks),
        users=users,
        forbidden_types=frozenset(t.lower() for t in _strings(fields["forbidden_attachment_types"]))
        if "forbidden_attachment_types" in fields
        else frozenset(),
        secrecy_tags=_strings(fields["secrecy_tags"])
        if "secrecy_tags" in fields
        else ("[sekretess]",),
        scanner=scanner,
        max_recipients=_whole_number(fields["max_recipients"])
        if "max_recipients" in fields
        else 100,
        idle_timeout=float(_whole_number(fields["idle_timeout_seconds"]))
        if "idle_timeout_seconds" in fields
        else 300.0,
        max_connections=_whole_number(fields["max_connections"])
        if "max_connections" in fields
        else 500,
        max_connections_per_client=_whole_number(fields["max_connections_per_client"])
        if "max_connections_per_client" in fields
        else 50,
    )


def _whole_number(node: _Node, minimum: int = 1) -> int:
    try:
        value = int(node.string())
    except ValueError:
        raise node.error("expected a whole number") from None
    if value < minimum:
        raise node.error(f"expected a number of at least {minimum}")
    return value


def _functional_address(node: _Node) -> FunctionalAddressConfig:
    fields = node.mapping("id", "senders", "auth_users", "deliver_to", "address")
    deliver_to = None
    if "deliver_to" in fields:
        deliver_to = _plugin_choice(fields["deliver_to"])
        try:  # builds the plugin once, so a bad setting is reported here with its line
            plugin.load(plugin.MAILBOXES, *deliver_to)
        except plugin.PluginError as e:
            raise fields["deliver_to"].error(str(e)) from None
    return FunctionalAddressConfig(
        id=_required(fields, node, "id").string(),
        senders=_strings(fields["senders"]) if "senders" in fields else (),
        auth_users=_strings(fields["auth_users"]) if "auth_users" in fields else (),
        deliver_to=deliver_to,
        address=fields["address"].string() if "address" in fields else None,
    )


def _plugin_choice(node: _Node) -> tuple[str, dict[str, Any]]:
    """`{plugin: <name>, <its settings>...}` as the plugin's name and settings."""
    settings = yaml.safe_load(yaml.serialize(node.node)) or {}
    if not isinstance(settings, dict) or "plugin" not in settings:
        raise node.error("expected a mapping with plugin: <name>")
    return str(settings.pop("plugin")), settings


def _outbound(node: _Node) -> OutboundConfig:
    fields = node.mapping(
        "lifetime_hours",
        "delay_warning_hours",
        "smart_host",
        "smart_host_cafile",
        "postmaster",
        "poll_seconds",
        "report_domains",
    )

    def number(name: str, default: float) -> float:
        return fields[name].number(above=0) if name in fields else default

    return OutboundConfig(
        lifetime=timedelta(hours=number("lifetime_hours", 120)),
        delay_warning=timedelta(hours=number("delay_warning_hours", 4)),
        smart_host=_listen_one(fields["smart_host"]) if "smart_host" in fields else None,
        smart_host_cafile=_existing_file(fields["smart_host_cafile"])
        if "smart_host_cafile" in fields
        else None,
        postmaster=fields["postmaster"].string() if "postmaster" in fields else None,
        poll_seconds=number("poll_seconds", 10),
        report_domains=tuple(d.lower().strip(".") for d in _strings(fields["report_domains"]))
        if "report_domains" in fields
        else (),
    )


def _retention(node: _Node) -> Retention:
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


def _spool(node: _Node) -> tuple[Path, tuple[str, dict[str, Any]]]:
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
    backend = _required(fields, node, "backend")
    try:
        plugin.factory(plugin.SPOOLS, backend.string())
    except plugin.PluginError as e:
        raise backend.error(str(e)) from None
    directory = _required(fields, node, "directory").path()
    if backend.string() == "sqlite":
        extra = sorted(fields.keys() - {"backend", "directory"})
        if extra:
            raise fields[extra[0]].error("only for a database back end (backend: postgres)")
        return directory, ("sqlite", {})
    settings: dict[str, Any] = {"dsn": _required(fields, node, "dsn").string()}
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
            settings[name] = str(_existing_file(fields[name]))
    if ("sslcert" in fields) != ("sslkey" in fields):
        raise node.error("give both sslcert and sslkey, or neither")
    if "lease_seconds" in fields:  # below a 30 MB message's judging time, work is done twice
        settings["lease_seconds"] = _whole_number(fields["lease_seconds"], minimum=5)
    return directory, (backend.string(), settings)


def _admin(node: _Node) -> AdminConfig:
    fields = node.mapping("listen", "certificate_warning_days")
    warning = AdminConfig.certificate_warning
    if "certificate_warning_days" in fields:
        warning = timedelta(days=_whole_number(fields["certificate_warning_days"], minimum=0))
    listen = _listen_one(fields["listen"]) if "listen" in fields else AdminConfig.listen
    return AdminConfig(listen=listen, certificate_warning=warning)


def _certificates(node: _Node) -> list[x509.Certificate]:
    certificates = []
    for item in node.sequence():
        try:
            certificates.extend(load_certificates(item.path()))
        except (KeyError_, OSError) as e:
            raise item.error(str(e)) from None
    return certificates


def _url(node: _Node, schemes: tuple[str, ...] = ("https://",)) -> str:
    url = node.string()
    if not url.startswith(schemes):
        raise node.error(f"expected a URL starting with {' or '.join(schemes)}")
    return url


def _nameserver(node: _Node) -> tuple[str, int]:
    """ "127.0.0.1", "127.0.0.1:5353", "::1" or "[::1]:5353" -> (address, port)."""
    text = node.string().strip()
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or "53"
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise node.error("expected an IP address, optionally with :port") from None
    if not 0 < number < 65536:
        raise node.error("the port must be between 1 and 65535")
    return host, number


def _existing_file(node: _Node) -> Path:
    path = node.path()
    if not path.is_file():
        raise node.error(f"no such file: {path}")
    return path


def _registry(node: _Node) -> RegistryConfig:
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
        [_nameserver(n) for n in fields["sml_nameservers"].sequence()]
        if ("sml_nameservers" in fields)
        else []
    )
    if len({port for _, port in servers}) > 1:
        raise fields["sml_nameservers"].error("all name servers must use the same port")
    return RegistryConfig(
        address_book_url=_url(_required(fields, node, "address_book")),
        smp_url=_url(fields["smp"], ("https://", "http://")) if "smp" in fields else None,
        sml_zone=fields["sml_zone"].string() if "sml_zone" in fields else None,
        sml_name_form=name_form,
        sml_nameservers=tuple(host for host, _ in servers),
        sml_port=servers[0][1] if servers else 53,
        smp_trust_anchors=_certificates(_required(fields, node, "smp_trust_anchors")),
        tls_trust=_existing_file(fields["tls_trust"]) if "tls_trust" in fields else None,
        cache_dir=fields["cache_dir"].path()
        if "cache_dir" in fields
        else node.file.parent / "state",
        revocation_soft_fail=revocation == "soft-fail",
    )


def _access_point(node: _Node) -> AccessPointConfig:
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
        password = read_passphrase(_required(fields, node, "password_file").path()).decode()
    except KeyError_ as e:
        raise fields["password_file"].error(str(e)) from None
    return AccessPointConfig(
        url=_url(_required(fields, node, "url")),
        username=_required(fields, node, "username").string(),
        password=password,
        tls_trust=_existing_file(fields["tls_trust"]) if "tls_trust" in fields else None,
        party_id=_required(fields, node, "party_id").string(),
        plugin=fields["plugin"].string() if "plugin" in fields else "domibus-ws",
        client_cert=_existing_file(fields["client_cert"]) if "client_cert" in fields else None,
        client_key=_existing_file(fields["client_key"]) if "client_key" in fields else None,
        interface=interface,
    )


def describe(config: Config) -> list[str]:
    """What an administrator wants to see after a successful check."""

    def cert(c: x509.Certificate) -> str:
        return f"{c.subject.rfc4514_string()} (valid until {c.not_valid_after_utc:%Y-%m-%d})"

    lines = [f"organisation {config.organisation_id} in {config.federation}"]
    lines.append(f"signing: {cert(config.signing.cert)}")
    lines += [f"decryption: {cert(k.cert)}" for k in config.decryption]
    lines += [f"trust anchor: {cert(c)}" for c in config.trust_anchors]
    return lines
