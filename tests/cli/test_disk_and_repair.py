"""A full disk during a pull, partial files in prune, and models a repair broke (issue 15,
item 6).

The disk is a real one: a small tmpfs mounted over the store in a private mount
namespace, filled by the pull itself or by ``dd`` while the pull runs; the models come
from a real docker-registry. Each case runs ``cairn`` as a whole process and checks what a
user sees: stdout, stderr, the exit code and the files left in the store.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import Runner, cairn_env, in_private_mount_namespace, modelfile
from tests.ggufmaker import write_gguf

MIB = 1 << 20


def push_model(cairn: Runner, tmp_path: Path, registry: str, mib: int) -> str:
    """A model of about ``mib`` MiB of random weights, pushed to ``registry``; its name there."""
    gguf = write_gguf(
        tmp_path / "big.gguf", tensors=[("w", (1024, 256 * mib))], fill=os.urandom(MIB)
    )
    # Several small layers besides: the pull fetches three blobs at once, and the ones
    # still opening when another is refused are cancelled.
    text = f"FROM {gguf}\nTEMPLATE x\nSYSTEM y\nLICENSE z\nPARAMETER temperature 0\n"
    modelfile(tmp_path, text, "BIG")
    cairn("create", "big:1", "-f", str(tmp_path / "BIG"), "--quiet")
    name = f"{registry}/lab/big:1"
    cairn("push", "big:1", name, "--insecure", "-q")
    return name


def fields(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The ``key: value`` lines a namespace script printed."""
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)


# What the store holds after the pull failed: every file under .cairn/tmp (none may be
# left, empty or not), the blobs, and the pull's own lines.
AFTER = r"""
echo "status: $status"
echo "errors: $(grep -c '^Error: ' err.txt)"
echo "error: $(grep '^Error: ' err.txt)"
echo "last: $(tail -n 1 err.txt | tr '\r' '\n' | tail -n 1)"
echo "traceback: $(grep -c Traceback err.txt)"
echo "tmp: $(ls -A "$CAIRN_MODELS/.cairn/tmp" | tr '\n' ' ')"
echo "blobs: $(find "$CAIRN_MODELS/blobs" -type f -size +1M | wc -l)"
"""

REFUSED = (
    r"""
mount -t tmpfs -o size=8m tmpfs "$CAIRN_MODELS"
for i in 1 2 3 4 5; do
  python -m cairn pull "$MODEL" --insecure -q 2>/dev/null
  echo "tmp $i: $(ls -A "$CAIRN_MODELS/.cairn/tmp" | tr '\n' ' ')"
done
status=0
python -m cairn pull "$MODEL" --insecure 2>err.txt || status=$?
"""
    + AFTER
)


def test_a_pull_bigger_than_the_disk_is_refused_before_its_first_byte(
    cairn: Runner, tmp_path: Path, registry: str
) -> None:
    name = push_model(cairn, tmp_path, registry, mib=16)
    small = tmp_path / "small"
    small.mkdir()
    result = in_private_mount_namespace(REFUSED, cairn_env(small, MODEL=name), cwd=tmp_path)
    said = fields(result)
    assert said["status"] == "1"
    assert said["traceback"] == "0"
    assert said["errors"] == "1" and said["last"] == said["error"]  # one line, the last one
    error = said["error"]
    assert error.startswith("Error: not enough space for blob sha256:")
    # The space needed (with what cairn keeps free) and the space left, as people read sizes.
    assert "cairn keeps 67 MB free" in error
    assert f"{small} has 8.3 MB left" in error or f"{small} has 8.4 MB left" in error
    assert "`cairn prune`" in error
    assert said["tmp"] == ""  # no partial, no record, nothing empty
    assert said["blobs"] == "0"
    for i in range(1, 6):  # nor after any of the earlier tries
        assert said[f"tmp {i}"] == "", said


FILLED = (
    r"""
mount -t tmpfs -o size=100m tmpfs "$CAIRN_MODELS"
status=0
python -m cairn pull "$MODEL" --insecure --limit-rate 1M 2>err.txt &
pid=$!
landed=0
for i in $(seq 1 600); do
  landed=$(stat -c %s "$CAIRN_MODELS"/.cairn/tmp/*.partial 2>/dev/null | sort -n | tail -n 1)
  [ "${landed:-0}" -gt 1048576 ] && break
  sleep 0.1
done
echo "landed before the disk filled: ${landed:-0}"
dd if=/dev/zero of="$CAIRN_MODELS/filler" bs=1M 2>/dev/null || true
wait $pid || status=$?
"""
    + AFTER
    + r"""
rm "$CAIRN_MODELS/filler"
python -m cairn pull "$MODEL" --insecure -q && echo "again: pulled"
echo "listed: $(python -m cairn list | grep -c lab/big)"
echo "tmp after: $(ls -A "$CAIRN_MODELS/.cairn/tmp" | tr '\n' ' ')"
"""
)


def test_a_disk_that_fills_during_a_pull(cairn: Runner, tmp_path: Path, registry: str) -> None:
    """The check before the first byte passes (24 MiB on a 100 MiB disk); then ``dd`` takes
    the rest of the disk while the pull runs at 1 MB/s: pwrite meets ENOSPC."""
    name = push_model(cairn, tmp_path, registry, mib=24)
    small = tmp_path / "small"
    small.mkdir()
    result = in_private_mount_namespace(FILLED, cairn_env(small, MODEL=name), cwd=tmp_path)
    said = fields(result)
    assert int(said["landed before the disk filled"]) > MIB, result.stdout
    assert said["status"] == "1", said
    assert said["traceback"] == "0"
    assert said["errors"] == "1" and said["last"] == said["error"]
    error = said["error"]
    assert error.startswith("Error: no space left on device for blob sha256:"), error
    assert "it needs 25 MB" in error  # the whole blob: its partial is gone
    assert f"{small} has 0 B left" in error
    assert "`cairn prune`" in error
    assert said["tmp"] == ""  # no partial, no empty record (.partial.tmp) either
    assert said["blobs"] == "0"
    # Room made, the same pull works.
    assert said["again"] == "pulled"
    assert said["listed"] == "1"
    assert said["tmp after"] == ""


def test_prune_counts_a_partial_file_by_the_space_it_takes(
    cairn: Runner, store: Path, tmp_path: Path
) -> None:
    """A download in ranges writes near the end of its partial early: 2 MiB landed in a
    file 200 MB long frees 2 MiB, and that is what prune says."""
    cairn("list")  # the store's folders exist
    tmp = store / ".cairn" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    partial = tmp / f"{'ab' * 32}.partial"
    with partial.open("wb") as f:
        f.write(os.urandom(MIB))
        f.seek(100 * 10**6)
        f.write(os.urandom(MIB))
        f.truncate(200 * 10**6)
    assert partial.stat().st_size == 200 * 10**6
    on_disk = partial.stat().st_blocks * 512
    assert 2 * MIB <= on_disk < 3 * MIB  # the filesystem keeps the holes

    dry = cairn("prune", "--dry-run", "--json")
    report = json.loads(dry.stdout)
    assert report["partials"] == [str(partial)]
    assert report["partial_bytes"] == on_disk
    said = cairn("prune", "--dry-run")
    assert f"would remove partial file {partial}" in said.stdout
    assert "would remove 0 blobs and 1 partial files (2.1 MB)" in said.stderr
    assert partial.exists()

    done = cairn("prune")
    assert "removed 0 blobs and 1 partial files (2.1 MB)" in done.stderr
    assert list(tmp.iterdir()) == []


def test_prune_takes_an_empty_record_a_full_disk_left(cairn: Runner, store: Path) -> None:
    """An older cairn left ``<hex>.partial.tmp`` (a record it could not write) behind."""
    cairn("list")
    tmp = store / ".cairn" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    left = tmp / f"{'cd' * 32}.partial.tmp"
    left.touch()
    cairn("prune")
    assert not left.exists()


def corrupt(store: Path, size: int) -> str:
    """Damage the stored blob of ``size`` bytes (one byte changed); its digest."""
    [blob] = [p for p in (store / "blobs").iterdir() if p.stat().st_size == size]
    blob.chmod(0o644)
    with blob.open("r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    return blob.name.replace("-", ":", 1)


def test_a_model_whose_blob_a_repair_removed_is_marked_broken(
    cairn: Runner, store: Path, tmp_path: Path, registry: str
) -> None:
    gguf = write_gguf(tmp_path / "shared.gguf", tensors=[("w", (64, 64))], fill=b"shared")
    modelfile(tmp_path, f"FROM {gguf}\n")
    cairn("create", "tiny:1", "--quiet")
    pulled = f"{registry}/lab/tiny:1"
    cairn("push", "tiny:1", pulled, "--insecure", "-q")
    cairn("pull", pulled, "--insecure", "-q")
    cairn("cp", "tiny:1", "copy:1")
    other = write_gguf(tmp_path / "other.gguf", tensors=[("w", (32, 32))], fill=b"other")
    modelfile(tmp_path, f"FROM {other}\n", "OTHER")
    cairn("create", "other:1", "-f", str(tmp_path / "OTHER"), "--quiet")
    digest = corrupt(store, gguf.stat().st_size)
    users = ["copy:1", "tiny:1", pulled]

    repaired = cairn("verify", "--repair", check=False)
    assert repaired.returncode == 1
    assert "Traceback" not in repaired.stdout + repaired.stderr
    lines = repaired.stdout.splitlines()
    assert f"corrupt blob {digest} (removed)" in lines
    for model in users:  # one line per model that used the blob
        line = f"{model} is broken (1 blob(s) missing): pull it again with `cairn pull {model}`"
        assert lines.count(line) == 1, repaired.stdout
    assert not any(line.startswith("other:1") for line in lines)
    assert repaired.stderr.splitlines() == [
        "Error: the store is damaged: 1 corrupt, 0 missing blobs, 0 damaged manifests;"
        " pull or create the affected models again"
    ]

    listed = cairn("list")
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    for model in users:
        assert "(broken)" in rows[model], listed.stdout
    assert "(broken)" not in rows["other:1"]
    warnings = listed.stderr.splitlines()
    assert len(warnings) == 3 and all(w.startswith("warning: ") for w in warnings)
    as_json = json.loads(cairn("list", "--json").stdout)
    broken = {m["name"]: m["broken"] for m in as_json["models"]}
    assert broken == {"copy:1": True, "tiny:1": True, pulled: True, "other:1": False}
    missing = {m["name"]: m["missing_blobs"] for m in as_json["models"]}
    assert missing[pulled] == [digest] and missing["other:1"] == []

    # A later verify says it again (the blob is missing now, not corrupt): pull, not repair.
    again = cairn("verify", check=False)
    assert again.returncode == 1
    assert f"missing blob {digest} of tiny:1" in again.stdout
    assert again.stdout.count("is broken (1 blob(s) missing)") == 3
    assert again.stderr.strip().endswith("pull or create the affected models again")
    report = json.loads(cairn("verify", "--json", check=False).stdout)
    assert sorted(b["model"] for b in report["broken"]) == sorted(
        f"{registry}/lab/tiny:1" if m == pulled else f"registry.ollama.ai/library/{m}"
        for m in users
    )

    # Pulled again, as the line says (plain HTTP: --insecure), every model has its blob back.
    cairn("pull", pulled, "--insecure", "-q")
    assert "(broken)" not in cairn("list").stdout
    assert "all intact" in cairn("verify").stdout
