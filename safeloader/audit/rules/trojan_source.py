"""SL960: Trojan Source — bidi controls or invisible characters in the source text (CVE-2021-42574).

A right-to-left override or an isolate in a comment or string makes an editor, a diff and a code review show
code in another order than the interpreter reads it; a zero-width character makes two names look alike. The
AST never sees comments, so this check reads the decoded source text itself, one line at a time, and only
lines that are not plain ASCII (the common case costs one ``isascii`` per file).
"""

from __future__ import annotations

import unicodedata

from safeloader.audit.rules.base import Family, Rule
from safeloader.display import escape_char, is_hidden

FAMILY = "obfuscation"

RULES = (
    Rule(
        "SL960",
        "trojan-source",
        "high",
        451,
        "contains {detail}, which makes the code read differently than it runs (Trojan Source, CVE-2021-42574)",
        FAMILY,
    ),
)

#: Control characters any Python file may contain raw: its layout.
_LAYOUT = frozenset("\t\n\r\f")
_PLAIN_ASCII = bytes(range(0x20, 0x7F)) + b"\t\n\r\f"


def _describe(char: str) -> str:
    fallback = "control character" if unicodedata.category(char) == "Cc" else "unassigned tag character"
    return f"{escape_char(char)} {unicodedata.name(char, fallback)}"


def hidden_characters(text: str) -> list[tuple[int, int, str]]:
    """(1-based line, 0-based column, detail) for each line holding bidi controls or invisible characters."""
    hits = []
    # Lines as Python's tokenizer counts them (\n, \r\n, \r), so the line numbers match editors and tracebacks.
    for number, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), start=1):
        if line.isascii() and (line.isprintable() or line.expandtabs().replace("\f", "").isprintable()):
            continue
        found = [(column, char) for column, char in enumerate(line) if char not in _LAYOUT and is_hidden(char)]
        if found:
            distinct = list(dict.fromkeys(char for _, char in found))
            detail = ", ".join(_describe(char) for char in distinct[:3])
            if len(distinct) > 3:
                detail += f" and {len(distinct) - 3} other invisible characters"
            hits.append((number, found[0][0], detail))
    return hits


FAMILY_TABLE = Family(name=FAMILY, rules=RULES)


def hidden_characters_in(data: bytes) -> list[tuple[int, int, str]]:
    """:func:`hidden_characters` of a source file's bytes (decoded as UTF-8, Python's default)."""
    if not data.translate(None, _PLAIN_ASCII):
        return []  # printable ASCII and layout only: the common case, checked in C
    return hidden_characters(data.decode("utf-8", "replace"))
