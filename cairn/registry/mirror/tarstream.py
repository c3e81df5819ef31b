"""A tar archive read as a stream: one pass, entries handed out as readers of their bytes.

Only what a layout needs: headers parsed by :meth:`tarfile.TarInfo.frombuf`
(ustar, GNU, v7; the checksum checked there), with pax extended headers
(``path``, ``linkpath``, ``size``) and GNU long names applied to the entry
they precede. An entry's bytes are read straight from the source into the
caller's buffer, with no copy in between; what the caller leaves unread is
skipped. The source is read ahead on a thread of its own, so that
decompressing (zstd) overlaps hashing and writing.
"""

from __future__ import annotations

import queue
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cairn import threads

BLOCK = 512
_AHEAD = 4 << 20
_DEPTH = 4
_MAX_EXTENDED = 1 << 20
"""The largest pax or GNU long-name header taken: names, not data."""


_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


class TarCutOff(Exception):
    """The stream ended inside an entry (or its header)."""


class TarDamaged(Exception):
    """A header that is not a tar header."""


class ReadAhead:
    """Reads ``source`` on a thread, ``_AHEAD`` bytes at a time, a few pieces ahead."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(_DEPTH)
        self._piece = memoryview(b"")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cairn-read-ahead", daemon=True)
        threads.start(self._thread)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                piece = self._source.read(_AHEAD)
                if not piece:
                    break
                self._put(bytes(piece))
            self._put(None)
        except BaseException as exc:  # handed to the reader, raised there
            self._put(exc)

    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def readinto(self, buffer: memoryview) -> int:
        """Up to ``len(buffer)`` bytes; 0 at the end of the source."""
        if not self._piece:
            item = self._queue.get()
            if item is None:
                self._queue.put(None)  # the end stays the end
                return 0
            if isinstance(item, BaseException):
                self._queue.put(item)
                raise item
            self._piece = memoryview(item)
        count = min(len(buffer), len(self._piece))
        buffer[:count] = self._piece[:count]
        self._piece = self._piece[count:]
        return count

    def read_exactly(self, size: int) -> bytes:
        """``size`` bytes, or fewer at the end of the source."""
        out = bytearray(size)
        view = memoryview(out)
        got = 0
        while got < size:
            count = self.readinto(view[got:])
            if not count:
                break
            got += count
        return bytes(out[:got])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)


@dataclass
class Entry:
    name: str
    type: bytes
    size: int
    linkname: str

    def isfile(self) -> bool:
        return self.type in tarfile.REGULAR_TYPES

    def isdir(self) -> bool:
        return self.type == tarfile.DIRTYPE


class EntryReader:
    """The bytes of one entry; ``readinto`` as a file's, short only at the entry's end."""

    def __init__(self, source: ReadAhead, size: int) -> None:
        self._source = source
        self.left = size

    def readinto(self, buffer: bytearray | memoryview) -> int:
        if not self.left:
            return 0
        view = memoryview(buffer)[: min(len(buffer), self.left)]
        count = self._source.readinto(view)
        if not count:
            raise TarCutOff("the stream ended inside an entry")
        self.left -= count
        return count

    def read(self, size: int) -> bytes:
        want = min(size, self.left)
        data = self._source.read_exactly(want)
        if len(data) < want:
            raise TarCutOff("the stream ended inside an entry")
        self.left -= len(data)
        return data

    def skip(self) -> None:
        scratch = memoryview(bytearray(1 << 20))
        while self.left:
            self.readinto(scratch)


def entries(source: ReadAhead) -> Iterator[tuple[Entry, EntryReader]]:
    """Each entry of the archive and a reader of its bytes (skipped if left unread)."""
    extended: dict[str, str] = {}
    long_name: str | None = None
    long_link: str | None = None
    while True:
        block = source.read_exactly(BLOCK)
        if block == bytes(BLOCK):
            return  # the end of the archive (a zero block; tar writes two)
        if len(block) < BLOCK:
            raise TarCutOff("the stream ended inside a header")
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise TarDamaged(str(exc)) from None
        if info.size < 0:  # base-256 sizes can be negative
            raise TarDamaged("an entry of negative size")
        if info.type in _EXTENDED:
            if info.size > _MAX_EXTENDED:
                raise TarDamaged("an extended header larger than 1 MiB")
            data = source.read_exactly(info.size)
            if len(data) < info.size:
                raise TarCutOff("the stream ended inside a header")
            _skip_padding(source, info.size)
            if info.type == tarfile.XHDTYPE:
                extended = _pax_records(data)
            elif info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif info.type == tarfile.GNUTYPE_LONGLINK:
                long_link = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue  # a global header's settings are not ones a layout needs
        size = int(extended.get("size", info.size))
        entry = Entry(
            name=extended.get("path", long_name or info.name),
            type=info.type,
            size=size if info.type in tarfile.REGULAR_TYPES else 0,
            linkname=extended.get("linkpath", long_link or info.linkname),
        )
        extended, long_name, long_link = {}, None, None
        reader = EntryReader(source, entry.size)
        yield entry, reader
        reader.skip()
        _skip_padding(source, entry.size)


def _skip_padding(source: ReadAhead, size: int) -> None:
    if size % BLOCK:
        source.read_exactly(BLOCK - size % BLOCK)


def _pax_records(data: bytes) -> dict[str, str]:
    """``"<length> <key>=<value>\\n"`` records (POSIX pax)."""
    records: dict[str, str] = {}
    position = 0
    while position < len(data):
        space = data.find(b" ", position)
        if space < 0:
            raise TarDamaged("a pax header record without a length")
        try:
            length = int(data[position:space])
        except ValueError:
            raise TarDamaged("a pax header record with a bad length") from None
        if length <= 0 or position + length > len(data):
            raise TarDamaged("a pax header record with a bad length")
        record = data[space + 1 : position + length - 1]
        key, _, value = record.partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position += length
    size = records.get("size")
    if size is not None and not (size.isascii() and size.isdigit() and len(size) <= 18):
        raise TarDamaged("a pax size that is not a number")  # '²' is a digit to isdigit()
    return records
