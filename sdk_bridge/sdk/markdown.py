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
_ANYWHERE_FEW: Final = re.compile("[" + re.escape(_SIGNIFICANT) + "]")
_BACKSLASHED: Final = {c: "\\" + c for c in _SIGNIFICANT}
_FEW: Final = 4  # at most one such character in this many: a regex is faster than translate
# Significant at the start of a line: headings, bullets, setext underlines and thematic
# breaks, ordered list numbers (after any indentation: a renderer may read four spaces as a
# code block, or a list item nested in another).
# These three are applied to single lines, those that start with one of `_LINE_STARTERS`.
_LINE_START: Final = re.compile(r"^([ \t]*)([#+=-])")
_ORDERED: Final = re.compile(r"^([ \t]*\d{1,9})([.)])")
# Indentation a renderer would read as a code block: written as character references.
_INDENT: Final = re.compile(r"^[ \t]*(?:\t| {4})[ \t]*")
_LINE_STARTERS: Final = frozenset(" \t#+=-0123456789")
_TRAILING_SPACE: Final = " \t\r\f\v"
# A break inside a paragraph (the newline first: a pattern that starts with a lookbehind is
# tried at every character).
_BETWEEN_LINES: Final = re.compile(r"\n(?<=[^\n]\n)(?=[^\n])")
_INDENT_REFERENCES: Final = re.compile(r"^(?:&#32;|&#9;)+", re.MULTILINE)
MAX_RENDERED_CHARS: Final = 512 * 1024  # longer text is rendered as plain paragraphs
_HARD_BREAK: Final = "  "
_ESCAPED: Final = re.compile(r"\\([!-/:-@\[-`{-~])")  # CommonMark: any ASCII punctuation


def escape(text: str) -> str:
    """Plain text as Markdown that renders as it was written (see the module docstring).
    Trailing whitespace of each line is dropped. A rule that holds anywhere in a line runs
    over the whole text at once, one for a line's start or end line by line (a regex for `^`
    or `$` is tried at every character): a 30 MB mail has hundreds of thousands of lines."""
    escaped = escape_inline("\n".join([line.rstrip(_TRAILING_SPACE) for line in text.split("\n")]))
    return _BETWEEN_LINES.sub(_HARD_BREAK + "\n", escaped)


def escape_inline(text: str) -> str:
    """Text as Markdown that renders as written, its line breaks left soft (text within an
    HTML paragraph, whose line breaks are spaces)."""
    if sum(map(text.count, _SIGNIFICANT)) * _FEW < len(text):  # most mail: a few, or none
        text = _ANYWHERE_FEW.sub(_backslashed, text)
    else:
        text = text.translate(_ANYWHERE)  # in C: a 30 MB mail may be all asterisks
    lines = text.split("\n")
    for number, line in enumerate(lines):
        if line[:1] in _LINE_STARTERS:  # few lines do: a regex over all is tried everywhere
            line = _LINE_START.sub(r"\1\\\2", line)
            line = _ORDERED.sub(r"\1\\\2", line)
            lines[number] = _INDENT.sub(_references, line)
    return "\n".join(lines)


def _backslashed(character: re.Match[str]) -> str:
    return _BACKSLASHED[character[0]]  # a function, not a template: three times as fast


def _references(indent: re.Match[str]) -> str:
    return "".join("&#9;" if c == "\t" else "&#32;" for c in indent[0])


def plain(markdown: str) -> str:
    """Markdown as plain text that reads like the original: `escape` undone."""
    lines = markdown.split("\n")  # a hard-break mark ends a line: two spaces or more, or "\\"
    text = "\n".join(
        [
            line.rstrip(" ") if line.endswith("  ") else line[:-1] if line[-1:] == "\\" else line
            for line in lines
        ]
    )
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
    if _OTHER_SPACE.search(markdown) is None:
        text = plain(markdown)
        if escape(text) == markdown:
            return _escaped_render(text)
    return _RENDERER.render(markdown)


def _escaped_render(text: str) -> str:
    """What the renderer makes of the Markdown that `escape` wrote for `text`, made
    directly (a quarter of markdown-it's time for text of many lines, half for one long
    paragraph, the check in `render` included):
    paragraphs of lines with hard breaks between them, an indentation of up to three spaces
    dropped as CommonMark drops it (one of a tab or four spaces `escape` wrote as
    character references, which stay), the rest HTML-escaped as markdown-it escapes."""
    lines = [_without_indent(line) for line in text.strip("\n").split("\n")]
    text = "\n".join(lines).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace('"', "&quot;")  # as markdown-it escapes (not ')
    if not text:
        return ""
    paragraphs = _PARAGRAPHS.split(text)
    return "".join("<p>" + p.replace("\n", "<br />\n") + "</p>\n" for p in paragraphs)


def _without_indent(line: str) -> str:
    if line[:1] != " ":
        return line
    unindented = line.lstrip(" ")
    if len(line) - len(unindented) > 3 or unindented[:1] == "\t":
        return line
    return unindented


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
