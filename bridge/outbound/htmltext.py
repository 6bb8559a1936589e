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

from bs4 import BeautifulSoup, Tag
from markdownify import ATX, MarkdownConverter

from bridge.sdk import markdown

MAX_HTML_DEPTH: Final = 100  # deeper HTML is flattened: markdownify recurses per level
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

    def named(match: re.Match[str]) -> str:
        cid = match[1]
        return markdown.escape(f"[bild: {names.get(cid.casefold(), cid)}]")

    return _CID_MARK.sub(named, text)


def html_to_markdown(html: str) -> str:
    """HTML mail as B1.3.3's Markdown subset (module docstring)."""
    soup = BeautifulSoup(cid_marks_removed(html), "html.parser")
    _flatten_below(soup, MAX_HTML_DEPTH)
    converter = _MailMarkdown(heading_style=ATX, bullets="*", strong_em_symbol="*")
    return str(converter.convert_soup(soup))


class _MailMarkdown(MarkdownConverter):
    """markdownify for mail: nothing invisible, links, tables and images as text."""

    def convert_a(self, el: Any, text: str, parent_tags: set[str]) -> str:
        href = (el.get("href") or "").strip()
        if not _SHOWN_LINK.match(href):
            return text
        shown = href[len("mailto:") :] if href.lower().startswith("mailto:") else href
        if not text.strip() or _plain(text) in (href, shown):
            return self._escaped(shown)
        return f"{text} ({self._escaped(shown)})"

    def convert_img(self, el: Any, text: str, parent_tags: set[str]) -> str:
        source = (el.get("src") or "").strip()
        if source.lower().startswith("cid:"):
            return cid_mark(source[4:])
        alt = _WHITESPACE.sub(" ", el.get("alt") or "").strip()
        if _SHOWN_LINK.match(source):
            alt = f"{alt} ({source})" if alt else source
        return self._escaped(f"[bild: {alt}]" if alt else "[bild]")

    def convert_table(self, el: Any, text: str, parent_tags: set[str]) -> str:
        rows = [row for row in el.find_all("tr") if row.find_parent("table") is el]
        cells = [[_cell_text(cell) for cell in row.find_all(("th", "td"))] for row in rows]
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
            lines.append("* " + self._escaped(line))
        return "\n\n" + "\n".join(lines) + "\n\n" if lines else ""

    def _escaped(self, text: str) -> str:
        return markdown.escape(_WHITESPACE.sub(" ", text).strip())

    def _drop(self, el: Any, text: str, parent_tags: set[str]) -> str:
        return ""

    convert_head = convert_title = convert_script = convert_style = _drop
    convert_noscript = convert_template = convert_iframe = convert_object = _drop
    convert_svg = convert_canvas = _drop


def _cell_text(cell: Tag) -> str:
    """A table cell's words; its links and images read as they do elsewhere."""
    for link in cell.find_all("a"):
        href = (link.get("href") or "").strip()
        if _SHOWN_LINK.match(href) and link.get_text(strip=True) not in (href, href[7:]):
            link.append(f" ({href.removeprefix('mailto:')})")
    for image in cell.find_all("img"):
        source = str(image.get("src") or "")
        cid = source.lower().startswith("cid:")
        image.replace_with(cid_mark(source[4:]) if cid else f"[bild: {image.get('alt') or ''}]")
    return _WHITESPACE.sub(" ", cell.get_text(" ")).strip()


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
