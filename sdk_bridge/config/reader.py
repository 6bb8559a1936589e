"""The configuration file read as YAML nodes that know their key and line, so every error
names both: `compose` reads the file, `Node` checks one value, and the helpers below read
the kinds of value many sections share."""

import ipaddress
import os
from pathlib import Path

import yaml

MAX_NUMBER = 1_000_000  # hours, days or seconds: far above any setting's sense


class ConfigError(ValueError):
    def __init__(self, file: Path, line: int | None, key: str, problem: str) -> None:
        where = f"{file}:{line}" if line else str(file)
        super().__init__(f"{where}: {key}: {problem}")
        self.file, self.line, self.key, self.problem = file, line, key, problem


class Node:
    """A YAML value with its key path and line, for errors that point at the file."""

    def __init__(self, file: Path, key: str, node: yaml.Node) -> None:
        self.file, self.key, self.node = file, key, node

    @property
    def line(self) -> int:
        return self.node.start_mark.line + 1

    def error(self, problem: str) -> ConfigError:
        return ConfigError(self.file, self.line, self.key, problem)

    def mapping(self, *allowed: str) -> dict[str, "Node"]:
        if not isinstance(self.node, yaml.MappingNode):
            raise self.error("expected a mapping of keys")
        children: dict[str, Node] = {}
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
            children[name] = Node(self.file, path, value_node)
        return children

    def sequence(self) -> list["Node"]:
        if not isinstance(self.node, yaml.SequenceNode):
            raise self.error("expected a list")
        return [Node(self.file, f"{self.key}[{i}]", n) for i, n in enumerate(self.node.value)]

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


def required(children: dict[str, Node], parent: Node, name: str) -> Node:
    if name not in children:
        key = f"{parent.key}.{name}" if parent.key else name
        raise ConfigError(parent.file, parent.line, key, "required key is missing")
    return children[name]


def strings(node: Node) -> tuple[str, ...]:
    return tuple(item.string() for item in node.sequence())


def listen(node: Node) -> tuple[tuple[str, int], ...]:
    return tuple(listen_one(item) for item in node.sequence())


def listen_one(node: Node) -> tuple[str, int]:
    host, _, port = node.string().rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        return host.strip("[]"), int(port)
    except ValueError:
        raise node.error("expected address:port, e.g. 127.0.0.1:2525") from None


def whole_number(node: Node, minimum: int = 1) -> int:
    try:
        value = int(node.string())
    except ValueError:
        raise node.error("expected a whole number") from None
    if value < minimum:
        raise node.error(f"expected a number of at least {minimum}")
    return value


def url(node: Node, schemes: tuple[str, ...] = ("https://",)) -> str:
    url = node.string()
    if not url.startswith(schemes):
        raise node.error(f"expected a URL starting with {' or '.join(schemes)}")
    return url


def nameserver(node: Node) -> tuple[str, int]:
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


def existing_file(node: Node) -> Path:
    path = node.path()
    if not path.is_file():
        raise node.error(f"no such file: {path}")
    return path


def compose(file: Path) -> Node:
    """The file's root node; a file that cannot be read or is not YAML is a ConfigError."""
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
    return Node(file, "", document)
