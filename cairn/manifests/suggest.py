"""Which stored names a mistyped one probably meant: "did you mean ...".

Two degrees of sure:

- :func:`typos`, for ``cairn run`` (which pulls a name the store lacks):
  only a name one keystroke away (a letter added, dropped, changed, or two
  neighbours swapped), never one whose digits differ (``gemma3:12b`` is
  another model than ``gemma3:1b``, not a typo of it). ``gemma3:207m``
  for ``gemma3:270m`` is one; ``gemma3`` (that is ``gemma3:latest``) is
  not: it may well be on the registry.
- :func:`close_names`, for commands that only read the store (``show``,
  ``rm``, ``cp``, ...): those typos, the other tags of the same model
  (``gemma3`` when only ``gemma3:270m`` is there), and names that
  :mod:`difflib` rates at least :data:`CUTOFF` alike.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from cairn.manifests.reference import Reference

CUTOFF = 0.85
"""The least :class:`difflib.SequenceMatcher` ratio of a suggestion that is not a typo."""

MOST = 3
"""Suggestions offered at most, closest first."""


def one_keystroke(typed: str, known: str) -> bool:
    """Whether ``typed`` is ``known`` with one letter added, dropped, changed, or two
    neighbours swapped, where no digit was added, dropped or changed (case ignored)."""
    a, b = typed.casefold(), known.casefold()
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a, end_b = end_a - 1, end_b - 1
    left, right = a[start:end_a], b[start:end_b]
    if len(left) == 2 and len(right) == 2 and left == right[::-1]:
        return True  # two neighbours swapped: the same characters, digits or not
    if len(left) > 1 or len(right) > 1:
        return False
    return not any(c.isdigit() for c in left + right)


def typos(typed: Reference, known: Iterable[Reference]) -> list[str]:
    """The stored names ``typed`` is one keystroke away from (see :func:`one_keystroke`)."""
    found = {k.display for k in known if one_keystroke(typed.display, k.display)}
    return sorted(found)[:MOST]


def close_names(typed: Reference, known: Iterable[Reference]) -> list[str]:
    """The stored names ``typed`` probably meant, closest first; none when nothing is close."""
    stored = {k.display: k for k in known}
    shown = typed.display
    same_model = [name for name, ref in stored.items() if _repository(ref) == _repository(typed)]
    alike = difflib.get_close_matches(shown, list(stored), n=MOST, cutoff=CUTOFF)
    keys = [n for n in stored if one_keystroke(shown, n)]

    def closeness(name: str) -> float:
        return difflib.SequenceMatcher(None, shown.casefold(), name.casefold()).ratio()

    ordered = sorted({*same_model, *alike, *keys}, key=lambda n: (-closeness(n), n))
    return [n for n in ordered if n.casefold() != shown.casefold()][:MOST]


def _repository(ref: Reference) -> tuple[str, str, str]:
    return ref.host.casefold(), ref.namespace.casefold(), ref.name.casefold()
