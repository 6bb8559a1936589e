"""Hardened parsing: what is refused before libxml2 sees it, and what still parses."""

import pytest
from lxml import etree

from sdk_bridge.sdk.xmlsafe import MAX_DEPTH, UnsafeXML, parse


@pytest.mark.parametrize(
    "data",
    [
        b"<a/>",
        b"\xef\xbb\xbf<?xml version='1.0' encoding='UTF-8'?><a/>",
        etree.tostring(etree.Element("a"), xml_declaration=True),  # lxml writes ASCII
        b"<?xml version='1.0' encoding='us-ascii'?>\n<!-- a comment --><?pi x?><a>&amp;&#229;</a>",
        "<a>Å ä ö</a>".encode(),
        b"<a>" * MAX_DEPTH + b"</a>" * MAX_DEPTH,
        b"<a>&lt;!DOCTYPE x&gt;</a>",  # the words in text are harmless
    ],
)
def test_ordinary_documents_parse(data: bytes) -> None:
    assert parse(data, max_bytes=10_000) is not None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"<!-- hidden -->\n<!DOCTYPE a [<!ENTITY e 'x'>]><a>&e;</a>", "document type"),
        (b"<?xml version='1.0' encoding='ISO-8859-1'?><a/>", "only UTF-8"),
        ("<a/>".encode("utf-16"), "only UTF-8"),
        (b"<a>&e;</a>", "not well-formed"),
        (b"<a>" * (MAX_DEPTH + 1) + b"</a>" * (MAX_DEPTH + 1), "nested deeper"),
        (b"<a>" + b"<b/>" * 100_001 + b"</a>", "more than"),
        (b"<a>" + b"x" * 200 + b"</a>", "larger than"),
    ],
)
def test_hostile_documents_are_refused(data: bytes, reason: str) -> None:
    limit = 100 if reason == "larger than" else 10_000_000
    with pytest.raises(UnsafeXML, match=reason):
        parse(data, max_bytes=limit)


def test_a_30_mb_text_node_parses() -> None:
    """SDK attachments are base64 text nodes beyond libxml2's default 10 MB node limit."""
    root = parse(b"<a>" + b"QUJD" * 8_000_000 + b"</a>", max_bytes=40_000_000)
    assert len(root.text) == 32_000_000
