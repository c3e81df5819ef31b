"""A reader for the header of GGUF files (versions 2 and 3).

It reads the metadata and the tensor table, never the tensor data, and
checks that every tensor the table names lies inside the file, so a cut-off
download is caught before it is stored. Large arrays (a 262,144-token
vocabulary) are skipped over and kept as their type and length only.
Anything malformed raises :class:`~cairn.errors.ModelFormatError`.

A header is untrusted input and is read under caps: at most
:data:`MAX_HEADER` bytes, :data:`MAX_VALUES` values read one by one,
:data:`MAX_KEPT` array items kept and :data:`MAX_TENSORS` tensors, so no
header costs more than a few seconds and a few tens of MiB whatever it
claims (a header of small nested arrays once cost ten times its size in
RAM). :func:`check_tensors` adds llama.cpp's own checks of the tensor table
for ``cairn create``. :func:`cached_header` keeps what ``show`` and ``run``
need per blob digest, so a model's header is parsed once, not every run.
"""

from __future__ import annotations

import itertools
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cairn.errors import ModelFormatError

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
KEEP_ARRAY_VALUES = 256
MAX_HEADER = 256 << 20
"""Bytes of metadata and tensor table (real ones: a few MiB, vocabularies included)."""
MAX_VALUES = 1_000_000
"""Values read one at a time (skipped arrays of numbers and strings do not count)."""
MAX_KEPT = 100_000
"""Array items kept in memory, over the whole header."""
MAX_TENSORS = 100_000
_MAX_STRING = 64 << 20
_MAX_DIMS = 8
_READ_SIZE = 1 << 20

# GGUF metadata value types: struct format for the fixed-size ones.
_SCALARS: dict[int, struct.Struct] = {
    0: struct.Struct("<B"),
    1: struct.Struct("<b"),
    2: struct.Struct("<H"),
    3: struct.Struct("<h"),
    4: struct.Struct("<I"),
    5: struct.Struct("<i"),
    6: struct.Struct("<f"),
    7: struct.Struct("<?"),
    10: struct.Struct("<Q"),
    11: struct.Struct("<q"),
    12: struct.Struct("<d"),
}
_STRING, _ARRAY = 8, 9
_U32, _U64 = _SCALARS[4], _SCALARS[10]

# ggml tensor types: (elements per block, bytes per block).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}

# general.file_type: the quantization of the file as a whole, as Ollama names it.
FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4",
}


@dataclass(frozen=True)
class ArrayValue:
    """A metadata array: its item type and length; the items when it is short."""

    item_type: int
    length: int
    values: tuple[Any, ...] | None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def nbytes(self) -> int | None:
        """Bytes of data, or None for a type this reader does not know."""
        known = GGML_TYPES.get(self.ggml_type)
        if known is None:
            return None
        _, block, block_bytes = known
        return self.elements // block * block_bytes


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF header says."""

    version: int
    metadata: Mapping[str, Any]
    tensors: tuple[TensorInfo, ...]
    data_offset: int
    file_size: int
    parameters: int | None = None
    """The parameter count, when the tensors are not kept (a header read from the cache)."""

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None

    def arch_value(self, key: str) -> Any:
        """``<architecture>.<key>``, e.g. ``context_length``."""
        return self.metadata.get(f"{self.architecture}.{key}")

    @property
    def parameter_count(self) -> int:
        """Every tensor's elements added up (what Ollama reports as parameters)."""
        if self.parameters is not None:
            return self.parameters
        return sum(t.elements for t in self.tensors)

    @property
    def file_type(self) -> str | None:
        value = self.metadata.get("general.file_type")
        if isinstance(value, int) and not isinstance(value, bool):
            return FILE_TYPES.get(value, f"unknown ({value})")
        return None

    def to_json(self) -> dict[str, Any]:
        """What :meth:`from_json` reads back: everything but the tensor table."""
        return {
            "version": self.version,
            "metadata": {k: _encoded(v) for k, v in self.metadata.items()},
            "data_offset": self.data_offset,
            "file_size": self.file_size,
            "parameters": self.parameter_count,
        }

    @classmethod
    def from_json(cls, data: Any) -> GGUFInfo:
        """The header :meth:`to_json` wrote; a ValueError for anything else."""
        if not isinstance(data, dict) or not isinstance(data.get("metadata"), dict):
            raise ValueError("not a cached GGUF header")
        numbers: list[int] = []
        for key in ("version", "data_offset", "file_size", "parameters"):
            number = data.get(key)
            if not isinstance(number, int) or isinstance(number, bool) or number < 0:
                raise ValueError("not a cached GGUF header")
            numbers.append(number)
        version, data_offset, file_size, parameters = numbers
        return cls(
            version,
            {str(k): _decoded(v) for k, v in data["metadata"].items()},
            (),
            data_offset,
            file_size,
            parameters,
        )


def _encoded(value: Any) -> Any:
    if isinstance(value, ArrayValue):
        items = None if value.values is None else [_encoded(v) for v in value.values]
        return {"array": [value.item_type, value.length, items]}
    return value


def _decoded(value: Any) -> Any:
    if isinstance(value, dict):
        item_type, length, items = value["array"]
        if not isinstance(item_type, int) or not isinstance(length, int):
            raise ValueError("not a cached GGUF array")
        kept = None if items is None else tuple(_decoded(v) for v in items)
        return ArrayValue(item_type, length, kept)
    if value is None or not isinstance(value, str | int | float):
        raise ValueError("not a cached GGUF value")
    return value


def human_parameters(count: int) -> str:
    """Parameter counts the way Ollama writes them: ``268.10M``, ``7B``, ``8.0B``."""
    for scale, suffix, decimals in ((10**9, "B", 1), (10**6, "M", 2), (10**3, "K", 0)):
        if count >= scale:
            value = count / scale
            if value == int(value):
                return f"{int(value)}{suffix}"
            return f"{value:.{decimals}f}{suffix}"
    return str(count)


class _Cursor:
    """Sequential little-endian reads over a file, through a window of bytes."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self.f = f
        self.size = size
        self.buf = b""
        self.pos = 0
        self.base = 0
        self.values = 0
        self.kept = 0

    def tell(self) -> int:
        return self.base + self.pos

    def count(self, values: int = 1, kept: int = 0) -> None:
        self.values += values
        self.kept += kept
        if self.values > MAX_VALUES:
            raise ModelFormatError(
                "the GGUF header holds more than {limit} values to read one by one",
                limit=MAX_VALUES,
            )
        if self.kept > MAX_KEPT:
            raise ModelFormatError(
                "the GGUF header's short arrays hold more than {limit} items", limit=MAX_KEPT
            )

    def _within_header(self, end: int) -> None:
        if end > MAX_HEADER:
            raise ModelFormatError("the GGUF header is larger than {limit} bytes", limit=MAX_HEADER)

    def need(self, n: int) -> None:
        if self.pos + n <= len(self.buf):
            return
        self._within_header(self.tell() + n)
        if self.tell() + n > self.size:
            raise ModelFormatError(
                "truncated GGUF: the header runs past the end of the file ({size} bytes)",
                size=self.size,
            )
        rest = self.buf[self.pos :]
        chunk = self.f.read(max(n - len(rest), _READ_SIZE))
        self.base += self.pos
        self.buf = rest + chunk
        self.pos = 0
        if len(self.buf) < n:
            raise ModelFormatError("truncated GGUF: the file ended while reading its header")

    def unpack(self, fmt: struct.Struct) -> Any:
        self.need(fmt.size)
        (value,) = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return value

    def skip(self, n: int) -> None:
        if self.pos + n <= len(self.buf):
            self.pos += n
            return
        target = self.tell() + n
        self._within_header(target)
        if target > self.size:
            raise ModelFormatError("truncated GGUF: an array runs past the end of the file")
        self.f.seek(target)
        self.base, self.buf, self.pos = target, b"", 0

    def string(self) -> str:
        length = self.unpack(_U64)
        if length > _MAX_STRING:
            raise ModelFormatError(
                "GGUF string of {length} bytes is implausibly long", length=length
            )
        self.need(length)
        raw = self.buf[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        unpack_from = _U64.unpack_from
        buf, pos, end = self.buf, self.pos, len(self.buf)
        while count:
            # Skip every string that lies wholly inside the window in one tight loop.
            while count and pos + 8 <= end:
                length = unpack_from(buf, pos)[0]
                if pos + 8 + length > end:
                    break
                pos += 8 + length
                count -= 1
            if not count:
                break
            self.pos = pos
            self.need(8)
            length = unpack_from(self.buf, self.pos)[0]
            if length > _MAX_STRING:
                raise ModelFormatError(
                    "GGUF string of {length} bytes is implausibly long", length=length
                )
            self.need(8 + length)
            buf, pos, end = self.buf, self.pos, len(self.buf)
        self.pos = pos


def _value(cur: _Cursor, value_type: int, depth: int = 0) -> Any:
    cur.count()
    fmt = _SCALARS.get(value_type)
    if fmt is not None:
        return cur.unpack(fmt)
    if value_type == _STRING:
        return cur.string()
    if value_type == _ARRAY:
        if depth > 3:
            raise ModelFormatError("GGUF arrays nested too deep")
        item_type = cur.unpack(_U32)
        length = cur.unpack(_U64)
        if length > cur.size:
            raise ModelFormatError(
                "GGUF array of {length} items cannot fit in the file", length=length
            )
        item_fmt = _SCALARS.get(item_type)
        if length <= KEEP_ARRAY_VALUES:
            cur.count(0, length)
            return ArrayValue(
                item_type, length, tuple(_value(cur, item_type, depth + 1) for _ in range(length))
            )
        if item_fmt is not None:
            cur.skip(length * item_fmt.size)
        elif item_type == _STRING:
            cur.skip_strings(length)
        else:
            for _ in range(length):
                _value(cur, item_type, depth + 1)
        return ArrayValue(item_type, length, None)
    raise ModelFormatError(
        "GGUF metadata has an unknown value type {value_type}", value_type=value_type
    )


def read_gguf_file(f: IO[bytes], size: int | None = None) -> GGUFInfo:
    """Read a GGUF header from an open binary file positioned at its start."""
    if size is None:
        size = os.fstat(f.fileno()).st_size
    cur = _Cursor(f, size)
    if size < 4:
        raise ModelFormatError("not a GGUF file: it is shorter than the magic number")
    cur.need(4)
    magic = cur.buf[:4]
    cur.pos = 4
    if magic != MAGIC:  # what it does start with stays unsaid: it may be anyone's file
        raise ModelFormatError(
            "not a GGUF file: it does not start with {expected!r}", expected=MAGIC
        )
    version = cur.unpack(_U32)
    if version not in (2, 3):
        raise ModelFormatError(
            "GGUF version {version} is not supported (2 and 3 are)", version=version
        )
    tensor_count = cur.unpack(_U64)
    kv_count = cur.unpack(_U64)
    if tensor_count * 32 > size or kv_count * 12 > size:
        raise ModelFormatError("corrupt GGUF: more entries than the file can hold")
    if tensor_count > MAX_TENSORS:
        raise ModelFormatError(
            "the GGUF header lists {count} tensors, more than {limit}",
            count=tensor_count,
            limit=MAX_TENSORS,
        )

    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = cur.string()
        metadata[key] = _value(cur, cur.unpack(_U32))

    tensors = []
    for _ in range(tensor_count):
        name = cur.string()
        dims = cur.unpack(_U32)
        if dims > _MAX_DIMS:
            raise ModelFormatError(
                "corrupt GGUF: tensor {name!r} has {dims} dimensions", name=name, dims=dims
            )
        shape = tuple(cur.unpack(_U64) for _ in range(dims))
        cur.count(dims + 3)
        if math.prod(shape) >= 1 << 63:
            raise ModelFormatError(
                "corrupt GGUF: tensor {name!r} has dimensions {shape} that overflow",
                name=name[:100],
                shape=list(shape),
            )
        tensors.append(TensorInfo(name, shape, cur.unpack(_U32), cur.unpack(_U64)))

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ModelFormatError(
            "corrupt GGUF: general.alignment {alignment!r} is not a power of 2", alignment=alignment
        )
    data_offset = -(-cur.tell() // alignment) * alignment
    info = GGUFInfo(version, metadata, tuple(tensors), data_offset, size)
    _check_extent(info)
    return info


def _check_extent(info: GGUFInfo) -> None:
    if info.data_offset > info.file_size and info.tensors:
        raise ModelFormatError("truncated GGUF: the file ends before its tensor data begins")
    for tensor in info.tensors:
        known = GGML_TYPES.get(tensor.ggml_type)
        nbytes = 0
        if known is not None:
            _, block, _ = known
            if tensor.elements % block:
                raise ModelFormatError(
                    "corrupt GGUF: tensor {name!r} has {elements} elements,"
                    " not a multiple of its type's block of {block}",
                    name=tensor.name,
                    elements=tensor.elements,
                    block=block,
                )
            nbytes = tensor.nbytes or 0
        end = info.data_offset + tensor.offset + nbytes
        if end > info.file_size:
            raise ModelFormatError(
                "truncated GGUF: tensor {name!r} ends at byte {end},"
                " but the file has only {file_size} bytes",
                name=tensor.name,
                end=end,
                file_size=info.file_size,
            )


def check_tensors(info: GGUFInfo) -> None:
    """The tensor table as llama.cpp checks it: names once, known types, dimensions that
    do not overflow, offsets aligned, and no two tensors' bytes overlapping."""
    alignment = info.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    seen: set[str] = set()
    spans: list[tuple[int, int, str]] = []
    for tensor in info.tensors:
        if tensor.name in seen:
            raise ModelFormatError(
                "corrupt GGUF: tensor {name!r} is listed twice", name=tensor.name[:100]
            )
        seen.add(tensor.name)
        if tensor.ggml_type not in GGML_TYPES:
            raise ModelFormatError(
                "corrupt GGUF: tensor {name!r} has the unknown ggml type {type}",
                name=tensor.name[:100],
                type=tensor.ggml_type,
            )
        if any(dim >= 1 << 63 for dim in tensor.shape) or tensor.elements >= 1 << 63:
            raise ModelFormatError(
                "corrupt GGUF: tensor {name!r} has dimensions {shape} that overflow",
                name=tensor.name[:100],
                shape=list(tensor.shape),
            )
        if tensor.offset % alignment:
            raise ModelFormatError(
                "corrupt GGUF: tensor {name!r} starts at offset {offset},"
                " not a multiple of the alignment {alignment}",
                name=tensor.name[:100],
                offset=tensor.offset,
                alignment=alignment,
            )
        spans.append((tensor.offset, tensor.offset + (tensor.nbytes or 0), tensor.name))
    spans.sort()
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise ModelFormatError(
                "corrupt GGUF: tensors {first!r} and {second!r} overlap",
                first=first[:100],
                second=second[:100],
            )


def read_gguf(path: Path | str) -> GGUFInfo:
    """Read the header of the GGUF file at ``path``."""
    try:
        with open(path, "rb") as f:
            return read_gguf_file(f)
    except IsADirectoryError:
        raise ModelFormatError("{path} is a directory, not a GGUF file", path=path) from None
    except OSError as exc:
        raise ModelFormatError(
            "cannot read {path}: {reason}", path=path, reason=exc.strerror or exc
        ) from exc
