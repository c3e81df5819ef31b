"""OCI repository names of any depth (``127.0.0.1:PORT/org/team/model:1``), as a user
drives them: the real CLI against a real docker-registry, skopeo, and ``cairn registry
serve``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx

from tests.conftest import Runner, modelfile, serving


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one line of a refused command: exit 1, nothing on stdout, no traceback."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def no_traceback(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


def listed(cairn: Runner) -> list[str]:
    """The NAME column of ``cairn list``."""
    out = no_traceback(cairn("list"))
    return [line.split()[0] for line in out.splitlines()[1:] if line.strip()]


def create_tiny(cairn: Runner, tmp_path: Path, gguf: Path, name: str = "tiny:1") -> None:
    modelfile(tmp_path, f"FROM {gguf}\nPARAMETER temperature 0.1\n", "Deep.Modelfile")
    no_traceback(cairn("create", name, "-f", str(tmp_path / "Deep.Modelfile")))


def skopeo(*args: str) -> str:
    done = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_deep_name_through_a_real_registry(
    cairn: Runner, store: Path, tmp_path: Path, registry: str, tiny_gguf: Path
) -> None:
    create_tiny(cairn, tmp_path, tiny_gguf)
    deep = f"{registry}/org/team/model:1"
    no_traceback(cairn("cp", "tiny:1", deep))
    assert deep in listed(cairn)
    tag_file = store / "manifests" / registry / "org" / "team" / "model" / "1"
    assert tag_file.is_file()  # nested folders, as distribution stores repositories

    no_traceback(cairn("push", deep, "--insecure", "-q"))
    # What a registry client sees: the manifest cairn stored, byte for byte, in the
    # repository org/team/model.
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{deep}")
    assert raw.encode() == tag_file.read_bytes()
    tags = json.loads(
        skopeo("list-tags", "--tls-verify=false", f"docker://{registry}/org/team/model")
    )
    assert tags["Tags"] == ["1"]
    catalog = httpx.get(f"http://{registry}/v2/_catalog", timeout=30).json()
    assert "org/team/model" in catalog["repositories"]

    # An OCI artifact of the same model: skopeo copies it out of the deep repository.
    oci = f"{registry}/org/team/model:oci"
    no_traceback(cairn("push", deep, oci, "--format", "oci", "--insecure", "-q"))
    copied = tmp_path / "copied"
    skopeo("copy", "--src-tls-verify=false", f"docker://{oci}", f"dir:{copied}")
    manifest = json.loads((copied / "manifest.json").read_text())
    weights = max(manifest["layers"], key=lambda layer: layer["size"])
    blob = copied / weights["digest"].partition(":")[2]
    assert blob.read_bytes() == tiny_gguf.read_bytes()
    remote_tags = no_traceback(cairn("tags", "--insecure", f"{registry}/org/team/model"))
    assert sorted(remote_tags.split()) == ["1", "oci"]

    # rm: the tag and every folder it leaves empty go; the rest of the store stays.
    no_traceback(cairn("rm", deep))
    assert deep not in listed(cairn)
    assert not (store / "manifests" / registry).exists()
    assert "tiny:1" in listed(cairn)

    # pull it back: list and show find it.
    no_traceback(cairn("pull", deep, "--insecure"))
    assert deep in listed(cairn)
    assert tag_file.is_file()
    shown = no_traceback(cairn("show", deep))
    assert "temperature" in shown
    assert json.loads(cairn("show", deep, "--json").stdout)["name"] == deep

    no_traceback(cairn("rm", deep))
    assert not (store / "manifests" / registry).exists()


def test_rm_keeps_folders_that_hold_other_names(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    create_tiny(cairn, tmp_path, tiny_gguf)
    names = [
        "example.com/org/team/model:1",
        "example.com/org/team/model:2",  # another tag of the same repository
        "example.com/org/team/model/sub:1",  # a deeper repository inside it
        "example.com/org/other:1",  # a sibling under org
    ]
    for name in names:
        no_traceback(cairn("cp", "tiny:1", name))
    assert set(names) <= set(listed(cairn))
    manifests = store / "manifests" / "example.com"

    no_traceback(cairn("rm", names[0]))
    assert (manifests / "org" / "team" / "model" / "2").is_file()
    no_traceback(cairn("rm", names[1]))
    # model/ holds the deeper repository sub/: it stays.
    assert (manifests / "org" / "team" / "model" / "sub" / "1").is_file()
    no_traceback(cairn("rm", names[2]))
    assert not (manifests / "org" / "team").exists()  # emptied up to org/, which holds other/
    assert (manifests / "org" / "other" / "1").is_file()
    no_traceback(cairn("rm", names[3]))
    assert not manifests.exists()
    assert listed(cairn) == ["tiny:1"]


def test_rm_never_follows_a_link_to_remove_folders(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    create_tiny(cairn, tmp_path, tiny_gguf)
    no_traceback(cairn("cp", "tiny:1", "example.com/org/team/model:1"))
    outside = tmp_path / "outside"
    (store / "manifests" / "example.com" / "org").rename(outside)
    (store / "manifests" / "example.com" / "org").symlink_to(outside)
    no_traceback(cairn("rm", "example.com/org/team/model:1"))
    assert not (outside / "team" / "model" / "1").exists()
    assert (outside / "team" / "model").is_dir()  # reached through a link: left alone
    assert (store / "manifests" / "example.com" / "org").is_symlink()


def test_a_tag_and_a_deeper_repository_of_the_same_path_are_refused(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    create_tiny(cairn, tmp_path, tiny_gguf)
    no_traceback(cairn("cp", "tiny:1", "example.com/org/team:model"))
    line = one_line_error(cairn("cp", "tiny:1", "example.com/org/team/model:1", check=False))
    assert "example.com/org/team:model" in line
    no_traceback(cairn("cp", "tiny:1", "example.com/a/b/c:1"))
    line = one_line_error(cairn("cp", "tiny:1", "example.com/a/b:c", check=False))
    assert "deeper repository" in line
    assert "example.com/a/b:c" not in listed(cairn)


def test_deep_names_on_ollama_registry_are_refused(
    cairn: Runner, tmp_path: Path, tiny_gguf: Path
) -> None:
    create_tiny(cairn, tmp_path, tiny_gguf)
    line = one_line_error(cairn("cp", "tiny:1", "a/b/c/d", check=False))
    assert "needs a registry host first" in line
    line = one_line_error(cairn("pull", "org/team/sub/model:1", check=False))
    assert "needs a registry host first" in line
    line = one_line_error(cairn("cp", "tiny:1", "registry.ollama.ai/a/b/c", check=False))
    assert "registry.ollama.ai takes only namespace/name" in line
    line = one_line_error(cairn("cp", "tiny:1", "ghcr.io/org/team/my_model_", check=False))
    assert "'my_model_'" in line
    assert listed(cairn) == ["tiny:1"]


def test_prune_and_completion_see_deep_names(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    create_tiny(cairn, tmp_path, tiny_gguf)
    deep = "example.com/org/team/model:1"
    no_traceback(cairn("cp", "tiny:1", deep))
    no_traceback(cairn("rm", "tiny:1"))  # the deep name still uses every blob
    no_traceback(cairn("prune", "--grace", "0"))
    assert "temperature" in no_traceback(cairn("show", deep))
    completed = cairn(
        env={"_CAIRN_COMPLETE": "bash_complete", "COMP_WORDS": "cairn show exa", "COMP_CWORD": "2"}
    )
    assert deep in completed.stdout


def test_export_import_round_trips_a_deep_name(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    create_tiny(cairn, tmp_path, tiny_gguf)
    deep = "example.com/org/team/model:1"
    no_traceback(cairn("cp", "tiny:1", deep))
    bundle = tmp_path / "deep.tar"
    no_traceback(cairn("export", deep, "-o", str(bundle), "-q"))
    other = tmp_path / "other-store"
    other.mkdir()
    env = {"CAIRN_MODELS": str(other)}
    no_traceback(cairn("import", str(bundle), "-q", env=env))
    out = no_traceback(cairn("list", env=env))
    assert deep in out
    assert (other / "manifests" / "example.com" / "org" / "team" / "model" / "1").read_bytes() == (
        store / "manifests" / "example.com" / "org" / "team" / "model" / "1"
    ).read_bytes()


def test_registry_serve_pushes_and_pulls_a_deep_name(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    create_tiny(cairn, tmp_path, tiny_gguf)
    served = tmp_path / "served"
    served.mkdir()
    at_server = {"CAIRN_MODELS": str(served)}
    no_traceback(cairn("create", "tiny:1", "-f", str(tmp_path / "Deep.Modelfile"), env=at_server))
    # The served store holds a deep name of the host registry.example.
    no_traceback(cairn("cp", "tiny:1", "registry.example/org/team/model:1", env=at_server))
    with serving(served) as host:
        # Its name on the server starts with that host, as three-part names do.
        pulled = f"{host}/registry.example/org/team/model:1"
        no_traceback(cairn("pull", pulled, "--insecure", "-q"))
        assert pulled in listed(cairn)
        catalog = httpx.get(f"http://{host}/v2/_catalog", timeout=30).json()
        assert "registry.example/org/team/model" in catalog["repositories"]

        pushed = f"{host}/registry.example/org/team/other:2"
        no_traceback(cairn("push", "tiny:1", pushed, "--insecure", "-q"))
        served_list = no_traceback(cairn("list", env=at_server))
        assert "registry.example/org/team/other:2" in served_list
        tags = json.loads(
            skopeo(
                "list-tags",
                "--tls-verify=false",
                f"docker://{host}/registry.example/org/team/other",
            )
        )
        assert tags["Tags"] == ["2"]
        raw = skopeo(
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"docker://{host}/registry.example/org/team/other:2",
        )
        stored = served / "manifests" / "registry.example" / "org" / "team" / "other" / "2"
        assert raw.encode() == stored.read_bytes()

        # A host the served store does not hold is not made up by a push.
        line = one_line_error(
            cairn("push", "tiny:1", f"{host}/nowhere/org/team/x:1", "--insecure", "-q", check=False)
        )
        assert "holds no models of 'nowhere'" in line
    assert not any(name.startswith("nowhere") for name in os.listdir(served / "manifests"))


def test_sync_copies_a_deep_repository(
    cairn: Runner, store: Path, tmp_path: Path, registry: str, tiny_gguf: Path
) -> None:
    create_tiny(cairn, tmp_path, tiny_gguf)
    deep = f"{registry}/org/team/model:1"
    no_traceback(cairn("push", "tiny:1", deep, "--insecure", "-q"))
    # Registry to registry, under a prefix: the repository keeps its depth.
    no_traceback(cairn("sync", deep, f"{registry}/copy", "--insecure", "--dest-insecure", "-q"))
    tags = json.loads(
        skopeo("list-tags", "--tls-verify=false", f"docker://{registry}/copy/org/team/model")
    )
    assert tags["Tags"] == ["1"]
    # Registry to a bundle, and the bundle into another store: the deep name comes back.
    bundle = tmp_path / "synced.tar"
    no_traceback(cairn("sync", deep, str(bundle), "--insecure", "-q"))
    other = tmp_path / "other-store"
    other.mkdir()
    no_traceback(cairn("import", str(bundle), "-q", env={"CAIRN_MODELS": str(other)}))
    assert deep in no_traceback(cairn("list", env={"CAIRN_MODELS": str(other)}))
