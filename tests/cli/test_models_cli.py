"""The model commands end to end, through the real CLI in a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import (
    GEMMA_SHA256,
    GEMMA_SIZE,
    GEMMA_TEMPLATE,
    Runner,
    cairn_env,
    in_private_mount_namespace,
    modelfile,
    run_at_once,
)
from tests.ggufmaker import write_gguf


def gemma_modelfile(directory: Path, gguf: Path) -> Path:
    return modelfile(
        directory,
        f'FROM {gguf}\nTEMPLATE """{GEMMA_TEMPLATE}"""\nPARAMETER stop <end_of_turn>\n'
        f'PARAMETER temperature 0\nLICENSE """Gemma Terms of Use"""\n',
    )


def listing(cairn: Runner) -> list[dict[str, object]]:
    models: list[dict[str, object]] = json.loads(cairn("list", "--json").stdout)["models"]
    return models


def store_files(store: Path) -> tuple[list[str], list[str]]:
    blobs = (
        sorted(p.name for p in (store / "blobs").iterdir()) if (store / "blobs").exists() else []
    )
    manifests = (
        sorted(
            str(p.relative_to(store / "manifests"))
            for p in (store / "manifests").rglob("*")
            if p.is_file()
        )
        if (store / "manifests").exists()
        else []
    )
    return blobs, manifests


def test_create_list_show_real_gemma(
    cairn: Runner, store: Path, tmp_path: Path, gemma_gguf: Path
) -> None:
    path = gemma_modelfile(tmp_path, gemma_gguf)
    result = cairn("create", "gemma3:270m", "-f", str(path))
    assert "success" in result.stderr

    blobs, manifests = store_files(store)
    assert f"sha256-{GEMMA_SHA256}" in blobs
    assert manifests == ["registry.ollama.ai/library/gemma3/270m"]
    assert (store / "blobs" / f"sha256-{GEMMA_SHA256}").stat().st_size == GEMMA_SIZE

    manifest_bytes = (store / "manifests/registry.ollama.ai/library/gemma3/270m").read_bytes()
    manifest = json.loads(manifest_bytes)
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    types = [layer["mediaType"] for layer in manifest["layers"]]
    assert types == [
        "application/vnd.ollama.image.model",
        "application/vnd.ollama.image.template",
        "application/vnd.ollama.image.params",
        "application/vnd.ollama.image.license",
    ]
    config_digest = manifest["config"]["digest"].split(":")[1]
    config = json.loads((store / "blobs" / f"sha256-{config_digest}").read_bytes())
    assert config["model_format"] == "gguf"
    assert config["model_family"] == "gemma3"
    assert config["model_families"] == ["gemma3"]
    assert config["model_type"] == "268.10M"
    assert config["file_type"] == "Q4_K_M"
    assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in manifest["layers"]]
    params_digest = manifest["layers"][2]["digest"].split(":")[1]
    params = json.loads((store / "blobs" / f"sha256-{params_digest}").read_bytes())
    assert params == {"stop": ["<end_of_turn>"], "temperature": 0.0}

    model_id = hashlib.sha256(manifest_bytes).hexdigest()[:12]
    table = cairn("list").stdout.splitlines()
    assert table[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert table[1].split()[:4] == ["gemma3:270m", model_id, "253", "MB"]
    [entry] = listing(cairn)
    assert entry["name"] == "gemma3:270m" and entry["id"] == model_id

    shown = cairn("show", "gemma3:270m").stdout
    for line in (
        "architecture        gemma3",
        "parameters          268.10M",
        "context length      32768",
        "quantization        Q4_K_M",
    ):
        assert line in shown
    assert '"<end_of_turn>"' in shown and "Gemma Terms of Use" in shown
    assert cairn("show", "gemma3:270m", "--template").stdout == GEMMA_TEMPLATE + "\n"
    assert cairn("show", "gemma3:270m", "--license").stdout == "Gemma Terms of Use\n"
    assert "stop" in cairn("show", "gemma3:270m", "--parameters").stdout
    details = json.loads(cairn("show", "gemma3:270m", "--json").stdout)
    assert details["details"]["family"] == "gemma3"
    assert details["model_info"]["gemma3.context_length"] == 32768
    assert '"<end_of_turn>"' in details["parameters"]  # Ollama's text: name, then the value

    # --modelfile gives a Modelfile that recreates the same model.
    generated = cairn("show", "gemma3:270m", "--modelfile").stdout
    assert f"FROM {store}/blobs/sha256-{GEMMA_SHA256}" in generated
    modelfile(tmp_path, generated, "Regenerated")
    cairn("create", "gemma3:again", "-f", str(tmp_path / "Regenerated"))
    again = json.loads((store / "manifests/registry.ollama.ai/library/gemma3/again").read_bytes())
    # the same model, but for the weights' title: FROM names a blob, not the file it came from
    assert manifest["layers"][0]["annotations"] == {
        "org.opencontainers.image.title": gemma_gguf.name
    }
    del manifest["layers"][0]["annotations"]
    assert again == manifest


def test_create_reads_modelfile_in_current_directory(
    cairn: Runner, tmp_path: Path, tiny_gguf: Path
) -> None:
    workdir = tmp_path / "project"
    workdir.mkdir()
    modelfile(workdir, "FROM ../tiny.gguf\nSYSTEM be brief\n")
    cairn("create", "tiny", cwd=workdir)
    assert cairn("show", "tiny", "--system").stdout == "be brief\n"


def test_create_from_existing_model_inherits_and_overrides(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    modelfile(
        tmp_path,
        f"FROM {tiny_gguf}\nSYSTEM one\nPARAMETER temperature 0.5\n"
        "PARAMETER top_k 3\nLICENSE MIT\n",
    )
    cairn("create", "base")
    modelfile(tmp_path, "FROM base\nSYSTEM two\nPARAMETER temperature 0.9\n", "Child")
    cairn("create", "me/child:v1", "-f", str(tmp_path / "Child"))
    details = json.loads(cairn("show", "me/child:v1", "--json").stdout)
    assert details["system"] == "two"
    assert details["parameters"].splitlines() == [f"{'temperature':<30} 0.9", f"{'top_k':<30} 3"]
    assert details["license"] == "MIT"
    base = json.loads((store / "manifests/registry.ollama.ai/library/base/latest").read_bytes())
    child = json.loads((store / "manifests/registry.ollama.ai/me/child/v1").read_bytes())
    assert base["layers"][0] == child["layers"][0]  # same weights blob, not a copy


def test_cp_makes_a_tag_without_copying_blobs(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    modelfile(tmp_path, f"FROM {tiny_gguf}\n")
    cairn("create", "tiny:1")
    before, _ = store_files(store)
    assert "copied" in cairn("cp", "tiny:1", "localhost:5000/lab/tiny:copy").stdout
    after, manifests = store_files(store)
    assert after == before
    assert manifests == ["localhost:5000/lab/tiny/copy", "registry.ollama.ai/library/tiny/1"]
    names = {m["name"]: m["id"] for m in listing(cairn)}
    assert names["tiny:1"] == names["localhost:5000/lab/tiny:copy"]


def test_rm_removes_only_unshared_blobs(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    modelfile(tmp_path, f"FROM {tiny_gguf}\nSYSTEM a\n")
    cairn("create", "one")
    modelfile(tmp_path, f"FROM {tiny_gguf}\nSYSTEM b\n")
    cairn("create", "two")
    weights = json.loads((store / "manifests/registry.ollama.ai/library/one/latest").read_bytes())[
        "layers"
    ][0]["digest"]
    blobs_before, _ = store_files(store)
    assert "deleted 'one:latest'" in cairn("rm", "one").stdout
    blobs_after, manifests = store_files(store)
    assert manifests == ["registry.ollama.ai/library/two/latest"]
    assert f"sha256-{weights.split(':')[1]}" in blobs_after  # still used by "two"
    assert len(blobs_after) == len(blobs_before) - 2  # one's system layer and config
    cairn("rm", "two")
    assert store_files(store) == ([], [])


def test_rm_of_missing_model_fails_and_removes_nothing(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    modelfile(tmp_path, f"FROM {tiny_gguf}\n")
    cairn("create", "keep")
    result = cairn("rm", "keep", "ghost", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: model 'ghost:latest' not found"
    assert [m["name"] for m in listing(cairn)] == ["keep:latest"]


def test_lookup_ignores_case(cairn: Runner, tmp_path: Path, tiny_gguf: Path) -> None:
    modelfile(tmp_path, f"FROM {tiny_gguf}\n")
    cairn("create", "Tiny:Latest")
    assert "architecture" in cairn("show", "tiny:latest").stdout
    cairn("create", "TINY:LATEST")  # the same tag, not a second one
    assert [m["name"] for m in listing(cairn)] == ["Tiny:Latest"]


def test_prune_removes_orphans_and_stale_partials(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    modelfile(tmp_path, f"FROM {tiny_gguf}\n")
    cairn("create", "tiny")
    orphan = store / "blobs" / ("sha256-" + hashlib.sha256(b"orphan").hexdigest())
    orphan.write_bytes(b"orphan")
    stale = store / ".cairn" / "tmp" / "dead.partial"
    stale.write_bytes(b"half a download")
    # A partial a live process holds is never touched.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, sys, time\n"
                "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)\n"
            ),
            str(store / ".cairn" / "tmp" / "live.partial"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        # The orphan was just written: --grace 0, or it would be kept for an hour.
        dry = json.loads(cairn("prune", "--dry-run", "--grace", "0", "--json").stdout)
        assert dry["blobs"] == ["sha256:" + hashlib.sha256(b"orphan").hexdigest()]
        assert dry["partials"] == [str(stale)]
        assert dry["in_use"] == [str(store / ".cairn" / "tmp" / "live.partial")]
        assert orphan.exists() and stale.exists()
        cairn("prune", "--grace", "0")
        assert not orphan.exists() and not stale.exists()
        assert (store / ".cairn" / "tmp" / "live.partial").exists()
        assert "architecture" in cairn("show", "tiny").stdout
    finally:
        holder.kill()
        holder.wait()


def test_verify_reports_corruption_and_show_notices(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    modelfile(tmp_path, f"FROM {tiny_gguf}\nSYSTEM hi\n")
    cairn("create", "tiny")
    assert "all intact" in cairn("verify").stdout
    weights = json.loads((store / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes())[
        "layers"
    ][0]["digest"]
    blob = store / "blobs" / f"sha256-{weights.split(':')[1]}"
    blob.chmod(0o644)
    with open(blob, "r+b") as f:
        f.seek(blob.stat().st_size - 10)
        f.write(b"XXXXXXXXXX")

    shown = cairn("show", "tiny", check=False)
    assert shown.returncode == 1
    assert shown.stderr.startswith(f"Error: blob {weights} is corrupt")

    result = cairn("verify", "tiny", check=False)
    assert result.returncode == 1
    assert f"corrupt blob {weights}" in result.stdout
    assert "run with --repair" in result.stderr
    report = json.loads(cairn("verify", "--json", check=False).stdout)
    assert report["corrupt"] == [weights]

    repaired = cairn("verify", "--repair", check=False)
    assert f"corrupt blob {weights} (removed)" in repaired.stdout
    assert not blob.exists()
    missing = cairn("verify", check=False)
    assert f"missing blob {weights} of tiny:latest" in missing.stdout
    # Creating it again mends the model.
    cairn("create", "tiny")
    assert "all intact" in cairn("verify").stdout


def test_show_of_model_with_missing_blob(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    modelfile(tmp_path, f"FROM {tiny_gguf}\n")
    cairn("create", "tiny")
    for blob in (store / "blobs").iterdir():
        blob.unlink()
    result = cairn("show", "tiny", check=False)
    assert result.returncode == 1
    assert "is incomplete" in result.stderr and "missing" in result.stderr


def test_store_filled_by_ollama_is_listed(cairn: Runner, store: Path) -> None:
    """Ollama's exact files: blobs named sha256-<hex>, manifests with a trailing newline."""
    gguf_bytes = write_gguf(store / "w.gguf").read_bytes()
    (store / "w.gguf").unlink()
    (store / "blobs").mkdir()
    digests = {}
    for name, data in (
        ("model", gguf_bytes),
        ("config", b'{"model_format":"gguf","model_family":"tiny"}'),
    ):
        digest = hashlib.sha256(data).hexdigest()
        (store / "blobs" / f"sha256-{digest}").write_bytes(data)
        digests[name] = (digest, len(data))
    manifest = (
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "digest": f"sha256:{digests['config'][0]}",
                    "size": digests["config"][1],
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.ollama.image.model",
                        "digest": f"sha256:{digests['model'][0]}",
                        "size": digests["model"][1],
                    }
                ],
            }
        ).encode()
        + b"\n"
    )
    path = store / "manifests/registry.ollama.ai/library/tiny/q4"
    path.parent.mkdir(parents=True)
    path.write_bytes(manifest)
    [entry] = listing(cairn)
    assert entry["name"] == "tiny:q4"
    assert entry["id"] == hashlib.sha256(manifest).hexdigest()[:12]
    assert "architecture" in cairn("show", "tiny:q4").stdout
    assert "all intact" in cairn("verify").stdout


def test_damaged_manifest_is_reported_not_fatal(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    modelfile(tmp_path, f"FROM {tiny_gguf}\n")
    cairn("create", "good")
    bad = store / "manifests/registry.ollama.ai/library/bad/latest"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    result = cairn("list")
    assert "good:latest" in result.stdout
    assert "warning: bad:latest" in result.stderr
    shown = cairn("show", "bad", check=False)
    assert shown.returncode == 1 and "damaged" in shown.stderr
    cairn("rm", "bad")
    assert not bad.exists()


# -- bad input ------------------------------------------------------------


def test_bad_input_gives_one_line_errors(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    cases = [
        (f"FROM {tiny_gguf}\nFOO bar\n", "unknown instruction 'FOO'"),
        (
            "FROM ./nowhere.gguf\n",  # as written, and where it led
            f"FROM ./nowhere.gguf ({tmp_path / 'nowhere.gguf'}): no such file, and no model",
        ),
        ("FROM ~nosuchuser-here/m.gguf\n", "FROM ~nosuchuser-here/m.gguf: no such user's home"),
        ("FROM " + "a" * 5000 + "\n", "File name too long"),
        (f"FROM {tiny_gguf}\nADAPTER ./none.gguf\n", "ADAPTER ./none.gguf ("),
        ("FROM ghost:1b\n", "no such file, and no model of that name"),
        (f"FROM {tmp_path}\n", "is a directory"),
    ]
    for text, message in cases:
        modelfile(tmp_path, text)
        result = cairn("create", "x", check=False)
        assert result.returncode == 1, text
        assert result.stderr.startswith("Error: ") and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert store_files(store) == ([], [])


def test_not_gguf_and_truncated_gguf_leave_nothing(
    cairn: Runner, store: Path, tmp_path: Path, gemma_gguf: Path
) -> None:
    text_file = tmp_path / "notes.gguf"
    text_file.write_text("just some text, not a model\n")
    cut = tmp_path / "cut.gguf"
    with open(gemma_gguf, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(GEMMA_SIZE - 4096))
    for path, message in ((text_file, "not a GGUF file"), (cut, "truncated GGUF")):
        modelfile(tmp_path, f"FROM {path}\n")
        result = cairn("create", "broken", check=False)
        assert result.returncode == 1
        assert message in result.stderr
    blobs, manifests = store_files(store)
    assert blobs == [] and manifests == []
    assert list((store / ".cairn" / "tmp").iterdir()) == []


def test_invalid_and_escaping_names(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    modelfile(tmp_path, f"FROM {tiny_gguf}\n")
    for name in (
        "../../etc",
        "/etc/passwd",
        "a/../../b",
        "..",
        "x:..",
        "a\\b",
        "%2e%2e",
        "a/b/c/d",
    ):
        result = cairn("create", name, check=False)
        assert result.returncode == 1, name
        assert result.stderr.startswith("Error: invalid model name"), result.stderr
        assert cairn("show", name, check=False).returncode == 1
    assert store_files(store) == ([], [])
    assert not (tmp_path / "etc").exists()


def test_debug_shows_traceback(cairn: Runner) -> None:
    plain = cairn("show", "ghost", check=False)
    assert "Traceback" not in plain.stderr
    debug = cairn("show", "ghost", check=False, env={"CAIRN_DEBUG": "1"})
    assert "Traceback" in debug.stderr and "ModelNotFoundError" in debug.stderr
    assert debug.returncode == 1


def test_two_creates_at_once(store: Path, tmp_path: Path, gemma_gguf: Path) -> None:
    path = gemma_modelfile(tmp_path, gemma_gguf)
    run_at_once(["create", "gemma3:270m", "-f", str(path)], cairn_env(store))
    blobs, manifests = store_files(store)
    assert manifests == ["registry.ollama.ai/library/gemma3/270m"]
    assert f"sha256-{GEMMA_SHA256}" in blobs
    assert list((store / ".cairn" / "tmp").iterdir()) == []
    result = subprocess.run(
        [sys.executable, "-m", "cairn", "verify"],
        env=cairn_env(store),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "all intact" in result.stdout


def test_sigkill_during_create_leaves_store_consistent(store: Path, tmp_path: Path) -> None:
    big = write_gguf(
        tmp_path / "big.gguf", tensors=[("w", (1024, 1024, 256))], sparse=True
    )  # 1 GiB
    path = modelfile(tmp_path, f"FROM {big}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cairn", "create", "big", "-f", str(path)],
        env=cairn_env(store),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tmp_dir = store / ".cairn" / "tmp"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        partials = list(tmp_dir.glob("*.partial")) if tmp_dir.exists() else []
        if partials and partials[0].stat().st_size > 64 << 20:
            break
        time.sleep(0.002)
    else:
        raise AssertionError("create never started writing")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    blobs, manifests = store_files(store)
    assert manifests == []  # the model did not appear half-made
    for name in blobs:  # whatever reached blobs/ is whole and correct
        data_hash = hashlib.sha256((store / "blobs" / name).read_bytes()).hexdigest()
        assert name == f"sha256-{data_hash}"
    assert list(tmp_dir.glob("*.partial"))  # the dead writer's temp file, for prune

    env = cairn_env(store)
    run = subprocess.run(
        [sys.executable, "-m", "cairn", "create", "big", "-f", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    pruned = subprocess.run(
        [sys.executable, "-m", "cairn", "prune", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(json.loads(pruned.stdout)["partials"]) == 1
    assert list(tmp_dir.iterdir()) == []
    check = subprocess.run(
        [sys.executable, "-m", "cairn", "verify"], env=env, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_version_help_and_completion(cairn: Runner) -> None:
    assert cairn("--version").stdout.startswith("cairn, version ")
    for command in ("create", "list", "show", "cp", "rm", "prune", "verify", "completion"):
        assert "Usage: cairn " + command in cairn(command, "--help").stdout
    script = cairn("completion", "bash").stdout
    assert "_CAIRN_COMPLETE" in script and "complete " in script


def test_completion_offers_model_names(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    modelfile(tmp_path, f"FROM {tiny_gguf}\n")
    cairn("create", "tiny:abc")
    result = cairn(
        "show",
        "ti",
        env={"_CAIRN_COMPLETE": "bash_complete", "COMP_WORDS": "cairn show ti", "COMP_CWORD": "2"},
    )
    assert "tiny:abc" in result.stdout


CREATE_ON_FULL_DISK = r"""
set -e
mount -t tmpfs -o size=2m tmpfs "$CAIRN_MODELS"
status=0
python -m cairn create big -f "$MODELFILE" 2>err.txt || status=$?
echo "status: $status"
echo "stderr: $(tail -n 1 err.txt)"
echo "blobs: $(ls "$CAIRN_MODELS/blobs" | wc -l)"
echo "tmp: $(ls "$CAIRN_MODELS/.cairn/tmp" | wc -l)"
echo "manifests: $(ls "$CAIRN_MODELS" | grep -c manifests || true)"
"""


def test_create_on_a_full_disk(store: Path, tmp_path: Path) -> None:
    """`cairn create` of a 4 MiB model into a store on a real 2 MiB tmpfs."""
    gguf = write_gguf(tmp_path / "four.gguf", tensors=[("w", (1024, 1024))], fill=b"\x01\x02")
    path = modelfile(tmp_path, f"FROM {gguf}\n")
    env = {**cairn_env(store), "MODELFILE": str(path)}
    result = in_private_mount_namespace(CREATE_ON_FULL_DISK, env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert lines["status"] == "1"
    assert lines["stderr"].startswith("Error: no space left on device")
    assert lines["blobs"] == "0"  # nothing half-written in blobs/
    assert lines["tmp"] == "0"
    assert lines["manifests"] == "0"
