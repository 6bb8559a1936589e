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

import re
from typing import Final

from markdown_it import MarkdownIt

# Significant wherever they stand: emphasis, code, links, raw HTML, entities, and (GFM, which
# some clients speak) tables and strikethrough.
_ANYWHERE: Final = re.compile(r"([\\`*_\[\]<>&|~])")
# Significant only at the start of a line (after up to three spaces): headings, bullets,
# setext underlines and thematic breaks, ordered list numbers.
_LINE_START: Final = re.compile(r"^( {0,3})([#+=-])")
_ORDERED: Final = re.compile(r"^( {0,3}\d{1,9})([.)])")
_HARD_BREAK: Final = "  "
_ESCAPED: Final = re.compile(r"\\([!-/:-@\[-`{-~])")  # CommonMark: any ASCII punctuation
_BREAK_MARK: Final = re.compile(r"(?: {2,}|\\)$")


def escape(text: str) -> str:
    """Plain text as Markdown that renders as it was written (see the module docstring).
    Trailing whitespace of each line is dropped."""
    lines = [_escape_line(line.rstrip()) for line in text.split("\n")]
    out = []
    for number, line in enumerate(lines):
        following = lines[number + 1] if number + 1 < len(lines) else ""
        out.append(line + _HARD_BREAK if line and following else line)
    return "\n".join(out)


def _escape_line(line: str) -> str:
    line = _ANYWHERE.sub(r"\\\1", line)
    line = _LINE_START.sub(r"\1\\\2", line)
    return _ORDERED.sub(r"\1\\\2", line)


def plain(markdown: str) -> str:
    """Markdown as plain text that reads like the original: `escape` undone."""
    lines = [_BREAK_MARK.sub("", line) for line in markdown.split("\n")]
    return "\n".join(_ESCAPED.sub(r"\1", line) for line in lines)


def render(markdown: str) -> str:
    """Safe HTML of B1.3.3's subset (module docstring)."""
    return _RENDERER.render(markdown)


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
