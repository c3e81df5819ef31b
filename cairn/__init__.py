"""cairn: pull, push, manage and run language models from OCI registries."""

__version__ = "0.1.0"

__all__ = ["__version__"]
