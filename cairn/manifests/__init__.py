"""Names and JSON: references, media types, manifests, and the local tag store.

Import from the modules themselves (``cairn.manifests.models`` and the rest):
this package imports nothing, so that a command that needs only names (the
CLI's ``--help``, a reference parsed) does not load the store.
"""
