"""The one way untrusted text reaches a person: control and invisible characters become visible escapes.

Text from the worker (progress bars, exception types, messages and tracebacks, stderr, type names, events)
and from audited source (lines and file names in the audit report) can carry terminal escape sequences
(ESC/CSI/OSC: recolour, move the cursor, retitle the window, write hyperlinks or clipboard contents) and
Unicode bidi controls or invisible characters that make text read differently than it is (Trojan Source,
CVE-2021-42574). :func:`printable` escapes every such character one by one, so no sequence survives: an
ESC becomes the four characters ``\\x1b`` and what followed it is inert text. Programs that need the
exact bytes read the ``raw_…`` attribute of the object that carries them.
"""

from __future__ import annotations

import logging
import unicodedata
from functools import lru_cache

#: Categories escaped: controls (C0, DEL, C1), format characters (bidi embeddings, overrides and
#: isolates, zero-width characters, BOM, tag characters, U+061C, U+180E), line/paragraph separators and
#: lone surrogates (which cannot even be encoded for a terminal).
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
#: Letters that render as nothing (Hangul fillers): invisible although their category is "Lo".
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")
#: Characters a format may keep raw because its own layout needs them (never CR: it rewrites a line).
_KEEPABLE = frozenset("\n\t")
_SHORT_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


@lru_cache(maxsize=4096)
def is_hidden(char: str) -> bool:
    """Whether ``char`` controls the terminal or is invisible, so it must not be shown raw."""
    code = ord(char)
    if 0xE0000 <= code <= 0xE007F:  # tag characters, assigned or not
        return True
    return char in _INVISIBLE_LETTERS or unicodedata.category(char) in _ESCAPED_CATEGORIES


def escape_char(char: str) -> str:
    """``\\n``, ``\\x1b``, ``\\u202e``, ``\\U000e0041``: the spelling Python uses in string literals."""
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: object, *, keep: str = "") -> str:
    """``text`` with every control, bidi and invisible character replaced by a visible escape.

    ``keep``: the characters the caller's format needs raw — only ``"\\n"`` and ``"\\t"`` may be kept
    (a traceback keeps its newlines; a one-line field keeps nothing).
    """
    if not set(keep) <= _KEEPABLE:
        raise ValueError(f"printable() can keep only newlines and tabs, not {keep!r}")
    text = text if type(text) is str else str(text)
    if text.isprintable() and (text.isascii() or _INVISIBLE_LETTERS.isdisjoint(text)):
        return text  # the common case, checked in C
    return "".join(char if char in keep or not is_hidden(char) else escape_char(char) for char in text)


class PrintableRecords(logging.Filter):
    """Rewrites each record's message through :func:`printable` (newlines kept) before any handler sees it.

    Log messages interpolate repo ids, paths and warnings that may carry untrusted text; a filter on the
    logger covers every handler a user configures, not only safeloader's own CLI handler.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = printable(message, keep="\n")
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


def protect_logger(logger: logging.Logger) -> None:
    """Attach :class:`PrintableRecords` to ``logger`` once."""
    if not any(isinstance(existing, PrintableRecords) for existing in logger.filters):
        logger.addFilter(PrintableRecords())
