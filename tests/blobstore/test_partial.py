"""A download's partial blob: a split and a write of the same range, in both orders."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from cairn.blobstore import Digest
from cairn.blobstore import partial as partial_module
from cairn.blobstore.store import BlobStore

MiB = 1 << 20


def test_a_split_waits_for_a_write_under_way_and_cuts_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writing, release = threading.Event(), threading.Event()
    pwrite_all = partial_module.pwrite_all  # type: ignore[attr-defined]

    def held(fd: int, view: memoryview, offset: int, what: object) -> None:
        writing.set()
        assert release.wait(10)
        pwrite_all(fd, view, offset, what)  # type: ignore[arg-type]

    data = os.urandom(4 * MiB)
    blobs = BlobStore(tmp_path / "store")
    with blobs.partial(Digest.of(data), len(data)) as partial:
        span = partial.spans[0]
        monkeypatch.setattr(partial_module, "pwrite_all", held)
        writer = threading.Thread(target=partial.write_at, args=(span, data[: 2 * MiB]))
        writer.start()
        assert writing.wait(10)
        added: list[object] = []
        splitter = threading.Thread(target=lambda: added.append(partial.split_at(span, MiB)))
        splitter.start()
        splitter.join(0.2)
        assert splitter.is_alive()  # the split waits: the stream is writing its bytes
        release.set()
        writer.join(10)
        splitter.join(10)
        # The write went in whole; the split then cut where the stream had got to.
        assert span.done == 2 * MiB and span.end == 2 * MiB
        assert added and getattr(added[0], "start", None) == 2 * MiB


def test_bytes_that_arrive_after_a_split_stay_out_of_the_thiefs_range(tmp_path: Path) -> None:
    data = os.urandom(4 * MiB)
    blobs = BlobStore(tmp_path / "store")
    with blobs.partial(Digest.of(data), len(data)) as partial:
        span = partial.spans[0]
        stolen = partial.split_at(span, MiB)
        assert stolen is not None and (stolen.start, stolen.end) == (MiB, 4 * MiB)
        partial.write_at(stolen, data[MiB : 2 * MiB])
        # The first stream's read was under way with the old end: 2 MiB arrive, wrong
        # from the second MiB on (a server may send each connection what it likes).
        late = data[:MiB] + bytes(MiB)
        assert partial.write_at(span, late) == MiB
        assert span.complete and span.done == MiB
        with open(partial.path, "rb") as written:
            assert written.read(2 * MiB) == data[: 2 * MiB]  # the thief's bytes untouched
