"""``cairn inspect`` and ``cairn tags`` against a registry the user does not control.

A hostile registry (``tests/registry/hostile.py``) answers with manifests of the wrong
shape, configs that lie about their digest, escape sequences in every name it can put
one in, ``Link`` headers that loop, lead elsewhere or never end, and answers that never
come. Every case ends in output a terminal cannot be driven by, or in one line and exit 1.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import Runner, cairn_env, run_in_pty
from tests.registry.hostile import HostileRegistry, digest

OCI = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.cairn.model.config.v1+json"
CONFIG = b'{"model_format":"gguf"}'
ESCAPES = ("\x1b]0;pwned\x07", "\x1b[2J", "\x9b31m", "\u202e")


@pytest.fixture
def hostile() -> Iterator[HostileRegistry]:
    server = HostileRegistry()
    yield server
    server.stop()


def manifest(config: bytes = CONFIG, **fields: object) -> bytes:
    body: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI,
        "config": {"mediaType": CONFIG_TYPE, "digest": digest(config), "size": len(config)},
        "layers": [],
    }
    body.update(fields)
    return json.dumps(body).encode()


def serve(server: HostileRegistry, tag: str, body: bytes, config: bytes = CONFIG) -> str:
    """``body`` as ``lab/m:TAG`` (and ``config`` as a blob); the reference to inspect."""
    server.blobs[digest(config)] = config
    server.manifests[("lab/m", tag)] = (body, OCI)
    server.manifests[("lab/m", digest(body))] = (body, OCI)
    return f"{server.host}/lab/m:{tag}"


def fails(result: subprocess.CompletedProcess[str]) -> str:
    """The one line of a failed command: exit 1, nothing on stdout, no traceback."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_raw_and_config_on_a_terminal_show_escapes_and_a_pipe_gets_the_bytes(
    hostile: HostileRegistry, store: Path
) -> None:
    # JSON cannot hold a raw ESC, but --raw prints what was served once its digest is
    # checked, parsed or not; and a config blob may be any bytes at all.
    config = b'{"note": "\x1b]0;pwned\x07\x1b[2J"}\n\xc2\x9b31m'
    body = manifest(config)[:-1] + b', "x": "\xc2\x9b\x1b]52;c;aGk=\x07"}'
    raw = serve(hostile, "raw", body)
    with_config = serve(hostile, "config", manifest(config), config)
    env = cairn_env(store)
    argv = [sys.executable, "-m", "cairn", "inspect", "--insecure"]
    for option, ref, sent in (("--raw", raw, body), ("--config", with_config, config)):
        code, shown = run_in_pty([*argv, option, ref], env)
        assert code == 0, shown
        assert "\x1b" not in shown and "\x9b" not in shown and "\x07" not in shown
        assert "\\x1b]" in shown  # shown, not obeyed
        assert "Traceback" not in shown
        piped = subprocess.run([*argv, option, ref], env=env, capture_output=True, timeout=120)
        assert piped.returncode == 0, piped.stderr
        assert piped.stdout == sent  # exactly the bytes, as skopeo --raw writes them


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"hello", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (
            json.dumps(
                {"schemaVersion": 2, "mediaType": OCI, "config": None, "layers": []}
            ).encode(),
            "config must be a JSON object",
        ),
        (manifest(layers={"a": 1}), "no layers list"),
        (manifest(annotations=["a"]), "annotations must map strings to strings"),
        (manifest(annotations={"a": 5}), "annotations must map strings to strings"),
        (json.dumps({"schemaVersion": 1, "name": "x"}).encode(), "schemaVersion 1"),
    ],
    ids=["not-json", "a-list", "null", "config-null", "layers-dict", "ann-list", "ann-int", "v1"],
)
def test_a_manifest_of_the_wrong_shape_is_one_line(
    cairn: Runner, hostile: HostileRegistry, body: bytes, said: str
) -> None:
    ref = serve(hostile, "1", body)
    for mode in ((), ("--json",), ("--config",)):
        assert said in fails(cairn("inspect", "--insecure", *mode, ref, check=False))


def config_descriptor(**fields: object) -> bytes:
    descriptor = {"mediaType": CONFIG_TYPE, "digest": digest(CONFIG), "size": len(CONFIG)}
    return json.dumps(
        {"schemaVersion": 2, "mediaType": OCI, "config": {**descriptor, **fields}, "layers": []}
    ).encode()


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (config_descriptor(size=-1), "size -1 is not a non-negative integer"),
        (config_descriptor(size="23"), "size '23' is not a non-negative integer"),
        (config_descriptor(size=23.0), "size 23.0 is not a non-negative integer"),
        (config_descriptor(size=10**30), "cairn reads a config of at most 4194304"),
        (config_descriptor(size=5), "has 5 bytes; the registry sent 23"),
        (config_descriptor(digest="md5:abc"), "'md5:abc' is not sha256"),
        (config_descriptor(mediaType=5), "mediaType 5 is not a media type"),
    ],
    ids=["negative", "string", "float", "huge", "short", "md5", "int-type"],
)
def test_a_config_descriptor_that_lies_is_one_line(
    cairn: Runner, hostile: HostileRegistry, body: bytes, said: str
) -> None:
    ref = serve(hostile, "1", body)
    assert said in fails(cairn("inspect", "--insecure", ref, check=False))


def test_config_bytes_that_do_not_match_their_digest_are_never_shown(
    cairn: Runner, hostile: HostileRegistry
) -> None:
    lie = b'{"model_format":"evil"}'  # the size the manifest gives, other bytes
    assert len(lie) == len(CONFIG)
    ref = serve(hostile, "1", manifest())

    async def swap(request: web.Request) -> web.StreamResponse | None:
        return web.Response(body=lie) if request.path.endswith(digest(CONFIG)) else None

    hostile.hook(swap)
    for mode in ((), ("--json",), ("--config",)):
        line = fails(cairn("inspect", "--insecure", *mode, ref, check=False))
        assert digest(CONFIG) in line and "evil" not in line
    # --raw prints the manifest alone, whose own digest was checked: the config is not read.
    assert cairn("inspect", "--insecure", "--raw", ref).stdout.encode() == manifest()


def test_escapes_in_annotations_and_config_are_shown_not_obeyed(
    cairn: Runner, hostile: HostileRegistry
) -> None:
    config = json.dumps({f"key{e}": f"value{e}" for e in ESCAPES}).encode()
    annotations = {f"a{e}": f"b{e}" for e in ESCAPES}
    layer = {
        "mediaType": "application/vnd.ollama.image.model",
        "digest": digest(b"w"),
        "size": 1,
        "annotations": {"org.opencontainers.image.title": "".join(ESCAPES)},
    }
    ref = serve(hostile, "1", manifest(config, annotations=annotations, layers=[layer]), config)
    for mode in ((), ("--json",)):
        out = cairn("inspect", "--insecure", *mode, ref).stdout
        assert not any(c in out for c in "\x1b\x07\x9b\u202e"), mode
        assert "Traceback" not in out
    summary = json.loads(cairn("inspect", "--insecure", "--json", ref).stdout)
    assert summary["Annotations"] == annotations  # escaped in JSON, the same text once read
    assert summary["ConfigData"] == json.loads(config)


def test_tags_never_take_credentials_to_a_link_on_another_origin(
    cairn: Runner, hostile: HostileRegistry
) -> None:
    hostile.basic = "alice:secret"
    cairn("login", "--insecure", hostile.host, "-u", "alice", "--password-stdin", input="secret")

    async def first(request: web.Request) -> web.StreamResponse | None:
        if request.path.endswith("/tags/list") and "Authorization" in request.headers:
            if request.query.get("last") == "a":  # the Link's path, asked of the registry
                return web.json_response({"tags": ["c"]})
            link = f'<{hostile.other.url}/v2/lab/m/tags/list?last=a>; rel="next"'
            return web.json_response({"tags": ["a"]}, headers={"Link": link})
        return None

    async def other(request: web.Request) -> web.StreamResponse | None:
        return web.json_response({"tags": ["b"]})

    hostile.hook(first)
    hostile.other.hook = other
    result = cairn("tags", "--insecure", f"{hostile.host}/lab/m", check=False)
    assert "Traceback" not in result.stdout + result.stderr
    assert hostile.main.authorizations()  # the registry itself got the credentials
    assert hostile.other.authorizations() == []
    # as skopeo reads a Link: its path and query, at the registry's own origin
    assert result.returncode == 0 and result.stdout == "a\nc\n", result.stdout + result.stderr
    assert hostile.other.count("GET") == 0


@pytest.mark.parametrize(
    ("link", "said"),
    [
        ('<http://[zz]/v2/x>; rel="next"', "is not an http or https URL"),
        ('<file:///etc/passwd>; rel="next"', "is not an http or https URL"),
        ('<javascript:alert(1)>; rel="next"', "is not an http or https URL"),
    ],
    ids=["bad-host", "file", "javascript"],
)
def test_a_tags_link_that_is_no_web_url_is_one_line(
    cairn: Runner, hostile: HostileRegistry, link: str, said: str
) -> None:
    async def hook(request: web.Request) -> web.StreamResponse | None:
        return web.json_response({"tags": ["a"]}, headers={"Link": link})

    hostile.hook(hook)
    assert said in fails(cairn("tags", "--insecure", f"{hostile.host}/lab/m", check=False))


def test_a_tags_link_that_loops_ends_and_one_that_never_ends_is_bounded(
    cairn: Runner, hostile: HostileRegistry
) -> None:
    async def loop(request: web.Request) -> web.StreamResponse | None:
        link = '</v2/lab/m/tags/list?n=1>; rel="next"'
        return web.json_response({"tags": ["a", "b\x1b[2J", "c"]}, headers={"Link": link})

    hostile.hook(loop)
    listed = cairn("tags", "--insecure", f"{hostile.host}/lab/m")
    assert listed.stdout == "a\nc\n"  # no tag that no registry could hold (an escape) shown
    assert hostile.main.count("GET", "/tags/list") == 2

    served = 0

    async def forever(request: web.Request) -> web.StreamResponse | None:
        nonlocal served
        served += 1
        link = f'</v2/lab/m/tags/list?last=t{served}>; rel="next"'
        return web.json_response({"tags": [f"t{served}"] * 1000}, headers={"Link": link})

    hostile.hook(forever)
    line = fails(cairn("tags", "--insecure", f"{hostile.host}/lab/m", check=False))
    assert "cairn lists at most" in line or "cairn reads at most" in line


def test_a_registry_that_never_answers_is_one_line(cairn: Runner, hostile: HostileRegistry) -> None:
    ref = serve(hostile, "1", manifest())

    released = threading.Event()

    async def hang(request: web.Request) -> web.StreamResponse | None:
        while request.path != "/v2/" and not released.is_set():
            await asyncio.sleep(0.2)
        return None

    hostile.hook(hang)
    quick = {"CAIRN_STALL_SECONDS": "1"}  # the wait for headers is twice this, per try
    try:
        for args in (("inspect", ref), ("tags", f"{hostile.host}/lab/m")):
            line = fails(cairn(args[0], "--insecure", args[1], env=quick, check=False))
            assert "no status and headers" in line, line
    finally:
        released.set()  # the server's handlers end, so that it stops at once


def test_a_host_that_is_no_punycode_is_one_line(cairn: Runner) -> None:
    # `xn--zz` fits the name's grammar; httpx cannot decode it (and raised from deep inside)
    for args in (("inspect", "xn--zz/lab/m:1"), ("tags", "xn--zz/lab/m")):
        line = fails(cairn(args[0], "--insecure", args[1], check=False))
        assert "host 'xn--zz' cannot go in a URL" in line, line


def test_a_manifest_that_does_not_match_its_digest_is_never_printed(
    cairn: Runner, hostile: HostileRegistry
) -> None:
    honest = manifest()
    ref = serve(hostile, "1", honest)
    other = manifest(annotations={"evil": "yes"})

    async def lie(request: web.Request) -> web.StreamResponse | None:
        if "/manifests/" not in request.path:
            return None
        headers = {"Content-Type": OCI, "Docker-Content-Digest": digest(honest)}
        return web.Response(body=other, headers=headers)  # other bytes, the honest digest

    hostile.hook(lie)
    by_digest = f"{hostile.host}/lab/m@{digest(honest)}"
    for target in (ref, by_digest):
        for mode in ((), ("--raw",), ("--json",), ("--config",)):
            line = fails(cairn("inspect", "--insecure", *mode, target, check=False))
            assert "digest mismatch" in line and "evil" not in line, line


def test_lone_surrogates_in_names_and_config_are_printed_escaped(
    cairn: Runner, hostile: HostileRegistry
) -> None:
    # Valid JSON ("\ud800" is a legal escape) that decodes to text UTF-8 cannot write.
    config = b'{"k\\ud800": "v\\udfff"}'
    body = manifest(config, annotations={"a": "b"}).replace(b'"b"', b'"b\\udc00"')
    ref = serve(hostile, "1", body, config)
    text = cairn("inspect", "--insecure", ref)
    assert "Traceback" not in text.stdout + text.stderr
    assert "k\\ud800" in text.stdout and "v\\udfff" in text.stdout and "b\\udc00" in text.stdout
    shown = cairn("inspect", "--insecure", "--json", ref).stdout
    summary = json.loads(shown)  # still JSON, and the same JSON once read
    assert summary["ConfigData"] == json.loads(config)
    assert summary["Annotations"] == {"a": "b\udc00"}
