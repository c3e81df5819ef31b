"""Quantizing a GGUF for ``cairn create --quantize``, through llama.cpp's quantize API.

llama.cpp does the work in a child process (``python -m cairn.quantize``):
its quantize call cannot be interrupted from Python, and native code can
die (a failed assert aborts the whole process). So the parent stays in
charge: Ctrl-C kills the child at once, and a crash is one line of error.

llama.cpp reads the source GGUF from its path (a blob in the store, or the
file FROM names) and writes into a staging folder under the store's
``.cairn/tmp``, on the store's filesystem. The output becomes a blob (hashed,
fsynced, linked into ``blobs/``) only once the child has succeeded and its
header reads as a whole GGUF; every way out removes the folder, and one left
by a killed cairn is held by no process, so ``cairn prune`` removes it.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import hashlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from cairn import threads
from cairn.blobstore import Blob, BlobStore, Digest
from cairn.blobstore.store import hash_range, storage_error
from cairn.errors import QuantizeError
from cairn.gguf import FILE_TYPES, GGUFInfo, check_tensors, read_gguf
from cairn.i18n import Phrase

Say = Callable[[str], None]

_NAMES = (
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q6_K",
    "Q5_K_M",
    "Q5_K_S",
    "Q5_1",
    "Q5_0",
    "Q4_K_M",
    "Q4_K_S",
    "Q4_1",
    "Q4_0",
    "Q3_K_L",
    "Q3_K_M",
    "Q3_K_S",
    "Q2_K",
)
TYPES: dict[str, int] = {
    name: number for name in _NAMES for number, known in FILE_TYPES.items() if known == name
}
"""The types ``--quantize`` accepts (llama.cpp's ``llama_ftype`` numbers): Ollama's, and
the older llama.cpp ones Ollama once accepted; the IQ types, which want an importance
matrix, are left out."""

ALIASES = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q3_K": "Q3_K_M"}
"""Short names llama.cpp's ``llama-quantize`` (and Ollama, for Q4_K) take."""

_UNQUANTIZED = {0, 1, 30}
"""ggml tensor types that are plain floats: F32, F16, BF16."""

_FLOATS = {"F32", "F16", "BF16"}

_FAILED = re.compile(r"failed to quantize: (.*)")


def parse_type(name: str) -> str:
    """The canonical name of a quantization type, as Ollama spells it (``q4_k_m`` is
    ``Q4_K_M``); an unknown one is a :class:`QuantizeError` listing the known ones."""
    canonical = name.strip().upper()
    canonical = ALIASES.get(canonical, canonical)
    if canonical not in TYPES:
        raise QuantizeError(
            "unknown quantization type {name!r}: use one of {types}",
            name=name[:40],
            types=", ".join(TYPES),
        )
    return canonical


def is_quantized(info: GGUFInfo) -> bool:
    """Whether any tensor holds quantized weights (not F32, F16 or BF16)."""
    return any(t.ggml_type not in _UNQUANTIZED for t in info.tensors)


def quantize_file(
    blobs: BlobStore, source: Path, target: str, progress: Say, warn: Say
) -> tuple[Blob, GGUFInfo] | None:
    """Quantize the GGUF file at ``source`` (a blob, or the file FROM names) into the store;
    None when it is of type ``target`` already. Its header is read and checked first: what
    llama.cpp would choke on is refused before it starts."""
    info = read_gguf(source)
    check_tensors(info)
    return quantize_gguf(blobs, source, info, target, progress, warn)


def quantize_gguf(
    blobs: BlobStore,
    source: Path,
    info: GGUFInfo,
    target: str,
    progress: Say,
    warn: Say,
) -> tuple[Blob, GGUFInfo] | None:
    """Quantize the GGUF at ``source`` (its header ``info``) to ``target`` into the store.

    None when it is of that type already (it is kept as it is, and
    ``progress`` says so). Quantized weights are quantized again, with a
    warning: each round loses quality.
    """
    current = info.file_type or "unknown"
    if current == target:
        progress(Phrase("the model is {type} already: it is kept as it is", type=target))
        return None
    if is_quantized(info) and target in _FLOATS:
        warn(
            Phrase(
                "{target} made from {current} weights is no better than {current}:"
                " the original weights are not restored",
                current=current,
                target=target,
            )
        )
    elif is_quantized(info):
        warn(
            Phrase(
                "requantizing {current} weights to {target} loses quality:"
                " quantize from F16 or F32 weights when you can",
                current=current,
                target=target,
            )
        )
    if importlib.util.find_spec("llama_cpp") is None:
        raise QuantizeError(
            "quantizing needs llama-cpp-python, which is not installed (see docs/runtimes.md)"
        )
    progress(Phrase("quantizing {current} model to {target}", current=current, target=target))
    with blobs.staging() as folder:
        output = folder / "quantized.gguf"
        _run_llama(source, output, target)
        return _store(blobs, output, target)


def _run_llama(source: Path, output: Path, target: str) -> None:
    """Run llama.cpp's quantize in a child process; a failure is a QuantizeError."""
    from cairn.runtime_plugins.devices import default_threads

    command = [
        sys.executable,
        "-m",
        "cairn.quantize",
        str(source),
        str(output),
        str(TYPES[target]),
        str(default_threads()),
        str(os.getpid()),
    ]
    # A Ctrl-C while the child starts waits until there is a child to kill (the child
    # inherits the mask, and ignores SIGINT anyway).
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise QuantizeError("cannot start the quantizer: {reason}", reason=exc) from exc
    lines: collections.deque[str] = collections.deque(maxlen=20)
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        reader = threading.Thread(
            target=_keep_last, args=(child.stderr, lines), name="cairn-quantize-log", daemon=True
        )
        threads.start(reader)
        code = child.wait()
        reader.join()
    finally:
        if child.poll() is None:  # interrupted: llama.cpp stops now, not when it is done
            child.kill()
            child.wait()
    if code == 0:
        return
    said = next((m.group(1) for line in reversed(lines) if (m := _FAILED.search(line))), None)
    if said is not None:
        raise QuantizeError(
            "quantizing to {target} failed: {reason}", target=target, reason=said.strip()[:300]
        )
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    if code < 0:
        raise QuantizeError(
            "llama.cpp died while quantizing to {target} ({signal}): {last}",
            target=target,
            signal=_signal_name(-code),
            last=last[:300],
        )
    raise QuantizeError(
        "quantizing to {target} failed: {reason}", target=target, reason=last[:300] or code
    )


def _keep_last(stream: IO[bytes] | None, lines: collections.deque[str]) -> None:
    if stream is None:
        return
    with stream:
        for raw in stream:
            lines.append(raw.decode("utf-8", "replace"))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _store(blobs: BlobStore, output: Path, target: str) -> tuple[Blob, GGUFInfo]:
    """Check llama.cpp's output, hash it where it lies and move it into the store."""
    try:
        fd = os.open(output, os.O_RDONLY)
    except OSError as exc:
        raise QuantizeError(
            "quantizing to {target} wrote no file: {reason}", target=target, reason=exc
        ) from exc
    try:
        info = read_gguf(output)
        check_tensors(info)
        size = os.fstat(fd).st_size
        if size != info.file_size:
            raise QuantizeError("the quantized file changed while it was being stored")
        hasher = hashlib.sha256()
        try:
            hash_range(fd, hasher, 0, size)
        except OSError as exc:
            raise storage_error(exc, "reading {path}", path=output) from exc
        digest = Digest(hasher.hexdigest())
        blobs.seal(output, fd, digest, size)
    finally:
        os.close(fd)
    return Blob(digest, size), info


def _child(source: str, output: str, ftype: int, nthread: int, parent: int) -> int:
    """The child's work: one call to ``llama_model_quantize``; 0 when it succeeded."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends us; no traceback here
    _die_with(parent)
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = nthread
    params.allow_requantize = True
    return int(llama_cpp.llama_model_quantize(os.fsencode(source), os.fsencode(output), params))


def _die_with(parent: int) -> None:
    """End this process when ``parent`` dies (killed, it cannot kill us): what we write
    is in its folder, which is no one's then. Linux says so at once (``PR_SET_PDEATHSIG``);
    a thread that polls covers the rest, and a parent gone before we got here."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG

    def orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=orphaned, name="cairn-orphaned", daemon=True).start()


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        arguments = sys.argv[1:]
        done = _child(
            arguments[0], arguments[1], int(arguments[2]), int(arguments[3]), int(arguments[4])
        )
        sys.exit(1 if done else 0)
