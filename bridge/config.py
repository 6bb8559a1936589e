"""The configuration file: YAML, checked key by key, every error naming the key and its line.

Only the sections the code uses exist; each later stage adds its own.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509

from .sdk.keys import KeyError_, KeyPair, load_certificates, load_keypair, read_passphrase
from .sdk.names import ORGANISATION_ID, SDK_FEDERATION


class ConfigError(ValueError):
    def __init__(self, file: Path, line: int | None, key: str, problem: str) -> None:
        where = f"{file}:{line}" if line else str(file)
        super().__init__(f"{where}: {key}: {problem}")
        self.file, self.line, self.key, self.problem = file, line, key, problem


@dataclass(frozen=True)
class Config:
    organisation_id: str
    federation: str
    signing: KeyPair
    decryption: list[KeyPair]  # more than one during a certificate rollover
    trust_anchors: list[x509.Certificate]


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

    def path(self) -> Path:
        path = Path(os.path.expandvars(self.string()))
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
    sections = root.mapping("organisation", "keys")
    organisation = _required(sections, root, "organisation")
    org = organisation.mapping("id", "federation")
    org_id = _required(org, organisation, "id")
    if not ORGANISATION_ID.fullmatch(org_id.string()):
        raise org_id.error("expected an organisation id such as 0203:kommun.se")
    keys = _required(sections, root, "keys")
    key_fields = keys.mapping("signing", "decryption", "trust_anchors")
    signing = _keypair(_required(key_fields, keys, "signing"))
    decryption = [_keypair(n) for n in _required(key_fields, keys, "decryption").sequence()]
    if not decryption:
        raise key_fields["decryption"].error("at least one decryption key is required")
    anchors = []
    for anchor in _required(key_fields, keys, "trust_anchors").sequence():
        try:
            anchors.extend(load_certificates(anchor.path()))
        except (KeyError_, OSError) as e:
            raise anchor.error(str(e)) from None
    return Config(
        organisation_id=org_id.string(),
        federation=org["federation"].string() if "federation" in org else SDK_FEDERATION,
        signing=signing,
        decryption=decryption,
        trust_anchors=anchors,
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
