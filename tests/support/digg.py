"""Validate XML against Digg's own SDK artefacts (XSDs and schematrons) in tests.

Digg's specification pack is reference data that the project must not copy, so tests read
it from ``$SDK_SPEC_DIR`` or ``../shared/sdk-spec`` beside the repository, and skip with a
clear reason where it is absent. Everything expensive (schema loading, stylesheet
compilation, the Saxon processor) happens once per process.
"""

from __future__ import annotations

import base64
import functools
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

import pytest
from lxml import etree, isoschematron

if TYPE_CHECKING:  # saxonche is imported lazily: XSD-only tests do not need it
    from saxonche import PySaxonProcessor, PyXsltExecutable

_DEFAULT_SPEC_DIR = Path(__file__).resolve().parents[3] / "shared" / "sdk-spec"


def _spec_dir_candidate() -> Path:
    env = os.environ.get("SDK_SPEC_DIR")
    return Path(env).expanduser().resolve() if env else _DEFAULT_SPEC_DIR


SPEC_DIR: Path | None = _spec_dir_candidate() if _spec_dir_candidate().is_dir() else None

_MESSAGE = "message-v3/sdk-meddelande-v3.1"
_KVITTENS = "kvittens/C3.2.4 Meddelandekvittens"
_XSD = {
    "message": f"{_MESSAGE}/sdk-schema-message-v3/"
    "infrastructure_messaging_MessageWithAttachments_3.0.xsd",
    "xhe": "xhe/XHE_xml-schema (OASIS XHE1.0)/XHE-1.0.xsd",
    "kvittens": f"{_KVITTENS}_profilschema_v1.0/Response-2.1.xsd",
}
_SCHEMATRON_XSLT = {
    "xhe": "xhe/XHE Schematron v1.0/DIGG-XHE-Business-Rules.xslt",
    "kvittens": f"{_KVITTENS}_schematron_v1.0/DIGG-AppRes-Business-Rules.xslt",
}
_MESSAGE_SCHEMATRON = f"{_MESSAGE}/sdk-schematron-v3/MessageConstraints.xml"
_SVRL = {"svrl": "http://purl.oclc.org/dsdl/svrl"}
# Inputs are parsed once with lxml: no network, no external entities, big attachments allowed.
_INPUT_PARSER = etree.XMLParser(no_network=True, huge_tree=True)


def require_spec() -> Path:
    """Return the spec pack folder, or skip the calling test when it is not available."""
    if SPEC_DIR is None:
        pytest.skip(f"Digg's SDK spec pack not found at {_spec_dir_candidate()}; set SDK_SPEC_DIR")
    return SPEC_DIR


KVITTENS_EXAMPLES = (
    "Kvittens_AP-Accepterat.xml",
    "Kvittens_RE-AnnatFel.xml",
    "Kvittens_RE-SCHFel.xml",
    "Kvittens_RE-SIG.xml",
    "Kvittens_RE-XSDFel.xml",
)


def kvittens_example(name: str) -> bytes:
    return spec_file(f"{_KVITTENS}_exempel_v1.0", name).read_bytes()


def signed_vector() -> bytes:
    """Digg's real signed, encrypted XHE: the base64 <value> of its Domibus submitRequest."""
    example = spec_file(_MESSAGE, "example", "as4_xhe_encrypted.xml")
    (value,) = etree.parse(str(example), _INPUT_PARSER).xpath("//value")
    return base64.b64decode(value.text)


def spec_file(*parts: str) -> Path:
    """Path of a file inside the spec pack (skips the test when the pack is absent)."""
    return require_spec().joinpath(*parts)


class _LocalSchemas(etree.Resolver):
    """Resolve schema imports to files under one folder only, never over the network.

    Digg's kvittens XSDs import ``DIGG UBL-ApplicationResponse-2.1_<module>.xsd`` but ship
    the files as ``Response-2.1_<module>.xsd``, so an unknown name maps to the local file
    whose name is its longest suffix (this also covers imports by URL).
    """

    def __init__(self, root: Path) -> None:
        super().__init__()
        self._files = sorted(root.rglob("*.xsd"), key=lambda p: len(p.name), reverse=True)

    def resolve(self, url: str, pubid: str | None, context: object) -> etree._InputDocument | None:
        if "://" not in url and Path(url).is_file():
            return None  # libxml2 loads existing local files itself
        name = unquote(url.rstrip("/").rsplit("/", 1)[-1])
        for candidate in self._files:
            if name.endswith(candidate.name):
                return self.resolve_filename(str(candidate), context)
        raise LookupError(f"schema import {url!r} has no local copy")


@functools.cache
def _schema(kind: str) -> etree.XMLSchema:
    path = spec_file(_XSD[kind])
    parser = etree.XMLParser(no_network=True)
    parser.resolvers.add(_LocalSchemas(path.parent))
    return etree.XMLSchema(etree.parse(str(path), parser))


def _parse(xml: bytes) -> etree._ElementTree:
    return etree.ElementTree(etree.fromstring(xml, _INPUT_PARSER))


def xsd_errors(kind: str, xml: bytes) -> list[str]:
    """XSD errors as ``line N: message`` (empty = valid); raises on non-well-formed input."""
    schema = _schema(kind)
    if schema.validate(_parse(xml)):
        return []
    return [f"line {e.line}: {e.message}" for e in schema.error_log]


@functools.cache
def _saxon() -> PySaxonProcessor:
    """One Saxon processor for the whole process, shared by every compiled stylesheet."""
    from saxonche import PySaxonProcessor

    return PySaxonProcessor(license=False)


@functools.cache
def _message_schematron_xslt() -> str:
    """Compile MessageConstraints.xml with lxml's ISO skeleton, as the spec README describes.

    The XSLT1 skeleton refuses queryBinding="xslt2"; Saxon still evaluates the XPath 2
    functions (matches(), eq, le) that Digg's asserts use.
    """
    skeleton = Path(isoschematron.__file__).parent / "resources/xsl/iso-schematron-xslt1"
    xslt = _saxon().new_xslt30_processor()

    def step(name: str, source: str) -> str:
        executable = xslt.compile_stylesheet(stylesheet_file=str(skeleton / name))
        node = _saxon().parse_xml(xml_text=source, encoding="UTF-8")
        return executable.transform_to_string(xdm_node=node)

    src = spec_file(_MESSAGE_SCHEMATRON)
    included = xslt.compile_stylesheet(
        stylesheet_file=str(skeleton / "iso_dsdl_include.xsl")
    ).transform_to_string(source_file=str(src))
    expanded = step("iso_abstract_expand.xsl", included)
    expanded, count = re.subn(r"""queryBinding=(["'])xslt2\1""", 'queryBinding="xslt"', expanded)
    if count != 1:
        raise RuntimeError("MessageConstraints.xml no longer declares queryBinding xslt2")
    return step("iso_svrl_for_xslt1.xsl", expanded)


@functools.cache
def _schematron(kind: str) -> PyXsltExecutable:
    """Compiled schematron XSLT per kind (not thread-safe: tests run it from one thread)."""
    xslt = _saxon().new_xslt30_processor()
    if kind == "message":
        return xslt.compile_stylesheet(stylesheet_text=_message_schematron_xslt())
    return xslt.compile_stylesheet(stylesheet_file=str(spec_file(_SCHEMATRON_XSLT[kind])))


def schematron_failures(kind: str, xml: bytes) -> list[str]:
    """Texts of failed asserts and successful reports in the SVRL (empty = passes).

    The input is parsed by lxml and handed to Saxon as text, so a BOM or a non-UTF-8
    encoding declaration in ``xml`` does not matter; raises on non-well-formed input.
    """
    if kind not in _XSD:
        raise KeyError(kind)
    source = etree.tostring(_parse(xml), encoding="unicode")
    node = _saxon().parse_xml(xml_text=source, encoding="UTF-8")
    svrl = etree.fromstring(_schematron(kind).transform_to_string(xdm_node=node).encode())
    hits = svrl.xpath("//svrl:failed-assert | //svrl:successful-report", namespaces=_SVRL)
    return [" ".join(hit.xpath("string(svrl:text)", namespaces=_SVRL).split()) for hit in hits]
