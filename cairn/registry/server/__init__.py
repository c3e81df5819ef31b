"""An OCI Distribution registry over the local store (``cairn registry serve``)."""
