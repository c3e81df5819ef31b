"""Hostile GGUF files: headers that amplify, lie or overlap end in a clear error, fast and small.

Each file is handed to the real ``cairn create`` in a subprocess whose time
and peak memory (VmHWM, read by a small Python parent) the test asserts.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from cairn.gguf import MAX_HEADER, MAX_KEPT, MAX_VALUES, read_gguf
from tests.conftest import Runner, cairn_env, modelfile
from tests.ggufmaker import write_gguf

U8, I32, STRING, ARRAY = 0, 5, 8, 9


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def raw_gguf(
    path: Path,
    metadata: list[bytes],
    tensors: Sequence[tuple[str, tuple[int, ...], int, int]],
    data: int = 0,
    pad_to: int | None = None,
) -> Path:
    """A GGUF v3 file from raw metadata entries and (name, shape, type, offset) tensors."""
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)) + b"".join(metadata)
    for name, shape, ggml_type, offset in tensors:
        header += _string(name) + struct.pack("<I", len(shape))
        header += b"".join(struct.pack("<Q", d) for d in shape) + struct.pack(
            "<IQ", ggml_type, offset
        )
    start = -(-len(header) // 32) * 32
    with open(path, "wb") as f:
        f.write(header.ljust(start, b"\0"))
        f.truncate(max(start + data, pad_to or 0))
    return path


def entry(key: str, value_type: int, body: bytes) -> bytes:
    return _string(key) + struct.pack("<I", value_type) + body


def array(item_type: int, items: list[bytes]) -> bytes:
    return struct.pack("<IQ", item_type, len(items)) + b"".join(items)


ARCH = entry("general.architecture", STRING, _string("tiny"))
ONE_TENSOR = [("w", (8, 16), 0, 0)]

_MEASURE = """
import json, subprocess, sys, time, resource
started = time.monotonic()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=120)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
seconds = time.monotonic() - started
print(json.dumps({"code": done.returncode, "stderr": done.stderr, "seconds": seconds,
                  "peak_mib": peak}))
"""


def create(store: Path, tmp_path: Path, gguf: Path) -> dict[str, object]:
    """``cairn create`` FROM ``gguf``: its exit code, stderr, seconds and peak RSS in MiB."""
    mf = modelfile(tmp_path, f"FROM {gguf}\n", "Hostile")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEASURE,
            sys.executable,
            "-m",
            "cairn",
            "create",
            "h",
            "-f",
            str(mf),
        ],
        env=cairn_env(store),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
        check=True,
    )
    said: dict[str, object] = json.loads(done.stdout)
    assert "Traceback" not in str(said["stderr"]), said
    return said


def test_a_header_of_small_nested_arrays_is_refused_small_and_fast(
    store: Path, tmp_path: Path
) -> None:
    """Arrays of 256 arrays of 256 bytes: each kept, ten times the file in RAM once."""
    inner = array(U8, [b"\x01"] * 256)
    nested = array(ARRAY, [inner] * 256)
    metadata = [ARCH, *(entry(f"junk.{i}", ARRAY, nested) for i in range(4))]
    said = create(store, tmp_path, raw_gguf(tmp_path / "nested.gguf", metadata, ONE_TENSOR, 512))
    assert said["code"] == 1 and f"more than {MAX_KEPT} items" in str(said["stderr"]), said
    assert float(said["seconds"]) < 10 and int(said["peak_mib"]) < 150, said  # type: ignore[arg-type, call-overload]


def test_a_header_of_a_million_tiny_values_is_refused_small_and_fast(
    store: Path, tmp_path: Path
) -> None:
    """An array of 1,100,000 one-item arrays: walked one value at a time, so counted."""
    one = array(U8, [b"\x01"])
    metadata = [ARCH, entry("junk", ARRAY, array(ARRAY, [one] * 1_100_000))]
    said = create(store, tmp_path, raw_gguf(tmp_path / "many.gguf", metadata, ONE_TENSOR, 512))
    assert said["code"] == 1, said
    stderr = str(said["stderr"])
    assert f"more than {MAX_VALUES} values" in stderr or f"more than {MAX_KEPT} items" in stderr
    assert float(said["seconds"]) < 15 and int(said["peak_mib"]) < 150, said  # type: ignore[arg-type, call-overload]


def test_a_header_larger_than_the_cap_is_refused(store: Path, tmp_path: Path) -> None:
    """A 300 MB array of bytes in the header (a sparse file: nothing is written)."""
    huge = entry("junk", ARRAY, struct.pack("<IQ", U8, 300 << 20))
    path = raw_gguf(tmp_path / "huge.gguf", [ARCH, huge], [], pad_to=(300 << 20) + 4096)
    said = create(store, tmp_path, path)
    assert said["code"] == 1 and f"larger than {MAX_HEADER} bytes" in str(said["stderr"]), said
    assert float(said["seconds"]) < 10, said  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("tensors", "refusal"),
    [
        ([("a", (8, 16), 0, 0), ("b", (8, 16), 0, 256)], "overlap"),
        ([("a", (8, 16), 0, 0), ("a", (8, 16), 0, 512)], "listed twice"),
        ([("a", (8, 16), 99, 0)], "unknown ggml type 99"),
        ([("a", (1 << 62, 1 << 62), 0, 0)], "overflow"),
        ([("a", (8, 16), 0, 3)], "not a multiple of the alignment 32"),
    ],
)
def test_create_refuses_a_tensor_table_llama_cpp_would_refuse(
    cairn: Runner,
    tmp_path: Path,
    tensors: list[tuple[str, tuple[int, ...], int, int]],
    refusal: str,
) -> None:
    path = raw_gguf(tmp_path / "bad.gguf", [ARCH], tensors, data=2048)
    mf = modelfile(tmp_path, f"FROM {path}\n", "Bad")
    refused = cairn("create", "bad", "-f", str(mf), check=False)
    assert refused.returncode == 1 and refusal in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert "bad" not in cairn("ls").stdout


def test_an_error_never_shows_what_a_file_holds(cairn: Runner, tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$very-secret-hash:19000:0:99999:7:::\n")
    for line in (
        f"FROM {secret}\n",
        f"FROM {write_gguf(tmp_path / 'ok.gguf')}\nADAPTER {secret}\n",
    ):
        refused = cairn("create", "m", "-f", str(modelfile(tmp_path, line, "MF")), check=False)
        assert refused.returncode == 1 and "not a GGUF file" in refused.stderr, refused.stderr
        assert "$6$" not in refused.stderr and "secret-hash" not in refused.stderr


def test_show_and_run_read_a_header_once_per_blob(
    cairn: Runner, store: Path, tmp_path: Path
) -> None:
    gguf = write_gguf(tmp_path / "m.gguf")
    cairn("create", "m", "-f", str(modelfile(tmp_path, f"FROM {gguf}\n", "MF")))
    first = cairn("show", "m").stdout
    cached = list((store / ".cairn" / "headers").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["parameters"] == 128
    assert cairn("show", "m").stdout == first
    assert read_gguf(gguf).parameter_count == 128
    cairn("rm", "m")
    cairn("prune")
    assert list((store / ".cairn" / "headers").glob("*.json")) == []


@pytest.mark.parametrize(
    "damage",
    [
        "[]",
        "null",
        '{"metadata": []}',
        '{"gguf": false}',
        "{",
        '{"version": 3, "parameters": 1e400}',
    ],
)
def test_a_damaged_header_cache_is_read_again(
    cairn: Runner, store: Path, tmp_path: Path, damage: str
) -> None:
    gguf = write_gguf(tmp_path / "m.gguf")
    cairn("create", "m", "-f", str(modelfile(tmp_path, f"FROM {gguf}\n", "MF")))
    first = cairn("show", "m").stdout
    (cached,) = (store / ".cairn" / "headers").glob("*.json")
    cached.write_text(damage)
    shown = cairn("show", "m")
    assert shown.stdout == first and "Traceback" not in shown.stderr
    assert json.loads(cached.read_text())["parameters"] == 128  # and written afresh


def test_a_cache_entry_for_another_blob_is_not_believed(
    cairn: Runner, store: Path, tmp_path: Path
) -> None:
    small = write_gguf(tmp_path / "small.gguf")
    big = write_gguf(tmp_path / "big.gguf", tensors=[("w", (64, 64))])
    for name, path in (("small", small), ("big", big)):
        cairn("create", name, "-f", str(modelfile(tmp_path, f"FROM {path}\n", f"MF-{name}")))
        cairn("show", name)
    entries = {p.read_text() for p in (store / ".cairn" / "headers").glob("*.json")}
    small_entry = next(e for e in entries if json.loads(e)["parameters"] == 128)
    for path in (store / ".cairn" / "headers").glob("*.json"):
        path.write_text(small_entry)  # the big model's entry now says the small one's header
    assert "parameters          4K" in cairn("show", "big").stdout  # 64 x 64, read afresh
