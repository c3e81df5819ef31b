"""Writes small, valid GGUF files for tests (the real model is for end-to-end tests)."""

from __future__ import annotations

import struct
from pathlib import Path

_TYPES = {int: (4, "<I"), float: (6, "<f"), bool: (7, "<?")}


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _value(value: object) -> bytes:
    if isinstance(value, str):
        return struct.pack("<I", 8) + _string(value)
    if isinstance(value, list):
        items = value
        if items and isinstance(items[0], str):
            body = b"".join(_string(str(i)) for i in items)
            return struct.pack("<IIQ", 9, 8, len(items)) + body
        body = b"".join(struct.pack("<i", int(str(i))) for i in items)
        return struct.pack("<IIQ", 9, 5, len(items)) + body
    code, fmt = _TYPES[type(value)]
    return struct.pack("<I", code) + struct.pack(fmt, value)


def write_gguf(
    path: Path,
    metadata: dict[str, object] | None = None,
    tensors: list[tuple[str, tuple[int, ...]]] | None = None,
    fill: bytes | None = None,
    sparse: bool = False,
) -> Path:
    """A GGUF v3 file with F32 tensors of the given shapes, data zero or ``fill`` repeated."""
    metadata = {
        "general.architecture": "tiny",
        "general.file_type": 0,
        "tiny.context_length": 256,
        "tiny.embedding_length": 8,
        **(metadata or {}),
    }
    tensors = tensors if tensors is not None else [("token_embd.weight", (8, 16))]
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, value in metadata.items():
        header += _string(key) + _value(value)
    offset = 0
    sizes = []
    for name, shape in tensors:
        size = 4
        for dim in shape:
            size *= dim
        header += _string(name) + struct.pack("<I", len(shape))
        header += b"".join(struct.pack("<Q", d) for d in shape)
        header += struct.pack("<IQ", 0, offset)
        sizes.append(size)
        offset += -(-size // 32) * 32
    data_start = -(-len(header) // 32) * 32
    with open(path, "wb") as f:
        f.write(header.ljust(data_start, b"\0"))
        if sparse:
            f.truncate(data_start + offset)
        else:
            pattern = fill or b"\0"
            f.write((pattern * (offset // len(pattern) + 1))[:offset])
    return path
