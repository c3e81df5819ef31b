"""sha256 blobs on disk: put, verify, open, delete. Nothing else.

``Digest`` is imported at once; the store itself (``BlobStore``, ``Blob``, ``Partial``)
on first use, so a command that names a model without touching the store (``--help``,
a name's parsing) does not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cairn.blobstore.digest import Digest

if TYPE_CHECKING:
    from cairn.blobstore.store import Blob, BlobStore, Partial

__all__ = ["Blob", "BlobStore", "Digest", "Partial"]


def __getattr__(name: str) -> Any:
    if name in ("Blob", "BlobStore", "Partial"):
        from cairn.blobstore import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
