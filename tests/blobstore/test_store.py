from __future__ import annotations

import errno
import hashlib
import io
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from cairn.blobstore import BlobStore, Digest
from cairn.blobstore import store as store_module
from cairn.errors import (
    BlobNotFoundError,
    CorruptBlobError,
    DigestMismatchError,
    InvalidDigestError,
    SizeMismatchError,
    StorageFullError,
)
from tests.conftest import in_private_mount_namespace


def digest_of(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


def leftovers(root: Path) -> list[str]:
    """Files anywhere under blobs/ or .cairn/tmp (what a failed write must not leave)."""
    found = []
    for directory in (root / "blobs", root / ".cairn" / "tmp"):
        if directory.exists():
            found += [p.name for p in directory.iterdir()]
    return found


def test_put_stream_stores_bytes_under_their_digest(store: Path) -> None:
    blobs = BlobStore(store)
    data = os.urandom(3 * store_module.CHUNK_SIZE + 17)  # several chunks and a tail
    blob = blobs.put(io.BytesIO(data))
    assert blob.digest == digest_of(data)
    assert blob.size == len(data)
    assert blobs.has(blob.digest) and blob.digest in blobs
    assert blobs.size(blob.digest) == len(data)
    assert blobs.path(blob.digest) == store / "blobs" / f"sha256-{blob.digest.hex}"
    with blobs.open(blob.digest) as f:
        assert f.read() == data
    assert list(blobs) == [blob.digest]
    assert leftovers(store) == [blob.digest.filename]


def test_stored_blob_is_read_only(store: Path) -> None:
    blobs = BlobStore(store)
    blob = blobs.put_bytes(b"hello")
    mode = stat.S_IMODE(blobs.path(blob.digest).stat().st_mode)
    assert mode & 0o222 == 0


def test_empty_blob(store: Path) -> None:
    blobs = BlobStore(store)
    blob = blobs.put_bytes(b"")
    assert str(blob.digest) == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert blob.size == 0


def test_wrong_expected_digest_is_refused_and_leaves_nothing(store: Path) -> None:
    blobs = BlobStore(store)
    wrong = digest_of(b"something else")
    with pytest.raises(DigestMismatchError) as caught:
        blobs.put(io.BytesIO(b"the real bytes"), expected=wrong)
    assert str(wrong) in str(caught.value)
    assert not blobs.has(wrong)
    assert not blobs.has(digest_of(b"the real bytes"))
    assert leftovers(store) == []


def test_truncated_stream_is_refused(store: Path) -> None:
    blobs = BlobStore(store)
    data = b"x" * 1000
    with pytest.raises(SizeMismatchError):
        blobs.put(io.BytesIO(data[:600]), expected=digest_of(data), expected_size=len(data))
    assert leftovers(store) == []


def test_expected_digest_accepts_matching_bytes(store: Path) -> None:
    blobs = BlobStore(store)
    data = b"abc" * 1000
    assert blobs.put(io.BytesIO(data), expected=digest_of(data)).digest == digest_of(data)


def test_accept_hook_can_refuse_a_blob(store: Path) -> None:
    blobs = BlobStore(store)

    def refuse(_: object) -> None:
        raise CorruptBlobError("not wanted")

    with pytest.raises(CorruptBlobError):
        blobs.put(io.BytesIO(b"data"), accept=refuse)
    assert leftovers(store) == []


def test_put_file_copies_never_links(store: Path, tmp_path: Path) -> None:
    blobs = BlobStore(store)
    source = tmp_path / "weights.bin"
    source.write_bytes(b"original bytes")
    blob = blobs.put_file(source)
    assert blobs.path(blob.digest).stat().st_ino != source.stat().st_ino
    source.write_bytes(b"the user changed the file")
    with blobs.open(blob.digest) as f:
        assert f.read() == b"original bytes"
    assert blobs.verify(blob.digest)


def test_missing_blob_errors(store: Path) -> None:
    blobs = BlobStore(store)
    absent = digest_of(b"nope")
    assert not blobs.has(absent)
    with pytest.raises(BlobNotFoundError):
        blobs.open(absent)
    with pytest.raises(BlobNotFoundError):
        blobs.size(absent)
    assert blobs.delete(absent) is False


def test_delete(store: Path) -> None:
    blobs = BlobStore(store)
    blob = blobs.put_bytes(b"to delete")
    assert blobs.delete(blob.digest) is True
    assert not blobs.has(blob.digest)
    assert list(blobs) == []


def test_iteration_ignores_foreign_files(store: Path) -> None:
    blobs = BlobStore(store)
    blob = blobs.put_bytes(b"real")
    (store / "blobs" / "sha256-nothex").write_text("x")
    (store / "blobs" / "notes.txt").write_text("x")
    assert list(blobs) == [blob.digest]


@pytest.mark.parametrize(
    "text",
    ["", "sha256:", "sha256:abc", "md5:" + "0" * 64, "sha256:" + "G" * 64, "sha256:" + "A" * 64],
)
def test_invalid_digests(text: str) -> None:
    with pytest.raises(InvalidDigestError):
        Digest.parse(text)


def test_digest_forms() -> None:
    hex64 = "ab" * 32
    assert Digest.parse(f"sha256:{hex64}") == Digest.parse(f"sha256-{hex64}")
    assert str(Digest(hex64)) == f"sha256:{hex64}"
    assert Digest(hex64).short == hex64[:12]


def test_verify_finds_and_repairs_corruption(store: Path) -> None:
    blobs = BlobStore(store)
    good = blobs.put_bytes(b"good blob")
    bad = blobs.put_bytes(b"soon to rot")
    path = blobs.path(bad.digest)
    path.chmod(0o644)
    path.write_bytes(b"soon to ROT")
    assert blobs.verify(good.digest)
    assert not blobs.verify(bad.digest)
    assert blobs.check() == [bad.digest]
    assert blobs.has(bad.digest)  # reporting changes nothing
    assert blobs.check(repair=True) == [bad.digest]
    assert not blobs.has(bad.digest)
    assert blobs.check() == []


def test_quick_check_notices_a_rewritten_blob(store: Path) -> None:
    blobs = BlobStore(store)
    blob = blobs.put_bytes(b"pristine")
    blobs.check_quick(blob.digest)
    path = blobs.path(blob.digest)
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.write(b"P")
    with pytest.raises(CorruptBlobError):
        blobs.check_quick(blob.digest)


def test_quick_check_hashes_a_blob_it_has_no_record_of(store: Path) -> None:
    """A store Ollama filled has no stamps: the first check rehashes."""
    blobs = BlobStore(store)
    data = b"written by someone else"
    (store / "blobs").mkdir()
    blobs.path(digest_of(data)).write_bytes(data)
    blobs.check_quick(digest_of(data))
    wrong = digest_of(b"other")
    blobs.path(wrong).write_bytes(data)
    with pytest.raises(CorruptBlobError):
        blobs.check_quick(wrong)


def _put_worker(root: str, data: bytes, barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait()
    BlobStore(root).put(io.BytesIO(data))


def test_two_processes_writing_the_same_blob(store: Path) -> None:
    data = os.urandom(40 << 20)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [
        context.Process(target=_put_worker, args=(str(store), data, barrier)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    blobs = BlobStore(store)
    assert list(blobs) == [digest_of(data)]
    assert blobs.verify(digest_of(data))
    assert leftovers(store) == [digest_of(data).filename]


def test_disk_full_write_fails_cleanly(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails with ENOSPC: a typed error and nothing half-written."""
    blobs = BlobStore(store)
    real_write = os.write
    written = 0

    def filling_write(fd: int, data: bytes | memoryview) -> int:
        nonlocal written
        if written > 5 << 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        written += len(data)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", filling_write)
    with pytest.raises(StorageFullError):
        blobs.put(io.BytesIO(os.urandom(20 << 20)))
    monkeypatch.undo()
    assert leftovers(store) == []


TMPFS_SCRIPT = r"""
set -e
mount -t tmpfs -o size=2m tmpfs "$STORE"
python - <<'PY'
import io, os
from cairn.blobstore import BlobStore
from cairn.errors import StorageFullError
store = BlobStore(os.environ["STORE"])
small = store.put_bytes(b"fits")
try:
    store.put(io.BytesIO(os.urandom(4 << 20)))
except StorageFullError as exc:
    print("full:", exc)
left = sorted(os.listdir(os.path.join(os.environ["STORE"], "blobs")))
tmp = sorted(os.listdir(os.path.join(os.environ["STORE"], ".cairn", "tmp")))
print("blobs:", left)
print("tmp:", tmp)
print("ok:", store.verify(small.digest))
PY
"""


def test_disk_full_on_a_real_small_tmpfs(tmp_path: Path) -> None:
    """A 2 MiB tmpfs (in a private mount namespace): the big write fails, nothing is left."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    result = in_private_mount_namespace(TMPFS_SCRIPT, {**os.environ, "STORE": str(mountpoint)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("full: no space left on device")
    assert lines[1] == "blobs: ['sha256-" + hashlib.sha256(b"fits").hexdigest() + "']"
    assert lines[2] == "tmp: []"
    assert lines[3] == "ok: True"


def test_put_file_large_file_by_kernel_copy(store: Path, tmp_path: Path) -> None:
    data = os.urandom(5 * store_module.CHUNK_SIZE + 12345)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    blob = BlobStore(store).put_file(source, expected=digest_of(data))
    assert blob.size == len(data)
    assert BlobStore(store).path(blob.digest).read_bytes() == data
    assert leftovers(store) == [blob.digest.filename]


def test_put_file_falls_back_to_streaming(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where copy_file_range cannot copy (EXDEV, ENOSYS...), the bytes are streamed."""

    def no_kernel_copy(*args: object) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", no_kernel_copy)
    data = os.urandom(9 << 20)
    source = tmp_path / "f.bin"
    source.write_bytes(data)
    blob = BlobStore(store).put_file(source)
    assert blob.digest == digest_of(data)
    assert leftovers(store) == [blob.digest.filename]


def test_put_file_interrupt_aborts_and_leaves_nothing(store: Path, tmp_path: Path) -> None:
    source = tmp_path / "f.bin"
    source.write_bytes(os.urandom(30 << 20))
    calls = 0

    def interrupt() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise CorruptBlobError("stop here")

    with pytest.raises(CorruptBlobError):
        BlobStore(store).put_file(source, interrupt=interrupt)
    assert leftovers(store) == []


def test_links_name_repositories_and_go_with_their_blob(tmp_path: Path) -> None:
    from cairn.errors import StoreError
    from cairn.manifests.models import Models

    models = Models(tmp_path)
    store = models.blobs
    blob = store.put_bytes(b"a layer")
    store.link(blob.digest, "registry.ollama.ai/lab/a")
    store.link(blob.digest, "registry.ollama.ai/lab/b")
    assert store.linked(blob.digest, "registry.ollama.ai/lab/a")
    assert store.links(blob.digest) == ["registry.ollama.ai/lab/a", "registry.ollama.ai/lab/b"]
    assert store.unlink(blob.digest, "registry.ollama.ai/lab/a")
    assert not store.unlink(blob.digest, "registry.ollama.ai/lab/a")
    assert store.links(blob.digest) == ["registry.ollama.ai/lab/b"]
    for bad in ("../../etc", "a/b", "h/../x", "h//x"):
        with pytest.raises(StoreError):
            store.link(blob.digest, bad)
    store.delete(blob.digest)  # as `cairn rm` and `prune` delete it
    assert store.links(blob.digest) == []
    assert not (store.links_dir / blob.digest.filename).exists()
    # links left by a cairn that deleted blobs without them: prune takes them
    (store.links_dir / f"sha256-{'0' * 64}" / "h" / "n" / "x").mkdir(parents=True)
    models.prune(grace=0)
    assert list(store.links_dir.iterdir()) == []


def test_sha512_blobs_have_the_same_guarantees(tmp_path: Path) -> None:
    from cairn.manifests.models import Models

    models = Models(tmp_path)
    store = models.blobs
    data = b"OCI content addressed by sha512" * 1000
    digest = Digest(hashlib.sha512(data).hexdigest(), "sha512")
    assert str(digest) == f"sha512:{digest.hex}" and Digest.parse(str(digest)) == digest
    blob = store.put(io.BytesIO(data), digest)
    assert blob.digest == digest and store.path(digest).name == f"sha512-{digest.hex}"
    assert store.path(digest).read_bytes() == data and list(store) == [digest]
    source = tmp_path / "layer.bin"
    source.write_bytes(data + b"!")
    other = Digest(hashlib.sha512(data + b"!").hexdigest(), "sha512")
    assert store.put_file(source, other).digest == other  # the kernel copy hashes in sha512 too
    # bytes that hash otherwise are refused, and nothing is left
    with pytest.raises(DigestMismatchError):
        store.put(io.BytesIO(b"something else"), Digest("0" * 128, "sha512"))
    assert sorted(leftovers(tmp_path)) == sorted([digest.filename, other.filename])
    # verify rehashes it in its own algorithm; a changed byte is caught
    assert store.check() == []
    store.check_quick(digest)  # stamped
    path = store.path(digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"X" + data[1:])
    assert store.check() == [digest]
    # prune frees what no manifest mentions (a manifest mentioning it keeps it)
    manifest = models.tags.dir / "h" / "n" / "m" / "t"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(f'{{"layers": [{{"digest": "{other}"}}]}}')
    models.prune(grace=0)
    assert list(store) == [other]
    for wrong in ("sha512:" + "0" * 64, "sha384:" + "0" * 96, "md5:" + "0" * 32):
        with pytest.raises(InvalidDigestError):
            Digest.parse(wrong)


def test_storing_a_blob_again_repairs_a_changed_copy(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = b"weights " * 1000
    digest = store.put_bytes(data).digest
    path = store.path(digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"X" + data[1:])  # the same size, other bytes
    assert store.put(io.BytesIO(data), digest).digest == digest
    assert path.read_bytes() == data
    store.check_quick(digest)  # and it is known good again
