"""The file names a model's layers have in a signature (docs/signing.md, "File names").

A signature lists files by name, as ``model_signing`` sees them in a directory: the
names ``cairn push --format oci`` gives the layers as titles
(:mod:`cairn.manifests.titles`, one rule for both), each checked to be a plain
relative path.

The config blob is not a file: cairn derives it from the layers, and a
directory signed by ``model_signing`` has none, so no signature lists it.
"""

from __future__ import annotations

from collections.abc import Iterable

from cairn.errors import SignatureError
from cairn.manifests.manifest import Descriptor
from cairn.manifests.titles import layer_titles


def checked_path(name: str) -> str:
    """``name`` when it is a plain relative POSIX path (what a directory could hold)."""
    parts = name.split("/")
    if (
        not name
        or "\\" in name
        or any(part in ("", ".", "..") for part in parts)
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
    ):
        raise SignatureError(
            "a layer's file name {name!r:.200} is not a relative path inside a directory",
            name=name,
        )
    return name


def file_names(layers: Iterable[Descriptor]) -> list[tuple[str, Descriptor]]:
    """Every layer with its file name, in manifest order; two layers may not share one.

    Numbering keeps generated names apart, but a title can be the very name a layer
    before it was numbered to (``license.txt`` twice, then ``license-1.txt``): one
    name for two layers, and a signature of that name would vouch for only one of them.
    """
    named = [(checked_path(name), layer) for name, layer in layer_titles(layers)]
    seen: set[str] = set()
    for name, _ in named:
        if name in seen:
            raise SignatureError(
                "two layers have the file name {name!r:.200}: a signature cannot tell them apart",
                name=name,
            )
        seen.add(name)
    return named
