"""The file name of each layer of a model: one rule for ``push --format oci`` and signing.

- a layer's own ``org.opencontainers.image.title`` where it has one (as oras and
  ``cairn create`` write it);
- else a name for its media type (:data:`BY_TYPE`: ``model.gguf``, ``template.txt``,
  ``params.json``, ...);
- else the first 12 hex digits of its digest and ``.bin``;
- a name taken already gets ``-1``, ``-2``, ... before its last extension
  (``license.txt``, ``license-1.txt``).

A client that saves layers by title (oras) lays out exactly the files a signature
names (docs/signing.md, "File names").
"""

from __future__ import annotations

from collections.abc import Iterable

from cairn.manifests import mediatypes as mt
from cairn.manifests.manifest import Descriptor

BY_TYPE: dict[str, str] = {
    mt.OLLAMA_MODEL: "model.gguf",
    mt.OLLAMA_TEMPLATE: "template.txt",
    mt.OLLAMA_SYSTEM: "system.txt",
    mt.OLLAMA_PARAMS: "params.json",
    mt.OLLAMA_LICENSE: "license.txt",
    mt.OLLAMA_MESSAGES: "messages.json",
    mt.OLLAMA_ADAPTER: "adapter.gguf",
    mt.OLLAMA_PROJECTOR: "projector.gguf",
}
"""The name of a layer without a title, by media type."""


def _numbered(name: str, n: int) -> str:
    stem, dot, ext = name.rpartition(".")
    return f"{stem}-{n}.{ext}" if dot else f"{name}-{n}"


def layer_titles(layers: Iterable[Descriptor]) -> list[tuple[str, Descriptor]]:
    """Every layer with its file name, in manifest order."""
    named: list[tuple[str, Descriptor]] = []
    seen: dict[str, int] = {}
    for layer in layers:
        base = layer.title or BY_TYPE.get(layer.media_type) or f"{layer.digest.hex[:12]}.bin"
        count = seen.get(base, 0)
        seen[base] = count + 1
        named.append((_numbered(base, count) if count else base, layer))
    return named
