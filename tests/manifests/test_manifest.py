from __future__ import annotations

import contextlib
import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cairn.blobstore import Digest
from cairn.errors import CairnError, ManifestError
from cairn.manifests import mediatypes as mt
from cairn.manifests.manifest import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    Index,
    Manifest,
    parse_manifest,
)

A = "a" * 64
B = "b" * 64
C = "c" * 64

# Bytes as Ollama's registry serves them (whitespace and all): the digest is of these bytes.
OLLAMA_MANIFEST = (
    b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
    b'"config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:'
    + A.encode()
    + b'","size":490},"layers":[{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:'
    + B.encode()
    + b'","size":291548160},{"mediaType":"application/vnd.ollama.image.license","digest":"sha256:'
    + C.encode()
    + b'","size":8432}]}\n'
)

ORAS_MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": "application/vnd.example.model",
        "config": {"mediaType": mt.OCI_EMPTY, "digest": mt.OCI_EMPTY_DIGEST, "size": 2},
        "layers": [
            {
                "mediaType": "application/octet-stream",
                "digest": f"sha256:{B}",
                "size": 10,
                "annotations": {"org.opencontainers.image.title": "model.gguf"},
            }
        ],
        "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
    },
    indent=2,
).encode()


def test_ollama_manifest() -> None:
    manifest = Manifest.from_bytes(OLLAMA_MANIFEST)
    assert manifest.media_type == mt.DOCKER_MANIFEST
    assert manifest.config.digest == Digest(A)
    assert [layer.media_type for layer in manifest.layers] == [mt.OLLAMA_MODEL, mt.OLLAMA_LICENSE]
    assert manifest.layer_of(mt.OLLAMA_MODEL) is not None
    assert manifest.size == 490 + 291548160 + 8432
    assert manifest.to_bytes() == OLLAMA_MANIFEST  # kept exactly, trailing newline too
    assert manifest.digest == Digest(hashlib.sha256(OLLAMA_MANIFEST).hexdigest())


def test_oci_artifact_as_oras_pushes_it() -> None:
    manifest = parse_manifest(ORAS_MANIFEST)
    assert isinstance(manifest, Manifest)
    assert manifest.artifact_type == "application/vnd.example.model"
    assert manifest.layers[0].title == "model.gguf"
    assert manifest.content_type == mt.OCI_MANIFEST


def test_oci_manifest_without_media_type() -> None:
    body = json.loads(ORAS_MANIFEST)
    del body["mediaType"]
    manifest = parse_manifest(json.dumps(body).encode())
    assert isinstance(manifest, Manifest)
    assert manifest.media_type is None
    assert manifest.content_type == mt.OCI_MANIFEST


def test_index() -> None:
    body = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": f"sha256:{A}",
                "size": 100,
                "platform": {"os": "linux", "architecture": "amd64"},
            }
        ],
    }
    index = parse_manifest(json.dumps(body).encode())
    assert isinstance(index, Index)
    assert index.manifests[0].platform == {"os": "linux", "architecture": "amd64"}
    assert Index.from_bytes(index.to_bytes()) == index
    with pytest.raises(ManifestError):
        Manifest.from_bytes(index.to_bytes())


def test_built_manifest_is_canonical_and_round_trips() -> None:
    config = Descriptor(mt.DOCKER_CONFIG, Digest(A), 10)
    layer = Descriptor(mt.OLLAMA_MODEL, Digest(B), 20)
    manifest = Manifest.build(config, [layer])
    assert manifest.to_bytes() == (
        b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        b'"config":{"mediaType":"application/vnd.docker.container.image.v1+json",'
        b'"digest":"sha256:' + A.encode() + b'","size":10},'
        b'"layers":[{"mediaType":"application/vnd.ollama.image.model",'
        b'"digest":"sha256:' + B.encode() + b'","size":20}]}'
    )
    again = Manifest.from_bytes(manifest.to_bytes())
    assert again == manifest
    assert again.digest == manifest.digest


def _with(**changes: object) -> bytes:
    body = json.loads(OLLAMA_MANIFEST)
    body.update(changes)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"[" * 100_000, "not valid JSON"),
        (_with(schemaVersion=1), "schemaVersion"),
        (_with(schemaVersion=True), "schemaVersion"),
        (_with(layers="x"), "layers"),
        (
            _with(config={"mediaType": mt.DOCKER_CONFIG, "digest": "sha256:xyz", "size": 1}),
            "digest",
        ),
        (
            _with(
                config={"mediaType": mt.DOCKER_CONFIG, "digest": "sha256:" + "A" * 64, "size": 1}
            ),
            "digest",
        ),
        (
            _with(config={"mediaType": mt.DOCKER_CONFIG, "digest": "sha256:" + A, "size": -1}),
            "size",
        ),
        (
            _with(config={"mediaType": mt.DOCKER_CONFIG, "digest": "sha256:" + A, "size": "1"}),
            "size",
        ),
        (_with(config={"mediaType": "nonsense", "digest": "sha256:" + A, "size": 1}), "mediaType"),
        (_with(mediaType=["a"]), "mediaType"),
        (_with(mediaType="application/vnd.unknown+json"), "not an image manifest"),
        (_with(annotations={"a": 1}), "annotations"),
        (b" " * (MAX_MANIFEST_SIZE + 1), "limit"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_bad_manifests(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(data)
    assert message in str(caught.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
descriptor_like = st.fixed_dictionaries(
    {},
    optional={
        "mediaType": st.sampled_from([mt.OLLAMA_MODEL, "x", "", 5]) | json_values,
        "digest": st.sampled_from([f"sha256:{A}", "sha256:", "x"]) | json_values,
        "size": st.integers(-2, 2**70) | json_values,
        "annotations": json_values,
        "platform": json_values,
        "artifactType": json_values,
    },
)
manifest_like = st.fixed_dictionaries(
    {},
    optional={
        "schemaVersion": st.sampled_from([2, 1, "2", True]),
        "mediaType": st.sampled_from(list(mt.MANIFEST_TYPES | mt.INDEX_TYPES)) | json_values,
        "config": descriptor_like | json_values,
        "layers": st.lists(descriptor_like, max_size=3) | json_values,
        "manifests": st.lists(descriptor_like, max_size=3) | json_values,
        "subject": descriptor_like | json_values,
        "annotations": json_values,
        "artifactType": json_values,
    },
)


@given(manifest_like)
def test_structured_garbage_raises_only_manifest_errors(body: dict[str, object]) -> None:
    data = json.dumps(body).encode()
    try:
        parsed = parse_manifest(data)
    except CairnError:
        return
    assert parsed.to_bytes() == data
    assert parsed.digest == Digest(hashlib.sha256(data).hexdigest())


@given(st.binary(max_size=400))
def test_any_bytes_raise_only_cairn_errors(data: bytes) -> None:
    with contextlib.suppress(CairnError):
        parse_manifest(data)
