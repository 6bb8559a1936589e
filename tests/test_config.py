"""The configuration file: a good one loads; every mistake names the key and its line."""

import re
from datetime import timedelta
from pathlib import Path

import pytest
from support.configs import write_config

from sdk_bridge import cli, config
from sdk_bridge.lab.testpki import Identity, TestPKI
from sdk_bridge.spool import Retention

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.yaml"


def test_good_config_loads(tmp_path: Path, pki: TestPKI, alice: Identity, bob: Identity) -> None:
    loaded = config.load(write_config(tmp_path, pki, alice, bob))
    assert loaded.organisation_id == "0203:a.example.se"
    assert loaded.federation == "urn:fdc:digg.se:edelivery:federation:sdk"
    assert loaded.signing.cert == alice.cert
    assert [k.cert for k in loaded.decryption] == [alice.cert, bob.cert]
    assert loaded.trust_anchors == [pki.issuing_ca.cert, pki.root.cert]


@pytest.mark.parametrize(
    ("old", "new", "line", "key", "problem"),
    [
        ('id: "0203:a.example.se"', "id: a.example.se", 2, "organisation.id", "organisation id"),
        ('  id: "0203:a.example.se"', "  name: x", 2, "organisation.name", "unknown key"),
        ("    passphrase_file: pass\n  decryption", "  decryption", 5, "keys.signing.key", "p12"),
        ("  trust_anchors:\n", "  trust_anchor:\n", 13, "keys.trust_anchor", "unknown key"),
        ("    key: ", "    kye: ", 5, "keys.signing.kye", "unknown key"),
        ("- key: ", "- cert: ", 9, "keys.decryption[0].cert", "duplicate key"),
        (r"- key: \S+\n      cert", "- cert", 8, "keys.decryption[0].key", "required key"),
    ],
)
def test_errors_name_the_key_and_line(
    tmp_path: Path,
    pki: TestPKI,
    alice: Identity,
    bob: Identity,
    old: str,
    new: str,
    line: int,
    key: str,
    problem: str,
) -> None:
    path = write_config(tmp_path, pki, alice, bob)
    text = path.read_text()
    changed = re.sub(old, new, text, count=1)
    assert changed != text
    path.write_text(changed)
    with pytest.raises(config.ConfigError) as error:
        config.load(path)
    assert (error.value.line, error.value.key) == (line, key)
    assert problem in error.value.problem
    assert str(error.value).startswith(f"{path}:{line}: {key}: ")


def test_missing_files_and_sections(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(tmp_path / "nope.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(config.ConfigError, match="empty"):
        config.load(empty)
    broken = tmp_path / "broken.yaml"
    broken.write_text("organisation: [\n")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(broken)
    partial = tmp_path / "partial.yaml"
    partial.write_text('organisation:\n  id: "0203:a.se"\n')
    with pytest.raises(config.ConfigError, match="keys: required key is missing"):
        config.load(partial)


def test_example_config_documents_every_key_the_loader_knows() -> None:
    text = EXAMPLE.read_text()
    for key in (
        "organisation:",
        "id:",
        "federation:",
        "sdk_domain:",
        "keys:",
        "signing:",
        "key:",
        "cert:",
        "passphrase_file:",
        "decryption:",
        "trust_anchors:",
        "registry:",
        "address_book:",
        "smp:",
        "sml_zone:",
        "sml_name_form:",
        "sml_nameservers:",
        "smp_trust_anchors:",
        "tls_trust:",
        "cache_dir:",
        "revocation:",
        "access_point:",
        "url:",
        "username:",
        "password_file:",
        "party_id:",
        "plugin:",
        "client_cert:",
        "client_key:",
        "smtp:",
        "hostname:",
        "listen:",
        "listen_tls:",
        "tls_cert:",
        "tls_key:",
        "allowed_networks:",
        "users:",
        "name:",
        "forbidden_attachment_types:",
        "secrecy_tags:",
        "scanner:",
        "functional_addresses:",
        "senders:",
        "auth_users:",
        "deliver_to:",
        "spool:",
        "outbound:",
        "lifetime_hours:",
        "delay_warning_hours:",
        "smart_host:",
        "postmaster:",
        "poll_seconds:",
        "status_after_seconds:",
    ):
        assert key in text
    # Its key files do not exist here: the error must point at the first of them.
    with pytest.raises(config.ConfigError) as error:
        config.load(EXAMPLE)
    assert error.value.key == "keys.signing.passphrase_file"
    assert error.value.line is not None
    line = EXAMPLE.read_text().splitlines()[error.value.line - 1]
    assert line.strip().startswith("passphrase_file:")


def test_check_config_command(
    tmp_path: Path, pki: TestPKI, alice: Identity, bob: Identity, capsys: pytest.CaptureFixture
) -> None:
    path = write_config(tmp_path, pki, alice, bob)
    assert cli.main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "organisation 0203:a.example.se" in out and out.rstrip().endswith(": OK")
    path.write_text(path.read_text().replace("0203:a.example.se", "a.example.se"))
    assert cli.main(["check-config", "-c", str(path)]) == 1
    assert f"{path}:2: organisation.id:" in capsys.readouterr().err


def test_registry_and_access_point_sections(
    tmp_path: Path, pki: TestPKI, alice: Identity, bob: Identity
) -> None:
    path = write_config(tmp_path, pki, alice, bob)
    (tmp_path / "ap.pass").write_text("s3cret\n")
    base = path.read_text().replace(
        '  id: "0203:a.example.se"', '  id: "0203:a.example.se"\n  sdk_domain: SDK.Kommun.se.'
    )
    path.write_text(
        base
        + f"""\
registry:
  address_book: https://127.0.0.1:8443/api/v1/addresses
  smp: https://127.0.0.1:8443/smp
  smp_trust_anchors: [{pki.root_pem}]
  tls_trust: {pki.chain_pem}
access_point:
  url: https://127.0.0.1:8443/ap/a
  username: a
  password_file: ap.pass
  party_id: ap-a
"""
    )
    loaded = config.load(path)
    assert loaded.registry is not None and loaded.access_point is not None
    assert loaded.sdk_domain == "sdk.kommun.se"
    assert loaded.registry.smp_url == "https://127.0.0.1:8443/smp"
    assert loaded.registry.sml_zone is None
    assert loaded.registry.smp_trust_anchors == [pki.root.cert]
    assert loaded.registry.cache_dir == tmp_path / "state"
    assert loaded.registry.revocation_soft_fail is False
    assert (loaded.access_point.username, loaded.access_point.password) == ("a", "s3cret")
    assert loaded.access_point.interface == "wsplugin"  # Domibus 5.x, unless told
    assert loaded.access_point.plugin_settings()["interface"] == "wsplugin"
    for old, new, key, problem in [
        (
            "  party_id: ap-a",
            "  party_id: ap-a\n  interface: soap",
            "access_point.interface",
            "wsplugin (Domibus 5.x",
        ),
        ("  smp: https://127.0.0.1:8443/smp", "  smp: ftp://x", "registry.smp", "URL"),
        ("  smp: https://127.0.0.1:8443/smp", "  sml_zone: sml.example", None, None),
        ("  smp: https", "  sml_zone: z\n  smp: https", "registry", "exactly one of"),
        (
            "  password_file: ap.pass",
            "  password_file: nope",
            "access_point.password_file",
            "cannot read",
        ),
    ]:
        path.write_text(path.read_text().replace(old, new))
        try:
            loaded = config.load(path)
            assert key is None, key
            assert loaded.registry is not None
            assert loaded.registry.sml_zone == "sml.example"
        except config.ConfigError as error:
            assert problem is not None
            assert error.key == key and problem in error.problem
        path.write_text(path.read_text().replace(new, old))


@pytest.mark.parametrize(
    ("servers", "hosts", "port", "problem"),
    [
        ('["127.0.0.1:5353", "127.0.0.2:5353"]', ("127.0.0.1", "127.0.0.2"), 5353, None),
        ('["[::1]:5353"]', ("::1",), 5353, None),
        ('["::1"]', ("::1",), 53, None),
        ('["dns.example.se"]', None, None, "expected an IP address"),
        ('["127.0.0.1:dns"]', None, None, "expected an IP address"),
        ('["127.0.0.1:70000"]', None, None, "between 1 and 65535"),
        ('["127.0.0.1:53", "127.0.0.2:5353"]', None, None, "same port"),
    ],
)
def test_sml_name_servers(
    tmp_path: Path,
    pki: TestPKI,
    alice: Identity,
    bob: Identity,
    servers: str,
    hosts: tuple[str, ...] | None,
    port: int | None,
    problem: str | None,
) -> None:
    path = write_config(tmp_path, pki, alice, bob)
    path.write_text(
        path.read_text()
        + f"""\
registry:
  address_book: https://127.0.0.1:8443/api/v1/addresses
  sml_zone: sml.example.se
  sml_nameservers: {servers}
  smp_trust_anchors: [{pki.root_pem}]
"""
    )
    if problem:
        with pytest.raises(config.ConfigError, match=problem):
            config.load(path)
        return
    loaded = config.load(path)
    assert loaded.registry is not None
    assert (loaded.registry.sml_nameservers, loaded.registry.sml_port) == (hosts, port)


def test_address_book_and_access_point_need_https(
    tmp_path: Path, pki: TestPKI, alice: Identity, bob: Identity
) -> None:
    path = write_config(tmp_path, pki, alice, bob)
    path.write_text(
        path.read_text()
        + f"""\
registry:
  address_book: http://127.0.0.1:8080/api/v1/addresses
  smp: http://smp.example.se
  smp_trust_anchors: [{pki.root_pem}]
"""
    )
    with pytest.raises(
        config.ConfigError, match=r"registry\.address_book: expected a URL starting"
    ):
        config.load(path)


def test_smtp_functional_addresses_spool_and_outbound(
    tmp_path: Path, pki: TestPKI, alice: Identity, bob: Identity
) -> None:
    path = write_config(tmp_path, pki, alice, bob)
    (tmp_path / "exchange.pass").write_text("pw\n")
    text = (
        path.read_text()
        + f"""\
smtp:
  hostname: bridge.a.se
  listen: ["127.0.0.1:2525"]
  listen_tls: ["127.0.0.1:4650"]
  tls_cert: {alice.cert_pem}
  tls_key: {alice.key_pem}
  allowed_networks: ["10.0.0.0/8", "127.0.0.1/32"]
  users: [{{name: exchange, password_file: exchange.pass}}]
  forbidden_attachment_types: [Application/X-Msdownload]
  scanner: {{plugin: clamav, socket: /run/clamav/clamd.ctl}}
functional_addresses:
  - id: a.registrator
    senders: ["*@a.se"]
    auth_users: [exchange]
    deliver_to: {{plugin: maildir, path: /var/mail/sdk/registrator, folder: Inkommande}}
spool: spool
outbound:
  lifetime_hours: 48
  smart_host: 127.0.0.1:25
  postmaster: postmaster@a.se
  status_after_seconds: 120
"""
    )
    path.write_text(text)
    loaded = config.load(path)
    assert loaded.smtp is not None
    assert loaded.smtp.listen == (("127.0.0.1", 2525),)
    assert loaded.smtp.listen_tls == (("127.0.0.1", 4650),)
    assert loaded.smtp.users == {"exchange": "pw"}
    assert loaded.smtp.forbidden_types == frozenset({"application/x-msdownload"})
    assert loaded.smtp.scanner == ("clamav", {"socket": "/run/clamav/clamd.ctl"})
    assert loaded.smtp.secrecy_tags == ("[sekretess]",)
    assert loaded.functional_addresses[0].senders == ("*@a.se",)
    assert loaded.functional_addresses[0].deliver_to == (
        "maildir",
        {"path": "/var/mail/sdk/registrator", "folder": "Inkommande"},
    )
    assert loaded.spool == tmp_path / "spool"
    assert loaded.outbound.lifetime.total_seconds() == 48 * 3600
    assert loaded.outbound.smart_host == ("127.0.0.1", 25)
    assert loaded.outbound.delay_warning.total_seconds() == 4 * 3600
    assert loaded.outbound.status_after.total_seconds() == 120
    for old, new, key in [
        ('"127.0.0.1:2525"', '"localhost"', "smtp.listen[0]"),
        ('"10.0.0.0/8"', '"ten"', "smtp.allowed_networks[0]"),
        ("  lifetime_hours: 48", "  lifetime_hours: soon", "outbound.lifetime_hours"),
        ("status_after_seconds: 120", "status_after_seconds: -1", "outbound.status_after_seconds"),
        ("  scanner: {plugin: clamav,", "  scanner: {", "smtp.scanner"),
        ("folder: Inkommande}", "folder: In.kommande}", "functional_addresses[0].deliver_to"),
        ("{plugin: maildir,", "{plugin: mbox,", "functional_addresses[0].deliver_to"),
    ]:
        path.write_text(text.replace(old, new))
        with pytest.raises(config.ConfigError) as error:
            config.load(path)
        assert error.value.key == key
    path.write_text(text.replace("{plugin: maildir,", "{plugin: mbox,"))
    with pytest.raises(config.ConfigError, match=r"no sdk_bridge\.mailboxes plugin named 'mbox'"):
        config.load(path)
    path.write_text(text.replace("folder: Inkommande}", "folder: In.kommande}"))
    with pytest.raises(config.ConfigError, match=r"without '\.'") as error:
        config.load(path)
    assert error.value.line is not None
    assert path.read_text().splitlines()[error.value.line - 1].strip().startswith("deliver_to:")


def test_the_example_documents_every_key() -> None:
    """Every key the loader knows appears in config.example.yaml (set or in a comment)."""
    root = Path(__file__).parent.parent
    source = (root / "sdk_bridge" / "config" / "loading.py").read_text()
    keys = {
        key
        for call in re.finditer(r"\.mapping\(([^)]*)\)", source, re.S)
        for key in re.findall(r'"([a-z_]+)"', call.group(1))
    }
    example = (root / "config.example.yaml").read_text()
    assert len(keys) > 40
    assert [k for k in sorted(keys) if not re.search(rf"(^|[\s{{,#]){k}:", example, re.M)] == []


def test_spool_on_postgresql(tmp_path: Path, pki: TestPKI, alice: Identity, bob: Identity) -> None:
    """`spool:` a path is SQLite; a mapping names a back end, each setting checked with
    its line."""
    path = write_config(tmp_path, pki, alice, bob)
    (tmp_path / "db.pass").write_text("secret\n")
    text = path.read_text() + (
        "spool:\n"
        "  backend: postgres\n"
        "  directory: local\n"
        '  dsn: "host=db.a.se dbname=sdkbridge user=bridge"\n'
        "  password_file: db.pass\n"
        "  sslmode: verify-full\n"
        f"  sslrootcert: {pki.root_pem}\n"
        f"  sslcert: {alice.cert_pem}\n"
        f"  sslkey: {alice.key_pem}\n"
        "  lease_seconds: 60\n"
    )
    path.write_text(text)
    loaded = config.load(path)
    assert loaded.spool == tmp_path / "local"
    assert loaded.spool_plugin() == (
        "postgres",
        {
            "dsn": "host=db.a.se dbname=sdkbridge user=bridge",
            "password": "secret",
            "sslmode": "verify-full",
            "sslrootcert": str(pki.root_pem),
            "sslcert": str(alice.cert_pem),
            "sslkey": str(alice.key_pem),
            "lease_seconds": 60,
            "directory": str(tmp_path / "local"),
        },
    )
    for old, new, key, problem in [
        ("backend: postgres", "backend: oracle", "spool.backend", "no sdk_bridge.spools plugin"),
        ("sslmode: verify-full", "sslmode: strict", "spool.sslmode", "expected one of"),
        ("  dsn:", "  dns:", "spool.dns", "unknown key"),
        (f"  sslkey: {alice.key_pem}\n", "", "spool", "both sslcert and sslkey"),
        ("  directory: local\n", "", "spool.directory", "required key is missing"),
        ("sslrootcert: ", "sslrootcert: missing-", "spool.sslrootcert", "no such file"),
        ("lease_seconds: 60", "lease_seconds: 1", "spool.lease_seconds", "at least 5"),
        ("backend: postgres", "backend: sqlite", "spool.dsn", "only for a database"),
    ]:
        changed = text.replace(old, new)
        path.write_text(changed)
        with pytest.raises(config.ConfigError, match=problem) as error:
            config.load(path)
        assert error.value.key == key
        assert error.value.line is not None
        line = changed.splitlines()[error.value.line - 1].strip()
        leaf = key.rpartition(".")[2]
        # a key that is there: its own line; one missing, or the section: the section's
        assert line.startswith(f"{leaf}:" if f"  {leaf}:" in changed else "backend:")
    path.write_text(text.split("spool:")[0] + "spool:\n  backend: sqlite\n  directory: spool\n")
    assert config.load(path).spool_plugin() == ("sqlite", {"directory": str(tmp_path / "spool")})


def test_check_config_warns_of_exposed_secrets_and_an_open_admin_port(
    tmp_path: Path, pki: TestPKI, alice: Identity, bob: Identity, capsys: pytest.CaptureFixture
) -> None:
    """Issue 16: a password file others can read, an admin port off loopback."""
    path = write_config(tmp_path, pki, alice, bob)
    (tmp_path / "smtp.pass").write_text("s3cret\n")
    (tmp_path / "smtp.pass").chmod(0o666)
    path.write_text(
        path.read_text()
        + "smtp:\n  users:\n    - name: exchange\n      password_file: smtp.pass\n"
        + "admin:\n  listen: 0.0.0.0:9025\n"
    )
    assert cli.main(["check-config", "-c", str(path)]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert any(
        "smtp.users[0].password_file" in w and "mode 0666" in w and "chmod 600" in w
        for w in warnings
    ), warnings
    assert any("admin.listen 0.0.0.0:9025 is not on loopback" in w for w in warnings), warnings
    (tmp_path / "smtp.pass").chmod(0o600)
    path.write_text(path.read_text().replace("0.0.0.0:9025", "127.0.0.1:9025"))
    assert cli.main(["check-config", "-c", str(path)]) == 0
    assert "warning" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("section", "line", "key", "problem"),
    [
        ("  content_hours: soon\n", 16, "retention.content_hours", "expected a number"),
        ("  held_days: 0\n", 16, "retention.held_days", "at least 1"),
        ("  records_days: 7\n  held_days: 30\n", 16, "retention.records_days", "at least as long"),
        ("  keep: forever\n", 16, "retention.keep", "unknown key"),
        ("  records_days: inf\n", 16, "retention.records_days", "at most 1e+06"),
        ("  reports_days: nan\n", 16, "retention.reports_days", "of at least 1"),
    ],
)
def test_retention(
    tmp_path: Path,
    pki: TestPKI,
    alice: Identity,
    bob: Identity,
    section: str,
    line: int,
    key: str,
    problem: str,
) -> None:
    path = write_config(tmp_path, pki, alice, bob)
    assert config.load(path).retention == Retention()  # content at once, records 90 days
    base = path.read_text()
    path.write_text(base + "retention:\n  content_hours: 2.5\n  records_days: 30\n")
    loaded = config.load(path).retention
    assert (loaded.content, loaded.records) == (timedelta(hours=2.5), timedelta(days=30))
    path.write_text(base + "retention:\n" + section)
    with pytest.raises(config.ConfigError) as error:
        config.load(path)
    assert (error.value.line, error.value.key) == (line, key)
    assert problem in error.value.problem
