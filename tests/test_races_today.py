"""Races of the deep names, the referrers and the partials, forced rather than hoped for.

Each test pauses one side at the point a review named (a wrapped function, a
paused process) and lets the other side run there.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cairn.manifests.reference import Reference, parse_reference
from cairn.manifests.tagstore import TagStore
from tests.conftest import Runner, cairn_env, modelfile, serving


def test_a_write_survives_a_delete_removing_the_folder_it_just_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two deletes of the last tags of ``h/org/team/a`` and ``h/org/team/b`` remove their
    empty folders while a write makes ``h/org/team/c``: the write makes ``team`` again,
    and the second delete, paused before its ``rmdir(team)``, removes it before the write
    makes ``c`` in it. The write makes the folders once more."""
    tags = TagStore(tmp_path)
    tags.write(parse_reference("h.example/org/team/a:1"), b"{}")
    team = tmp_path / "manifests" / "h.example" / "org" / "team"
    real = os.mkdir
    raced: list[str] = []

    def mkdir(path: str | os.PathLike[str], mode: int = 0o777) -> None:
        real(path, mode)
        if Path(path) == team and not raced:
            raced.append(str(path))
            os.rmdir(path)  # the paused delete's rmdir, now: the folder is still empty

    tags.delete(parse_reference("h.example/org/team/a:1"))  # every folder up to the host's
    monkeypatch.setattr(os, "mkdir", mkdir)
    written = tags.write(parse_reference("h.example/org/team/c:1"), b'{"c": 1}')
    monkeypatch.undo()
    assert raced, "the interleaving was not forced"
    assert written.read_bytes() == b'{"c": 1}'
    assert [t.reference.display for t in tags] == ["h.example/org/team/c:1"]


HOOK = """
import os, sys, time
from pathlib import Path

hook = Path(os.environ["RACE_HOOK"])
real = os.replace
done = []


def replace(src, dst, *args, **kwargs):
    # Pause once, before the rename of a tag into its folder: the folder is made.
    parts = Path(dst).parts
    if not done and "manifests" in parts and os.environ.get("RACE_SKIP", "-") not in parts:
        done.append(1)
        (hook / "paused").touch()
        deadline = time.monotonic() + 120
        while not (hook / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    return real(src, dst, *args, **kwargs)


os.replace = replace
sys.argv[0] = "cairn"
from cairn.cli import main

main()
"""


def paused_cairn(store: Path, hook: Path, *args: str, skip: str = "-") -> subprocess.Popen[str]:
    """A real ``cairn`` process that stops before renaming a tag into place (in no folder
    named ``skip``) until ``hook/go`` exists (it says so with ``hook/paused``)."""
    hook.mkdir()
    script = hook / "hooked.py"
    script.write_text(HOOK)
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        env={**cairn_env(store), "RACE_HOOK": str(hook), "RACE_SKIP": skip},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_cp_into_a_folder_a_server_delete_empties_keeps_the_new_tag(
    cairn: Runner, tmp_path: Path, tiny_gguf: Path
) -> None:
    """``cairn cp`` into ``registry.example/org/team/model`` pauses with the folder made;
    a DELETE through ``cairn registry serve`` of that repository's last tag comes then,
    which would remove every folder up to the host's: it waits for the copy (the tags'
    lock), or the copy makes them again. Either way the new tag is kept, the old gone."""
    served = tmp_path / "served"
    served.mkdir()
    at_server = {"CAIRN_MODELS": str(served)}
    modelfile(tmp_path, f"FROM {tiny_gguf}\n", "Race.Modelfile")
    cairn("create", "tiny:1", "-f", str(tmp_path / "Race.Modelfile"), env=at_server)
    cairn("cp", "tiny:1", "registry.example/org/team/model:1", env=at_server)
    model = served / "manifests" / "registry.example" / "org" / "team" / "model"
    hook = tmp_path / "hook"
    with serving(served) as host:
        copying = paused_cairn(served, hook, "cp", "tiny:1", "registry.example/org/team/model:2")
        wait_for(hook / "paused", copying)
        assert model.is_dir()
        gone: list[int] = []
        url = f"http://{host}/v2/registry.example/org/team/model/manifests/1"
        deleting = threading.Thread(
            target=lambda: gone.append(httpx.delete(url, timeout=120).status_code)
        )
        deleting.start()
        deleting.join(2)  # it waits for the copy's lock on the tags (or, unlocked, is done)
        (hook / "go").touch()
        deleting.join(120)
        assert gone == [202]
        out, err = copying.communicate(timeout=120)
        assert copying.returncode == 0, err
        assert "Traceback" not in out + err
        listed = cairn("list", env=at_server).stdout
        assert "registry.example/org/team/model:2" in listed
        assert "registry.example/org/team/model:1" not in listed
        answer = httpx.get(
            f"http://{host}/v2/registry.example/org/team/model/tags/list", timeout=60
        )
        assert answer.json()["tags"] == ["2"]


def test_a_pull_interrupted_while_it_waits_for_a_partial_ends_and_the_next_one_lands(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    """Another process holds the partial of a blob (a pull under way): a second pull
    waits to open it. Ctrl-C then ends that pull at once (it does not wait out the
    other's download), and a pull once the other is done lands the blob whole."""
    served = tmp_path / "served"
    served.mkdir()
    at_server = {"CAIRN_MODELS": str(served)}
    modelfile(tmp_path, f"FROM {tiny_gguf}\n", "Race.Modelfile")
    cairn("create", "tiny:1", "-f", str(tmp_path / "Race.Modelfile"), env=at_server)
    manifest = json.loads(
        (served / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "1").read_bytes()
    )
    weights = max(manifest["layers"], key=lambda layer: layer["size"])["digest"]
    partial = store / ".cairn" / "tmp" / f"{weights.split(':')[1]}.partial"
    partial.parent.mkdir(parents=True, exist_ok=True)
    with serving(served) as host:
        held = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(held, fcntl.LOCK_EX)  # the other pull's lock
        try:
            pulling = subprocess.Popen(
                [sys.executable, "-m", "cairn", "pull", f"{host}/library/tiny:1", "--insecure"],
                env=cairn_env(store),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            deadline = time.monotonic() + 120
            while not _holds_open(pulling.pid, partial):
                assert pulling.poll() is None, pulling.communicate()
                assert time.monotonic() < deadline, "the pull never opened the partial"
                time.sleep(0.05)
            pulling.send_signal(signal.SIGINT)
            try:
                out, err = pulling.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                pulling.kill()
                out, err = pulling.communicate()
                pytest.fail("Ctrl-C did not end a pull waiting for another's partial")
            assert pulling.returncode != 0
            assert "Traceback" not in out + err
        finally:
            os.close(held)
        cairn("pull", f"{host}/library/tiny:1", "--insecure")
    shown = cairn("show", f"{host}/library/tiny:1", "--modelfile").stdout
    assert "FROM" in shown
    assert cairn("verify").returncode == 0


def _holds_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open."""
    try:
        links = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in links:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            continue
    return False


OCI = "application/vnd.oci.image.manifest.v1+json"
CHUNK = 1 << 20


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_deep_pushes_sharing_parents_race_deletes_prunes_and_held_uploads(
    tmp_path: Path,
) -> None:
    """Pushes of many deep repositories under shared parents, DELETEs of their tags and
    ``cairn prune`` processes at once, while one upload's body is held open (slowloris)
    and another upload is cancelled mid-body: no server error, every last tag pushed is
    there, the held upload still lands and the cancelled one never does."""
    served = tmp_path / "served"
    (served / "manifests" / "registry.example").mkdir(parents=True)  # a host it holds
    with (
        serving(served) as host,
        httpx.Client(base_url=f"http://{host}", timeout=120) as http,
    ):
        config = b"{}"
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": _sha(config),
                    "size": len(config),
                },
                "layers": [],
            }
        ).encode()
        config_at = {"digest": _sha(config)}
        http.post("/v2/registry.example/keep/x/blobs/uploads/", params=config_at, content=config)
        kept = http.put(
            "/v2/registry.example/keep/x/manifests/1", content=body, headers={"Content-Type": OCI}
        )
        assert kept.status_code == 201, (
            kept.text
        )  # the host's folder stays while its repositories churn

        held_data = os.urandom(2 * CHUNK)
        held_at = _start_upload(http, "lab/held")
        held = _held_patch(host, held_at, held_data, CHUNK)
        _wait_for_offset(http, held_at, CHUNK)

        cancelled_data = os.urandom(2 * CHUNK)
        cancelled_at = _start_upload(http, "lab/cancelled")
        cancelled = _held_patch(host, cancelled_at, cancelled_data, CHUNK)
        _wait_for_offset(http, cancelled_at, CHUNK)
        # The client cancels: a DELETE of the session (it waits for the PATCH that holds
        # the session), then it drops the PATCH's connection mid-body.
        cancels: list[int] = []
        cancel = threading.Thread(
            target=lambda: cancels.append(http.delete(cancelled_at).status_code)
        )
        cancel.start()
        cancelled.close()
        cancel.join(120)
        assert cancels in ([204], [404]), cancels
        sessions = [_start_upload(http, f"lab/many{i}") for i in range(50)]

        answers: list[int] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            repo = f"registry.example/org/team{i % 3}/m{i}"
            headers = {"Content-Type": OCI}
            http.post(f"/v2/{repo}/blobs/uploads/", params=config_at, content=config)
            got = [
                http.put(f"/v2/{repo}/manifests/1", content=body, headers=headers).status_code,
                http.put(f"/v2/{repo}/manifests/2", content=body, headers=headers).status_code,
                http.delete(f"/v2/{repo}/manifests/1").status_code,
                http.delete(f"/v2/{repo}/manifests/2").status_code,
                http.put(f"/v2/{repo}/manifests/3", content=body, headers=headers).status_code,
            ]
            with lock:
                answers.extend(got)

        prunes = [
            subprocess.Popen(
                [sys.executable, "-m", "cairn", "prune"],
                env=cairn_env(served),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        pushed = threading.Event()

        def trickle() -> None:  # a slow client: a few bytes now and then, never idle long
            rest = memoryview(held_data)[CHUNK:]
            while not pushed.is_set() and len(rest) > 1024:
                held.sendall(rest[:16])
                rest = rest[16:]
                pushed.wait(1.0)
            held.sendall(rest)

        slow = threading.Thread(target=trickle)
        slow.start()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
        for prune in prunes:
            out, err = prune.communicate(timeout=180)
            assert prune.returncode == 0, err
            assert "Traceback" not in out + err
        assert 500 not in answers, answers
        assert set(answers) <= {201, 202}, answers

        pushed.set()
        slow.join(60)
        assert _answer_of(held) == 202
        sealed = http.put(held_at, params={"digest": _sha(held_data)})
        assert sealed.status_code == 201
        assert http.head(f"/v2/lab/held/blobs/{_sha(held_data)}").status_code == 200
        assert http.head(f"/v2/lab/cancelled/blobs/{_sha(cancelled_data)}").status_code == 404
        for location in sessions:
            assert http.delete(location).status_code == 204
        for i in range(12):
            tags = http.get(f"/v2/registry.example/org/team{i % 3}/m{i}/tags/list").json()["tags"]
            assert tags == ["3"], (i, tags)
    listed = subprocess.run(
        [sys.executable, "-m", "cairn", "list"],
        env=cairn_env(served),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in listed.stdout + listed.stderr
    assert sum(line.split()[0].endswith(":3") for line in listed.stdout.splitlines()[1:]) == 12


def _start_upload(http: httpx.Client, repo: str) -> str:
    answer = http.post(f"/v2/{repo}/blobs/uploads/")
    assert answer.status_code == 202
    return str(answer.headers["Location"])


def _held_patch(host: str, location: str, body: bytes, sent: int) -> socket.socket:
    """A PATCH whose first ``sent`` bytes of ``body`` went out; the rest is held back."""
    path = location.split(host, 1)[1] if host in location else location
    conn = socket.create_connection(tuple(host.split(":")))  # type: ignore[arg-type]
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    conn.sendall(head.encode() + body[:sent])
    return conn


def _answer_of(conn: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        piece = conn.recv(4096)
        if not piece:
            break
        data += piece
    conn.close()
    return int(data.split(b" ", 2)[1])


def _wait_for_offset(http: httpx.Client, location: str, offset: int) -> None:
    """Until the upload's status says ``offset`` bytes arrived: its writer holds it now."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if http.get(location).headers.get("Range") == f"0-{offset - 1}":
            return
        time.sleep(0.02)
    raise AssertionError(f"the upload never reached byte {offset}")


def test_prune_with_no_grace_during_a_pull_keeps_the_signatures_it_stored(
    cairn: Runner, store: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    """A pull of a signed model stores its signature, then pauses before tagging the
    model; ``cairn prune --grace 0`` then runs. The signature has no tagged subject yet,
    but the pull holds the store's writer lock: the prune waits for it, and the pulled
    model verifies."""
    served = tmp_path / "served"
    served.mkdir()
    at_server = {"CAIRN_MODELS": str(served)}
    modelfile(tmp_path, f"FROM {tiny_gguf}\n", "Race.Modelfile")
    cairn("create", "tiny:1", "-f", str(tmp_path / "Race.Modelfile"), env=at_server)
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = tmp_path / "key.pem", tmp_path / "key.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    cairn("sign", "tiny:1", "--key", str(private), env=at_server)
    hook = tmp_path / "hook"
    with serving(served) as host:
        name = f"{host}/library/tiny:1"
        pulling = paused_cairn(store, hook, "pull", name, "--insecure", skip=".by-digest")
        wait_for(hook / "paused", pulling)
        kept = list((store / "manifests").rglob(".by-digest/*"))
        assert len(kept) == 1  # the signature, stored before the tag
        pruning = subprocess.Popen(
            [sys.executable, "-m", "cairn", "prune", "--grace", "0"],
            env=cairn_env(store),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lock = store / ".cairn" / "locks" / "store.lock"
        deadline = time.monotonic() + 120
        while not _holds_open(pruning.pid, lock):  # it waits for the pull's lock now
            assert pruning.poll() is None, pruning.communicate()
            assert time.monotonic() < deadline, "the prune never took up the lock"
            time.sleep(0.02)
        (hook / "go").touch()
        out, err = pulling.communicate(timeout=120)
        assert pulling.returncode == 0, err
        out, err = pruning.communicate(timeout=120)
        assert pruning.returncode == 0, err
        assert "Traceback" not in out + err
    assert kept[0].is_file()
    checked = cairn("verify", name, "--key", str(public))
    assert "Traceback" not in checked.stdout + checked.stderr


def test_writes_differing_in_case_at_once_make_one_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes tag ``h.example/Org/x:a`` and ``h.example/org/x:b`` in a store that has
    neither folder: the first pauses after choosing its folders, the second writes. They
    end in one folder (the store's lookups ignore case; two folders would show one
    repository twice), not ``Org`` beside ``org``."""
    first, second = TagStore(tmp_path), TagStore(tmp_path)
    (tmp_path / "manifests" / "h.example").mkdir(parents=True)
    chosen, go = threading.Event(), threading.Event()
    real = TagStore._refuse_overlap

    def pause(self: TagStore, ref: Reference, target: Path) -> None:
        if self is first:
            chosen.set()
            go.wait(60)
        real(self, ref, target)

    monkeypatch.setattr(TagStore, "_refuse_overlap", pause)
    errors: list[BaseException] = []

    def write(tags: TagStore, name: str) -> None:
        try:
            tags.write(parse_reference(name), b"{}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    a = threading.Thread(target=write, args=(first, "h.example/Org/x:a"))
    a.start()
    assert chosen.wait(60)
    b = threading.Thread(target=write, args=(second, "h.example/org/x:b"))
    b.start()
    b.join(5)  # done, or waiting for the first: either way the first goes on now
    go.set()
    a.join(60)
    b.join(60)
    assert not errors, errors
    assert len(os.listdir(tmp_path / "manifests" / "h.example")) == 1
    assert sorted(t.reference.tag or "" for t in first) == ["a", "b"]
