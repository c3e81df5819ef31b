from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cairn.blobstore import Digest
from cairn.errors import CairnError, InvalidReferenceError
from cairn.manifests.reference import (
    is_oci,
    parse_reference,
    require_oci,
    require_ollama_readable,
)

HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("text", "host", "namespace", "name", "tag"),
    [
        ("gemma3", "registry.ollama.ai", "library", "gemma3", "latest"),
        ("gemma3:270m", "registry.ollama.ai", "library", "gemma3", "270m"),
        ("jmorgan/llama3:8b-q4_K_M", "registry.ollama.ai", "jmorgan", "llama3", "8b-q4_K_M"),
        (
            "hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M",
            "hf.co",
            "bartowski",
            "Llama-3.2-1B-GGUF",
            "Q4_K_M",
        ),
        ("localhost:5000/models/gemma3:v1", "localhost:5000", "models", "gemma3", "v1"),
        ("localhost:5000/gemma3", "localhost:5000", "library", "gemma3", "latest"),
        ("127.0.0.1:5000/gemma3:x", "127.0.0.1:5000", "library", "gemma3", "x"),
        (
            "registry.example.com/team/qwen2.5:0.5b",
            "registry.example.com",
            "team",
            "qwen2.5",
            "0.5b",
        ),
        ("https://hf.co/a/b", "hf.co", "a", "b", "latest"),
        ("a__b/c--d:_x", "registry.ollama.ai", "a__b", "c--d", "_x"),
    ],
)
def test_valid_references(text: str, host: str, namespace: str, name: str, tag: str) -> None:
    ref = parse_reference(text)
    assert (ref.host, ref.namespace, ref.name, ref.tag) == (host, namespace, name, tag)
    assert parse_reference(str(ref)) == ref
    assert parse_reference(ref.display) == ref


def test_display_leaves_out_defaults() -> None:
    assert parse_reference("gemma3").display == "gemma3:latest"
    assert parse_reference("registry.ollama.ai/library/gemma3:1b").display == "gemma3:1b"
    assert parse_reference("me/gemma3:1b").display == "me/gemma3:1b"
    assert parse_reference("hf.co/me/gemma3:1b").display == "hf.co/me/gemma3:1b"
    assert str(parse_reference("gemma3")) == "registry.ollama.ai/library/gemma3:latest"


def test_digest_references() -> None:
    ref = parse_reference(f"gemma3@sha256:{HEX}")
    assert ref.tag is None
    assert ref.digest == Digest(HEX)
    both = parse_reference(f"gemma3:1b@sha256:{HEX}")
    assert both.tag == "1b" and both.digest == Digest(HEX)


def test_http_scheme_marks_insecure() -> None:
    assert parse_reference("http://localhost:5000/a/b").insecure
    assert not parse_reference("localhost:5000/a/b").insecure


def test_case_is_kept_but_compared_loosely() -> None:
    ref = parse_reference("Gemma3:Latest")
    assert ref.name == "Gemma3"
    assert ref.same_model(parse_reference("gemma3:latest"))


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("", "empty"),
        ("../../etc", "host '..'"),
        ("..", "name"),
        ("a/../b", "namespace"),
        ("/etc/passwd", "host"),
        ("gemma3/", "name"),
        ("a\\b", "'\\\\'"),
        ("a\x00b", "'\\x00'"),
        ("%2e%2e/x", "'%'"),
        ("a/%2e%2e/b", "'%'"),
        ("gemma3:..", "tag '..'"),
        ("gemma3:-x", "tag"),
        ("gemma3:" + "x" * 129, "tag"),
        ("a/b/c/d", "needs a registry host first"),
        ("gemma3@sha256:abc", "digest"),
        ("gemma3@md5:" + HEX, "digest"),
        ("-gemma", "name '-gemma'"),
        (".gemma", "name '.gemma'"),  # "gem..ma" is Ollama's (read, see below)
        ("a/.b", "name '.b'"),
        ("host:99999/a/b", "port"),
        ("bad_host/a/b", "host"),
        ("x" * 600, "longer than"),
        ("gemma 3", "' '"),
        ("gémma", "'é'"),
    ],
)
def test_invalid_references_name_the_bad_part(text: str, part: str) -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        parse_reference(text)
    assert part in str(caught.value)


@pytest.mark.parametrize("text", ["library/my_model_", "_team/llama", "library/a..b", "gem..ma"])
def test_names_only_ollama_accepts_are_read_but_not_pushed(text: str) -> None:
    ref = parse_reference(text)
    assert not is_oci(ref)
    with pytest.raises(InvalidReferenceError, match="cannot be pushed"):
        require_oci(ref)
    require_ollama_readable(ref)  # Ollama wrote it: it reads it


def test_what_ollama_would_skip_is_not_stored() -> None:
    with pytest.raises(InvalidReferenceError, match=r"skips a namespace with a '\.' in it"):
        require_ollama_readable(parse_reference("quay.io/my.team/model:v1"))
    with pytest.raises(InvalidReferenceError, match="skips a tag longer than 80 characters"):
        require_ollama_readable(parse_reference("gemma3:" + "x" * 81))
    require_ollama_readable(parse_reference("gemma3:" + "x" * 80))
    assert is_oci(parse_reference("quay.io/my.team/model:v1"))


@given(st.text(max_size=300))
def test_no_input_raises_anything_but_a_cairn_error(text: str) -> None:
    try:
        ref = parse_reference(text)
    except CairnError:
        return
    # Whatever parses is a safe relative path: no empty, '.' or '..' parts.
    parts = [*ref.components, ref.tag or "latest"]
    assert "/".join(parts[:-1]) == f"{ref.host}/{ref.repository}"
    for part in parts:
        assert part not in ("", ".", "..")
        assert "/" not in part and "\\" not in part and "\x00" not in part


@given(
    st.lists(
        st.sampled_from(["a", "B", "0", ".", "_", "-", ":", "/", "@", "%", "..", "sha256:" + HEX]),
        max_size=30,
    )
)
def test_reference_like_inputs(pieces: list[str]) -> None:
    text = "".join(pieces)
    try:
        ref = parse_reference(text)
    except CairnError:
        return
    assert parse_reference(str(ref)) == ref
    for part in ref.components:
        # "a..b" is a name Ollama accepts (and a safe folder name); "..", ".x" are refused.
        assert not part.startswith(".") and part not in ("", ".", "..")


# -- OCI repository names of any depth ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "namespace", "name", "tag", "display"),
    [
        (
            "ghcr.io/org/team/model:tag",
            "ghcr.io",
            "org/team",
            "model",
            "tag",
            "ghcr.io/org/team/model:tag",
        ),
        ("127.0.0.1:5000/a/b/c/d:1", "127.0.0.1:5000", "a/b/c", "d", "1", None),
        ("localhost/x/y/z", "localhost", "x/y", "z", "latest", "localhost/x/y/z:latest"),
        ("quay.io/my.org/team/Model", "quay.io", "my.org/team", "Model", "latest", None),
        # Two and three parts read as before.
        ("a/b/c", "a", "b", "c", "latest", "a/b/c:latest"),
        ("team/model", "registry.ollama.ai", "team", "model", "latest", "team/model:latest"),
    ],
)
def test_deep_names(
    text: str, host: str, namespace: str, name: str, tag: str, display: str | None
) -> None:
    ref = parse_reference(text)
    assert (ref.host, ref.namespace, ref.name, ref.tag) == (host, namespace, name, tag)
    assert ref.repository == f"{namespace}/{name}"  # the registry's path, unchanged
    assert ref.components == (host, *namespace.split("/"), name)
    assert ref.deep == (namespace.count("/") > 0)
    assert ref.display == (display or f"{host}/{namespace}/{name}:{tag}")
    assert parse_reference(str(ref)) == ref
    assert parse_reference(ref.display) == ref
    assert is_oci(ref)
    require_ollama_readable(ref)  # a '.' in a deep namespace: Ollama never reads it


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a/b/c/d", "needs a registry host first"),
        ("org/team/sub/model:1", "needs a registry host first"),
        ("registry.ollama.ai/a/b/c", "registry.ollama.ai takes only namespace/name"),
        ("REGISTRY.OLLAMA.AI/a/b/c", "registry.ollama.ai takes only namespace/name"),
        # Ollama's relaxed grammar is for namespace/name only: a deep name is OCI's.
        ("ghcr.io/org/team/my_model_", "repository part 'my_model_'"),
        ("ghcr.io/_org/team/model", "repository part '_org'"),
        ("ghcr.io/org/a..b/model", "repository part 'a..b'"),
        ("ghcr.io/org/" + "x" * 81 + "/model", "longer than 80 characters"),
        ("ghcr.io/" + "/".join(["abcdefgh"] * 60), "longer than 512 characters"),
    ],
)
def test_deep_names_refused(text: str, why: str) -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        parse_reference(text)
    assert why in str(caught.value)


def _depths() -> list[str]:
    """Every unsafe part at every depth of a name of 3 to 6 parts, with and without a host."""
    texts: list[str] = []
    for bad in ("..", ".", "", "../../etc", "a/../b", "a//b", "./x"):
        for count in range(3, 7):
            for host in ("ghcr.io/", ""):
                for at in range(count):
                    parts = [f"p{i}" for i in range(count)]
                    parts[at] = bad
                    texts.append(host + "/".join(parts) + ":1")
        texts.append(bad)
        texts.append(f"ghcr.io/{bad}")
    return texts


@pytest.mark.parametrize("text", _depths())
def test_no_deep_name_escapes_the_store(text: str) -> None:
    """``..``, ``.`` and empty parts anywhere, at any depth: refused, or (where the
    unsafe text is split into safe parts, as ``a//b`` is not) a path with no such part."""
    try:
        ref = parse_reference(text)
    except InvalidReferenceError:
        return
    for part in (*ref.components, ref.tag or "latest"):
        assert part not in ("", ".", "..")
        assert "/" not in part and not part.startswith(".")
    raise AssertionError(f"{text!r} parsed as {ref}")  # every text above is unsafe


def test_deep_names_are_pushable_only_in_oci_grammar() -> None:
    ref = parse_reference("ghcr.io/org/team/model:1")
    require_oci(ref)
    assert not ref.deep or ref.host != "registry.ollama.ai"
