"""This machine in the OCI (and Go) platform vocabulary: ``amd64``, ``arm64``, ..."""

from __future__ import annotations

_ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def architecture() -> str:
    import platform

    machine = platform.machine()
    return _ARCHITECTURES.get(machine.lower(), machine)
