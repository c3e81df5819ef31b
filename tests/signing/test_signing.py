"""``cairn sign`` and ``cairn verify --key/--ca/--signature``, as whole processes, and
interop with the reference implementation's ``model_signing`` CLI both ways."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import Runner, serving
from tests.ggufmaker import write_gguf

BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
TEMPLATE = "hi {{ .Prompt }}"


def model_signing() -> str:
    """The reference implementation's CLI (the test extra installs it): missing, a test
    that needs it fails, never skips, as for docker-registry."""
    path = Path(sys.executable).parent / "model_signing"
    if not path.exists():
        pytest.fail("the model_signing CLI is not installed (make test installs model-signing)")
    return str(path)


def run_model_signing(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [model_signing(), *args], capture_output=True, text=True, timeout=300, check=False
    )


def pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def pem_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_pair(folder: Path, name: str, curve: ec.EllipticCurve) -> tuple[Path, Path]:
    key = ec.generate_private_key(curve)
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(pem_private(key))
    public.write_bytes(pem_public(key))
    return private, public


def model_dir(folder: Path, gguf: str = "tiny.gguf", fill: bytes = b"tiny") -> Path:
    """A directory as a publisher would sign it: the weights and a template file."""
    folder.mkdir(parents=True, exist_ok=True)
    write_gguf(folder / gguf, fill=fill)
    (folder / "template.txt").write_text(TEMPLATE)
    return folder


def create(cairn: Runner, tmp_path: Path, name: str, directory: Path, extra: str = "") -> None:
    """``cairn create`` from ``directory``'s files; the Modelfile lies outside it."""
    gguf = next(directory.glob("*.gguf"))
    modelfile = tmp_path / f"Modelfile.{name}"
    modelfile.write_text(f'FROM {gguf}\nTEMPLATE """{TEMPLATE}"""\n{extra}')
    cairn("create", name, "-f", str(modelfile))


def manifest_of(store: Path, name: str) -> dict[str, Any]:
    path = store / "manifests" / "registry.ollama.ai" / "library" / name / "latest"
    manifest: dict[str, Any] = json.loads(path.read_bytes())
    return manifest


def layer_digest(store: Path, name: str, media_type: str) -> str:
    layers = manifest_of(store, name)["layers"]
    return next(str(layer["digest"]) for layer in layers if layer["mediaType"] == media_type)


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()], ids=["P-256", "P-384"])
def test_sign_then_verify_names_the_key(
    cairn: Runner, tmp_path: Path, curve: ec.EllipticCurve
) -> None:
    private, public = key_pair(tmp_path, "team", curve)
    create(cairn, tmp_path, "tiny", model_dir(tmp_path / "tiny"))

    signed = cairn("sign", "tiny", "--key", str(private))
    assert "signed tiny:latest (2 files)" in signed.stdout

    checked = cairn("verify", "tiny", "--key", str(public), "--rehash")
    assert "tiny:latest: signature sha256:" in checked.stdout
    assert f"by {public} (sha256 " in checked.stdout
    assert "2 files verified" in checked.stdout
    assert checked.stderr == ""

    as_json = json.loads(cairn("verify", "tiny", "--key", str(public), "--json").stdout)
    assert as_json[0]["ok"] is True
    assert as_json[0]["signatures"][0]["files"] == 2

    # without the signature options, verify keeps its meaning: the blobs rehashed
    assert "blobs checked, all intact" in cairn("verify", "tiny").stdout


def test_verify_by_another_key_fails(cairn: Runner, tmp_path: Path) -> None:
    private, _ = key_pair(tmp_path, "team", ec.SECP256R1())
    _, other = key_pair(tmp_path, "other", ec.SECP256R1())
    create(cairn, tmp_path, "tiny", model_dir(tmp_path / "tiny"))
    cairn("sign", "tiny", "--key", str(private))

    result = cairn("verify", "tiny", "--key", str(other), check=False)
    assert result.returncode == 1
    hint = hashlib.sha256(other.read_bytes()).hexdigest()[:16]
    assert result.stderr.startswith("Error: signed by another key (key hint ")
    assert result.stderr.endswith(f", not {hint}…)\n")


def test_model_without_signature(cairn: Runner, tmp_path: Path) -> None:
    _, public = key_pair(tmp_path, "team", ec.SECP256R1())
    create(cairn, tmp_path, "tiny", model_dir(tmp_path / "tiny"))
    result = cairn("verify", "tiny", "--key", str(public), check=False)
    assert result.returncode == 1
    assert (
        result.stderr == "Error: tiny:latest has no signature (cairn sign makes one;"
        " --signature checks a signature file)\n"
    )


def test_flipped_bit_is_caught_by_rehash(cairn: Runner, tmp_path: Path, store: Path) -> None:
    private, public = key_pair(tmp_path, "team", ec.SECP256R1())
    create(cairn, tmp_path, "tiny", model_dir(tmp_path / "tiny"))
    cairn("sign", "tiny", "--key", str(private))

    blob = (
        store
        / "blobs"
        / layer_digest(store, "tiny", "application/vnd.ollama.image.model").replace(":", "-")
    )
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01
    blob.write_bytes(bytes(data))

    result = cairn("verify", "tiny", "--key", str(public), "--rehash", check=False)
    assert result.returncode == 1
    assert "Error: file tiny.gguf of tiny:latest is corrupt" in result.stderr
    assert "Traceback" not in result.stderr


def test_bundle_for_another_model_fails_naming_the_file(cairn: Runner, tmp_path: Path) -> None:
    private, public = key_pair(tmp_path, "team", ec.SECP256R1())
    create(cairn, tmp_path, "tiny", model_dir(tmp_path / "tiny"))
    create(cairn, tmp_path, "other", model_dir(tmp_path / "other", fill=b"else"))
    cairn("sign", "other", "--key", str(private), "-o", str(tmp_path / "other.sig"))

    result = cairn(
        "verify",
        "tiny",
        "--key",
        str(public),
        "--signature",
        str(tmp_path / "other.sig"),
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.endswith(
        "Error: tiny:latest does not match the signature: changed since signing: tiny.gguf\n"
    )
    # nor can it be kept beside a model it does not list
    result = cairn("sign", "tiny", "--attach", str(tmp_path / "other.sig"), check=False)
    assert result.returncode == 1
    assert "changed since signing: tiny.gguf" in result.stderr


def _bundle(tmp_path: Path, cairn: Runner) -> tuple[Path, bytes]:
    private, public = key_pair(tmp_path, "team", ec.SECP256R1())
    create(cairn, tmp_path, "tiny", model_dir(tmp_path / "tiny"))
    cairn("sign", "tiny", "--key", str(private), "-o", str(tmp_path / "good.sig"))
    return public, (tmp_path / "good.sig").read_bytes()


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda b: b[: len(b) // 2], "Error: the signature is not JSON (cut short?)"),
        (lambda b: b"not json at all", "Error: the signature is not JSON (cut short?)"),
        (
            lambda b: b.replace(BUNDLE_TYPE.encode(), b"application/vnd.example.bundle+json"),
            "Error: the signature's media type 'application/vnd.example.bundle+json' is not",
        ),
    ],
    ids=["truncated", "not-json", "unknown-media-type"],
)
def test_broken_bundles(cairn: Runner, tmp_path: Path, damage: object, said: str) -> None:
    public, good = _bundle(tmp_path, cairn)
    bad = tmp_path / "bad.sig"
    assert callable(damage)
    bad.write_bytes(damage(good))
    result = cairn("verify", "tiny", "--key", str(public), "--signature", str(bad), check=False)
    assert result.returncode == 1
    assert said in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_changed_statement_does_not_verify(cairn: Runner, tmp_path: Path) -> None:
    """A bundle whose statement was edited after signing (another digest) is refused."""
    public, good = _bundle(tmp_path, cairn)
    bundle = json.loads(good)
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["subject"][0]["name"] = "renamed"
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (tmp_path / "edited.sig").write_text(json.dumps(bundle))
    result = cairn(
        "verify",
        "tiny",
        "--key",
        str(public),
        "--signature",
        str(tmp_path / "edited.sig"),
        check=False,
    )
    assert result.returncode == 1
    assert "Error: the signature does not verify with this key" in result.stderr


def test_model_signing_to_cairn(cairn: Runner, tmp_path: Path) -> None:
    """A directory signed by `model_signing sign key`, made a model by `cairn create`,
    verifies with `cairn verify --signature`, and once kept (--attach), with --key."""
    private, public = key_pair(tmp_path, "publisher", ec.SECP384R1())
    directory = model_dir(tmp_path / "published")
    signature = tmp_path / "model.sig"
    made = run_model_signing(
        "sign", "key", str(directory), "--private_key", str(private), "--signature", str(signature)
    )
    assert made.returncode == 0, made.stderr
    create(cairn, tmp_path, "published", directory)

    checked = cairn("verify", "published", "--key", str(public), "--signature", str(signature))
    assert "2 files verified" in checked.stdout

    kept = cairn("sign", "published", "--attach", str(signature))
    assert "as a signature of published:latest (2 files)" in kept.stdout
    checked = cairn("verify", "published", "--key", str(public), "--rehash")
    assert "published:latest: signature sha256:" in checked.stdout
    assert "2 files verified" in checked.stdout

    # a file the publisher signed that the model lacks, and one the model has unsigned
    (directory / "README.md").write_text("read me")
    run_model_signing(
        "sign", "key", str(directory), "--private_key", str(private), "--signature", str(signature)
    )
    result = cairn(
        "verify", "published", "--key", str(public), "--signature", str(signature), check=False
    )
    assert result.returncode == 1
    assert "signed but not in the model: README.md" in result.stderr
    (directory / "README.md").unlink()
    run_model_signing(
        "sign", "key", str(directory), "--private_key", str(private), "--signature", str(signature)
    )
    create(cairn, tmp_path, "withsystem", directory, extra='SYSTEM """be brief"""\n')
    result = cairn(
        "verify", "withsystem", "--key", str(public), "--signature", str(signature), check=False
    )
    assert result.returncode == 1
    assert result.stderr.endswith("not signed: system.txt\n")


def test_cairn_to_model_signing(cairn: Runner, tmp_path: Path, store: Path) -> None:
    """A model signed by `cairn sign`, its files laid out by their names (the title of the
    GGUF layer, `template.txt` for the template), verifies with `model_signing verify key`."""
    private, public = key_pair(tmp_path, "team", ec.SECP521R1())
    create(cairn, tmp_path, "tiny", model_dir(tmp_path / "tiny"))
    cairn("sign", "tiny", "--key", str(private), "-o", str(tmp_path / "tiny.sig"))

    layout = tmp_path / "layout"
    layout.mkdir()
    for layer in manifest_of(store, "tiny")["layers"]:
        name = (
            layer.get("annotations", {}).get("org.opencontainers.image.title")
            or {"application/vnd.ollama.image.template": "template.txt"}[layer["mediaType"]]
        )
        blob = store / "blobs" / layer["digest"].replace(":", "-")
        (layout / name).write_bytes(blob.read_bytes())
    assert sorted(p.name for p in layout.iterdir()) == ["template.txt", "tiny.gguf"]

    result = run_model_signing(
        "verify",
        "key",
        str(layout),
        "--public_key",
        str(public),
        "--signature",
        str(tmp_path / "tiny.sig"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Verification succeeded" in result.stdout

    (layout / "template.txt").write_text("changed")
    result = run_model_signing(
        "verify",
        "key",
        str(layout),
        "--public_key",
        str(public),
        "--signature",
        str(tmp_path / "tiny.sig"),
    )
    assert result.returncode != 0


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    not_after: datetime,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        signer = key
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), True
        )
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False
        )
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), False
        )
        signer = issuer[1]
    return builder.sign(signer, hashes.SHA256())


def _pem(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def test_certificate_signing(cairn: Runner, tmp_path: Path, store: Path) -> None:
    later = datetime.now(UTC) + timedelta(days=30)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Team CA", ca_key, None, later)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate("release-bot", leaf_key, (ca, ca_key), later)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = _certificate("Other CA", other_key, None, later)
    (tmp_path / "leaf.key").write_bytes(pem_private(leaf_key))
    ca_pem, leaf_pem = _pem(tmp_path / "ca.pem", ca), _pem(tmp_path / "leaf.pem", leaf)
    other_pem = _pem(tmp_path / "other-ca.pem", other_ca)
    create(cairn, tmp_path, "tiny", model_dir(tmp_path / "tiny"))

    cairn(
        "sign",
        "tiny",
        "--key",
        str(tmp_path / "leaf.key"),
        "--cert",
        str(leaf_pem),
        "--chain",
        str(ca_pem),
        "-o",
        str(tmp_path / "tiny.sig"),
    )
    checked = cairn("verify", "tiny", "--ca", str(ca_pem))
    assert "by CN=release-bot: 2 files verified" in checked.stdout

    result = cairn("verify", "tiny", "--ca", str(other_pem), check=False)
    assert result.returncode == 1
    assert (
        "Error: the signing certificate CN=release-bot does not lead to the given CA"
        in result.stderr
    )

    # the reference implementation reads the certificate chain cairn wrote
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "tiny.gguf").write_bytes((tmp_path / "tiny" / "tiny.gguf").read_bytes())
    (layout / "template.txt").write_text(TEMPLATE)
    result = run_model_signing(
        "verify",
        "certificate",
        str(layout),
        "--certificate_chain",
        str(ca_pem),
        "--signature",
        str(tmp_path / "tiny.sig"),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_registry_lists_signatures_as_referrers(
    cairn: Runner, tmp_path: Path, store: Path
) -> None:
    private, _ = key_pair(tmp_path, "team", ec.SECP256R1())
    create(cairn, tmp_path, "tiny", model_dir(tmp_path / "tiny"))
    signed = cairn("sign", "tiny", "--key", str(private)).stdout
    referrer = signed.rsplit("signature ", 1)[1].strip()
    model_path = store / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    subject = "sha256:" + hashlib.sha256(model_path.read_bytes()).hexdigest()
    with serving(store) as host:
        answer = httpx.get(f"http://{host}/v2/library/tiny/referrers/{subject}", timeout=60)
        assert answer.status_code == 200
        listed = answer.json()["manifests"]
        assert [(m["digest"], m["artifactType"]) for m in listed] == [(referrer, BUNDLE_TYPE)]
        got = httpx.get(f"http://{host}/v2/library/tiny/manifests/{referrer}", timeout=60).json()
        assert got["subject"]["digest"] == subject
        bundle = httpx.get(
            f"http://{host}/v2/library/tiny/blobs/{got['layers'][0]['digest']}", timeout=60
        )
        assert json.loads(bundle.content)["mediaType"] == BUNDLE_TYPE


def test_prune_keeps_a_kept_models_signature_and_frees_a_removed_ones(
    cairn: Runner, tmp_path: Path, store: Path
) -> None:
    private, public = key_pair(tmp_path, "team", ec.SECP256R1())
    create(cairn, tmp_path, "tiny", model_dir(tmp_path / "tiny"))
    cairn("sign", "tiny", "--key", str(private), "-o", str(tmp_path / "tiny.sig"))
    bundle_blob = (
        store
        / "blobs"
        / ("sha256-" + hashlib.sha256((tmp_path / "tiny.sig").read_bytes()).hexdigest())
    )
    assert bundle_blob.exists()

    cairn("prune", "--grace", "0")
    assert bundle_blob.exists()
    assert "2 files verified" in cairn("verify", "tiny", "--key", str(public)).stdout

    cairn("rm", "tiny", "--grace", "0")
    cairn("prune", "--grace", "0")
    assert not bundle_blob.exists()
    assert not list((store / "manifests").rglob("sha256-*"))
