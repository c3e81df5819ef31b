"""Upload sessions: bytes arrive in order into ``.cairn/uploads/<uuid>``, hashed as they come.

A session lives in this server process (its hash state with it); its file
is under ``.cairn/uploads`` (not ``.cairn/tmp``, which ``prune`` sweeps by
lock: a session spans requests and holds no lock between them). Sessions
idle for longer than ``expiry`` seconds are dropped with their files.

Every change to a session (append, finish, drop) happens under its lock,
and a finished or dropped session is ``closed``: a request that waited for
the lock finds it closed and touches nothing. No file descriptor outlives
the call that opened it, so a descriptor number can never be reused under
a session that still remembers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cairn.blobstore import Blob, BlobStore, Digest
from cairn.blobstore.store import hash_range, pwrite_all, storage_error
from cairn.errors import UploadClosedError, UploadLimitError

MAX_SESSIONS = 1024
"""Upload sessions open at once, in all."""
MAX_SESSIONS_PER_CLIENT = 64
"""Upload sessions one client address may hold open at once."""


@dataclass
class Session:
    id: str
    repository: str
    path: Path
    client: str = ""
    offset: int = 0
    """Bytes written and hashed so far: the file's size, always."""
    hasher: Any = field(default_factory=hashlib.sha256)
    touched: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False
    """Finished or dropped: never written, sealed or removed again."""


class Uploads:
    def __init__(self, store: BlobStore, expiry: float = 3600.0) -> None:
        self.store = store
        self.dir = store.work_dir / "uploads"
        self.expiry = expiry
        self.sessions: dict[str, Session] = {}

    def start(self, repository: str, client: str = "") -> Session:
        """A new session; :class:`UploadLimitError` when too many are open (in all, or for
        ``client``, the peer's address)."""
        self.expire()
        sessions = self._snapshot()
        open_here = sum(1 for s in sessions if s.client == client)
        if len(sessions) >= MAX_SESSIONS or open_here >= MAX_SESSIONS_PER_CLIENT:
            raise UploadLimitError(
                "too many upload sessions are open ({count}); finish or cancel some",
                count=open_here if open_here >= MAX_SESSIONS_PER_CLIENT else len(sessions),
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        session_id = str(uuid.uuid4())
        path = self.dir / session_id
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except OSError as exc:
            raise storage_error(exc, "starting an upload") from exc
        session = Session(session_id, repository, path, client=client)
        self.sessions[session_id] = session
        return session

    def in_flight(self) -> int:
        """Bytes received by uploads not yet finished: they count against a quota."""
        return sum(s.offset for s in self._snapshot() if not s.closed)

    def _snapshot(self) -> list[Session]:
        """The sessions now: a copy taken at once (threads finishing uploads remove some)."""
        return list(self.sessions.values())

    def get(self, session_id: str, repository: str, touch: bool = True) -> Session | None:
        """The open session ``session_id`` of ``repository``; ``touch``: this request is
        activity (asking for an upload's status is not: it keeps nothing alive)."""
        session = self.sessions.get(session_id)
        if session is None or session.repository != repository or session.closed:
            return None
        if touch:
            session.touched = time.monotonic()
        return session

    @staticmethod
    def append(session: Session, data: bytes) -> None:
        """Write and hash the next bytes (call in a thread, holding the session's lock)."""
        if session.closed:
            raise UploadClosedError("the upload session {id} is finished", id=session.id)
        try:
            fd = os.open(session.path, os.O_WRONLY)
        except OSError as exc:
            raise storage_error(exc, "writing an upload") from exc
        try:
            session.offset = pwrite_all(fd, data, session.offset, "writing an upload")
        finally:
            os.close(fd)
        session.hasher.update(data)
        session.touched = time.monotonic()  # a long upload is not an idle one

    @staticmethod
    def rewind(session: Session, offset: int, hasher: Any) -> None:
        """Take back what was appended after ``offset`` (holding the session's lock)."""
        try:
            os.truncate(session.path, offset)
        except OSError as exc:
            raise storage_error(exc, "writing an upload") from exc
        session.offset, session.hasher = offset, hasher

    @staticmethod
    def rehash(session: Session, algorithm: str) -> None:
        """Hash the bytes written so far in ``algorithm`` (a sha512 blob, whose algorithm
        the final PUT tells): call in a thread, holding the session's lock and no other."""
        if session.hasher.name == algorithm:
            return
        hasher = hashlib.new(algorithm)
        try:
            fd = os.open(session.path, os.O_RDONLY)
        except OSError as exc:
            raise storage_error(exc, "finishing an upload") from exc
        try:
            hash_range(fd, hasher, 0, session.offset)
        finally:
            os.close(fd)
        session.hasher = hasher

    def finish(self, session: Session, expected: Digest) -> Blob | None:
        """Commit the upload as blob ``expected`` (holding the session's lock); None, and
        nothing kept, when the bytes hash to another digest or the file is not what was
        hashed."""
        if session.closed:
            raise UploadClosedError("the upload session {id} is finished", id=session.id)
        try:
            try:
                fd = os.open(session.path, os.O_RDWR)
            except OSError as exc:
                raise storage_error(exc, "finishing an upload") from exc
            try:
                if os.fstat(fd).st_size != session.offset:  # written behind the hash's back
                    return None
                if session.hasher.name != expected.algorithm:  # ``rehash`` was not called
                    return None
                if Digest(session.hasher.hexdigest(), expected.algorithm) != expected:
                    return None
                self.store.seal(session.path, fd, expected, session.offset)
            finally:
                os.close(fd)
            return Blob(expected, session.offset)
        finally:
            self.drop(session)

    def drop(self, session: Session) -> None:
        """Forget the session and remove its file (holding its lock, or when none holds it)."""
        session.closed = True
        self.sessions.pop(session.id, None)
        with contextlib.suppress(OSError):
            os.unlink(session.path)

    def expire(self) -> None:
        now = time.monotonic()
        for session in self._snapshot():
            if now - session.touched > self.expiry and not session.lock.locked():
                self.drop(session)
        # Files of sessions a previous server process left behind.
        known = {s.path.name for s in self._snapshot()}
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.dir):
                if entry.name not in known:
                    with contextlib.suppress(OSError):
                        if time.time() - entry.stat().st_mtime > self.expiry:
                            os.unlink(entry.path)

    def close(self) -> None:
        for session in list(self.sessions.values()):
            self.drop(session)
