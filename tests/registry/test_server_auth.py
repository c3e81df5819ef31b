"""``cairn registry serve --htpasswd``: bcrypt never stalls the server, nor tells who exists."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import threading
import time
from pathlib import Path

import bcrypt
import httpx

from tests.conftest import Runner, serving
from tests.ggufmaker import write_gguf

SLOW = 15  # bcrypt's cost: about two seconds a check here, long against anything else


def htpasswd(tmp_path: Path, password: bytes, cost: int) -> Path:
    path = tmp_path / "htpasswd"
    path.write_text(f"carol:{bcrypt.hashpw(password, bcrypt.gensalt(rounds=cost)).decode()}\n")
    return path


def test_a_password_bcrypt_cannot_take_is_refused_not_an_error(tmp_path: Path) -> None:
    users = htpasswd(tmp_path, b"pw", 4)
    with serving(tmp_path / "served", "--htpasswd", str(users)) as host:
        base = f"http://{host}/v2/"
        assert httpx.get(base, auth=("carol", "pw")).status_code == 200
        assert httpx.get(base, auth=("carol", "pw")).status_code == 200  # the cached success
        assert httpx.get(base, auth=("carol", "pw" + "x" * 100)).status_code == 401
        assert httpx.get(base, auth=("carol", "x" * 100)).status_code == 401
        assert httpx.get(base, headers={"Authorization": "Basic !!!"}).status_code == 401


def test_checking_a_password_does_not_stop_other_requests(tmp_path: Path) -> None:
    users = htpasswd(tmp_path, b"right", SLOW)
    with serving(tmp_path / "served", "--htpasswd", str(users)) as host:
        base = f"http://{host}/v2/"
        finished: list[str] = []

        def wrong() -> None:
            httpx.get(base, auth=("carol", "wrong"), timeout=120)
            finished.append("bcrypt")

        checking = threading.Thread(target=wrong)
        checking.start()
        time.sleep(0.3)  # the wrong password is being checked now
        assert httpx.get(base, timeout=120).status_code == 401  # an anonymous request
        finished.append("anonymous")
        checking.join(120)
        assert finished == ["anonymous", "bcrypt"]


def test_an_unknown_user_costs_a_bcrypt_check_too(tmp_path: Path) -> None:
    users = htpasswd(tmp_path, b"right", SLOW)
    with serving(tmp_path / "served", "--htpasswd", str(users)) as host:
        base = f"http://{host}/v2/"
        started = time.monotonic()
        assert httpx.get(base, auth=("carol", "wrong"), timeout=120).status_code == 401
        known = time.monotonic() - started
        started = time.monotonic()
        assert httpx.get(base, auth=("mallory", "wrong"), timeout=120).status_code == 401
        unknown = time.monotonic() - started
        # Without a dummy check the unknown user answers at once (a thousandth of the time).
        assert unknown > known / 3, (known, unknown)


def test_clients_take_the_bearer_challenge_of_ollama_keys(cairn: Runner, tmp_path: Path) -> None:
    """With --ollama-keys a 401 challenges with Bearer; cairn and skopeo fetch a token with
    their htpasswd credentials from the realm and push and pull as before."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    users = htpasswd(tmp_path, b"pw", 4)
    keys = tmp_path / "ollama-keys"
    public = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    )
    keys.write_bytes(public + b" someone@lab\n")
    gguf = write_gguf(tmp_path / "m.gguf", fill=b"w" * 64)
    (tmp_path / "MF").write_text(f"FROM {gguf}\n")
    cairn("create", "tiny:1", "-f", str(tmp_path / "MF"))
    root = tmp_path / "served"
    with serving(root, "--htpasswd", str(users), "--ollama-keys", str(keys)) as host:
        anonymous = httpx.get(f"http://{host}/v2/")
        assert anonymous.headers["WWW-Authenticate"].startswith("Bearer realm=")
        login = ("login", host, "-u", "carol", "--password-stdin", "--insecure")
        cairn(*login, input="pw\n")
        cairn("push", "tiny:1", f"{host}/library/tiny:1", "--insecure", "-q")
        assert (root / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "1").is_file()
        skopeo = ["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false"]
        image = oci_dir(tmp_path / "image")
        into = [f"dir:{image}", f"docker://{host}/skopeo/tiny:2"]
        subprocess.run([*skopeo, "--dest-creds", "carol:pw", *into], check=True, timeout=60)
        out = [f"docker://{host}/skopeo/tiny:2", f"dir:{tmp_path / 'back'}"]
        subprocess.run([*skopeo, "--src-creds", "carol:pw", *out], check=True, timeout=60)
        # skopeo gzips an uncompressed layer on its way into a registry
        layer = json.loads((tmp_path / "back" / "manifest.json").read_text())["layers"][0]
        data = (tmp_path / "back" / layer["digest"].removeprefix("sha256:")).read_bytes()
        assert gzip.decompress(data) == b"layer" * 100
        wrong = [*skopeo, "--src-creds", "carol:nope", out[0], f"dir:{tmp_path / 'x'}"]
        assert subprocess.run(wrong, capture_output=True, timeout=60).returncode != 0


def oci_dir(path: Path) -> Path:
    """A skopeo ``dir:`` image: one OCI layer and its config."""
    path.mkdir()
    (path / "version").write_text("Directory Transport Version: 1.1\n")
    descriptors = []
    for media_type, data in (
        ("application/vnd.oci.image.config.v1+json", b'{"architecture":"amd64","os":"linux"}'),
        ("application/vnd.oci.image.layer.v1.tar", b"layer" * 100),
    ):
        hexdigest = hashlib.sha256(data).hexdigest()
        (path / hexdigest).write_bytes(data)
        descriptors.append(
            {"mediaType": media_type, "digest": f"sha256:{hexdigest}", "size": len(data)}
        )
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptors[0],
        "layers": descriptors[1:],
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_ollama_keys_on_every_address_need_the_public_url(cairn: Runner, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"
    )
    args = ("registry", "serve", "--addr", "0.0.0.0:1", "--ollama-keys", str(keys))
    refused = cairn(*args, "--root", str(tmp_path / "s"), check=False)
    assert refused.returncode != 0 and "needs --public-url" in refused.stderr
    bad = cairn(*args, "--public-url", "ftp://x", "--root", str(tmp_path / "s"), check=False)
    assert bad.returncode != 0 and "not an http or https URL" in bad.stderr
