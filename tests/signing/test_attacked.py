"""Signed models under attack: a registry, a bundle or a peer that lies, as whole processes.

Each test is an attack that once got through (or a limit that once was missing): a
model carrying a layer its signature never covered, a signature referrer that makes a
pull download gigabytes, a bundle that costs minutes of CPU, a statement that names a
file twice, two pushes that lose a signature between them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cairn.manifests import mediatypes as mt
from cairn.signing import oms
from tests.conftest import Runner, cairn_env
from tests.registry.hostile import HostileRegistry, digest
from tests.signing.test_signing import create, key_pair, model_dir
from tests.signing.test_travel import elsewhere, signed_by

BUNDLE_TYPE = oms.BUNDLE_MEDIA_TYPE
ACCEPT = ", ".join((mt.DOCKER_MANIFEST, mt.OCI_MANIFEST, mt.OCI_INDEX))
CAIRN = (sys.executable, "-m", "cairn")


# -- speaking to docker-registry as an attacker would -------------------------------


def _get(host: str, repo: str, reference: str) -> tuple[bytes, dict[str, Any]]:
    answer = httpx.get(
        f"http://{host}/v2/{repo}/manifests/{reference}", headers={"Accept": ACCEPT}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    return answer.content, answer.json()


def _put_manifest(host: str, repo: str, reference: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    answer = httpx.put(
        f"http://{host}/v2/{repo}/manifests/{reference}",
        content=data,
        headers={"Content-Type": body["mediaType"]},
        timeout=60,
    )
    assert answer.status_code == 201, answer.text
    return data


def _put_blob(host: str, repo: str, data: bytes) -> str:
    started = httpx.post(f"http://{host}/v2/{repo}/blobs/uploads/", timeout=60)
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    if location.startswith("/"):
        location = f"http://{host}{location}"
    joiner = "&" if "?" in location else "?"
    done = httpx.put(f"{location}{joiner}digest={digest(data)}", content=data, timeout=60)
    assert done.status_code == 201, done.text
    return digest(data)


def _replant(host: str, repo: str, tag: str, new_tag: str, layers: list[dict[str, Any]]) -> None:
    """A model of other ``layers`` tagged ``new_tag``, carrying the signature of ``tag``:
    the signed bundle, unchanged, in a referrer whose subject is the new manifest."""
    data, _ = _get(host, repo, tag)
    _replant_from(host, repo, data, new_tag, layers)


def _replant_from(
    host: str,
    repo: str,
    signed: bytes,
    new_tag: str,
    layers: list[dict[str, Any]],
    config: dict[str, Any] | None = None,
) -> None:
    """:func:`_replant`, from the bytes of the signed manifest (and another config)."""
    manifest = json.loads(signed)
    subject = "sha256:" + hashlib.sha256(signed).hexdigest()
    _, index = _get(host, repo, subject.replace(":", "-"))
    _, referrer = _get(host, repo, index["manifests"][0]["digest"])
    changed = _put_manifest(
        host, repo, new_tag, {**manifest, "layers": layers, "config": config or manifest["config"]}
    )
    referrer["subject"] = {
        "mediaType": manifest["mediaType"],
        "digest": digest(changed),
        "size": len(changed),
    }
    moved = _put_manifest(host, repo, digest(json.dumps(referrer).encode()), referrer)
    entry = {
        "mediaType": mt.OCI_MANIFEST,
        "digest": digest(moved),
        "size": len(moved),
        "artifactType": BUNDLE_TYPE,
    }
    fallback = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [entry]}
    _put_manifest(host, repo, digest(changed).replace(":", "-"), fallback)


def _layer(host: str, repo: str, data: bytes, media_type: str, title: str) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": _put_blob(host, repo, data),
        "size": len(data),
        "annotations": {"org.opencontainers.image.title": title},
    }


@pytest.fixture
def team(tmp_path: Path) -> tuple[Path, Path]:
    return key_pair(tmp_path, "team", ec.SECP256R1())


# -- a layer the signature never covered --------------------------------------------


def test_a_layer_named_like_an_ignored_path_is_not_signed(
    cairn: Runner, tmp_path: Path, registry: str, team: tuple[Path, Path]
) -> None:
    """A statement's ``ignore_paths`` (``.git``, ``.github``, ...) leave files of a
    directory out; a model has no such files, so a layer titled ``.github/...`` rides on
    a signature that never saw it. It is "not signed", and a strict pull refuses it."""
    private, public = team
    create(cairn, tmp_path, "tiny", model_dir(tmp_path / "tiny"))
    cairn("sign", "tiny", "--key", str(private))
    cairn("push", "--insecure", "tiny", f"{registry}/lab/tiny:1")
    _, manifest = _get(registry, "lab/tiny", "1")
    evil = _layer(registry, "lab/tiny", b"obey me", mt.OLLAMA_SYSTEM, ".github/system.txt")
    _replant(registry, "lab/tiny", "1", "evil", [*manifest["layers"], evil])

    strict = elsewhere(tmp_path, signed_by(public))
    refused = strict("pull", "--insecure", f"{registry}/lab/tiny:evil", check=False)
    assert refused.returncode == 1, refused.stdout
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("Error:")]
    assert "the trust policy refuses" in line and "not signed: .github/system.txt" in line, line
    assert "lab/tiny" not in strict("list").stdout
    # the model as signed still comes through
    strict("pull", "--insecure", f"{registry}/lab/tiny:1")


def test_two_layers_of_one_file_name_cannot_hide_one(
    cairn: Runner, tmp_path: Path, registry: str, team: tuple[Path, Path]
) -> None:
    """A model with two licenses signs ``license.txt`` and ``license-1.txt``. A layer
    titled ``license.txt`` after the first is numbered ``license-1.txt``; the second
    license, titled ``license-1.txt`` outright, then answers for that name, and the
    layer between them (an adapter) went unchecked. Two layers of one name are refused."""
    private, public = team
    create(
        cairn,
        tmp_path,
        "tiny",
        model_dir(tmp_path / "tiny"),
        extra='LICENSE """one"""\nLICENSE """two"""\n',
    )
    signed = cairn("sign", "tiny", "--key", str(private))
    assert "(4 files)" in signed.stdout
    cairn("push", "--insecure", "tiny", f"{registry}/lab/tiny:1")
    _, manifest = _get(registry, "lab/tiny", "1")
    layers = manifest["layers"]
    first, second = [x for x in layers if x["mediaType"] == mt.OLLAMA_LICENSE]
    rest = [x for x in layers if x["mediaType"] != mt.OLLAMA_LICENSE]
    adapter = _layer(registry, "lab/tiny", b"unsigned adapter", mt.OLLAMA_ADAPTER, "license.txt")
    titled = {**second, "annotations": {"org.opencontainers.image.title": "license-1.txt"}}
    _replant(registry, "lab/tiny", "1", "evil", [*rest, first, adapter, titled])

    strict = elsewhere(tmp_path, signed_by(public))
    refused = strict("pull", "--insecure", f"{registry}/lab/tiny:evil", check=False)
    assert refused.returncode == 1, refused.stdout
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("Error:")]
    assert "two layers have the file name 'license-1.txt'" in line, line
    assert "lab/tiny" not in strict("list").stdout


# -- bundles that cost too much, or say a file twice --------------------------------


def _signed_bundle(cairn: Runner, tmp_path: Path, private: Path) -> dict[str, Any]:
    create(cairn, tmp_path, "tiny", model_dir(tmp_path / "tiny"))
    cairn("sign", "tiny", "--key", str(private), "-o", str(tmp_path / "tiny.sig"))
    bundle: dict[str, Any] = json.loads((tmp_path / "tiny.sig").read_bytes())
    return bundle


def test_a_bundle_with_more_than_one_signature_is_refused(
    cairn: Runner, tmp_path: Path, team: tuple[Path, Path]
) -> None:
    """Each signature of a DSSE envelope cost an ECDSA verification: 16 MiB of them,
    minutes of CPU per key and referrer. A Sigstore bundle holds exactly one (sigstore
    refuses others; model_signing reads the first alone)."""
    private, public = team
    bundle = _signed_bundle(cairn, tmp_path, private)
    (good,) = bundle["dsseEnvelope"]["signatures"]
    junk = {"sig": base64.b64encode(b"0" * 70).decode(), "keyid": ""}
    bundle["dsseEnvelope"]["signatures"] = [junk, good]
    many = tmp_path / "many.sig"
    many.write_text(json.dumps(bundle))
    refused = cairn("verify", "tiny", "--key", str(public), "--signature", str(many), check=False)
    assert refused.returncode == 1
    assert refused.stderr == (
        "Error: the signature's DSSE envelope holds 2 signatures; a Sigstore bundle holds"
        " exactly one\n"
    )


def test_a_statement_that_names_a_file_twice_is_refused(
    cairn: Runner, tmp_path: Path, team: tuple[Path, Path]
) -> None:
    """The signer vouched for two digests of ``tiny.gguf``: which one? Refused, rather
    than the last one winning."""
    private, public = team
    bundle = _signed_bundle(cairn, tmp_path, private)
    statement = oms.Statement.from_bytes(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    (weights,) = [r for r in statement.resources if r.name == "tiny.gguf"]
    twice = oms.Statement(
        statement.model_name, (oms.Resource("tiny.gguf", "ab" * 32), *statement.resources)
    )
    key = serialization.load_pem_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    (tmp_path / "twice.sig").write_bytes(oms.sign(twice, key))
    refused = cairn(
        "verify",
        "tiny",
        "--key",
        str(public),
        "--signature",
        str(tmp_path / "twice.sig"),
        check=False,
    )
    assert refused.returncode == 1
    assert refused.stderr == "Error: the signed statement lists file 'tiny.gguf' twice\n"
    assert weights.digest != "ab" * 32


# -- a registry whose signature referrer is not small -------------------------------


@pytest.fixture
def hostile() -> Iterator[HostileRegistry]:
    server = HostileRegistry()
    yield server
    server.stop()


def _serve_referrer(server: HostileRegistry, repo: str, subject: bytes, blob: bytes) -> str:
    """A referrer of ``subject`` listed in its fallback tag, its one layer ``blob``."""
    server.blobs[digest(blob)] = blob
    server.blobs[digest(b"{}")] = b"{}"
    referrer = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": BUNDLE_TYPE,
            "config": {"mediaType": mt.OCI_EMPTY, "digest": digest(b"{}"), "size": 2},
            "layers": [{"mediaType": BUNDLE_TYPE, "digest": digest(blob), "size": len(blob)}],
            "subject": {
                "mediaType": mt.DOCKER_MANIFEST,
                "digest": digest(subject),
                "size": len(subject),
            },
        }
    ).encode()
    server.manifests[(repo, digest(referrer))] = (referrer, mt.OCI_MANIFEST)
    entry = {
        "mediaType": mt.OCI_MANIFEST,
        "digest": digest(referrer),
        "size": len(referrer),
        "artifactType": BUNDLE_TYPE,
    }
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [entry]})
    server.manifests[(repo, digest(subject).replace(":", "-"))] = (index.encode(), mt.OCI_INDEX)
    return digest(blob)


def test_a_signature_referrer_of_many_megabytes_is_not_downloaded(
    tmp_path: Path, hostile: HostileRegistry
) -> None:
    """A "signature" whose layer is 40 MiB (it could say 40 GiB): refused by its
    declared size before a byte of it is fetched; the model itself comes (accept)."""
    from tests.ggufmaker import write_gguf

    gguf = write_gguf(tmp_path / "m.gguf", fill=b"m").read_bytes()
    subject = hostile.add_model("lab/m", "1", [gguf])
    big = _serve_referrer(hostile, "lab/m", subject, b"\0" * (40 << 20))
    lenient = elsewhere(tmp_path)
    taken = lenient("pull", "--insecure", f"{hostile.host}/lab/m:1")
    said = taken.stderr + taken.stdout
    assert "warning: a signature of" in said and "larger than" in said, said
    assert hostile.main.count("GET", big) == 0
    assert "lab/m:1" in lenient("list").stdout


def test_a_referrers_api_answering_garbage(tmp_path: Path, hostile: HostileRegistry) -> None:
    """200 with garbage from the referrers API: nothing to fetch under accept (in
    silence); a clear refusal where the policy asks for a signature."""
    from tests.ggufmaker import write_gguf

    gguf = write_gguf(tmp_path / "m.gguf", fill=b"m").read_bytes()
    hostile.add_model("lab/m", "1", [gguf])

    async def garbage(request: web.Request) -> web.StreamResponse | None:
        if "/referrers/" in request.path:
            return web.Response(body=b"\x00not an index" * 100, content_type=mt.OCI_INDEX)
        return None

    hostile.hook(garbage)
    lenient = elsewhere(tmp_path / "a")
    lenient("pull", "--insecure", f"{hostile.host}/lab/m:1")
    _, public = key_pair(tmp_path, "team", ec.SECP256R1())
    strict = elsewhere(tmp_path / "b", signed_by(public))
    refused = strict("pull", "--insecure", f"{hostile.host}/lab/m:1", check=False)
    assert refused.returncode == 1
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("Error:")]
    assert "cannot fetch the signatures of" in line and "not an image index" in line, line
    assert "Traceback" not in refused.stderr


# -- two pushes of two signatures at once -------------------------------------------


class KeepingRegistry(HostileRegistry):
    """The hostile registry, keeping each manifest's Content-Type as pushed (an index
    stays an index), with no referrers API: the tag fallback, as on docker-registry."""

    async def serve(self, request: web.Request) -> web.StreamResponse:
        if request.method == "PUT" and "/manifests/" in request.path:
            body = await request.read()
            repo, _, reference = request.path[len("/v2/") :].partition("/manifests/")
            kind = request.headers.get("Content-Type", mt.OCI_MANIFEST)
            self.manifests[(repo, reference)] = (body, kind)
            self.manifests[(repo, digest(body))] = (body, kind)
            return web.Response(status=201, headers={"Docker-Content-Digest": digest(body)})
        return await super().serve(request)


def test_two_signatures_pushed_at_once_are_both_listed(
    cairn: Runner, tmp_path: Path, store: Path
) -> None:
    """docker-registry has no referrers API: each push reads the fallback index, adds its
    signature and writes it back. Two pushes that both read before either writes (held
    so here) lost one signature; a push now reads the index back after writing it, and
    writes it again with its own signature where the other push wrote over it."""
    first, first_public = key_pair(tmp_path, "first", ec.SECP256R1())
    second, second_public = key_pair(tmp_path, "second", ec.SECP256R1())
    create(cairn, tmp_path, "tiny", model_dir(tmp_path / "tiny"))
    twin = tmp_path / "twin" / "models"
    shutil.copytree(store, twin)
    cairn("sign", "tiny", "--key", str(first))
    signed = subprocess.run(
        [sys.executable, "-m", "cairn", "sign", "tiny", "--key", str(second)],
        env=cairn_env(twin),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert signed.returncode == 0, signed.stderr

    server = KeepingRegistry()
    try:
        held: dict[str, asyncio.Event] = {}
        waiting: dict[str, int] = {}

        async def together(request: web.Request) -> web.StreamResponse | None:
            # The first two reads of the fallback tag, and the first two writes, wait
            # for each other: both pushes read the index before either writes it.
            tail = request.path.rpartition("/manifests/")[2]
            if not tail.startswith("sha256-") or request.method not in ("GET", "PUT"):
                return None
            key = request.method
            waiting[key] = waiting.get(key, 0) + 1
            if waiting[key] <= 2:
                event = held.setdefault(key, asyncio.Event())
                if waiting[key] == 2:
                    event.set()
                await asyncio.wait_for(event.wait(), 120)
            return None

        server.hook(together)
        target = f"{server.host}/lab/tiny:1"
        pushes = [
            subprocess.Popen(
                [sys.executable, "-m", "cairn", "push", "--insecure", "tiny", target],
                env=cairn_env(where),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for where in (store, twin)
        ]
        for push in pushes:
            out, err = push.communicate(timeout=240)
            assert push.returncode == 0, err
            assert "Traceback" not in out + err
        both = elsewhere(
            tmp_path,
            {
                "default": [
                    {"type": "signedBy", "keyPath": str(first_public)},
                    {"type": "signedBy", "keyPath": str(second_public)},
                ]
            },
        )
        both("pull", "--insecure", target)
        for public in (first_public, second_public):
            checked = both("verify", target, "--key", str(public), check=False)
            assert "files verified" in checked.stdout, checked.stderr
    finally:
        server.stop()


# -- the trust policy ---------------------------------------------------------------


def test_a_scope_that_names_a_tag_is_a_mistake_not_a_silent_miss(
    cairn: Runner, tmp_path: Path, registry: str, team: tuple[Path, Path]
) -> None:
    """A scope is HOST[/NAMESPACE[/NAME]]; ``.../tiny:1`` could never match a model's name
    (scopes match whole name components), so the model it meant to guard fell to the
    default, accept. It is an error naming the scope."""
    _, public = team
    create(cairn, tmp_path, "tiny", model_dir(tmp_path / "tiny"))
    cairn("push", "--insecure", "tiny", f"{registry}/lab/tiny:1")
    for scope in (f"{registry}/lab/tiny:1", f"{registry}/lab/tiny@sha256:{'a' * 64}"):
        strict = elsewhere(
            tmp_path / str(len(scope)),
            {
                "default": [{"type": "accept"}],
                "registries": {scope: [{"type": "signedBy", "keyPath": str(public)}]},
            },
        )
        refused = strict("pull", "--insecure", f"{registry}/lab/tiny:1", check=False)
        assert refused.returncode == 1, refused.stdout
        (line,) = [x for x in refused.stderr.splitlines() if x.startswith("Error:")]
        assert f"{scope!r} is not a scope" in line, line
        assert "lab/tiny" not in strict("list").stdout


def test_the_right_signature_of_an_older_manifest_does_not_pass(
    cairn: Runner, tmp_path: Path, registry: str, team: tuple[Path, Path]
) -> None:
    """The registry lists, for the manifest now tagged, the signature of the one tagged
    before: its subject is that older manifest (refused as a referrer); moved to the new
    one, its files are not the new files (refused by the policy)."""
    private, public = team
    create(cairn, tmp_path, "tiny", model_dir(tmp_path / "tiny"))
    cairn("sign", "tiny", "--key", str(private))
    cairn("push", "--insecure", "tiny", f"{registry}/lab/tiny:1")
    old, _ = _get(registry, "lab/tiny", "1")
    _, old_index = _get(registry, "lab/tiny", "sha256-" + hashlib.sha256(old).hexdigest())
    create(cairn, tmp_path, "tiny2", model_dir(tmp_path / "tiny2", fill=b"changed"))
    cairn("push", "--insecure", "tiny2", f"{registry}/lab/tiny:1")
    new, _ = _get(registry, "lab/tiny", "1")
    _put_manifest(registry, "lab/tiny", "sha256-" + hashlib.sha256(new).hexdigest(), old_index)

    strict = elsewhere(tmp_path, signed_by(public))
    refused = strict("pull", "--insecure", f"{registry}/lab/tiny:1", check=False)
    assert refused.returncode == 1
    assert "names another subject" in refused.stderr, refused.stderr
    # the same signature in a referrer that names the new manifest: the files differ
    _, layers = _get(registry, "lab/tiny", "1")
    _replant_from(registry, "lab/tiny", old, "2", layers["layers"])
    refused = strict("pull", "--insecure", f"{registry}/lab/tiny:2", check=False)
    assert refused.returncode == 1
    assert "changed since signing: tiny.gguf" in refused.stderr, refused.stderr
    assert "lab/tiny" not in strict("list").stdout


def test_a_model_whose_config_alone_differs_still_verifies(
    cairn: Runner, tmp_path: Path, registry: str, team: tuple[Path, Path]
) -> None:
    """The decision, shown: the config blob is not signed (cairn derives it from the
    layers; model_signing's directory has none). What runs (weights, template, system,
    parameters, adapters) is all in layers; the config only describes the model, and one
    that names a remote host is refused by ``run`` anyway."""
    private, public = team
    create(cairn, tmp_path, "tiny", model_dir(tmp_path / "tiny"))
    cairn("sign", "tiny", "--key", str(private))
    cairn("push", "--insecure", "tiny", f"{registry}/lab/tiny:1")
    data, manifest = _get(registry, "lab/tiny", "1")
    config = json.dumps({"model_format": "gguf", "model_family": "other"}).encode()
    changed_config = {
        **manifest["config"],
        "digest": _put_blob(registry, "lab/tiny", config),
        "size": len(config),
    }
    _replant_from(registry, "lab/tiny", data, "2", manifest["layers"], changed_config)
    strict = elsewhere(tmp_path, signed_by(public))
    strict("pull", "--insecure", f"{registry}/lab/tiny:2")
    checked = strict("verify", f"{registry}/lab/tiny:2", "--key", str(public))
    assert "files verified" in checked.stdout


@pytest.mark.parametrize("kind", ["directory", "huge", "symlink to a directory"])
def test_a_policy_file_that_is_not_a_small_file(
    cairn: Runner, tmp_path: Path, store: Path, kind: str
) -> None:
    """What stands at ``policy.json`` is read with care: an error naming it, never a
    model let through unchecked (nor a traceback, nor a read without end)."""
    create(cairn, tmp_path, "tiny", model_dir(tmp_path / "tiny"))
    home = store.parent / "cairn-home"
    home.mkdir(exist_ok=True)
    policy = home / "policy.json"
    if kind == "directory":
        policy.mkdir()
    elif kind == "huge":
        policy.write_text('{"default": [{"type": "accept"}], "x": "' + "a" * (2 << 20) + '"}')
    else:
        (tmp_path / "elsewhere").mkdir()
        policy.symlink_to(tmp_path / "elsewhere")
    refused = cairn("run", "tiny", "hi", check=False)
    assert refused.returncode == 1
    (line,) = refused.stderr.splitlines()
    assert line.startswith("Error:") and str(policy) in line, line
    said = "larger than 1 MiB" if kind == "huge" else "cannot read the trust policy"
    assert said in line, line


# -- a collection while a pull is between its signatures and its tag -----------------


def test_prune_during_a_pull_waits_and_takes_nothing_it_needs(
    cairn: Runner, tmp_path: Path, store: Path
) -> None:
    """The pull has stored one signature and the model's blobs, none of them tagged yet,
    when ``cairn prune --grace 0`` runs: the collection waits for the pull (which holds
    the store for writing), and the model, both signatures and every blob survive."""
    import threading

    first, first_public = key_pair(tmp_path, "first", ec.SECP256R1())
    second, second_public = key_pair(tmp_path, "second", ec.SECP256R1())
    create(cairn, tmp_path, "tiny", model_dir(tmp_path / "tiny"))
    cairn("sign", "tiny", "--key", str(first))
    cairn("sign", "tiny", "--key", str(second))
    server = KeepingRegistry()
    try:
        target = f"{server.host}/lab/tiny:1"
        cairn("push", "--insecure", "tiny", target)
        holding = threading.Event()
        by_digest = 0

        async def slow_second_referrer(request: web.Request) -> web.StreamResponse | None:
            nonlocal by_digest
            if request.method == "GET" and "/manifests/sha256:" in request.path:
                by_digest += 1
                if by_digest == 2:
                    holding.set()
                    await asyncio.sleep(8)
            return None

        server.hook(slow_second_referrer)
        puller = tmp_path / "puller" / "models"
        puller.mkdir(parents=True)
        (puller.parent / "cairn-home").mkdir()
        policy = {
            "default": [
                {"type": "signedBy", "keyPath": str(first_public)},
                {"type": "signedBy", "keyPath": str(second_public)},
            ]
        }
        (puller.parent / "cairn-home" / "policy.json").write_text(json.dumps(policy))
        env = cairn_env(puller)
        pull = subprocess.Popen(
            [*CAIRN, "pull", "--insecure", target],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert holding.wait(120), "the pull never asked for its second signature"
        pruned = subprocess.run(
            [*CAIRN, "prune", "--grace", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        _, err = pull.communicate(timeout=240)
        assert pull.returncode == 0, err
        assert pruned.returncode == 0, pruned.stderr
        for public in (first_public, second_public):
            checked = subprocess.run(
                [*CAIRN, "verify", target, "--key", str(public), "--rehash"],
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
                check=False,
            )
            assert "files verified" in checked.stdout, checked.stderr
    finally:
        server.stop()


def test_a_referrers_index_of_thousands_of_entries(
    tmp_path: Path, hostile: HostileRegistry
) -> None:
    """5,000 listed "signatures" that are not there: the pull asks for few of them (64 at
    most), warns, and takes the model under accept."""
    from tests.ggufmaker import write_gguf

    gguf = write_gguf(tmp_path / "m.gguf", fill=b"m").read_bytes()
    subject = hostile.add_model("lab/m", "1", [gguf])
    entries = [
        {
            "mediaType": mt.OCI_MANIFEST,
            "digest": "sha256:" + hashlib.sha256(b"%d" % n).hexdigest(),
            "size": 400,
            "artifactType": BUNDLE_TYPE,
        }
        for n in range(5000)
    ]
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries})
    hostile.manifests[("lab/m", digest(subject).replace(":", "-"))] = (
        index.encode(),
        mt.OCI_INDEX,
    )
    lenient = elsewhere(tmp_path)
    taken = lenient("pull", "--insecure", f"{hostile.host}/lab/m:1")
    assert "warning: a signature of" in taken.stderr + taken.stdout
    assert hostile.main.count("GET", "/manifests/sha256:") <= 64
    assert "lab/m:1" in lenient("list").stdout
