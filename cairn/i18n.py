"""Messages in the user's language: gettext catalogs in ``cairn/locale/<lang>/LC_MESSAGES/``.

The language comes from ``CAIRN_LANG``, else the first of ``LANGUAGE``
(a colon-separated list), ``LC_ALL``, ``LC_MESSAGES``, ``LANG`` that is
set, as gettext chooses. English is the source and the default. Catalogs
are ``.po`` files, read directly (no compile step). Machine output
(``--json``, NDJSON, HTTP APIs) never goes through here.

Errors are raised in English and said in the user's language only when the
CLI prints them: an error's message is a :class:`Phrase`, a ``str`` that
keeps its template and parameters, so that :func:`localize` can look the
template up in the catalog and fill in the same parameters. An HTTP API
that reports the same error sends ``str(error)``: English.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

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
            msgid = current = [_po_string(line[6:])]
        elif line.startswith("msgstr "):
            msgstr = current = [_po_string(line[7:])]
        elif line.startswith('"') and current is not None:
            current.append(_po_string(line))
        elif not line:
            flush()
            current = None
    flush()
    return catalog


def _po_string(literal: str) -> str:
    """A quoted ``.po`` string: C escapes, which JSON reads but for the rare ``\\a`` or ``\\'``."""
    try:
        text = json.loads(literal)
    except ValueError:
        import ast

        text = ast.literal_eval(literal)
    if not isinstance(text, str):
        raise ValueError(f"not a quoted string: {literal[:40]}")
    return text


@functools.lru_cache(maxsize=4)
def catalog(lang: str) -> dict[str, str]:
    path = LOCALE_DIR / lang / "LC_MESSAGES" / "cairn.po"
    return load_po(path) if path.is_file() else {}


def N_(text: str) -> str:
    """Marks ``text`` for the catalog where it is defined; :func:`_` translates it where used."""
    return text


def _(text: str) -> str:
    """``text`` in the user's language (English when there is no translation)."""
    lang = language()
    if lang == "en":
        return text
    table = catalog(lang)
    found = table.get(text)
    if found is None and "\n" in text:  # a docstring, indented as written
        import inspect

        found = table.get(inspect.cleandoc(text))
    return found or text


class Phrase(str):
    """English text that remembers the template and parameters it was made from.

    ``Phrase("blob {digest} is missing", digest=d)`` is the string
    ``"blob sha256:… is missing"``; with no parameters the template is the
    text as it stands (braces and all).
    """

    template: str
    params: dict[str, Any]

    def __new__(cls, template: str, /, **params: Any) -> Phrase:
        if isinstance(template, Phrase) and not params:
            return template
        self = super().__new__(cls, template.format(**params) if params else template)
        self.template = str(template)
        self.params = params
        return self

    def to_json(self) -> dict[str, Any]:
        """Template and fields as JSON (fields that are not JSON values become text)."""
        return {
            "template": self.template,
            "params": {key: _json_field(value) for key, value in self.params.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Phrase:
        params = {
            key: cls.from_json(value) if isinstance(value, dict) else value
            for key, value in data.get("params", {}).items()
        }
        return cls(str(data["template"]), **params)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_phrase, (self.template, self.params))


def _phrase(template: str, params: dict[str, Any]) -> Phrase:
    return Phrase(template, **params)


def _json_field(value: object) -> object:
    from cairn.errors import CairnError

    if isinstance(value, CairnError):
        value = value.message
    if isinstance(value, Phrase):
        return value.to_json()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def join_phrases(separator: str, parts: Iterable[str]) -> Phrase:
    """``separator.join(parts)`` as one phrase whose parts are still translated one by one."""
    items = list(parts)
    escaped = separator.replace("{", "{{").replace("}", "}}")
    template = escaped.join(f"{{part{i}}}" for i in range(len(items)))
    return Phrase(template, **{f"part{i}": item for i, item in enumerate(items)})


def localize(said: object) -> str:
    """``said`` (a :class:`Phrase`, an exception or anything else) in the user's language.

    Parameters that are phrases or cairn errors themselves are said in the
    user's language too; any other text (a path, a server's own words)
    stays as it came.
    """
    from cairn.errors import CairnError

    if isinstance(said, CairnError) and said.args:
        said = said.args[0]
    if not isinstance(said, Phrase):
        return str(said)
    if language() == "en":
        return str(said)
    template = _(said.template)
    if not said.params:
        return template
    params = {
        key: localize(value) if isinstance(value, Phrase | CairnError) else value
        for key, value in said.params.items()
    }
    try:
        return template.format(**params)
    except (KeyError, IndexError, ValueError):  # a catalog entry that breaks the template
        return str(said)
