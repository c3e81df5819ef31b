from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cairn.errors import CairnError, ModelFormatError
from cairn.gguf import human_parameters, read_gguf, read_gguf_file
from tests.ggufmaker import write_gguf


def test_real_gemma_header(gemma_gguf: Path) -> None:
    info = read_gguf(gemma_gguf)
    assert info.version == 3
    assert info.architecture == "gemma3"
    assert info.metadata["general.size_label"] == "270M"
    assert info.file_type == "Q4_K_M"
    assert info.arch_value("context_length") == 32768
    assert "tokenizer.chat_template" not in info.metadata
    tokens = info.metadata["tokenizer.ggml.tokens"]
    assert tokens.length == 262144 and tokens.values is None
    assert human_parameters(info.parameter_count) == "268.10M"
    # Every tensor lies inside the file, and the last one ends exactly at its end.
    assert max(info.data_offset + t.offset + (t.nbytes or 0) for t in info.tensors) == (
        gemma_gguf.stat().st_size
    )


def test_truncated_real_model_is_caught(gemma_gguf: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with open(gemma_gguf, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(100 << 20))
    with pytest.raises(ModelFormatError, match="truncated"):
        read_gguf(cut)


def test_file_cut_inside_the_header(tiny_gguf: Path) -> None:
    data = tiny_gguf.read_bytes()
    for length in (0, 3, 4, 10, 30, 60, 100):
        with pytest.raises(ModelFormatError):
            read_gguf_file(io.BytesIO(data[:length]), length)


def test_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        read_gguf(path)


def test_unsupported_version(tiny_gguf: Path, tmp_path: Path) -> None:
    data = bytearray(tiny_gguf.read_bytes())
    data[4:8] = struct.pack("<I", 1)
    path = tmp_path / "v1.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="version 1"):
        read_gguf(path)


def test_small_arrays_keep_values(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "a.gguf", {"tiny.list": ["x", "y"], "tiny.ints": [1, 2, 3]})
    info = read_gguf(path)
    assert info.metadata["tiny.list"].values == ("x", "y")
    assert info.metadata["tiny.ints"].values == (1, 2, 3)


def test_large_string_array_is_skipped_correctly(tmp_path: Path) -> None:
    tokens = [f"tok{i}" * (i % 7) for i in range(100_000)]  # some empty strings too
    path = write_gguf(tmp_path / "v.gguf", {"tokenizer.ggml.tokens": tokens, "tiny.after": 7})
    info = read_gguf(path)
    assert info.metadata["tokenizer.ggml.tokens"].length == 100_000
    assert info.metadata["tiny.after"] == 7
    assert [t.name for t in info.tensors] == ["token_embd.weight"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(268_098_176, "268.10M"), (8_000_000_000, "8B"), (8_030_261_248, "8.0B"), (999, "999")],
)
def test_human_parameters(value: int, expected: str) -> None:
    assert human_parameters(value) == expected


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_model_format_errors(tail: bytes) -> None:
    data = b"GGUF" + tail
    try:
        read_gguf_file(io.BytesIO(data), len(data))
    except CairnError as exc:
        assert isinstance(exc, ModelFormatError)


@given(st.integers(0, 400), st.binary(min_size=1, max_size=8))
def test_corrupted_tiny_header_raises_only_model_format_errors(position: int, junk: bytes) -> None:
    data = bytearray(write_gguf_bytes())
    position = min(position, len(data) - 1)
    data[position : position + len(junk)] = junk
    try:
        read_gguf_file(io.BytesIO(bytes(data)), len(data))
    except CairnError as exc:
        assert isinstance(exc, ModelFormatError)


_TINY: list[bytes] = []


def write_gguf_bytes() -> bytes:
    if not _TINY:
        import tempfile

        with tempfile.TemporaryDirectory() as directory:
            _TINY.append(
                write_gguf(Path(directory) / "t.gguf", {"tiny.list": ["a", "b"]}).read_bytes()
            )
    return _TINY[0]


def test_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="directory"):
        read_gguf(tmp_path)
    assert os.path.isdir(tmp_path)
