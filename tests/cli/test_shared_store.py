"""A store shared with Ollama: cairn's collection never frees a blob an Ollama manifest needs.

The manifests here are written as Ollama writes them (server/images.go,
manifest/manifest.go: Go's encoding/json, so a model with no layers has
``"layers":null``), under names Ollama accepts and cairn's reference
parser does not; blobs are placed as Ollama's downloader places them
(a temp file renamed into ``blobs/``, the manifest written after).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

from cairn.manifests.manifest import Manifest
from tests.conftest import Runner, modelfile


def place_blob(store: Path, data: bytes) -> str:
    """A blob put where Ollama puts it: written beside, then renamed in. Returns its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs = store / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    partial = blobs / (digest.replace(":", "-") + "-partial")
    partial.write_bytes(data)
    os.rename(partial, blobs / digest.replace(":", "-"))
    return digest


def ollama_manifest(config: str, layers: list[str] | None) -> bytes:
    """Manifest bytes as Ollama's Go code marshals them (no spaces, ``null`` for no layers)."""

    def descriptor(media_type: str, digest: str) -> dict[str, object]:
        return {"mediaType": media_type, "digest": digest, "size": 1}

    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": descriptor("application/vnd.docker.container.image.v1+json", config),
            "layers": None
            if layers is None
            else [descriptor("application/vnd.ollama.image.model", d) for d in layers],
        },
        separators=(",", ":"),
    ).encode()


def write_manifest(store: Path, name: str, data: bytes) -> None:
    path = store / "manifests" / "registry.ollama.ai" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def blob_files(store: Path) -> set[str]:
    return {p.name for p in (store / "blobs").iterdir() if p.name.startswith("sha256-")}


def as_file(digest: str) -> str:
    return digest.replace(":", "-")


def test_layers_null_is_a_manifest_with_no_layers() -> None:
    manifest = Manifest.from_bytes(ollama_manifest("sha256:" + "a" * 64, None))
    assert manifest.layers == ()
    assert [str(d.digest) for d in manifest.blobs] == ["sha256:" + "a" * 64]


def test_rm_and_prune_keep_every_blob_ollamas_manifests_use(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    modelfile(tmp_path, f"FROM {tiny_gguf}\nSYSTEM mine\n")
    cairn("create", "tiny")
    ours = json.loads((store / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes())
    weights = ours["layers"][0]["digest"]  # shared with Ollama's models below
    theirs = {
        # names Ollama accepts and cairn's reference grammar does not
        "library/my_model_/latest": ollama_manifest(place_blob(store, b"c1"), [weights]),
        "_team/llama/latest": ollama_manifest(place_blob(store, b"c2"), [place_blob(store, b"l2")]),
        "library/a..b/latest": ollama_manifest(
            place_blob(store, b"c3"), [place_blob(store, b"l3")]
        ),
        # a model with no layers, as Go encodes it
        "library/empty/latest": ollama_manifest(place_blob(store, b"c4"), None),
    }
    for name, data in theirs.items():
        write_manifest(store, name, data)
    # and a manifest no parser reads, which still names a blob
    broken = place_blob(store, b"l5")
    write_manifest(store, "library/broken/latest", b'{"layers":[{"digest":"' + broken.encode())
    needed = {as_file(d) for d in {weights, broken}} | {
        as_file(descriptor["digest"])
        for data in theirs.values()
        for descriptor in [
            json.loads(data)["config"],
            *(json.loads(data)["layers"] or []),
        ]
    }

    removed = cairn("rm", "tiny", "--grace", "0")
    assert "deleted 'tiny:latest'" in removed.stdout
    assert "freed 2 blob(s)" in removed.stderr  # our config and system layer, nothing of theirs
    assert needed <= blob_files(store)
    pruned = json.loads(cairn("prune", "--grace", "0", "--json").stdout)
    assert pruned["blobs"] == []
    assert blob_files(store) == needed


def test_prune_during_an_ollama_pull_keeps_what_it_just_downloaded(
    cairn: Runner, store: Path
) -> None:
    # Ollama's pull: every blob renamed into place, the manifest written last.
    config = place_blob(store, b"config of a model being pulled")
    layer = place_blob(store, b"weights of a model being pulled")
    report = json.loads(cairn("prune", "--json").stdout)  # between the blobs and the manifest
    assert report["blobs"] == []
    assert sorted(report["young"]) == sorted([config, layer])
    said = cairn("prune").stdout
    assert (
        "kept 2 unused blob(s) younger than the grace period (--grace 0 removes them too)" in said
    )
    write_manifest(store, "library/pulled/latest", ollama_manifest(config, [layer]))
    assert {as_file(config), as_file(layer)} <= blob_files(store)
    assert json.loads(cairn("prune", "--grace", "0", "--json").stdout)["blobs"] == []


def test_an_orphan_goes_once_older_than_the_grace(cairn: Runner, store: Path) -> None:
    orphan = place_blob(store, b"nobody's")
    assert json.loads(cairn("prune", "--grace", "2s", "--json").stdout)["young"] == [orphan]
    time.sleep(2.1)
    assert json.loads(cairn("prune", "--grace", "2s", "--json").stdout)["blobs"] == [orphan]
    assert as_file(orphan) not in blob_files(store)


def test_rm_keeps_a_blob_placed_again_after_the_model_was_saved(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    modelfile(tmp_path, f"FROM {tiny_gguf}\nSYSTEM only mine\n")
    cairn("create", "tiny")
    ours = json.loads((store / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes())
    time.sleep(0.01)
    # Another tool downloads the same weights again and renames them into place; its
    # manifest is not written yet.
    weights = ours["layers"][0]["digest"]
    path = store / "blobs" / as_file(weights)
    data = path.read_bytes()
    path.chmod(0o644)
    place_blob(store, data)
    removed = cairn("rm", "tiny")
    assert "freed 2 blob(s)" in removed.stderr  # the config and the system layer
    assert (
        "kept 1 unused blob(s) that changed within the grace period;"
        " 'cairn prune' removes them later"
    ) in removed.stderr
    assert path.exists()


def test_rm_right_after_create_frees_the_space(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    # A model's own blobs are older than its manifest: the grace does not keep them.
    modelfile(tmp_path, f"FROM {tiny_gguf}\n")
    cairn("create", "tiny")
    assert "freed 2 blob(s)" in cairn("rm", "tiny").stderr
    assert blob_files(store) == set()


def test_a_grace_that_is_not_a_duration_is_a_usage_error(cairn: Runner) -> None:
    result = cairn("prune", "--grace", "soon", check=False)
    assert result.returncode == 2
    assert "'soon' is not a duration (like 90s, 30m, 1h or 0)" in result.stderr


def test_names_only_ollama_accepts_are_listed_shown_and_removed(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    modelfile(tmp_path, f"FROM {tiny_gguf}\n")
    cairn("create", "tiny")
    ours = (store / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes()
    for name in ("library/my_model_/latest", "_team/llama/latest", "library/a..b/latest"):
        write_manifest(store, name, ours)
    names = {m["name"] for m in json.loads(cairn("list", "--json").stdout)["models"]}
    assert names == {"tiny:latest", "my_model_:latest", "_team/llama:latest", "a..b:latest"}
    assert "architecture" in cairn("show", "_team/llama").stdout
    assert "deleted 'a..b:latest'" in cairn("rm", "a..b").stdout


def test_names_ollama_would_skip_are_not_written(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    modelfile(tmp_path, f"FROM {tiny_gguf}\n")
    cairn("create", "tiny")
    dotted = cairn("cp", "tiny", "quay.io/my.team/tiny:v1", check=False)
    assert dotted.returncode == 1
    assert dotted.stderr.strip() == (
        "Error: cannot store quay.io/my.team/tiny:v1: Ollama, which shares this store's"
        " layout, skips a namespace with a '.' in it ('my.team')"
    )
    long_tag = cairn("create", "tiny:" + "v" * 81, check=False)
    assert long_tag.returncode == 1
    assert "skips a tag longer than 80 characters" in long_tag.stderr
    cairn("create", "tiny:" + "v" * 80)
    assert not (store / "manifests/quay.io").exists()


def test_a_name_only_ollama_accepts_is_not_pushed(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    modelfile(tmp_path, f"FROM {tiny_gguf}\n")
    cairn("create", "my_model_")
    # Refused before any connection: nothing listens on port 9.
    pushed = cairn("push", "my_model_", "127.0.0.1:9/library/my_model_", "--insecure", check=False)
    assert pushed.returncode == 1
    assert "cannot be pushed: an OCI registry takes names of letters and digits" in pushed.stderr


# Found by attacking the collection (each failed before its fix): what a store may hold
# that the byte scan alone missed, and what stopped it too late or not at all.


def model_with_blobs(store: Path, name: str, tag: str = "latest") -> tuple[str, str]:
    config, layer = (
        place_blob(store, name.encode() + b" config"),
        place_blob(store, b"w " + name.encode()),
    )
    write_manifest(store, f"library/{name}/{tag}", ollama_manifest(config, [layer]))
    return config, layer


def test_linked_manifests_are_followed(cairn: Runner, store: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config, layer = place_blob(store, b"c"), place_blob(store, b"l")
    (elsewhere / "latest").write_bytes(ollama_manifest(config, [layer]))
    (store / "manifests/registry.ollama.ai/library/linked").mkdir(parents=True)
    os.symlink(elsewhere / "latest", store / "manifests/registry.ollama.ai/library/linked/latest")
    # and a whole host folder that is a link
    other = tmp_path / "other-host"
    (other / "me" / "m").mkdir(parents=True)
    c2, l2 = place_blob(store, b"c2"), place_blob(store, b"l2")
    (other / "me" / "m" / "v1").write_bytes(ollama_manifest(c2, [l2]))
    os.symlink(other, store / "manifests" / "example.com")
    os.symlink(store / "manifests", store / "manifests" / "loop")  # a loop is walked once
    assert json.loads(cairn("prune", "--grace", "0", "--json").stdout)["blobs"] == []
    assert {as_file(d) for d in (config, layer, c2, l2)} <= blob_files(store)


def test_a_manifests_folder_that_is_not_one_stops_the_collection(
    cairn: Runner, store: Path, tmp_path: Path
) -> None:
    config, layer = model_with_blobs(store, "kept")
    os.rename(store / "manifests", tmp_path / "away")
    os.symlink(tmp_path / "unmounted", store / "manifests")  # a drive not mounted
    dangling = cairn("prune", "--grace", "0", check=False)
    assert dangling.returncode == 1
    assert dangling.stderr.startswith("Error: ") and "is a link to nothing" in dangling.stderr
    os.unlink(store / "manifests")
    (store / "manifests").write_text("not a folder")
    plain = cairn("prune", "--grace", "0", check=False)
    assert plain.returncode == 1 and "is not a folder" in plain.stderr
    assert {as_file(config), as_file(layer)} <= blob_files(store)


def test_escaped_and_utf16_manifests_keep_their_blobs(cairn: Runner, store: Path) -> None:
    # Pull stores a registry's bytes as sent; JSON may escape any character.
    config, layer = place_blob(store, b"esc c"), place_blob(store, b"esc l")
    escaped = ollama_manifest(config, [layer]).replace(b"sha256:", b"sha256\\u003a")
    write_manifest(store, "library/escaped/latest", escaped)
    c16, l16 = place_blob(store, b"utf16 c"), place_blob(store, b"utf16 l")
    write_manifest(
        store, "library/wide/latest", ollama_manifest(c16, [l16]).decode().encode("utf-16")
    )
    assert json.loads(cairn("prune", "--grace", "0", "--json").stdout)["blobs"] == []
    assert {as_file(d) for d in (config, layer, c16, l16)} <= blob_files(store)


def test_a_manifest_being_written_stops_the_collection(cairn: Runner, store: Path) -> None:
    # Ollama's WriteManifest truncates the file, then writes it.
    config, layer = model_with_blobs(store, "rewritten")
    (store / "manifests/registry.ollama.ai/library/rewritten/latest").write_bytes(b"")
    result = cairn("prune", check=False)
    assert result.returncode == 1
    assert "is empty: a manifest being written?" in result.stderr
    assert {as_file(config), as_file(layer)} <= blob_files(store)


def test_rm_stops_before_removing_anything_when_a_manifest_cannot_be_read(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    modelfile(tmp_path, f"FROM {tiny_gguf}\n")
    cairn("create", "tiny")
    (store / "manifests/registry.ollama.ai/library/rewritten").mkdir(parents=True)
    (store / "manifests/registry.ollama.ai/library/rewritten/latest").write_bytes(b"")
    result = cairn("rm", "tiny", check=False)
    assert result.returncode == 1 and "(no blob was removed)" in result.stderr
    assert "tiny:latest" in {
        m["name"] for m in json.loads(cairn("list", "--json").stdout)["models"]
    }


def test_a_manifest_dated_in_the_future_does_not_void_the_grace(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    modelfile(tmp_path, f"FROM {tiny_gguf}\nSYSTEM s\n")
    cairn("create", "tiny")
    tag = store / "manifests/registry.ollama.ai/library/tiny/latest"
    weights = json.loads(tag.read_bytes())["layers"][0]["digest"]
    future = time.time() + 7200
    os.utime(tag, (future, future))  # clock skew, a restored backup
    path = store / "blobs" / as_file(weights)
    data = path.read_bytes()
    place_blob(store, data)  # placed again just now by someone else
    # With the manifest's date unusable, every young blob of the model is kept.
    assert "kept 3 unused blob(s)" in cairn("rm", "tiny").stderr
    assert path.exists()


def test_odd_things_in_blobs_are_not_tracebacks(cairn: Runner, store: Path) -> None:
    (store / "blobs" / ("sha256-" + "c" * 64)).mkdir(parents=True)  # a folder named like a blob
    future = place_blob(store, b"from the future")
    when = time.time() + 10 * 365 * 86400
    os.utime(store / "blobs" / as_file(future), (when, when))
    report = cairn("prune", "--json")
    assert report.returncode == 0 and json.loads(report.stdout)["young"] == [future]
    assert json.loads(cairn("prune", "--grace", "0", "--json").stdout)["blobs"] == [future]
    assert (store / "blobs" / ("sha256-" + "c" * 64)).is_dir()  # not a blob: left alone


# What cairn writes, Ollama reads: create refuses what Ollama's loader would refuse.


def test_create_refuses_a_template_ollama_cannot_parse(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    for template, said in [
        ("{{ .Prompt }", "TEMPLATE: unclosed action: '{{ .Prompt }'"),
        ("{{ shout .Prompt }}", "TEMPLATE: function 'shout' not defined in {{ shout .Prompt }}"),
    ]:
        modelfile(tmp_path, f'FROM {tiny_gguf}\nTEMPLATE """{template}"""\n')
        result = cairn("create", "bad", check=False)
        assert result.returncode == 1
        assert result.stderr == f"Error: {said} (Ollama would refuse this model)\n"
    assert not (store / "manifests").exists() or not any((store / "manifests").rglob("bad"))
    # Functions Go itself defines are Ollama's too, even where cairn's engine lacks them.
    modelfile(tmp_path, f'FROM {tiny_gguf}\nTEMPLATE """{{{{ html .Prompt }}}}"""\n')
    cairn("create", "escaped")


def test_create_refuses_a_parameter_ollama_does_not_know(
    cairn: Runner, tmp_path: Path, tiny_gguf: Path
) -> None:
    modelfile(tmp_path, f"FROM {tiny_gguf}\nPARAMETER numa true\n")
    result = cairn("create", "bad", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: line 2: unknown parameter 'numa'"


# What Ollama writes, cairn reads: its other layers and config fields.


def layer(store: Path, media: str, data: bytes, **extra: str) -> dict[str, object]:
    digest = place_blob(store, data)
    return {
        "mediaType": f"application/vnd.ollama.image.{media}",
        "digest": digest,
        "size": len(data),
        **extra,
    }


def ollama_model(
    store: Path, name: str, config: Mapping[str, object], layers: list[dict[str, object]]
) -> None:
    config_bytes = json.dumps(config).encode()
    body = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": place_blob(store, config_bytes),
            "size": len(config_bytes),
        },
        "layers": layers or None,
    }
    write_manifest(
        store, f"library/{name}/latest", json.dumps(body, separators=(",", ":")).encode()
    )


def test_ollamas_other_layers_and_config_are_shown_and_inherited(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    config = {
        "model_format": "gguf",
        "model_family": "gemma3",
        "renderer": "gemma3",
        "parser": "gemma3",
        "requires": "0.12.0",
        "capabilities": ["completion", "vision"],
    }
    ollama_model(
        store,
        "rich",
        config,
        [
            layer(store, "model", tiny_gguf.read_bytes()),
            layer(store, "prompt", b"{{ .Prompt }} (old style)"),
            layer(store, "draft", b"draft weights"),
            layer(store, "tensor", b"tensor bytes", name="blk.0.attn_q.weight"),
            layer(store, "json", b'{"tokenizer": true}'),
            layer(store, "embed", b"embed"),
        ],
    )
    shown = cairn("show", "rich").stdout
    for line in ("renderer", "parser", "requires", "0.12.0", "  Capabilities\n    completion\n"):
        assert line in shown
    assert "tensor    blk.0.attn_q.weight" in shown and "draft" in shown and "embed" in shown
    assert cairn("show", "rich", "--template").stdout.strip() == "{{ .Prompt }} (old style)"
    as_json = json.loads(cairn("show", "rich", "--json").stdout)
    assert as_json["capabilities"] == ["completion", "vision"] and as_json["renderer"] == "gemma3"
    assert {"name": "blk.0.attn_q.weight"}.items() <= as_json["layers"][1].items()

    modelfile(tmp_path, "FROM rich\nSYSTEM derived\n")
    cairn("create", "derived")
    manifest = json.loads(
        (store / "manifests/registry.ollama.ai/library/derived/latest").read_bytes()
    )
    kinds = [item["mediaType"].rpartition(".")[2] for item in manifest["layers"]]
    assert kinds == ["model", "draft", "tensor", "json", "embed", "prompt", "system"]
    assert manifest["layers"][2]["name"] == "blk.0.attn_q.weight"
    config_blob = store / "blobs" / as_file(manifest["config"]["digest"])
    inherited = json.loads(config_blob.read_bytes())
    assert {k: inherited[k] for k in ("renderer", "parser", "requires", "capabilities")} == {
        k: config[k] for k in ("renderer", "parser", "requires", "capabilities")
    }


def test_a_model_cairn_cannot_run_says_why(cairn: Runner, store: Path) -> None:
    ollama_model(
        store,
        "cloud",
        {"remote_host": "https://ollama.com:443", "remote_model": "gpt-oss:120b"},
        [],
    )
    result = cairn("run", "cloud", "hi", check=False)
    assert result.returncode == 1
    assert result.stderr == (
        "Error: cloud is a remote model (gpt-oss:120b@https://ollama.com:443): Ollama forwards"
        " it to that host; cairn runs local weights only\n"
    )
    assert "gpt-oss:120b@https://ollama.com:443" in cairn("show", "cloud").stdout
    ollama_model(
        store,
        "mlx",
        {"model_format": "safetensors"},
        [layer(store, "tensor", b"t%d" % i, name=f"w{i}") for i in range(3)],
    )
    result = cairn("run", "mlx", "hi", check=False)
    assert result.returncode == 1
    assert result.stderr == (
        "Error: mlx's weights are 3 tensor layers (safetensors, for Ollama's own engine);"
        " cairn's runtimes run GGUF\n"
    )
