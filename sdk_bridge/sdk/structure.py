"""A small content-model checker: the XSD rules that matter for SDK documents, in our code.

At run time the product cannot rely on Digg's XSD files, and their generic XSD errors would
leak values into kvittens; so each document type describes its profile with `El`/`Complex`
and `check()` reports the first deviation as a path and a value-free text. Digg's XSDs are
the yardstick in the tests.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from lxml import etree

# A simple type: returns why the text is not acceptable, or None.
Simple = Callable[[str], str | None]


@dataclass(frozen=True)
class Complex:
    children: tuple["El", ...]
    any_other: bool = False  # xs:any namespace="##other" after the sequence
    open: bool = False  # content not checked here (encrypted payload, signature)


@dataclass(frozen=True)
class El:
    ns: str
    name: str
    type: "Complex | Simple"
    min: int = 1
    max: int | None = 1  # None: unbounded
    attributes: frozenset[str] = field(default_factory=frozenset)

    @property
    def tag(self) -> str:
        return f"{{{self.ns}}}{self.name}"


class StructureError(ValueError):
    def __init__(self, path: str, text: str) -> None:
        super().__init__(f"{path}: {text}")
        self.path = path
        self.text = text

    def __reduce__(self) -> tuple[object, ...]:  # from a crypto worker, whole
        return type(self), (self.path, self.text), self.__dict__


def check(element: etree._Element, decl: El, path: str = "") -> None:
    """Raise StructureError at the first place `element` deviates from `decl`."""
    path = f"{path}/{decl.name}"
    if element.tag != decl.tag:
        raise StructureError(path, f"expected element {decl.name}")
    for attribute in element.attrib:
        if attribute not in decl.attributes and not attribute.startswith(_XSI):
            raise StructureError(path, f"attribute {_local(attribute)} is not allowed")
    if isinstance(decl.type, Complex):
        if decl.type.open:
            return
        _check_children(element, decl.type, path)
    else:
        if len(element):
            raise StructureError(path, "must not contain elements")
        problem = decl.type(element.text or "")
        if problem:
            raise StructureError(path, problem)


_XSI = "{http://www.w3.org/2001/XMLSchema-instance}"


def path_of(element: etree._Element) -> str:
    """An XPath-like location without prefixes, for kvittens LineID and error texts."""
    names = [etree.QName(e).localname for e in (element, *element.iterancestors())]
    return "/" + "/".join(reversed(names))


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _check_children(element: etree._Element, model: Complex, path: str) -> None:
    if (element.text or "").strip():
        raise StructureError(path, "text is not allowed here")
    children = []
    for child in element:
        if (child.tail or "").strip():
            raise StructureError(path, "text is not allowed here")
        if isinstance(child.tag, str):  # skip comments and processing instructions
            children.append(child)
    position = 0
    for decl in model.children:
        count = 0
        while (
            position < len(children)
            and children[position].tag == decl.tag
            and (decl.max is None or count < decl.max)
        ):
            check(children[position], decl, path)
            position += 1
            count += 1
        if count < decl.min:
            raise StructureError(f"{path}/{decl.name}", "required element is missing")
    own_ns = element.tag.partition("}")[0][1:]
    for child in children[position:]:
        child_ns = child.tag.partition("}")[0][1:] if child.tag.startswith("{") else ""
        if not (model.any_other and child_ns and child_ns != own_ns):
            raise StructureError(f"{path}/{_local(child.tag)}", "element is not allowed here")


# Simple types.


def string(text: str) -> str | None:
    return None


def max_length(limit: int) -> Simple:
    def check_length(text: str) -> str | None:
        return f"longer than {limit} characters" if len(text) > limit else None

    return check_length


_DATETIME = re.compile(r"-?\d{4,}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?")
_DATE = re.compile(r"-?\d{4,}-\d{2}-\d{2}(Z|[+-]\d{2}:\d{2})?")
_TIME = re.compile(r"\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?")


def _lexical(pattern: re.Pattern[str], name: str, parse: Callable[[str], object]) -> Simple:
    def check_value(text: str) -> str | None:
        value = text.strip()
        if not pattern.fullmatch(value):
            return f"not a valid {name}"
        try:
            parse(value)
        except ValueError:
            return f"not a valid {name}"
        return None

    return check_value


def _iso(value: str) -> datetime:
    # xs:dateTime's 24:00:00 is refused: no SDK party writes it, and Python cannot read it.
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


date_time = _lexical(_DATETIME, "xs:dateTime", _iso)
date = _lexical(_DATE, "xs:date", lambda v: _iso(v[:10]))
time = _lexical(_TIME, "xs:time", lambda v: _iso("2000-01-01T" + v))


def boolean(text: str) -> str | None:
    return None if text.strip() in ("true", "false", "1", "0") else "not a valid xs:boolean"
