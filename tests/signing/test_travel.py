"""Signatures travel with their model, and the trust policy holds on pull.

A push sends a model's signatures after its manifest: through the referrers API where
the registry has it (``cairn registry serve``), else as the OCI tag fallback
(``sha256-<hex>``, an index of referrers), as on docker-registry 2.8. A pull fetches
them; under a ``signedBy`` policy it checks them before the model is tagged.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import Runner, cairn_env, serving
from tests.server.conftest import Serve
from tests.signing.test_signing import (
    _certificate,
    _pem,
    create,
    key_pair,
    model_dir,
    pem_private,
    run_model_signing,
)

BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"


def elsewhere(tmp_path: Path, policy: object | None = None) -> Runner:
    """A second, empty store with its own home, and its trust policy when given."""
    store = tmp_path / "elsewhere" / "models"
    store.mkdir(parents=True, exist_ok=True)
    home = store.parent / "cairn-home"
    home.mkdir(exist_ok=True)
    if policy is not None:
        (home / "policy.json").write_text(json.dumps(policy))

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "cairn", *args],
            env=cairn_env(store),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if check:
            assert done.returncode == 0, done.stderr
        return done

    return run


def signed_by(public: Path) -> dict[str, object]:
    return {"default": [{"type": "signedBy", "keyPath": str(public)}]}


def subject_of(store: Path, name: str) -> str:
    """The digest of the stored model's manifest: the signature's subject."""
    path = store / "manifests" / "registry.ollama.ai" / "library" / name / "latest"
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def signed(cairn: Runner, tmp_path: Path) -> tuple[Path, Path]:
    """The model ``tiny``, signed by the team's key; the key pair."""
    private, public = key_pair(tmp_path, "team", ec.SECP256R1())
    create(cairn, tmp_path, "tiny", model_dir(tmp_path / "tiny"))
    cairn("sign", "tiny", "--key", str(private))
    return private, public


def test_through_the_tag_fallback_of_docker_registry(
    cairn: Runner, tmp_path: Path, store: Path, registry: str, signed: tuple[Path, Path]
) -> None:
    _, public = signed
    pushed = cairn("push", "--insecure", "tiny", f"{registry}/lab/tiny:1")
    assert "pushing 1 signature(s)" in pushed.stderr + pushed.stdout
    subject = subject_of(store, "tiny")
    # docker-registry 2.8 has no referrers API: the fallback tag lists the signature.
    api = httpx.get(f"http://{registry}/v2/lab/tiny/referrers/{subject}", timeout=60)
    assert api.status_code == 404
    index = httpx.get(
        f"http://{registry}/v2/lab/tiny/manifests/sha256-{subject.removeprefix('sha256:')}",
        headers={"Accept": "application/vnd.oci.image.index.v1+json"},
        timeout=60,
    ).json()
    assert [m["artifactType"] for m in index["manifests"]] == [BUNDLE_TYPE]

    there = elsewhere(tmp_path, signed_by(public))
    there("pull", "--insecure", f"{registry}/lab/tiny:1")
    checked = there("verify", f"{registry}/lab/tiny:1", "--key", str(public))
    assert "1 files verified" in checked.stdout or "2 files verified" in checked.stdout


def test_through_the_referrers_api_of_cairns_registry(
    cairn: Runner, tmp_path: Path, signed: tuple[Path, Path]
) -> None:
    _, public = signed
    with serving(tmp_path / "served") as host:
        cairn("push", "--insecure", "tiny", f"{host}/lab/tiny:1")
        there = elsewhere(tmp_path, signed_by(public))
        there("pull", "--insecure", f"{host}/lab/tiny:1")
        checked = there("verify", f"{host}/lab/tiny:1", "--key", str(public)).stdout
        assert "signature sha256:" in checked
        # show lists it (as said, not verified), and --json gives it to scripts
        shown = there("show", f"{host}/lab/tiny:1").stdout
        section = shown.split("  Signatures\n", 1)[1]
        assert section.startswith("    sha256:") and " key " in section
        (listed,) = json.loads(there("show", "--json", f"{host}/lab/tiny:1").stdout)["signatures"]
        assert listed["digest"].startswith("sha256:") and len(listed["key_hint"]) == 64
        assert listed["digest"][:19] in section
        # no fallback tag was made: the registry has the API
        tags = httpx.get(f"http://{host}/v2/lab/tiny/tags/list", timeout=60).json()["tags"]
        assert tags == ["1"]


def test_a_model_signed_by_another_key_is_not_tagged(
    cairn: Runner, tmp_path: Path, registry: str, signed: tuple[Path, Path]
) -> None:
    cairn("push", "--insecure", "tiny", f"{registry}/lab/tiny:1")
    _, stranger = key_pair(tmp_path, "stranger", ec.SECP256R1())
    there = elsewhere(tmp_path, signed_by(stranger))
    refused = there("pull", "--insecure", f"{registry}/lab/tiny:1", check=False)
    assert refused.returncode == 1
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("Error:")]
    assert "the trust policy refuses" in line and f"signedBy {stranger}" in line, line
    assert "another key" in line
    assert "lab/tiny" not in there("list").stdout


def test_an_unsigned_model_is_refused_under_signed_by_and_taken_under_accept(
    cairn: Runner, tmp_path: Path, registry: str
) -> None:
    _, public = key_pair(tmp_path, "team", ec.SECP256R1())
    create(cairn, tmp_path, "plain", model_dir(tmp_path / "plain"))
    cairn("push", "--insecure", "plain", f"{registry}/lab/plain:1")
    strict = elsewhere(
        tmp_path,
        {
            "default": [{"type": "accept"}],
            "registries": {f"{registry}/lab": [{"type": "signedBy", "keyPath": str(public)}]},
        },
    )
    refused = strict("pull", "--insecure", f"{registry}/lab/plain:1", check=False)
    assert refused.returncode == 1 and "the model has no signature" in refused.stderr
    assert "lab/plain" not in strict("list").stdout
    # a scope elsewhere accepts it
    cairn("push", "--insecure", "plain", f"{registry}/open/plain:1")
    strict("pull", "--insecure", f"{registry}/open/plain:1")


def test_a_listed_signature_whose_blob_is_gone(
    cairn: Runner, tmp_path: Path, store: Path, registry: str, signed: tuple[Path, Path]
) -> None:
    """Fails under signedBy; under accept the model is taken with a warning."""
    _, public = signed
    cairn("push", "--insecure", "tiny", f"{registry}/lab/tiny:1")
    subject = subject_of(store, "tiny")
    index = httpx.get(
        f"http://{registry}/v2/lab/tiny/manifests/sha256-{subject.removeprefix('sha256:')}",
        headers={"Accept": "application/vnd.oci.image.index.v1+json"},
        timeout=60,
    ).json()
    referrer = httpx.get(
        f"http://{registry}/v2/lab/tiny/manifests/{index['manifests'][0]['digest']}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=60,
    ).json()
    bundle = referrer["layers"][0]["digest"]
    gone = httpx.delete(f"http://{registry}/v2/lab/tiny/blobs/{bundle}", timeout=60)
    assert gone.status_code == 202

    strict = elsewhere(tmp_path, signed_by(public))
    refused = strict("pull", "--insecure", f"{registry}/lab/tiny:1", check=False)
    assert refused.returncode == 1
    assert "cannot fetch the signatures of" in refused.stderr
    assert "lab/tiny" not in strict("list").stdout

    lenient = elsewhere(tmp_path / "2", {"default": [{"type": "accept"}]})
    taken = lenient("pull", "--insecure", f"{registry}/lab/tiny:1")
    assert "warning: a signature of" in taken.stderr + taken.stdout
    assert "lab/tiny:1" in lenient("list").stdout


def test_run_and_serve_refuse_a_model_the_policy_refuses(
    cairn: Runner, tmp_path: Path, store: Path, serve: Serve
) -> None:
    """The policy holds where a model is loaded, not only where it is pulled."""
    private, public = key_pair(tmp_path, "team", ec.SECP256R1())
    url = serve()  # creates gemma3:270m, unsigned
    home = store.parent / "cairn-home"
    home.mkdir(exist_ok=True)
    (home / "policy.json").write_text(json.dumps(signed_by(public)))
    ask = {"model": "gemma3:270m", "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
    refused = httpx.post(f"{url}/api/generate", json=ask, timeout=120)
    assert refused.status_code >= 400
    assert "the trust policy refuses gemma3:270m" in refused.json()["error"]
    ran = cairn("run", "gemma3:270m", "Hi", "-p", "num_predict=2", check=False)
    assert ran.returncode == 1 and "the trust policy refuses gemma3:270m" in ran.stderr
    assert "the model has no signature" in ran.stderr

    cairn("sign", "gemma3:270m", "--key", str(private))
    answered = httpx.post(f"{url}/api/generate", json=ask, timeout=300)
    assert answered.status_code == 200, answered.text
    assert answered.json()["done"] is True
    assert cairn("run", "gemma3:270m", "Hi", "-p", "num_predict=2").returncode == 0


def test_export_then_import_carries_the_signature_and_import_holds_the_policy(
    cairn: Runner, tmp_path: Path, signed: tuple[Path, Path]
) -> None:
    _, public = signed
    bundle = tmp_path / "tiny.tar.zst"
    cairn("export", "tiny", "-o", str(bundle))
    taken = elsewhere(tmp_path / "a", signed_by(public))
    taken("import", str(bundle))
    assert "signature sha256:" in taken("verify", "tiny", "--key", str(public)).stdout

    _, stranger = key_pair(tmp_path, "stranger", ec.SECP256R1())
    refusing = elsewhere(tmp_path / "b", signed_by(stranger))
    refused = refusing("import", str(bundle), check=False)
    assert refused.returncode == 1
    assert "the trust policy refuses tiny:latest" in refused.stderr, refused.stderr
    assert "tiny" not in refusing("list").stdout


def test_sync_between_registries_without_the_api_carries_the_signature(
    cairn: Runner, tmp_path: Path, registry: str, signed: tuple[Path, Path]
) -> None:
    _, public = signed
    cairn("push", "--insecure", "tiny", f"{registry}/lab/tiny:1")
    with serving(tmp_path / "between") as middle:
        # docker-registry (fallback tag) -> cairn's registry (the API)
        cairn("sync", f"{registry}/lab/tiny:1", middle, "--insecure", "--dest-insecure")
        there = elsewhere(tmp_path / "a", signed_by(public))
        there("pull", "--insecure", f"{middle}/lab/tiny:1")
    # docker-registry -> another path of docker-registry, naming only the model's tag: the
    # destination's fallback tag is written too
    cairn("sync", f"{registry}/lab/tiny:1", f"{registry}/copy", "--insecure", "--dest-insecure")
    again = elsewhere(tmp_path / "b", signed_by(public))
    again("pull", "--insecure", f"{registry}/copy/lab/tiny:1")
    assert (
        "signature sha256:"
        in again("verify", f"{registry}/copy/lab/tiny:1", "--key", str(public)).stdout
    )


def test_oras_pulls_what_model_signing_verifies(
    cairn: Runner, tmp_path: Path, registry: str, signed: tuple[Path, Path]
) -> None:
    """Signed by cairn, pushed with --format oci, pulled by oras-py (files by title):
    the reference implementation verifies the files with cairn's bundle."""
    import oras.client

    private, public = signed
    cairn("sign", "tiny", "--key", str(private), "-o", str(tmp_path / "tiny.sig"))
    cairn("push", "--insecure", "--format", "oci", "tiny", f"{registry}/oci/tiny:1")
    client = oras.client.OrasClient(hostname=registry, insecure=True)
    out = tmp_path / "oras-out"
    client.pull(target=f"{registry}/oci/tiny:1", outdir=str(out))
    assert sorted(p.name for p in out.iterdir()) == ["template.txt", "tiny.gguf"]
    checked = run_model_signing(
        "verify",
        "key",
        str(out),
        "--public_key",
        str(public),
        "--signature",
        str(tmp_path / "tiny.sig"),
    )
    assert checked.returncode == 0 and "Verification succeeded" in checked.stdout, checked.stderr
    # the signature went along as a referrer of the OCI manifest: cairn pulls and checks it
    there = elsewhere(tmp_path / "a", signed_by(public))
    there("pull", "--insecure", f"{registry}/oci/tiny:1")


def test_a_copy_keeps_the_signature_and_pushes_it(
    cairn: Runner, tmp_path: Path, registry: str, signed: tuple[Path, Path]
) -> None:
    """``cairn cp`` to a registry's name, then ``cairn push NAME``: the habit of Ollama's users."""
    _, public = signed
    cairn("cp", "tiny", f"{registry}/lab/copied:1")
    assert (
        "signature sha256:"
        in cairn("verify", f"{registry}/lab/copied:1", "--key", str(public)).stdout
    )
    cairn("push", "--insecure", f"{registry}/lab/copied:1")
    there = elsewhere(tmp_path, signed_by(public))
    there("pull", "--insecure", f"{registry}/lab/copied:1")


def test_a_policy_by_ca_takes_its_chain_and_refuses_another_or_an_expired_leaf(
    cairn: Runner, tmp_path: Path, registry: str
) -> None:
    later = datetime.now(UTC) + timedelta(days=30)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Team CA", ca_key, None, later)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = _pem(tmp_path / "other-ca.pem", _certificate("Other CA", other_key, None, later))
    ca_pem = _pem(tmp_path / "ca.pem", ca)
    create(cairn, tmp_path, "tiny", model_dir(tmp_path / "tiny"))
    for tag, not_after in (("fresh", later), ("expired", datetime.now(UTC) - timedelta(hours=1))):
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        leaf = _pem(tmp_path / f"{tag}.pem", _certificate("bot", leaf_key, (ca, ca_key), not_after))
        (tmp_path / f"{tag}.key").write_bytes(pem_private(leaf_key))
        cairn("cp", "tiny", f"{registry}/lab/{tag}:1")
        key, chain = str(tmp_path / f"{tag}.key"), str(ca_pem)
        cairn(
            "sign", f"{registry}/lab/{tag}:1", "--key", key, "--cert", str(leaf), "--chain", chain
        )
        cairn("push", "--insecure", f"{registry}/lab/{tag}:1")

    def by_ca(ca_file: Path) -> dict[str, object]:
        return {"default": [{"type": "signedBy", "caPath": str(ca_file)}]}

    elsewhere(tmp_path / "a", by_ca(ca_pem))("pull", "--insecure", f"{registry}/lab/fresh:1")
    wrong = elsewhere(tmp_path / "b", by_ca(other_ca))
    refused = wrong("pull", "--insecure", f"{registry}/lab/fresh:1", check=False)
    assert refused.returncode == 1 and "does not lead to the given CA" in refused.stderr
    expired = elsewhere(tmp_path / "c", by_ca(ca_pem))
    refused = expired("pull", "--insecure", f"{registry}/lab/expired:1", check=False)
    assert refused.returncode == 1 and "the trust policy refuses" in refused.stderr
    assert "expired" in refused.stderr.lower() or "not valid" in refused.stderr.lower(), (
        refused.stderr
    )


def test_an_oci_format_export_points_the_signature_at_the_converted_manifest(
    cairn: Runner, tmp_path: Path, signed: tuple[Path, Path]
) -> None:
    _, public = signed
    layout = tmp_path / "layout"
    cairn("export", "tiny", "-o", str(layout), "--format", "oci")
    index = json.loads((layout / "index.json").read_text())
    (model,) = [m for m in index["manifests"] if m["artifactType"] != BUNDLE_TYPE]
    (signature,) = [m for m in index["manifests"] if m["artifactType"] == BUNDLE_TYPE]
    blob = layout / "blobs" / "sha256" / signature["digest"].removeprefix("sha256:")
    assert json.loads(blob.read_bytes())["subject"]["digest"] == model["digest"]
    taken = elsewhere(tmp_path / "a", signed_by(public))
    taken("import", str(layout))
    assert "signature sha256:" in taken("verify", "tiny", "--key", str(public)).stdout
