"""Where blobs were seen: the repositories of each registry that hold a blob.

Pulls, pushes and syncs remember ``(host, repository)`` for every blob they
moved; a later push to the same registry asks :meth:`BlobLocations.where`
and *mounts* the blob from one of those repositories
(``POST /v2/<repo>/blobs/uploads/?mount=<digest>&from=<repo>``) instead of
uploading its bytes again, as skopeo does with its blob-info cache.

The cache is one SQLite file, ``$CAIRN_HOME/blob-locations.db``, in WAL mode
with a busy timeout, so several cairn processes read and write it at once.
It is only a hint: a location may have gone stale (the blob deleted there),
and a mount that fails is :meth:`forget`-ten. Nothing here ever fails the
caller: a file that is unreadable, unwritable or not a database degrades to
"nothing known" (logged at debug level); a file that is not a database, or
one with a damaged page (``PRAGMA quick_check``), is replaced by an empty one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from cairn import config
from cairn.blobstore import Digest

if TYPE_CHECKING:
    import sqlite3  # imported when the cache is first used: every command imports pull.py

log = logging.getLogger("cairn.registry.locations")

FILE_NAME = "blob-locations.db"
PER_BLOB = 8
"""Repositories kept per blob and registry, the most recently seen."""
TOTAL = 200_000
"""Locations kept in all; the least recently seen go first."""
BUSY_TIMEOUT = 5.0
"""Seconds a write waits for another process's write before it gives up (and is dropped)."""
TRIM_BATCH = 10_000
"""The most rows one write deletes past ``TOTAL``, so that no write holds the lock long."""

_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS locations (
    host TEXT NOT NULL,
    digest TEXT NOT NULL,
    repository TEXT NOT NULL,
    UNIQUE (host, digest, repository)
)
"""
# Recency is the rowid: INSERT OR REPLACE gives a row seen again the next one.
_TRIM_BLOB = """
DELETE FROM locations WHERE host = ?1 AND digest = ?2 AND rowid NOT IN (
    SELECT rowid FROM locations WHERE host = ?1 AND digest = ?2 ORDER BY rowid DESC LIMIT ?3
)
"""
# The oldest rows past TOTAL, at most TRIM_BATCH of them a write: a planted file of
# millions of rows shrinks over several writes, none holding the lock for long.
_TRIM_ALL = """
DELETE FROM locations WHERE rowid IN (
    SELECT rowid FROM locations WHERE rowid <= (SELECT max(rowid) FROM locations) - ?1
    ORDER BY rowid LIMIT ?2
)
"""
# Errors of the moment or of the place, not of the file: it is never replaced for them.
_NOT_THE_FILE = {
    3,  # SQLITE_PERM
    5,  # SQLITE_BUSY
    6,  # SQLITE_LOCKED
    7,  # SQLITE_NOMEM
    8,  # SQLITE_READONLY
    9,  # SQLITE_INTERRUPT
    10,  # SQLITE_IOERR
    13,  # SQLITE_FULL
    14,  # SQLITE_CANTOPEN
    15,  # SQLITE_PROTOCOL
    23,  # SQLITE_AUTH
}

T = TypeVar("T")


class BlobLocations:
    """The blob-location cache in the SQLite file at ``path`` (made when first written)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def from_environment(cls) -> BlobLocations:
        """The user's cache: ``$CAIRN_HOME/blob-locations.db``."""
        return cls(config.load().home / FILE_NAME)

    def remember(self, host: str, repository: str, digests: Iterable[Digest]) -> None:
        """Note that ``repository`` on ``host`` holds each of ``digests`` (seen just now)."""
        host = host.lower()
        wanted = sorted({str(d) for d in digests})
        if not wanted or not _plausible(repository):
            return

        def write(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                for digest in wanted:
                    db.execute(
                        "INSERT OR REPLACE INTO locations (host, digest, repository)"
                        " VALUES (?, ?, ?)",
                        (host, digest, repository),
                    )
                    db.execute(_TRIM_BLOB, (host, digest, PER_BLOB))
                db.execute(_TRIM_ALL, (TOTAL, TRIM_BATCH))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        self._use(write, None)

    def where(self, host: str, digest: Digest) -> list[str]:
        """The repositories on ``host`` known to hold ``digest``, most recently seen first."""

        def read(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT repository FROM locations WHERE host = ? AND digest = ?"
                " ORDER BY rowid DESC",
                (host.lower(), str(digest)),
            ).fetchall()
            return [r[0] for r in rows if isinstance(r[0], str) and _plausible(r[0])]

        return self._use(read, [], create=False)

    def forget(self, host: str, repository: str, digest: Digest) -> None:
        """Drop one location: a mount from there failed, so the blob is gone there."""

        def delete(db: sqlite3.Connection) -> None:
            db.execute(
                "DELETE FROM locations WHERE host = ? AND digest = ? AND repository = ?",
                (host.lower(), str(digest), repository),
            )

        self._use(delete, None, create=False)

    # -- the file ------------------------------------------------------------------

    def _use(self, work: Callable[[sqlite3.Connection], T], default: T, create: bool = True) -> T:
        """``work`` on a fresh connection; ``default`` when the cache cannot be used."""
        if not create and not self.path.exists():
            return default  # nothing was ever written: nothing to read or forget
        import sqlite3

        for attempt in range(2):
            try:
                db = self._connect()
                try:
                    return work(db)
                finally:
                    db.close()
            except sqlite3.DatabaseError as exc:
                # Not a database, or a damaged page (which a valid header hides until a
                # query reads it): checked under the lock, replaced if broken indeed.
                # Locked, read-only, full: the moment's or the place's, not the file's.
                code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
                if attempt == 0 and code not in _NOT_THE_FILE and self._replace_broken():
                    continue
                log.debug("blob-location cache %s unusable: %s", self.path, exc)
            except (sqlite3.Error, OSError) as exc:
                log.debug("blob-location cache %s unusable: %s", self.path, exc)
            return default
        return default

    def _connect(self) -> sqlite3.Connection:
        import sqlite3

        if not self.path.exists():
            self._create()
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)  # a file made by someone else: an empty one is a database
        except BaseException:
            db.close()
            raise
        return db

    def _create(self) -> None:
        """Make the file whole, in WAL mode and with its table, then put it in place.

        Switching a file to WAL while another process uses it can fail at once
        ("database is locked", without waiting): no process ever sees the file
        before it is ready. Private (its ``-wal`` and ``-shm`` files take the
        same mode): repository names can be private too.
        """
        import sqlite3

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = self.path.with_name(f".{self.path.name}.{os.getpid()}.{id(self)}.new")
        try:
            os.close(os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
            db = sqlite3.connect(fresh, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(_SCHEMA)
            finally:
                db.close()  # the last connection: its WAL is folded in and removed
            try:
                os.link(fresh, self.path)  # only if no other process was first
            except FileExistsError:
                return
            except OSError:  # a file system without hard links
                if not self.path.exists():
                    os.replace(fresh, self.path)
        finally:
            for suffix in ("-wal", "-shm", ""):
                fresh.with_name(fresh.name + suffix).unlink(missing_ok=True)

    def _replace_broken(self) -> bool:
        """Replace a file that is not a database by an empty one; whether that was done.

        Under a lock, and only if the file is still broken once the lock is
        held: another process may have replaced it (and written to the new one)
        meanwhile.
        """
        import fcntl
        import sqlite3

        try:
            with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not self.path.exists():
                    return True  # removed meanwhile: the next use makes it afresh
                try:
                    probe = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT)
                    try:
                        probe.execute("PRAGMA schema_version").fetchone()
                        probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
                        # A valid header says little: a damaged page shows only here.
                        found = probe.execute("PRAGMA quick_check(1)").fetchone()
                        if found is not None and found[0] == "ok":
                            return True  # healthy again: someone replaced it
                    finally:
                        probe.close()
                except sqlite3.DatabaseError as exc:
                    if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _NOT_THE_FILE:
                        return False
                log.debug("blob-location cache %s is broken: starting afresh", self.path)
                for suffix in ("-wal", "-shm", ""):
                    self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
                return True
        except OSError as exc:
            log.debug("blob-location cache %s: cannot replace it: %s", self.path, exc)
            return False


def _plausible(repository: str) -> bool:
    """A repository name a mount may name (``from=``): components of name characters."""
    return 0 < len(repository) <= 255 and all(
        part and set(part.lower()) <= _NAME_CHARACTERS for part in repository.split("/")
    )
