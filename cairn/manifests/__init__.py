"""Names and JSON: references, media types, manifests, and the local tag store."""

from cairn.manifests.manifest import Descriptor, Index, Manifest, parse_manifest
from cairn.manifests.models import LocalModel, Models
from cairn.manifests.reference import Reference, parse_reference

__all__ = [
    "Descriptor",
    "Index",
    "LocalModel",
    "Manifest",
    "Models",
    "Reference",
    "parse_manifest",
    "parse_reference",
]
