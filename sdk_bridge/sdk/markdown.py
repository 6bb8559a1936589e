"""B1.3.3's Markdown subset for an SDK message's text, both ways.

SDK's `characterSequence` is Markdown (RFC 7763, the subset B1.3.3 §4.3.3.2 lists: ATX
headings, `**bold**`/`__bold__`, `*italic*`/`_italic_`, `*` bullets, `1.` numbers, hard
line breaks, `---`), and every client renders it. Mail's plain text is not: written into
an SDK message as it is, signature and address lines run into one paragraph, `1.` lines
become a list, `KS_2024_0123` turns italic, `C:\\Users\\x` loses its backslashes.

- `escape` writes plain text as Markdown that renders exactly as written: every ASCII
  character that can start or end a Markdown construct anywhere is backslash-escaped (a
  CommonMark escape, which B1.3.3's clients read as the character itself), those that
  matter only at the start of a line (`#`, `-`, `+`, `=`, `1.`) there, and every line
  break inside a paragraph becomes a hard break (two spaces, B1.3.3's own form).
- `plain` reads Markdown back as plain text: hard-break marks and backslash escapes go,
  the rest stays as written (headings with `#`, `**bold**`), which reads well. For text
  that `escape` wrote, it gives that text back line for line.
- `render` is safe HTML of the subset and nothing else: no raw HTML (shown as text), no
  links, images, code blocks or quotes (their Markdown stays visible as text, so nothing
  is lost), hence no remote reference and nothing that runs.
"""

import html
import operator
import re
from typing import Final

from markdown_it import MarkdownIt

# Significant wherever they stand: emphasis, code, links, raw HTML, entities, and (GFM, which
# some clients speak) tables and strikethrough.
_SIGNIFICANT: Final = "\\`*_[]<>&|~"
_ANYWHERE: Final = str.maketrans({c: "\\" + c for c in _SIGNIFICANT})
_ANYWHERE_FEW: Final = re.compile("([" + re.escape(_SIGNIFICANT) + "])")
_FEW: Final = 16  # at most one such character in this many: a regex is faster than translate
# Significant at the start of a line: headings, bullets, setext underlines and thematic
# breaks, ordered list numbers (after any indentation: a renderer may read four spaces as a
# code block, or a list item nested in another).
_LINE_START: Final = re.compile(r"^([ \t]*)([#+=-])", re.MULTILINE)
_ORDERED: Final = re.compile(r"^([ \t]*\d{1,9})([.)])", re.MULTILINE)
# Indentation a renderer would read as a code block: written as character references.
_INDENT: Final = re.compile(r"^[ \t]*(?:\t| {4})[ \t]*", re.MULTILINE)
_TRAILING_SPACE: Final = re.compile(r"[ \t\r\f\v]+$", re.MULTILINE)
# A break inside a paragraph (the newline first: a pattern that starts with a lookbehind is
# tried at every character).
_BETWEEN_LINES: Final = re.compile(r"\n(?<=[^\n]\n)(?=[^\n])")
_INDENT_REFERENCES: Final = re.compile(r"^(?:&#32;|&#9;)+", re.MULTILINE)
MAX_RENDERED_CHARS: Final = 512 * 1024  # longer text is rendered as plain paragraphs
_HARD_BREAK: Final = "  "
_ESCAPED: Final = re.compile(r"\\([!-/:-@\[-`{-~])")  # CommonMark: any ASCII punctuation
_BREAK_MARK: Final = re.compile(r"(?: {2,}|\\)$", re.MULTILINE)


def escape(text: str) -> str:
    """Plain text as Markdown that renders as it was written (see the module docstring).
    Trailing whitespace of each line is dropped. Each rule runs over the whole text at
    once: a 30 MB mail has hundreds of thousands of lines."""
    escaped = escape_inline(_TRAILING_SPACE.sub("", text))
    return _BETWEEN_LINES.sub(_HARD_BREAK + "\n", escaped)


def escape_inline(text: str) -> str:
    """Text as Markdown that renders as written, its line breaks left soft (text within an
    HTML paragraph, whose line breaks are spaces)."""
    if sum(map(text.count, _SIGNIFICANT)) * _FEW < len(text):  # most mail: a few, or none
        text = _ANYWHERE_FEW.sub(r"\\\1", text)
    else:
        text = text.translate(_ANYWHERE)  # in C: a 30 MB mail may be all asterisks
    text = _LINE_START.sub(r"\1\\\2", text)
    text = _ORDERED.sub(r"\1\\\2", text)
    return _INDENT.sub(_references, text)


def _references(indent: re.Match[str]) -> str:
    return "".join("&#9;" if c == "\t" else "&#32;" for c in indent[0])


def plain(markdown: str) -> str:
    """Markdown as plain text that reads like the original: `escape` undone."""
    text = _BREAK_MARK.sub("", markdown)
    text = _INDENT_REFERENCES.sub(_indentation, text)
    return _ESCAPED.sub(_escaped_character, text)


_escaped_character: Final = operator.itemgetter(1)  # a function, not a template: faster


def _indentation(references: re.Match[str]) -> str:
    return references[0].replace("&#32;", " ").replace("&#9;", "\t")


def render(markdown: str) -> str:
    """Safe HTML of B1.3.3's subset (module docstring). Text over `MAX_RENDERED_CHARS` is
    shown as plain paragraphs: the renderer costs seconds and hundreds of megabytes a
    megabyte, and a peer may send 30 MB."""
    if len(markdown) > MAX_RENDERED_CHARS:
        paragraphs = re.split(r"\n{2,}", plain(markdown).strip("\n"))
        return "".join(
            "<p>" + "<br />\n".join(html.escape(line) for line in p.split("\n")) + "</p>\n"
            for p in paragraphs
        )
    if _OTHER_SPACE.search(markdown) is None and escape(plain(markdown)) == markdown:
        return _escaped_render(markdown)
    return _RENDERER.render(markdown)


def _escaped_render(markdown: str) -> str:
    """What the renderer makes of text that `escape` wrote, made directly (a third of the
    time for text of many lines, the check in `render` included; one and a half times as
    long for a single long paragraph, rarer in mail): paragraphs of lines with hard breaks
    between them, the indentation of up to three spaces dropped as CommonMark drops it,
    character references and escapes read, the rest as it is, HTML-escaped as markdown-it
    escapes."""
    text = plain(_LEADING_SPACES.sub("", markdown.strip("\n")))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace('"', "&quot;")  # as markdown-it escapes (not ')
    if not text:
        return ""
    paragraphs = _PARAGRAPHS.split(text)
    return "".join("<p>" + p.replace("\n", "<br />\n") + "</p>\n" for p in paragraphs)


_LEADING_SPACES: Final = re.compile(r"^ +", re.MULTILINE)
_PARAGRAPHS: Final = re.compile(r"\n{2,}")
# Whitespace the renderer trims or reads in ways of its own (tabs, CR, Unicode spaces):
# text with any goes to the renderer.
_OTHER_SPACE: Final = re.compile(r"[^\S \n]|\x00")  # NUL too: it becomes U+FFFD there


_RENDERER: Final = MarkdownIt("commonmark", {"html": False}).disable(
    [
        "image",
        "link",
        "autolink",
        "backticks",
        "code",
        "fence",
        "blockquote",
        "html_block",
        "html_inline",
        "reference",
    ]
)
