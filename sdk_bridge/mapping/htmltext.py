"""HTML mail as B1.3.3's Markdown subset, what the subset lacks turned into readable text.

The subset has headings, bold, italic, bullets, numbers, hard breaks and rules; it has no
links, tables or images. So that nothing the writer sent is lost:

- a link reads ``text (https://…)`` (the address alone when it is the text; ``mailto:``
  dropped); only http, https and mailto addresses are shown, anything else keeps its text;
- a table becomes one bullet per row, ``* Datum: 2024-05-01, Belopp: 100 kr`` when it has a
  header row, else its cells joined by " · ";
- an image reads ``[bild: alt (https://…)]``; an inline image (``cid:``) becomes a
  `cid_mark`, which the mapping turns into the name of the file that carries the image;
- scripts, styles, the document head and other invisible parts are dropped; HTML nested
  deeper than `MAX_HTML_DEPTH` is flattened to its text.
"""

import re
from typing import Any, Final

import lxml.html
from bs4 import BeautifulSoup, Tag
from lxml import etree
from markdownify import ATX, MarkdownConverter

from sdk_bridge.sdk import markdown

MAX_HTML_DEPTH: Final = 100  # deeper HTML is flattened: markdownify recurses per level
MAX_CONVERTED_BYTES: Final = 1024 * 1024  # larger HTML is read as its text alone
# An inline image's Content-ID between two private-use characters, which no mail text keeps
# (`cid_marks_removed` takes them out of the text first).
_CID_MARK: Final = re.compile("\ue000([^\ue000\ue001]*)\ue001")
_SHOWN_LINK: Final = re.compile(r"(?i)(https?:|mailto:)")
_WHITESPACE: Final = re.compile(r"\s+")


def cid_mark(content_id: str) -> str:
    """A stand-in for the inline image `content_id` in converted text."""
    return f"\ue000{content_id.strip().strip('<>')}\ue001"


def cid_marks_removed(text: str) -> str:
    """`text` without the two characters a `cid_mark` is made of."""
    return text.replace("\ue000", "").replace("\ue001", "")


def cid_marks_replaced(text: str, names: dict[str, str]) -> str:
    """Each `cid_mark` as ``[bild: <file name>]`` (Markdown, escaped), the Content-ID
    itself where no part carries it."""
    shown: dict[str, str] = {}  # a mail may repeat one marker a hundred thousand times

    def named(match: re.Match[str]) -> str:
        if match[1] not in shown:
            cid = markdown.plain(match[1])  # escaped with the text it stood in
            shown[match[1]] = markdown.escape(f"[bild: {names.get(cid.casefold(), cid)}]")
        return shown[match[1]]

    return _CID_MARK.sub(named, text)


def html_to_markdown(html: str) -> str:
    """HTML mail as B1.3.3's Markdown subset (module docstring). HTML over
    `MAX_CONVERTED_BYTES` is read as its text alone (lxml, in C): converting costs seconds
    a megabyte, and a 30 MB HTML mail would hold the SMTP dialogue for minutes."""
    html = cid_marks_removed(html)
    if len(html) > MAX_CONVERTED_BYTES:
        return markdown.escape(_text_of(html))
    soup = BeautifulSoup(html, "html.parser")
    _flatten_below(soup, MAX_HTML_DEPTH)
    converter = _MailMarkdown(
        heading_style=ATX,
        bullets="*",
        strong_em_symbol="*",
        escape_asterisks=False,  # `escape` below does all of it
        escape_underscores=False,
    )
    return str(converter.convert_soup(soup))


def _text_of(html: str) -> str:
    """The words of an HTML document, scripts and styles left out."""
    try:
        document = lxml.html.document_fromstring(html)
    except (etree.ParserError, ValueError):
        return ""
    for invisible in document.xpath("//script|//style|//head|//template"):
        invisible.drop_tree()
    return str(document.text_content())


class _MailMarkdown(MarkdownConverter):
    """markdownify for mail: the writer's text escaped, nothing invisible, links, tables,
    images, code and quotes as text the subset can show."""

    def escape(self, text: str, parent_tags: set[str]) -> str:
        """Every Markdown character of the writer's text (markdownify escapes only * and _):
        `[x](y)`, `# 1`, `1.` or `&lt;script&gt;` stay text."""
        return markdown.escape_inline(text)

    def convert_a(self, el: Any, text: str, parent_tags: set[str]) -> str:
        href = (el.get("href") or "").strip()
        shown = _shown_link(href)
        if shown is None:
            return text
        if not text.strip() or _plain(text) in (href, shown):
            return markdown.escape_inline(shown)
        return f"{text} ({markdown.escape_inline(shown)})"

    def convert_img(self, el: Any, text: str, parent_tags: set[str]) -> str:
        return _image_text(el, escaped=True)

    def convert_pre(self, el: Any, text: str, parent_tags: set[str]) -> str:
        """Preformatted text keeps its lines, as text (no code block in the subset)."""
        return "\n\n" + markdown.escape(el.get_text().strip("\n")) + "\n\n"

    def convert_code(self, el: Any, text: str, parent_tags: set[str]) -> str:
        if "pre" in parent_tags:
            return text
        return markdown.escape_inline(el.get_text())

    convert_kbd = convert_samp = convert_code

    def convert_blockquote(self, el: Any, text: str, parent_tags: set[str]) -> str:
        """A quote keeps its ">" marks, as text (no quote block in the subset)."""
        text = text.strip()
        if "_inline" in parent_tags or not text:
            return f" {text} " if text else ""
        quoted = "\n".join(f"\\> {line}" if line else "\\>" for line in text.split("\n"))
        return "\n\n" + quoted + "\n\n"

    def convert_table(self, el: Any, text: str, parent_tags: set[str]) -> str:
        lines = _table_lines(el)
        return "\n\n" + "\n".join(lines) + "\n\n" if lines else ""

    def _drop(self, el: Any, text: str, parent_tags: set[str]) -> str:
        return ""

    convert_head = convert_title = convert_script = convert_style = _drop
    convert_noscript = convert_template = convert_iframe = convert_object = _drop
    convert_svg = convert_canvas = _drop


def _shown_link(href: str) -> str | None:
    """How a link's address is shown: http and https as they are, mailto without the
    scheme; None for anything else (its text stays, the address does not)."""
    if not _SHOWN_LINK.match(href):
        return None
    return href[len("mailto:") :] if href.lower().startswith("mailto:") else href


def _image_text(image: Tag, *, escaped: bool) -> str:
    source = str(image.get("src") or "").strip()
    if source.lower().startswith("cid:"):
        return cid_mark(source[4:])
    alt = _WHITESPACE.sub(" ", str(image.get("alt") or "")).strip()
    if _SHOWN_LINK.match(source):
        alt = f"{alt} ({source})" if alt else source
    shown = f"[bild: {alt}]" if alt else "[bild]"
    return markdown.escape_inline(shown) if escaped else shown


def _table_lines(table: Tag) -> list[str]:
    """One bullet per row: "Header: cell, …" under a header row, else cells joined by
    " · "; a table inside a cell gives its own bullets after its table's."""
    rows = [row for row in table.find_all("tr") if row.find_parent("table") is table]
    cells = [
        [_cell_text(cell) for cell in row.find_all(("th", "td")) if cell.find_parent("tr") is row]
        for row in rows
    ]
    header: list[str] = []
    if rows and rows[0].find("th") is not None:
        header, cells = cells[0], cells[1:]
    lines = []
    for row in cells:
        if not any(row):
            continue
        if header:
            pairs = zip(header, row, strict=False)
            line = ", ".join(f"{h}: {c}" if h else c for h, c in pairs if c)
        else:
            line = " · ".join(c for c in row if c)
        lines.append("* " + markdown.escape_inline(_WHITESPACE.sub(" ", line).strip()))
    for inner in table.find_all("table"):
        if inner.find_parent("table") is table:
            lines.extend(_table_lines(inner))
    return lines


def _cell_text(cell: Tag) -> str:
    """A cell's words, its links and images read as elsewhere, a table inside it left for
    its own bullets. Nodes are visited once each, the tree left as it is."""
    words: list[str] = []
    stack: list[Any] = [cell]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            words.append(str(node))
        elif node.name == "table" and node is not cell:
            continue
        elif node.name == "img":
            words.append(f" {_image_text(node, escaped=False)} ")
        else:
            if node.name == "a":
                href = str(node.get("href") or "").strip()
                shown = _shown_link(href)
                if shown is not None and node.get_text(strip=True) not in (shown, href):
                    stack.append(f" ({shown})")
            stack.extend(reversed(list(node.children)))
    return _WHITESPACE.sub(" ", "".join(words)).strip()


def _plain(text: str) -> str:
    return markdown.plain(text).strip()


def _flatten_below(soup: BeautifulSoup, depth: int) -> None:
    """Replace elements nested deeper than `depth` by their text, one line per string.

    markdownify recurses once per level, and a long reply chain of quoted Outlook mail
    (or a hostile one) nests deeper than Python's stack; the words matter more than the
    formatting of the 100th quote. Replacing whole subtrees keeps this linear in size.
    """
    too_deep: list[Tag] = []
    stack: list[tuple[Tag, int]] = [(soup, 0)]
    while stack:
        node, level = stack.pop()
        for child in node.children:
            if not isinstance(child, Tag):
                continue
            if level + 1 > depth:
                too_deep.append(child)
            else:
                stack.append((child, level + 1))
    for tag in too_deep:
        tag.replace_with(tag.get_text("\n"))
