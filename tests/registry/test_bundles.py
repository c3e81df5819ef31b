"""cairn export and cairn import: OCI layouts and bundles, with skopeo and oras-py as peers."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import Runner, cairn_env, in_private_mount_namespace, modelfile
from tests.ggufmaker import write_gguf
from tests.registry.test_pull_push import make_model, other_store

GGUF_DIGEST_FIELD = "org.opencontainers.image.ref.name"


def layout_index(root: Path) -> list[dict[str, object]]:
    entries = json.loads((root / "index.json").read_bytes())["manifests"]
    assert isinstance(entries, list)
    return entries


def tar_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def blob_files(store: Path) -> list[str]:
    if not (store / "blobs").exists():
        return []
    return sorted(p.name for p in (store / "blobs").iterdir())


def listed(run: Runner) -> list[str]:
    return [m["name"] for m in json.loads(run("list", "--json").stdout)["models"]]


@pytest.mark.parametrize("ending", ["dir", "b.tar", "b.tar.zst"])
def test_round_trip_into_an_empty_store(
    cairn: Runner, store: Path, tmp_path: Path, ending: str
) -> None:
    make_model(cairn, tmp_path)
    target = tmp_path / "out" / ending
    cairn("export", "tiny:1", "-o", str(target), "-q")
    elsewhere = other_store(tmp_path, cairn)
    elsewhere("import", str(target), "-q")
    assert listed(elsewhere) == ["tiny:1"]
    assert elsewhere("show", "tiny:1", "--system").stdout.strip() == "short answers"
    original = (store / "manifests/registry.ollama.ai/library/tiny/1").read_bytes()
    imported = (tmp_path / "other/manifests/registry.ollama.ai/library/tiny/1").read_bytes()
    assert imported == original  # the exact bytes, so the same digest
    assert blob_files(tmp_path / "other") == blob_files(store)  # no manifest left as a blob
    assert "all intact" in elsewhere("verify").stdout


def test_shared_blob_is_written_once_and_the_index_goes_last(cairn: Runner, tmp_path: Path) -> None:
    make_model(cairn, tmp_path)
    cairn("cp", "tiny:1", "example.com/team/tiny:2")
    bundle = tmp_path / "two.tar"
    cairn("export", "tiny:1", "example.com/team/tiny:2", "-o", str(bundle), "-q")
    names = tar_names(bundle)
    assert names[0] == "oci-layout" and names[-1] == "index.json"
    assert len(names) == len(set(names))  # the shared GGUF, config and template: once each
    with tarfile.open(bundle) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        entries = json.loads(member.read())["manifests"]
    assert sorted(e["annotations"][GGUF_DIGEST_FIELD] for e in entries) == [
        "example.com/team/tiny:2",
        "registry.ollama.ai/library/tiny:1",
    ]
    elsewhere = other_store(tmp_path, cairn)
    elsewhere("import", str(bundle), "-q")
    assert sorted(listed(elsewhere)) == ["example.com/team/tiny:2", "tiny:1"]


def test_stdout_to_stdin_with_zstd_sniffed(cairn: Runner, store: Path, tmp_path: Path) -> None:
    make_model(cairn, tmp_path)
    exported = subprocess.run(
        [sys.executable, "-m", "cairn", "export", "tiny:1", "-o", "-", "--json"],
        env=cairn_env(store),
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert exported.stdout.startswith(b"oci-layout")  # a tar on stdout; NDJSON to stderr
    assert b'"status": "success"' in exported.stderr
    packed = tmp_path / "b.tar.zst"
    cairn("export", "tiny:1", "-o", str(packed), "-q")
    elsewhere = other_store(tmp_path, cairn)
    # zstd through a pipe: recognised by its magic number, whatever the name
    for stream in (exported.stdout, packed.read_bytes()):
        proc = subprocess.run(
            [sys.executable, "-m", "cairn", "import", "-", "-q"],
            env=cairn_env(tmp_path / "other"),
            input=stream,
            capture_output=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert listed(elsewhere) == ["tiny:1"]


def test_import_is_idempotent(cairn: Runner, tmp_path: Path) -> None:
    make_model(cairn, tmp_path)
    bundle = tmp_path / "b.tar"
    cairn("export", "tiny:1", "-o", str(bundle), "-q")
    elsewhere = other_store(tmp_path, cairn)
    elsewhere("import", str(bundle), "-q")
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "other/blobs").iterdir()}
    again = elsewhere("import", str(bundle), "--json")
    events = [json.loads(line) for line in again.stdout.splitlines()]
    assert not [e for e in events if e.get("completed") == 0]  # no blob started again
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "other/blobs").iterdir()} == stamps
    assert listed(elsewhere) == ["tiny:1"]


def test_export_adds_to_an_existing_layout(cairn: Runner, tmp_path: Path) -> None:
    make_model(cairn, tmp_path)
    make_model(cairn, tmp_path, "small:2", size_mb=1)
    out = tmp_path / "layout"
    cairn("export", "tiny:1", "-o", str(out), "-q")
    cairn("export", "small:2", "-o", str(out), "-q")
    cairn("export", "tiny:1", "-o", str(out), "-q")  # again: replaced, not doubled
    names = sorted(str(e["annotations"][GGUF_DIGEST_FIELD]) for e in layout_index(out))  # type: ignore[index]
    assert names == ["registry.ollama.ai/library/small:2", "registry.ollama.ai/library/tiny:1"]


# -- peers -------------------------------------------------------------------------


def test_oci_export_is_read_by_skopeo_and_oras(
    cairn: Runner, tmp_path: Path, registry: str
) -> None:
    gguf = make_model(cairn, tmp_path)
    out = tmp_path / "layout"
    cairn("export", "tiny:1", "-o", str(out), "--format", "oci", "-q")
    ref = "registry.ollama.ai/library/tiny:1"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            "--dest-tls-verify=false",
            f"oci:{out}:{ref}",
            f"docker://{registry}/from-skopeo/tiny:1",
        ],
        check=True,
        timeout=120,
    )
    archive = tmp_path / "oci.tar"  # skopeo's oci-archive: transport reads the tar itself
    cairn("export", "tiny:1", "-o", str(archive), "--format", "oci", "-q")
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            "--dest-tls-verify=false",
            f"oci-archive:{archive}:{ref}",
            f"docker://{registry}/from-archive/tiny:1",
        ],
        check=True,
        timeout=120,
    )
    import oras.client
    from oras.layout.layout import Layout

    client = oras.client.OrasClient(hostname=registry, insecure=True)
    Layout(str(out)).push_to_registry(client, f"{registry}/from-oras/tiny:1", tag=ref)
    for path in ("from-skopeo", "from-archive", "from-oras"):
        elsewhere = other_store(tmp_path, cairn, path)
        elsewhere("pull", f"{registry}/{path}/tiny:1", "--insecure", "-q")
        shown = elsewhere("show", f"{registry}/{path}/tiny:1", "--system").stdout
        assert shown.strip() == "short answers"
        model = next((tmp_path / path / "blobs").glob("sha256-*"))
        assert model.exists()
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert (tmp_path / "from-oras/blobs" / f"sha256-{digest}").read_bytes() == gguf.read_bytes()


def test_ollama_format_export_is_not_seen_by_skopeo(cairn: Runner, tmp_path: Path) -> None:
    """What docs/offline.md says: skopeo's oci: transport refuses Docker schema 2 manifests."""
    make_model(cairn, tmp_path)
    out = tmp_path / "layout"
    cairn("export", "tiny:1", "-o", str(out), "-q")
    proc = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{out}:registry.ollama.ai/library/tiny:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 or "docker.distribution" in proc.stdout


def test_import_what_skopeo_and_oras_wrote(cairn: Runner, tmp_path: Path, registry: str) -> None:
    make_model(cairn, tmp_path)
    cairn("push", "tiny:1", f"{registry}/oci/tiny:1", "--insecure", "--format", "oci", "-q")
    by_skopeo = tmp_path / "by-skopeo"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            "--src-tls-verify=false",
            f"docker://{registry}/oci/tiny:1",
            f"oci:{by_skopeo}:lab/tiny:1",
        ],
        check=True,
        timeout=120,
    )
    elsewhere = other_store(tmp_path, cairn)
    elsewhere("import", str(by_skopeo), "-q")
    assert listed(elsewhere) == ["lab/tiny:1"]
    assert elsewhere("show", "lab/tiny:1", "--system").stdout.strip() == "short answers"
    archive = tmp_path / "by-skopeo.tar"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            "--src-tls-verify=false",
            f"docker://{registry}/oci/tiny:1",
            f"oci-archive:{archive}:lab/tiny:archived",
        ],
        check=True,
        timeout=120,
    )
    elsewhere("import", str(archive), "-q")
    assert sorted(listed(elsewhere)) == ["lab/tiny:1", "lab/tiny:archived"]

    import oras.client
    from oras.layout.layout import NewLayoutFromRegistry

    by_oras = tmp_path / "by-oras"
    client = oras.client.OrasClient(hostname=registry, insecure=True)
    NewLayoutFromRegistry(str(by_oras), client, f"{registry}/oci/tiny:1", tag="v1")
    third = other_store(tmp_path, cairn, "third")
    refused = third("import", str(by_oras), check=False)  # ref.name "v1": a tag, not a model
    assert refused.returncode == 1 and "--name" in refused.stderr
    third("import", str(by_oras), "--name", "lab/tiny:oras", "-q")
    assert listed(third) == ["lab/tiny:oras"]


# -- referrers ---------------------------------------------------------------------


def _attach_referrer(store: Path, ref: str) -> str:
    """A signature-like referrer of ``ref``, kept by digest as the registry server keeps one."""
    from cairn.manifests import mediatypes as mt
    from cairn.manifests.manifest import Descriptor, Manifest
    from cairn.manifests.models import Models

    models = Models(store)
    model = models.get(ref)
    payload = models.blobs.put_bytes(b'{"signature": "not a real one"}')
    empty = models.blobs.put_bytes(b"{}")
    body = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": Descriptor(mt.OCI_EMPTY, empty.digest, empty.size).to_json(),
        "layers": [Descriptor("application/json", payload.digest, payload.size).to_json()],
        "subject": Descriptor(
            model.manifest.content_type, model.manifest.digest, len(model.manifest.raw)
        ).to_json(),
    }
    data = json.dumps(body).encode()
    manifest = Manifest.from_bytes(data)
    models.tags.write_by_digest(model.reference, manifest.digest, data)
    return str(manifest.digest)


def test_referrers_travel_with_the_model(cairn: Runner, store: Path, tmp_path: Path) -> None:
    from tests.conftest import serving

    make_model(cairn, tmp_path)
    signature = _attach_referrer(store, "tiny:1")
    with_them, without = tmp_path / "with.tar", tmp_path / "without.tar"
    cairn("export", "tiny:1", "-o", str(with_them), "-q")
    cairn("export", "tiny:1", "-o", str(without), "--no-referrers", "-q")
    assert f"blobs/sha256/{signature.removeprefix('sha256:')}" in tar_names(with_them)
    assert f"blobs/sha256/{signature.removeprefix('sha256:')}" not in tar_names(without)
    elsewhere = other_store(tmp_path, cairn)
    elsewhere("import", str(with_them), "-q")
    model_digest = json.loads(elsewhere("show", "tiny:1", "--json").stdout)["digest"]
    import httpx

    with serving(tmp_path / "other") as url:
        answer = httpx.get(f"http://{url}/v2/library/tiny/referrers/{model_digest}", timeout=30)
    assert answer.status_code == 200
    assert [m["digest"] for m in answer.json()["manifests"]] == [signature]


# -- bad input ---------------------------------------------------------------------


def test_a_bundle_cut_off_in_the_middle_tags_nothing(cairn: Runner, tmp_path: Path) -> None:
    make_model(cairn, tmp_path, size_mb=4)
    for name in ("b.tar", "b.tar.zst"):
        whole = tmp_path / name
        cairn("export", "tiny:1", "-o", str(whole), "-q", "--level", "1")
        cut = tmp_path / f"cut-{name}"
        cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        elsewhere = other_store(tmp_path, cairn, f"other-{name}")
        result = elsewhere("import", str(cut), check=False)
        assert result.returncode == 1
        assert "nothing was tagged" in result.stderr or "cut off" in result.stderr, result.stderr
        assert listed(elsewhere) == []
        assert "all intact" in elsewhere("verify").stdout  # what was kept is whole
        assert not list((tmp_path / f"other-{name}/.cairn/tmp").glob("*"))


def test_one_flipped_bit_refuses_the_model_and_names_the_blob(
    cairn: Runner, tmp_path: Path
) -> None:
    gguf = make_model(cairn, tmp_path)
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    out = tmp_path / "layout"
    cairn("export", "tiny:1", "-o", str(out), "-q")
    blob = out / "blobs/sha256" / digest
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    elsewhere = other_store(tmp_path, cairn)
    result = elsewhere("import", str(out), check=False)
    assert result.returncode == 1
    assert digest in result.stderr
    assert listed(elsewhere) == []
    assert f"sha256-{digest}" not in blob_files(tmp_path / "other")
    # the same in a stream
    bundle = tmp_path / "flipped.tar"
    subprocess.run(["tar", "-cf", str(bundle), "-C", str(out), "."], check=True)
    result = elsewhere("import", str(bundle), check=False)
    assert result.returncode == 1 and digest in result.stderr
    assert listed(elsewhere) == []
    assert f"sha256-{digest}" not in blob_files(tmp_path / "other")


def test_an_index_naming_a_missing_blob(cairn: Runner, tmp_path: Path) -> None:
    gguf = make_model(cairn, tmp_path)
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    out = tmp_path / "layout"
    cairn("export", "tiny:1", "-o", str(out), "-q")
    (out / "blobs/sha256" / digest).unlink()
    elsewhere = other_store(tmp_path, cairn)
    result = elsewhere("import", str(out), check=False)
    assert result.returncode == 1 and digest in result.stderr
    assert listed(elsewhere) == []


def _hostile_tar(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> None:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("oci-layout")
        layout = b'{"imageLayoutVersion": "1.0.0"}'
        info.size = len(layout)
        tar.addfile(info, io.BytesIO(layout))
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)


def _member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    "member",
    [
        _member("../escaped"),
        _member("blobs/../../escaped"),
        _member("/tmp/escaped-absolute"),
        _member("blobs/sha256/" + "a" * 64, tarfile.SYMTYPE, "/etc/passwd"),
        _member("blobs/sha256/" + "b" * 64, tarfile.LNKTYPE, "oci-layout"),
        _member("blobs/sha256/" + "c" * 64, tarfile.CHRTYPE),
        _member("fifo", tarfile.FIFOTYPE),
    ],
    ids=["dotdot", "inner-dotdot", "absolute", "symlink", "hardlink", "device", "fifo"],
)
def test_unsafe_tar_entries_are_refused(
    cairn: Runner, tmp_path: Path, member: tarfile.TarInfo
) -> None:
    bundle = tmp_path / "hostile.tar"
    _hostile_tar(bundle, member, b"pwned")
    work = tmp_path / "work"
    work.mkdir()
    result = cairn("import", str(bundle), check=False, cwd=work)
    assert result.returncode == 1
    assert "refused" in result.stderr
    assert list(work.iterdir()) == []
    assert not (tmp_path / "escaped").exists()
    assert not Path("/tmp/escaped-absolute").exists()


def test_a_tar_zst_that_is_not_zstd(cairn: Runner, tmp_path: Path) -> None:
    make_model(cairn, tmp_path)
    plain = tmp_path / "b.tar"
    cairn("export", "tiny:1", "-o", str(plain), "-q")
    fake = tmp_path / "fake.tar.zst"
    fake.write_bytes(plain.read_bytes())
    result = cairn("import", str(fake), check=False)
    assert result.returncode == 1 and "not a zstd stream" in result.stderr


def test_an_unknown_layout_version(cairn: Runner, tmp_path: Path) -> None:
    make_model(cairn, tmp_path)
    out = tmp_path / "layout"
    cairn("export", "tiny:1", "-o", str(out), "-q")
    (out / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    elsewhere = other_store(tmp_path, cairn)
    result = elsewhere("import", str(out), check=False)
    assert result.returncode == 1 and "2.0.0" in result.stderr
    bundle = tmp_path / "v2.tar"
    subprocess.run(["tar", "-cf", str(bundle), "-C", str(out), "oci-layout", "."], check=True)
    result = elsewhere("import", str(bundle), check=False)
    assert result.returncode == 1 and "2.0.0" in result.stderr
    assert blob_files(tmp_path / "other") == []  # stopped before any blob was taken


FULL_DISK = r"""
set -e
mount -t tmpfs -o size=2m tmpfs "$OUT"
cairn export tiny:1 -o "$OUT/b.tar" -q && echo "exported" || echo "failed: $?"
ls -A "$OUT"
"""


def test_export_to_a_full_disk_leaves_no_half_bundle(
    cairn: Runner, store: Path, tmp_path: Path
) -> None:
    make_model(cairn, tmp_path, size_mb=3)
    out = tmp_path / "small"
    out.mkdir()
    env = cairn_env(store, OUT=str(out))
    result = in_private_mount_namespace(FULL_DISK, env)
    assert result.returncode == 0, result.stderr
    assert "failed: 1" in result.stdout
    assert "no space left on device" in result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("failed")  # ls printed nothing


def test_ctrl_c_during_export_leaves_nothing_that_looks_whole(
    cairn: Runner, store: Path, tmp_path: Path
) -> None:
    gguf = write_gguf(
        tmp_path / "big.gguf", tensors=[("w", (1024, 256 * 96))], fill=os.urandom(1 << 20)
    )
    modelfile(tmp_path, f"FROM {gguf}\n", "BIG")
    cairn("create", "big:1", "-f", str(tmp_path / "BIG"))
    target = tmp_path / "big.tar.zst"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cairn", "export", "big:1", "-o", str(target), "--level", "19"],
        env=cairn_env(store),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def partials() -> list[Path]:
        return list(tmp_path.glob(".big.tar.zst.*.partial"))

    deadline = time.monotonic() + 120
    while not (partials() and partials()[0].stat().st_size > 0) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) in (0, 130)
    if proc.returncode == 130:  # interrupted: nothing left at all
        assert not target.exists() and not partials()
    else:  # finished before the signal landed: whole
        assert tar_names(target)[-1] == "index.json"


def test_a_bundle_made_by_gnu_tar_and_zstd(cairn: Runner, tmp_path: Path) -> None:
    """A layout directory packed by other tools: GNU tar's entries, two zstd frames."""
    make_model(cairn, tmp_path)
    out = tmp_path / "layout"
    cairn("export", "tiny:1", "-o", str(out), "-q")
    packed = tmp_path / "by-tar.tar.zst"
    subprocess.run(
        ["tar", "--format=gnu", "-I", "zstd -T0", "-cf", str(packed), "-C", str(out), "."],
        check=True,
    )
    frames = tmp_path / "frames.tar.zst"  # the same tar cut in two zstd frames, concatenated
    plain = subprocess.run(["zstd", "-dc", str(packed)], capture_output=True, check=True).stdout
    half = len(plain) // 2
    first = subprocess.run(["zstd", "-c"], input=plain[:half], capture_output=True, check=True)
    second = subprocess.run(["zstd", "-c"], input=plain[half:], capture_output=True, check=True)
    frames.write_bytes(first.stdout + second.stdout)
    for bundle in (packed, frames):
        elsewhere = other_store(tmp_path, cairn, f"other-{bundle.stem}")
        elsewhere("import", str(bundle), "-q")
        assert listed(elsewhere) == ["tiny:1"]


def test_ctrl_c_during_import_tags_nothing_and_leaves_no_temp_file(
    cairn: Runner, store: Path, tmp_path: Path
) -> None:
    gguf = write_gguf(
        tmp_path / "big.gguf", tensors=[("w", (1024, 256 * 160))], fill=os.urandom(1 << 20)
    )
    modelfile(tmp_path, f"FROM {gguf}\n", "BIG")
    cairn("create", "big:1", "-f", str(tmp_path / "BIG"))
    bundle = tmp_path / "big.tar"
    cairn("export", "big:1", "-o", str(bundle), "-q")
    inside = tmp_path / "inside"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cairn", "import", "-"],
        env=cairn_env(inside),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    with bundle.open("rb") as source:
        proc.stdin.write(source.read(bundle.stat().st_size // 2))  # then the sender stalls
        proc.stdin.flush()
        deadline = time.monotonic() + 120
        tmp = inside / ".cairn" / "tmp"
        while not (tmp.is_dir() and any(tmp.iterdir())):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
        proc.stdin.close()
    nothing = cairn("list", "--json", env={"CAIRN_MODELS": str(inside)}).stdout
    assert json.loads(nothing)["models"] == []
    assert list((inside / ".cairn" / "tmp").iterdir()) == []
    assert not list((inside / ".cairn").glob("import-*"))  # the staging folder went too


# -- found by the attack on import and export ------------------------------------------


def _layout_tar(path: Path, entries: list[tuple[str, bytes]]) -> None:
    """A tar of ``entries`` (name, bytes) after ``oci-layout``."""
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'), *entries]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _index(manifests: list[dict[str, object]]) -> bytes:
    return json.dumps({"schemaVersion": 2, "manifests": manifests}).encode()


def test_a_fifo_in_a_layout_directory_is_refused_not_waited_on(
    cairn: Runner, tmp_path: Path
) -> None:
    make_model(cairn, tmp_path)
    out = tmp_path / "layout"
    cairn("export", "tiny:1", "-o", str(out), "-q")
    (out / "index.json").unlink()
    os.mkfifo(out / "index.json")
    result = cairn("import", str(out), check=False)  # the runner's timeout is 120 s
    assert result.returncode == 1 and "not a regular file" in result.stderr


def test_a_manifest_listing_one_blob_with_two_sizes_is_refused(
    cairn: Runner, tmp_path: Path
) -> None:
    layer, config = b"GGUF" + bytes(100), b"{}"
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                "size": len(config),
            },
            "layers": [
                {"mediaType": "application/vnd.ollama.image.model", "digest": d, "size": n}
                for d, n in ((digest, 999999), (digest, len(layer)))
            ],
        }
    ).encode()
    entry = {
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
        "size": len(manifest),
        "annotations": {GGUF_DIGEST_FIELD: "example.com/evil/twosizes:1"},
    }
    bundle = tmp_path / "two-sizes.tar"
    blobs = [
        (f"blobs/sha256/{hashlib.sha256(b).hexdigest()}", b) for b in (layer, config, manifest)
    ]
    _layout_tar(bundle, [*blobs, ("index.json", _index([entry]))])
    result = cairn("import", str(bundle), check=False)
    assert result.returncode == 1 and "twice, with sizes 999999 and 104" in result.stderr
    assert json.loads(cairn("list", "--json").stdout)["models"] == []


def test_an_index_of_too_many_entries_is_refused(cairn: Runner, tmp_path: Path) -> None:
    entry = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 2}
    entries = [{**entry, "digest": "sha256:" + "0" * 64} for _ in range(1001)]
    bundle = tmp_path / "many.tar"
    _layout_tar(bundle, [("index.json", _index(entries))])
    result = cairn("import", str(bundle), check=False)
    assert result.returncode == 1 and "1001 entries" in result.stderr


@pytest.mark.parametrize(
    "bundle_bytes",
    [
        b"pax-unicode-size",
        b"negative-size",
        b"deep-json",
    ],
)
def test_hostile_headers_and_json_are_one_line_errors(
    cairn: Runner, tmp_path: Path, bundle_bytes: bytes
) -> None:
    bundle = tmp_path / "hostile.tar"
    if bundle_bytes == b"deep-json":
        _layout_tar(bundle, [("index.json", b"[" * 100000)])
    else:
        info = tarfile.TarInfo("blobs/sha256/" + "a" * 64)
        info.size = 4
        header = bytearray(info.tobuf(format=tarfile.USTAR_FORMAT))
        if bundle_bytes == b"negative-size":  # base-256: the top bit set, all ones
            header[124:136] = b"\xff" * 12
        else:
            pax = "17 size=\u00b2\u00b2\u00b2\n".encode()
            pax = f"{len(pax)} ".encode() + pax[3:]  # a record whose size is '²²²'
            pax_info = tarfile.TarInfo("pax")
            pax_info.type = tarfile.XHDTYPE
            pax_info.size = len(pax)
            header = bytearray(
                pax_info.tobuf(format=tarfile.USTAR_FORMAT)
                + pax
                + bytes(-len(pax) % 512)
                + bytes(header)
            )
        if bundle_bytes == b"negative-size":
            header[148:156] = b" " * 8  # the checksum, again, over the changed header
            checksum = sum(header[:512])
            header[148:156] = f"{checksum:06o}\0 ".encode()
        bundle.write_bytes(bytes(header) + b"data" + bytes(508) + bytes(1024))
    result = cairn("import", str(bundle), check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr


def test_a_killed_imports_staging_folder_goes_with_prune(
    cairn: Runner, store: Path, tmp_path: Path
) -> None:
    make_model(cairn, tmp_path)
    bundle = tmp_path / "b.tar"
    cairn("export", "tiny:1", "-o", str(bundle), "-q")
    inside = tmp_path / "inside"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cairn", "import", "-"],
        env=cairn_env(inside),
        stdin=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    proc.stdin.write(bundle.read_bytes()[:2048])  # oci-layout and the config: staged
    proc.stdin.flush()
    tmp = inside / ".cairn" / "tmp"
    deadline = time.monotonic() + 120
    while not list(tmp.glob("import-*.staging/*")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.kill()
    proc.wait(timeout=60)
    proc.stdin.close()
    assert list(tmp.glob("import-*.staging"))  # what SIGKILL leaves
    pruned = cairn("prune", env={"CAIRN_MODELS": str(inside)}).stdout
    assert "removed partial file" in pruned and ".staging" in pruned
    assert not list(tmp.glob("import-*.staging"))


def test_blobs_no_imported_model_uses_are_not_kept(cairn: Runner, tmp_path: Path) -> None:
    """A bundle's junk (a decompression bomb's huge blob) is removed once the import ends."""
    junk = bytes(8 << 20)
    digest = hashlib.sha256(junk).hexdigest()
    bundle = tmp_path / "junk.tar"
    _layout_tar(bundle, [(f"blobs/sha256/{digest}", junk), ("index.json", _index([]))])
    result = cairn("import", str(bundle), check=False)
    assert result.returncode == 1 and "no model to import" in result.stderr
    assert blob_files(tmp_path / "models") == []


def test_two_exports_to_one_bundle_never_mix(cairn: Runner, store: Path, tmp_path: Path) -> None:
    make_model(cairn, tmp_path)
    make_model(cairn, tmp_path, "other:2", size_mb=2)
    target = tmp_path / "shared.tar"
    planted = tmp_path / "precious.txt"
    planted.write_text("precious")
    (tmp_path / "shared.tar.partial").symlink_to(planted)  # the old, predictable name
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cairn", "export", name, "-o", str(target), "-q"],
            env=cairn_env(store),
        )
        for name in ("tiny:1", "other:2")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert planted.read_text() == "precious"
    elsewhere = other_store(tmp_path, cairn)
    elsewhere("import", str(target), "-q")  # whole: one export's bundle or the other's
    assert listed(elsewhere) in (["tiny:1"], ["other:2"])
    assert not list(tmp_path.glob(".shared.tar.*.partial"))


def test_export_into_a_layout_rewrites_a_wrong_blob_it_finds(cairn: Runner, tmp_path: Path) -> None:
    gguf = make_model(cairn, tmp_path)
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    out = tmp_path / "layout"
    cairn("export", "tiny:1", "-o", str(out), "-q")
    blob = out / "blobs/sha256" / digest
    data = bytearray(blob.read_bytes())
    data[0] ^= 1
    blob.write_bytes(bytes(data))  # the right size, the wrong bytes
    cairn("export", "tiny:1", "-o", str(out), "-q")
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == digest
    elsewhere = other_store(tmp_path, cairn)
    elsewhere("import", str(out), "-q")
    assert listed(elsewhere) == ["tiny:1"]
