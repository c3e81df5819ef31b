"""Resumable writes of a blob whose digest and size are known (a download).

``.cairn/tmp/<hex>.partial`` holds the bytes received so far, written at
their offsets (several ranges may arrive at once), and
``.cairn/tmp/<hex>.partial.json`` records how far each range got, so a
download killed at any point resumes where it stopped. The partial is
flock'ed while a process works on it: a second pull of the same blob waits
for the first, then finds the blob stored. Nothing enters ``blobs/`` until
the whole file hashes to its digest.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cairn.blobstore.digest import Digest
from cairn.blobstore.store import (
    SYNC_EVERY,
    Blob,
    BlobStore,
    hash_range,
    pwrite_all,
    storage_error,
)
from cairn.errors import DigestMismatchError, StoreBusyError
from cairn.i18n import Phrase

SAVE_EVERY = 8 << 20


@dataclass
class Span:
    """One byte range of the blob: ``start`` to ``end`` (exclusive), ``done`` bytes landed."""

    start: int
    end: int
    done: int = 0
    guard: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)
    """Held while bytes of this span are written, and while it is split."""

    @property
    def position(self) -> int:
        return self.start + self.done

    @property
    def complete(self) -> bool:
        return self.position >= self.end


def _cut(start: int, end: int, parts: int) -> list[Span]:
    """``start:end`` in ``parts`` ranges of (nearly) equal size; none when it is empty."""
    step = -(-(end - start) // parts)
    bounds = [min(end, start + i * step) for i in range(parts + 1)]
    return [Span(a, b) for a, b in itertools.pairwise(bounds) if b > a]


class PartialBlob:
    """A blob being downloaded: write ranges at offsets, then commit once whole.

    Use as a context manager (``with store.partial(digest, size) as p``).
    ``spans`` are the ranges still to fetch, resumed from a previous run
    when its record is there. :meth:`write_at` is safe from many threads.
    """

    def __init__(self, store: BlobStore, digest: Digest, size: int, parts: int = 1) -> None:
        self.store = store
        self.digest = digest
        self.size = size
        self.path = store.tmp_dir / f"{digest.hex}.partial"
        self.record = store.tmp_dir / f"{digest.hex}.partial.json"
        self._parts = max(1, parts)
        self._fd = -1
        self._lock = threading.Lock()
        self._unsynced = 0
        self._unsaved = 0
        self.spans: list[Span] = []
        self.resumed = 0

    # -- opening ------------------------------------------------------------

    def __enter__(self) -> PartialBlob:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, timeout: float = 3600.0, stop: Callable[[], bool] | None = None) -> None:
        """Open and lock the partial, waiting up to ``timeout`` for another process that
        holds it; ``stop()`` true ends the wait (the pull was cancelled: Ctrl-C must not
        wait out another process's download) with :class:`StoreBusyError`."""
        try:
            self.store.tmp_dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise storage_error(exc, "opening {path}", path=self.path) from exc
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline or (stop is not None and stop()):
                    os.close(self._fd)
                    self._fd = -1
                    raise StoreBusyError(
                        "another process is downloading {digest}", digest=self.digest
                    ) from None
                time.sleep(0.05)
        # The process we waited for may have committed this very file into
        # blobs/ (or prune removed it): then the name no longer leads to the
        # inode we hold, and writing to it would damage a stored blob.
        try:
            same = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(self._fd)
            self._fd = -1
            self.open(max(0.0, deadline - time.monotonic()), stop)
            return
        self.spans = self._load_spans()
        self.resumed = sum(span.done for span in self.spans)

    def _load_spans(self) -> list[Span]:
        on_disk = os.fstat(self._fd).st_size
        try:
            saved: Any = json.loads(self.record.read_text())
            spans = [Span(int(s["start"]), int(s["end"]), int(s["done"])) for s in saved["spans"]]
            if (
                saved.get("size") == self.size
                and spans
                and spans[0].start == 0
                and spans[-1].end == self.size
                and all(a.end == b.start for a, b in itertools.pairwise(spans))
                and all(0 <= s.done <= s.end - s.start and s.position <= on_disk for s in spans)
            ):
                return spans
        except (OSError, ValueError, KeyError, TypeError):
            pass
        os.ftruncate(self._fd, 0)
        return _cut(0, self.size, self._parts) or [Span(0, 0)]

    def restart(self) -> None:
        """Forget all progress (the server ignored a Range request): one span from zero.

        Waits for writes under way; a stream of the old ranges writes nothing after it.
        """
        with self._detached():
            os.ftruncate(self._fd, 0)
            self.spans = [Span(0, self.size)]
            self.resumed = 0
            self._save()

    @contextlib.contextmanager
    def _detached(self) -> Iterator[None]:
        """Hold every range's guard and the lock: no write is under way, none starts."""
        with self._lock:
            spans = list(self.spans)
        with contextlib.ExitStack() as held:
            for span in spans:
                held.enter_context(span.guard)
            with self._lock:
                yield

    def _current(self, span: Span) -> bool:
        with self._lock:
            return any(span is s for s in self.spans)

    # -- writing ------------------------------------------------------------

    def write_at(self, span: Span, data: memoryview | bytes) -> int:
        """Write the next bytes of ``span`` at ``span.position``; return how many.

        Bytes past the span's end are dropped: the span may have been split
        while they were on their way (the rest now belongs to another span,
        whose bytes no other stream may touch: the hasher may have read them).
        """
        with span.guard:  # a split waits for this write, and this write sees the split
            if not self._current(span):
                return 0  # a range of a round given up (restart, close): not this file's any more
            view = memoryview(data)[: max(0, span.end - span.position)]
            count = len(view)
            pwrite_all(
                self._fd, view, span.position, Phrase("writing blob {digest}", digest=self.digest)
            )
            self._count(span, count)
        return count

    def _count(self, span: Span, count: int) -> None:
        with self._lock:
            span.done += count
            self._unsynced += count
            self._unsaved += count
            if self._unsaved >= SAVE_EVERY:
                # The record may run ahead of the disk: after a crash that lost
                # written pages the final digest check fails and the partial goes.
                self._unsaved = 0
                self._save()

    def flush_if_due(self) -> None:
        """``fdatasync`` once ``SYNC_EVERY`` bytes are unflushed.

        Called by whoever follows the download (the hasher), never by the
        threads reading sockets: a flush must not stall a stream.
        """
        with self._lock:
            due = self._unsynced >= SYNC_EVERY
            if due:
                self._unsynced = 0
        if due:
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                raise storage_error(exc, "writing blob {digest}", digest=self.digest) from exc

    def split_at(self, span: Span, at: int) -> Span | None:
        """Give the bytes of ``span`` from ``at`` on to a new range, and return it.

        ``span`` keeps ``position:at`` (its download goes on and stops at its
        new end). It waits for a write of ``span`` under way: after the
        split, ``span``'s stream writes nothing past ``at``.
        """
        with span.guard, self._lock:
            at = max(at, span.position)
            if at >= span.end:
                return None
            added = Span(at, span.end)
            span.end = at
            index = self.spans.index(span)
            self.spans.insert(index + 1, added)
            self._save()
            return added

    def save(self) -> None:
        with self._lock:
            self._save()

    def _save(self) -> None:
        spans = [{"start": s.start, "end": s.end, "done": s.done} for s in self.spans]
        record = {"size": self.size, "spans": spans}
        tmp = self.record.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self.record)
        except OSError:  # a full disk: no empty record left behind
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def received(self) -> int:
        """Bytes written so far, all ranges together."""
        with self._lock:
            return sum(span.done for span in self.spans)

    def landed(self) -> int:
        """Bytes from offset 0 that are all written."""
        with self._lock:
            end = 0
            for span in self.spans:
                if span.start != end:
                    break
                end = span.position
                if not span.complete:
                    break
            return end

    # -- finishing ----------------------------------------------------------

    def hash_prefix(self, hasher: Any, start: int, end: int) -> None:
        """Feed bytes ``start:end`` of the partial file to ``hasher``."""
        hash_range(self._fd, hasher, start, end)

    def commit(self, hasher: Any | None = None, hashed: int = 0) -> Blob:
        """Check the whole file against the digest and move it into the store.

        ``hasher`` may carry a hash of the first ``hashed`` bytes already
        computed while they arrived. A mismatch deletes the partial (its
        bytes cannot be trusted) and raises :class:`DigestMismatchError`.
        """
        if hasher is None:
            hasher, hashed = self.digest.hasher(), 0
        size = os.fstat(self._fd).st_size
        if size != self.size or any(not s.complete for s in self.spans):
            raise DigestMismatchError(
                str(self.digest), Phrase("an incomplete download ({size} bytes)", size=size)
            )
        self.hash_prefix(hasher, hashed, size)
        actual = Digest(hasher.hexdigest(), self.digest.algorithm)
        if actual != self.digest:
            self.discard()
            raise DigestMismatchError(str(self.digest), str(actual))
        self.store.seal(self.path, self._fd, self.digest, size)
        with contextlib.suppress(OSError):
            os.unlink(self.record)
        return Blob(self.digest, size)

    def discard(self) -> None:
        for path in (self.path, self.record, self.record.with_suffix(".tmp")):
            with contextlib.suppress(OSError):
                os.unlink(path)

    def close(self) -> None:
        if self._fd < 0:
            return
        with self._detached():  # a stream left behind writes nothing into a closed (reused) fd
            with contextlib.suppress(OSError):
                if os.path.exists(self.path):
                    self._save()
            self.spans = []
            os.close(self._fd)
            self._fd = -1
