"""sha256 blobs on disk: put, verify, open, delete. Nothing else."""

from cairn.blobstore.digest import Digest
from cairn.blobstore.store import Blob, BlobStore, Partial

__all__ = ["Blob", "BlobStore", "Digest", "Partial"]
