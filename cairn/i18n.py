"""Messages in the user's language: gettext catalogs in ``cairn/locale/<lang>/LC_MESSAGES/``.

The language comes from ``CAIRN_LANG``, else the first of ``LANGUAGE``
(a colon-separated list), ``LC_ALL``, ``LC_MESSAGES``, ``LANG`` that is
set, as gettext chooses. English is the source and the default. Catalogs
are ``.po`` files, read directly (no compile step). Machine output
(``--json``, NDJSON, HTTP APIs) never goes through here.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
from collections.abc import Mapping
from pathlib import Path

LOCALE_DIR = Path(__file__).resolve().parent / "locale"


def language(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    chosen = env.get("CAIRN_LANG")
    if not chosen:
        for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
            value = env.get(name)
            if value:
                chosen = value.split(":")[0]
                break
    code = (chosen or "en").split(".")[0].split("@")[0]
    return code.split("_")[0].lower() or "en"


def load_po(path: Path) -> dict[str, str]:
    """msgid → msgstr from a ``.po`` file (untranslated and fuzzy entries left out)."""
    catalog: dict[str, str] = {}
    msgid: list[str] | None = None
    msgstr: list[str] | None = None
    fuzzy = False

    def flush() -> None:
        nonlocal msgid, msgstr, fuzzy
        if msgid is not None and msgstr is not None and not fuzzy:
            key, value = "".join(msgid), "".join(msgstr)
            if key and value:
                catalog[key] = value
        msgid, msgstr, fuzzy = None, None, False

    current: list[str] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#,") and "fuzzy" in line:
            fuzzy = True
        elif line.startswith("msgid "):
            flush()
            if line.startswith("#,"):
                fuzzy = True
            msgid, current = [ast.literal_eval(line[6:])], None
            current = msgid
        elif line.startswith("msgstr "):
            msgstr = [ast.literal_eval(line[7:])]
            current = msgstr
        elif line.startswith('"') and current is not None:
            current.append(ast.literal_eval(line))
        elif not line:
            flush()
            current = None
    flush()
    return catalog


@functools.lru_cache(maxsize=4)
def catalog(lang: str) -> dict[str, str]:
    path = LOCALE_DIR / lang / "LC_MESSAGES" / "cairn.po"
    return load_po(path) if path.is_file() else {}


def _(text: str) -> str:
    """``text`` in the user's language (English when there is no translation)."""
    lang = language()
    if lang == "en":
        return text
    table = catalog(lang)
    return table.get(text) or table.get(inspect.cleandoc(text)) or text
