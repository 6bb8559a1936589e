"""Namespaces and fixed identifiers from Digg's SDK specifications."""

import re
from typing import Final

# SDK business message v3 (B1.3.3).
MSG_NS: Final = "urn:riv:infrastructure:messaging:MessageWithAttachments:3"
FUNCTIONAL_ADDRESS_ROOT: Final = "urn:riv:infrastructure:messaging:functionalAddress"
PARTY_SCHEME: Final = "iso6523-actorid-upis"

# XHE 1.0 envelope (C3.2.2).
XHE_NS: Final = "http://docs.oasis-open.org/bdxr/ns/XHE/1/ExchangeHeaderEnvelope"
XHA_NS: Final = "http://docs.oasis-open.org/bdxr/ns/XHE/1/AggregateComponents"
XHB_NS: Final = "http://docs.oasis-open.org/bdxr/ns/XHE/1/BasicComponents"
XHE_CUSTOMIZATION: Final = "urn:fdc:digg.se:edelivery:xhe:1"

# Kvittens: UBL 2.1 ApplicationResponse (C3.2.4).
APP_NS: Final = "urn:oasis:names:specification:ubl:schema:xsd:ApplicationResponse-2"
CAC_NS: Final = "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
CBC_NS: Final = "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"
KVITTENS_CUSTOMIZATION: Final = "urn:fdc:digg.se:edelivery:messagetype:response:1"

# SMP / XHE business scope.
MESSAGE_DOCUMENT_ID: Final = (
    "urn:riv:infrastructure:messaging:MessageWithAttachments:3::messagePayload##3.0"
    "::tm-base-ext-sigenc"
)
KVITTENS_DOCUMENT_ID: Final = (
    "urn:oasis:names:specification:ubl:schema:xsd:ApplicationResponse-2::ApplicationResponse"
    "##fdc:digg.se:edelivery:messagetype:response:1::2.1::tm-base-ext-sigenc"
)
DOCUMENT_ID_SCHEME: Final = "busdox-docid-qns"
# The ebMS Action of each document type: how an envelope at the access point says what it is.
MESSAGE_ACTION: Final = f"{DOCUMENT_ID_SCHEME}::{MESSAGE_DOCUMENT_ID}"
KVITTENS_ACTION: Final = f"{DOCUMENT_ID_SCHEME}::{KVITTENS_DOCUMENT_ID}"
PROCESS_ID: Final = "bdx:noprocess"
PROCESS_ID_SCHEME: Final = "urn:fdc:digg.se:edelivery:process"
SDK_FEDERATION: Final = "urn:fdc:digg.se:edelivery:federation:sdk"
MESSAGE_TYPE_CODE: Final = f"Q{{{MSG_NS}}}messagePayload"
KVITTENS_TYPE_CODE: Final = f"Q{{{APP_NS}}}ApplicationResponse"

# XML-DSig and XML-Enc.
XML_NS: Final = "http://www.w3.org/XML/1998/namespace"  # xml:lang, xml:id...
DS_NS: Final = "http://www.w3.org/2000/09/xmldsig#"
XENC_NS: Final = "http://www.w3.org/2001/04/xmlenc#"
C14N: Final = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
C14N11: Final = "http://www.w3.org/2006/12/xml-c14n11"  # what OASIS SMP 1.0 signs with
# Exclusive c14n 1.0; also the namespace of its InclusiveNamespaces parameter.
EXC_C14N: Final = "http://www.w3.org/2001/10/xml-exc-c14n#"
ENVELOPED: Final = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
RSA_SHA256: Final = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA256: Final = "http://www.w3.org/2001/04/xmlenc#sha256"
SHA1: Final = "http://www.w3.org/2000/09/xmldsig#sha1"
AES256_CBC: Final = "http://www.w3.org/2001/04/xmlenc#aes256-cbc"
RSA_OAEP_MGF1P: Final = "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p"
XENC_ELEMENT: Final = "http://www.w3.org/2001/04/xmlenc#Element"

UUID: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)

ORGANISATION_ID: Final = re.compile(r"0203:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")

# Limits (B1.3.3): the whole business message, attachments included.
MAX_MESSAGE_BYTES: Final = 30_000_000
MAX_LABEL_CHARS: Final = 256


def q(ns: str, local: str) -> str:
    """Clark notation, as lxml wants it."""
    return f"{{{ns}}}{local}"
