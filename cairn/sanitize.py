"""Text that did not come from the user, made safe to print.

A registry's error message, a model's config, template, system prompt or
licence, a GGUF header: any of them may carry escape sequences that a
terminal obeys (``ESC]0;`` retitles the window, ``ESC]52;`` writes the
clipboard and passes through pipes, ``ESC[2K`` erases what cairn printed and
can fake a "Login Succeeded"). :func:`untrusted` shows every control
character as a visible escape (``\\x1b``) instead: C0 and C1 controls, DEL,
the bidirectional overrides that reorder what a line appears to say, and
the characters that show as nothing (zero-width, tags) and can hide text.
Newlines and tabs stay only in text meant to be multi-line.
"""

from __future__ import annotations

import json
import re

_CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]
_BIDI = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
# Characters that show as nothing and can hide text: the zero-width space, the
# invisible operators, the byte-order mark, the soft hyphen, deprecated format
# characters, interlinear annotations, line and paragraph separators, and the tag
# characters (U+E0000 to U+E007F: "ASCII smuggling", a hidden instruction in a
# system prompt). The zero-width joiner and non-joiner stay: emoji and Persian
# need them.
_INVISIBLE = [
    0x00AD,
    0x180E,
    0x200B,
    *range(0x2028, 0x202A),
    *range(0x2060, 0x2065),
    *range(0x206A, 0x2070),
    0xFEFF,
    *range(0xFFF9, 0xFFFC),
    *range(0xE0000, 0xE0080),
    # Variation selectors (U+FE0F stays: emoji need it) and the invisible
    # musical and shorthand format characters; the blank Hangul fillers.
    *range(0xFE00, 0xFE0F),
    *range(0xE0100, 0xE01F0),
    *range(0x1D173, 0x1D17B),
    *range(0x1BCA0, 0x1BCA4),
    0x115F,
    0x1160,
    0x3164,
    0xFFA0,
]


_SURROGATE = re.compile("[\ud800-\udfff]")
"""Legal in JSON (``"\\ud800"``) and so in a config, but no UTF-8 can hold one alone:
printed raw, it is a UnicodeEncodeError, a traceback. Escaped by a pattern, not in the
tables: 2,048 more entries there cost each command's start-up."""


def _surrogates(text: str) -> str:
    if not _SURROGATE.search(text):
        return text
    return _SURROGATE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def _escaped(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


_ONE_LINE = {code: _escaped(code) for code in (*_CONTROLS, *_BIDI, *_INVISIBLE)}
_MULTI_LINE = {k: v for k, v in _ONE_LINE.items() if k not in (0x0A, 0x09)}


def untrusted(text: str, multiline: bool = False) -> str:
    """``text`` with control characters shown escaped (``\\n`` and ``\\t`` kept if multiline)."""
    return _surrogates(text.translate(_MULTI_LINE if multiline else _ONE_LINE))


def untrusted_json(text: str) -> str:
    """JSON text with the C1 controls and bidi overrides that ``ensure_ascii=False`` leaves raw."""
    return _surrogates(text.translate(_JSON))


_JSON = {
    code: f"\\u{code:04x}" if code < 0x10000 else json.dumps(chr(code))[1:-1]
    for code in (0x7F, *range(0x80, 0xA0), *_BIDI, *_INVISIBLE)
}
