"""The house's layers: a package imports only from layers below its own, never sideways or
up, so there are no circles and each can be read (and changed) with only what is under it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# From the bottom up; units in one layer do not import each other.
LAYERS = [
    {"sdk_bridge", "sdk_bridge.sdk", "sdk_bridge.runtime"},
    {"sdk_bridge.registry"},
    {"sdk_bridge.spool"},
    {"sdk_bridge.plugin"},  # the door for plugins, lending them what they may use from below
    {"sdk_bridge.mapping", "sdk_bridge.retrieval"},
    {"sdk_bridge.ingress", "sdk_bridge.outbound", "sdk_bridge.inbound"},
    {"sdk_bridge.config"},
    {"sdk_bridge.ops"},
    {"sdk_bridge.daemon"},
    {"sdk_bridge.lab"},
    {"sdk_bridge.cli"},
]


def unit(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "sdk_bridge" and len(parts) > 1 else parts[0]


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports(path: Path) -> set[str]:
    """The bridge modules `path` imports (at run time or for the type checker)."""
    package = list(path.relative_to(ROOT).parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            candidates = [module, *(f"{module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found.update(c for c in candidates if c.split(".")[0] == "sdk_bridge" and is_module(c))
    return found


def layer(name: str) -> int:
    return next(number for number, units in enumerate(LAYERS) if unit(name) in units)


def test_every_package_has_its_layer() -> None:
    names = {p.stem for p in (ROOT / "sdk_bridge").iterdir() if p.name[0] != "_"}
    assert {f"sdk_bridge.{name}" for name in names} <= set().union(*LAYERS)


def test_imports_go_only_down() -> None:
    wrong = []
    for path in sorted((ROOT / "sdk_bridge").rglob("*.py")):
        here = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for target in imports(path):
            if unit(target) != unit(here) and layer(target) >= layer(here):
                wrong.append(f"{here} -> {target}")
    assert wrong == []


def test_plugins_use_only_what_a_third_party_may() -> None:
    """Their door, `sdk_bridge.plugin`, and nothing else of the bridge."""
    wrong = [
        f"{path.relative_to(ROOT)} -> {target}"
        for path in sorted((ROOT / "sdk_bridge_plugins").rglob("*.py"))
        for target in imports(path)
        if unit(target) != "sdk_bridge.plugin"
    ]
    assert wrong == []
