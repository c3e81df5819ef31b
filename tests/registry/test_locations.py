"""The blob-location cache: a push mounts what was seen elsewhere on the same registry.

The evidence comes from the registry's side: docker-registry's access log
(one line per request) shows whether any blob bytes were sent (``PATCH``, or
``PUT`` on an upload session) or the blob was mounted (``POST ?mount=`` answered
201), and its storage shows whether an upload session was left behind.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import re
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from cairn.blobstore import Digest
from cairn.registry.locations import FILE_NAME, PER_BLOB, TOTAL, TRIM_BATCH, BlobLocations
from tests.conftest import Runner, free_port, stop, wait_until_serving
from tests.registry.test_pull_push import login, make_model, other_store
from tests.tokenserver import TokenServer

_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[0-9.]+" (?P<status>\d{3})')


@dataclass
class LoggedRegistry:
    """A real docker-registry whose access log is kept, and its storage root."""

    host: str
    log: Path
    data: Path

    def requests(self) -> list[tuple[str, str, int]]:
        """``(method, target, status)`` of every request so far."""
        found = (_LINE.search(line) for line in self.log.read_text(errors="replace").splitlines())
        return [(m["method"], m["target"], int(m["status"])) for m in found if m]

    def uploads_into(self, repository: str) -> list[tuple[str, str, int]]:
        """Requests that carried blob bytes into ``repository`` (PATCH, or PUT of a session)."""
        prefix = f"/v2/{repository}/blobs/uploads/"
        return [r for r in self.requests() if r[0] in ("PATCH", "PUT") and r[1].startswith(prefix)]

    def mounts_into(self, repository: str) -> list[tuple[str, str, int]]:
        prefix = f"/v2/{repository}/blobs/uploads/?mount="
        return [r for r in self.requests() if r[0] == "POST" and r[1].startswith(prefix)]

    def open_sessions(self, repository: str) -> list[str]:
        """Upload sessions the registry still holds open for ``repository``.

        A live session's directory has ``startedat``; distribution leaves a
        cancelled one's ``hashstates`` behind, but nothing else.
        """
        uploads = self.data / "docker/registry/v2/repositories" / repository / "_uploads"
        return sorted(p.name for p in uploads.glob("*/startedat")) if uploads.exists() else []

    def cancels_in(self, repository: str) -> list[int]:
        """The statuses of ``DELETE`` requests on upload sessions of ``repository``."""
        prefix = f"/v2/{repository}/blobs/uploads/"
        return [s for m, t, s in self.requests() if m == "DELETE" and t.startswith(prefix)]

    def delete_blob(self, repository: str, digest: str) -> None:
        request = urllib.request.Request(
            f"http://{self.host}/v2/{repository}/blobs/{digest}", method="DELETE"
        )
        assert urllib.request.urlopen(request).status == 202


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[LoggedRegistry]:
    """A fresh anonymous docker-registry that writes its access log to a file."""
    binary = shutil.which("docker-registry")
    if binary is None:  # no skip: `make test` installs it
        pytest.fail("docker-registry is not installed (make sysdeps installs it)")
    root = tmp_path / "logged-registry"
    root.mkdir()
    port = free_port()
    config = root / "registry.yml"
    config.write_text(
        "version: 0.1\nlog: {level: error}\nstorage:\n"
        f"  filesystem: {{rootdirectory: {root / 'data'}}}\n  delete: {{enabled: true}}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = root / "access.log"
    with open(log, "wb") as sink:  # the access log goes to stdout
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=sink, stderr=subprocess.PIPE)
    wait_until_serving(proc, port, "docker-registry")
    yield LoggedRegistry(f"127.0.0.1:{port}", log, root / "data")
    stop(proc)


def home_env(tmp_path: Path, name: str = "home") -> dict[str, str]:
    return {"CAIRN_HOME": str(tmp_path / name), "DOCKER_CONFIG": str(tmp_path / "no-docker")}


def blobs_of(store: Path, host: str, repository: str, tag: str) -> list[dict[str, Any]]:
    manifest = json.loads((store / "manifests" / host / repository / tag).read_bytes())
    return [manifest["config"], *manifest["layers"]]


def events(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines()]


def test_a_second_push_to_another_repository_mounts_every_blob(
    cairn: Runner, store: Path, tmp_path: Path, logged: LoggedRegistry
) -> None:
    """The user's report: pushed to x, pushed again to y, all the bytes went again."""
    make_model(cairn, tmp_path, "m:1", size_mb=4)
    env = home_env(tmp_path)
    cairn("push", "m:1", f"{logged.host}/x/m:1", "--insecure", "-q", env=env)
    assert logged.uploads_into("x/m")  # the first push did upload
    pushed = cairn("push", "m:1", f"{logged.host}/y/m:1", "--insecure", "--json", env=env)

    blobs = blobs_of(store, "registry.ollama.ai", "library/m", "1")
    assert max(b["size"] for b in blobs) > 4_000_000
    assert logged.uploads_into("y/m") == []  # no byte of any blob was sent
    mounts = logged.mounts_into("y/m")
    assert sorted(t for _, t, _ in mounts) == sorted(
        f"/v2/y/m/blobs/uploads/?mount={b['digest'].replace(':', '%3A')}&from=x%2Fm" for b in blobs
    )
    assert {status for _, _, status in mounts} == {201}
    # Each mounted blob is shown as one the registry had: complete.
    shown = {e["digest"]: e for e in events(pushed.stdout) if "digest" in e}
    assert {d: (e["completed"], e["total"]) for d, e in shown.items()} == {
        b["digest"]: (b["size"], b["size"]) for b in blobs
    }
    elsewhere = other_store(tmp_path, cairn)
    elsewhere("pull", f"{logged.host}/y/m:1", "--insecure", "-q", env=env)
    assert "all intact" in elsewhere("verify").stdout


def test_a_pulled_model_pushed_to_another_repository_is_mounted(
    cairn: Runner, tmp_path: Path, logged: LoggedRegistry
) -> None:
    """Another machine's store pulls from x, renames the model, pushes it to z."""
    make_model(cairn, tmp_path, "m:1")
    cairn("push", "m:1", f"{logged.host}/x/m:1", "--insecure", "-q", env=home_env(tmp_path))
    theirs = other_store(tmp_path, cairn)
    env = home_env(tmp_path, "their-home")
    theirs("pull", f"{logged.host}/x/m:1", "--insecure", "-q", env=env)
    # Under a local name the source repository is not on that registry: only
    # the cache can say where the blobs are.
    theirs("cp", f"{logged.host}/x/m:1", "renamed:1", env=env)
    theirs("push", "renamed:1", f"{logged.host}/z/m:1", "--insecure", "-q", env=env)
    assert logged.uploads_into("z/m") == []
    assert {s for _, _, s in logged.mounts_into("z/m")} == {201}
    digest = Digest.parse(blobs_of(tmp_path / "other", logged.host, "x/m", "1")[-1]["digest"])
    cache = BlobLocations(tmp_path / "their-home" / FILE_NAME)
    assert cache.where(logged.host.upper(), digest) == ["z/m", "x/m"]


@pytest.mark.parametrize("gone", ["blobs", "repository"])
def test_a_stale_location_falls_back_to_an_upload(
    cairn: Runner, store: Path, tmp_path: Path, logged: LoggedRegistry, gone: str
) -> None:
    """Four repositories once held the blobs and hold them no more (blobs deleted, or
    the repository removed): three mounts are tried, each fails, the push uploads,
    and no upload session is left open on the registry."""
    make_model(cairn, tmp_path, "m:1")
    env = home_env(tmp_path)
    for n in range(1, 5):
        cairn("push", "m:1", f"{logged.host}/x{n}/m:1", "--insecure", "-q", env=env)
    blobs = blobs_of(store, "registry.ollama.ai", "library/m", "1")
    for n in range(1, 5):
        if gone == "blobs":
            for blob in blobs:
                logged.delete_blob(f"x{n}/m", blob["digest"])
        else:
            shutil.rmtree(logged.data / "docker/registry/v2/repositories" / f"x{n}")

    pushed = cairn("push", "m:1", f"{logged.host}/y/m:1", "--insecure", "--json", env=env)
    assert events(pushed.stdout)[-1] == {"status": "success"}
    mounts = logged.mounts_into("y/m")
    assert len(mounts) == 3 * len(blobs)  # at most three tries a blob, newest first
    assert {s for _, _, s in mounts} == {202}  # none happened
    assert all("from=x1" not in target for _, target, _ in mounts)
    assert logged.uploads_into("y/m")
    assert logged.cancels_in("y/m") == [204] * 2 * len(blobs)  # the last try's was used
    assert logged.open_sessions("y/m") == []
    cache = BlobLocations(tmp_path / "home" / FILE_NAME)
    for blob in blobs:  # the three that failed are forgotten; the untried one stays
        assert cache.where(logged.host, Digest.parse(blob["digest"])) == ["y/m", "x1/m"]
    elsewhere = other_store(tmp_path, cairn)
    elsewhere("pull", f"{logged.host}/y/m:1", "--insecure", "-q", env=env)
    assert "all intact" in elsewhere("verify").stdout


@pytest.mark.parametrize("broken", ["garbage", "a directory"])
def test_a_broken_cache_file_does_not_fail_a_push(
    cairn: Runner, tmp_path: Path, logged: LoggedRegistry, broken: str
) -> None:
    make_model(cairn, tmp_path, "m:1")
    env = home_env(tmp_path)
    cache = tmp_path / "home" / FILE_NAME
    cache.parent.mkdir()
    if broken == "garbage":
        cache.write_bytes(b"\x00\xffnot SQLite at all\n" * 4096)
    else:
        cache.mkdir()
    cairn("push", "m:1", f"{logged.host}/x/m:1", "--insecure", "-q", env=env)
    cairn("push", "m:1", f"{logged.host}/y/m:1", "--insecure", "-q", env=env)
    theirs = other_store(tmp_path, cairn)
    theirs("pull", f"{logged.host}/y/m:1", "--insecure", "-q", env=env)
    assert "all intact" in theirs("verify").stdout
    if broken == "garbage":  # replaced by a cache that works: the second push mounted
        assert logged.uploads_into("y/m") == []
    else:  # no cache at all: the second push uploaded
        assert logged.uploads_into("y/m")


# -- the cache itself -----------------------------------------------------------------


def digest(n: int) -> Digest:
    return Digest.of(f"blob {n}".encode())


def test_where_lists_the_newest_first_ignores_host_case_and_keeps_a_few(tmp_path: Path) -> None:
    cache = BlobLocations(tmp_path / "home" / FILE_NAME)
    assert cache.where("reg.example", digest(1)) == []  # no file yet: nothing known
    cache.remember("Reg.Example:5000", "a/m", [digest(1), digest(2)])
    cache.remember("reg.example:5000", "b/m", [digest(1)])
    assert cache.where("REG.EXAMPLE:5000", digest(1)) == ["b/m", "a/m"]
    assert cache.where("reg.example:5000", digest(2)) == ["a/m"]
    assert cache.where("other.example", digest(1)) == []
    cache.remember("reg.example:5000", "a/m", [digest(1)])  # seen again: newest again
    assert cache.where("reg.example:5000", digest(1)) == ["a/m", "b/m"]
    cache.forget("reg.example:5000", "a/m", digest(1))
    assert cache.where("reg.example:5000", digest(1)) == ["b/m"]
    for n in range(PER_BLOB + 5):
        cache.remember("reg.example:5000", f"r{n}/m", [digest(1)])
    newest = [f"r{n}/m" for n in reversed(range(5, PER_BLOB + 5))]
    assert cache.where("reg.example:5000", digest(1)) == newest
    assert (tmp_path / "home" / FILE_NAME).stat().st_mode & 0o077 == 0


def test_an_unusable_cache_knows_nothing_and_raises_nothing(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    cache = BlobLocations(blocked / FILE_NAME)
    cache.remember("reg.example", "a/m", [digest(1)])
    cache.forget("reg.example", "a/m", digest(1))
    assert cache.where("reg.example", digest(1)) == []


def _write_many(path: str, name: str, barrier: Any, count: int) -> None:
    """One writer process: ``count`` remembers, starting when the other writer does."""
    cache = BlobLocations(Path(path))
    barrier.wait(60)
    for n in range(count):
        cache.remember("reg.example", f"{name}/m", [digest(n), digest(10_000 + n)])


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "home" / FILE_NAME
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    count = 150
    writers = [
        context.Process(target=_write_many, args=(str(path), name, barrier, count))
        for name in ("one", "two")
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    cache = BlobLocations(path)
    for n in range(count):
        for d in (digest(n), digest(10_000 + n)):
            assert sorted(cache.where("reg.example", d)) == ["one/m", "two/m"]


def test_a_write_waits_for_another_writer_instead_of_dropping(tmp_path: Path) -> None:
    """Forced: this test holds the write lock while the cache writes."""
    import sqlite3

    path = tmp_path / "home" / FILE_NAME
    cache = BlobLocations(path)
    cache.remember("reg.example", "a/m", [digest(1)])  # the file exists, in WAL mode
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    connected = threading.Event()

    class Watched(BlobLocations):
        def _connect(self) -> sqlite3.Connection:
            db = super()._connect()
            connected.set()
            return db

    writer = threading.Thread(
        target=Watched(path).remember, args=("reg.example", "b/m", [digest(1)])
    )
    writer.start()
    assert connected.wait(60)
    writer.join(0.3)
    assert writer.is_alive()  # waiting for the lock, not done and not given up
    holder.execute("COMMIT")
    holder.close()
    writer.join(60)
    assert cache.where("reg.example", digest(1)) == ["b/m", "a/m"]


def test_a_mount_under_token_auth(
    cairn: Runner, tmp_path: Path, token_registry: tuple[str, str, str, TokenServer]
) -> None:
    """distribution with `auth: token`: a mount needs pull on the source repository as well;
    the token for it is asked for and the blob is mounted. With 1 MiB chunks an upload
    would show progress part way; a mount shows each blob complete at once."""
    host, user, password, server = token_registry
    make_model(cairn, tmp_path, "m:1")
    env = {**home_env(tmp_path), "CAIRN_TOKEN_REALMS": f"http://{urlsplit(server.url).netloc}"}
    login(cairn, host, user, password, env)
    cairn("push", "m:1", f"{host}/lab/a:1", "--insecure", "-q", env=env)
    pushed = cairn(
        "push", "m:1", f"{host}/lab/b:1", "--insecure", "--json", "--chunk-size", "1M", env=env
    )
    progress = [e for e in events(pushed.stdout) if "digest" in e]
    assert progress and all(e["completed"] == e["total"] for e in progress)
    assert max(e["total"] for e in progress) > 3_000_000
    theirs = other_store(tmp_path, cairn)
    theirs("pull", f"{host}/lab/b:1", "--insecure", "-q", env=env)
    assert "all intact" in theirs("verify").stdout


def test_a_damaged_page_behind_a_valid_header_is_replaced(tmp_path: Path) -> None:
    """The header still reads (the probe once passed it); a page inside does not: the
    file is found broken (``quick_check``) and replaced, and the cache works again."""
    path = tmp_path / "home" / FILE_NAME
    cache = BlobLocations(path)
    cache.remember("reg.example", "a/m", [digest(n) for n in range(5000)])
    with open(path, "r+b") as f:
        f.seek(4096 * 3)
        f.write(b"\xa5" * 4096 * 6)
    cache.remember("reg.example", "c/d", [digest(99_999)])
    assert cache.where("reg.example", digest(99_999)) == ["c/d"]
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_huge_planted_file_is_trimmed_a_batch_a_write(tmp_path: Path) -> None:
    """No write deletes more than TRIM_BATCH rows (one that deleted 800,000 held the lock
    past other writers' busy timeout); write after write, the file comes down to TOTAL."""
    import sqlite3

    path = tmp_path / "home" / FILE_NAME
    cache = BlobLocations(path)
    cache.remember("reg.example", "a/m", [digest(0)])
    planted = TOTAL + 2 * TRIM_BATCH + 10
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executemany(
            "INSERT INTO locations VALUES (?, ?, ?)",
            (("reg.example", f"sha256:{n:064x}", "p/m") for n in range(planted)),
        )
        db.commit()

    def rows() -> int:
        with contextlib.closing(sqlite3.connect(path)) as db:
            count: int = db.execute("SELECT count(*) FROM locations").fetchone()[0]
            return count

    before = rows()
    cache.remember("reg.example", "b/m", [digest(1)])
    assert rows() == before + 1 - TRIM_BATCH
    cache.remember("reg.example", "b/m", [digest(2)])
    cache.remember("reg.example", "b/m", [digest(3)])
    assert rows() == TOTAL
    assert cache.where("reg.example", digest(3)) == ["b/m"]  # the newest stay
