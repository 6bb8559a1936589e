"""Self-test of tests/support/digg.py against Digg's own examples and error test data.

If these fail, the harness (not the bridge) is wrong: every other test that validates
against Digg's XSDs or schematrons relies on it.
"""

from __future__ import annotations

import base64
import copy

import pytest
from lxml import etree
from support import digg

MESSAGE = ("message-v3", "sdk-meddelande-v3.1")
EXAMPLE = (*MESSAGE, "example")
FELHANTERING = ("message-v3", "sdk-meddelande-testdata-v3.1", "felhantering")
KVITTENS_EXAMPLES = ("kvittens", "C3.2.4 Meddelandekvittens_exempel_v1.0")
XHE_EXAMPLE = ("xhe", "XHE Exempel_v1.0", "XHE-tm-base-ext-sigenc.xml")
XHE_NS = "http://docs.oasis-open.org/bdxr/ns/XHE/1/ExchangeHeaderEnvelope"
XHB_NS = "http://docs.oasis-open.org/bdxr/ns/XHE/1/BasicComponents"
MSG_NS = "urn:riv:infrastructure:messaging:MessageWithAttachments:3"
CBC_NS = "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"


def read(*parts: str) -> bytes:
    return digg.spec_file(*parts).read_bytes()


def test_spec_dir_found_and_skip_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert digg.require_spec() == digg.SPEC_DIR
    monkeypatch.setattr(digg, "SPEC_DIR", None)
    with pytest.raises(pytest.skip.Exception, match="set SDK_SPEC_DIR"):
        digg.spec_file("README.md")


@pytest.mark.parametrize(
    "parts", [(*EXAMPLE, "messageWithAttachments3.xml"), (*FELHANTERING, "min.xml")]
)
def test_valid_messages_pass(parts: tuple[str, ...]) -> None:
    xml = read(*parts)
    assert digg.xsd_errors("message", xml) == []
    assert digg.schematron_failures("message", xml) == []


def test_tf_2_4_1_fails_xsd_and_schematron() -> None:
    xml = read(*FELHANTERING, "TF2.4.1.xml")
    (error,) = digg.xsd_errors("message", xml)
    assert "creationDateTime" in error and "3 Sept. 2019" in error
    failures = digg.schematron_failures("message", xml)
    assert len(failures) == 2
    assert any("tns:creationDateTime" in f for f in failures)
    # The bad conversationId ends in "Ö": non-ASCII survives the trip through Saxon.
    assert any("232cd54e-5aab-4518-b35c-d81bb053a590Ö is not a valid UUID" in f for f in failures)


def test_tf_2_4_2_passes_xsd_fails_schematron() -> None:
    xml = read(*FELHANTERING, "TF2.4.2.xml")
    assert digg.xsd_errors("message", xml) == []
    (failure,) = digg.schematron_failures("message", xml)
    assert "root" in failure and "icke-godkänt-kodverk" in failure


@pytest.mark.parametrize("label_length", [256, 257])
def test_large_non_ascii_message(label_length: int) -> None:
    """A few MB, Latin-1 encoded, label limit counted in characters (Ö is 2 bytes in UTF-8)."""
    tree = etree.fromstring(read(*EXAMPLE, "messageWithAttachments3.xml"))
    tree.find(f".//{{{MSG_NS}}}label").text = "Ö" * label_length
    documents = tree.find(f".//{{{MSG_NS}}}documents")
    files = etree.Element(f"{{{MSG_NS}}}ContentFiles")
    for name, text in [("fileName", "å.pdf"), ("contentType", "application/pdf")]:
        etree.SubElement(files, f"{{{MSG_NS}}}{name}").text = text
    etree.SubElement(files, f"{{{MSG_NS}}}content").text = base64.b64encode(bytes(3_000_000))
    documents.find(f"{{{MSG_NS}}}ContentText").addprevious(files)
    xml = etree.tostring(tree, encoding="ISO-8859-1", xml_declaration=True)
    assert len(xml) > 4_000_000
    assert digg.xsd_errors("message", xml) == []
    failures = digg.schematron_failures("message", xml)
    if label_length == 256:
        assert failures == []
    else:
        assert failures == [
            "invariant | In tns:messageHeader/tns:label, string length 257 exceeded maxlength 256"
        ]


@pytest.mark.parametrize(
    "name",
    digg.KVITTENS_EXAMPLES,
)
def test_kvittens_examples_pass(name: str) -> None:
    xml = read(*KVITTENS_EXAMPLES, name)
    assert digg.xsd_errors("kvittens", xml) == []
    assert digg.schematron_failures("kvittens", xml) == []


def test_broken_kvittens_fails() -> None:
    """Proves the UBL modules were imported (typed IssueDate) and the rules run."""
    tree = etree.fromstring(read(*KVITTENS_EXAMPLES, "Kvittens_AP-Accepterat.xml"))
    tree.find(f"{{{CBC_NS}}}IssueDate").text = "igår"
    tree.find(f".//{{{CBC_NS}}}ResponseCode").text = "OK"
    xml = etree.tostring(tree)
    (error,) = digg.xsd_errors("kvittens", xml)
    assert "IssueDate" in error
    failures = digg.schematron_failures("kvittens", xml)
    rule = "Kvittenskod (cac:DocumentResponse/cbc:ResponseCode) ska använda giltig kod"
    assert any(f.startswith(rule) for f in failures)


@pytest.mark.parametrize("source", ["example", "as4_vector"])
def test_xhe_passes(source: str) -> None:
    # Digg's XHE example starts with a UTF-8 BOM; the vector is the decoded base64 payload.
    xml = read(*XHE_EXAMPLE) if source == "example" else digg.signed_vector()
    assert digg.xsd_errors("xhe", xml) == []
    assert digg.schematron_failures("xhe", xml) == []


@pytest.mark.parametrize("source", ["example", "as4_vector"])
def test_xhe_with_wrong_customization_id_fails(source: str) -> None:
    tree = etree.fromstring(read(*XHE_EXAMPLE) if source == "example" else digg.signed_vector())
    assert tree.tag == f"{{{XHE_NS}}}XHE"
    changed = copy.deepcopy(tree)
    changed.find(f"{{{XHB_NS}}}CustomizationID").text = "urn:example:not-digg"
    xml = etree.tostring(changed)
    assert digg.xsd_errors("xhe", xml) == []
    assert digg.schematron_failures("xhe", xml) != []


def test_unknown_kind_is_an_error() -> None:
    with pytest.raises(KeyError):
        digg.xsd_errors("invoice", b"<a/>")
    with pytest.raises(KeyError):
        digg.schematron_failures("invoice", b"<a/>")
