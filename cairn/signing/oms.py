"""OpenSSF Model Signing (OMS) bundles: build, parse and verify them.

An OMS signature is a Sigstore bundle (JSON, media type
``application/vnd.dev.sigstore.bundle.v0.3+json``) holding a DSSE envelope
whose payload is an in-toto Statement v1. The statement's predicate
(``https://model_signing/signature/v1.0``) lists every file of the model as
``{name, algorithm, digest}``; its one subject is the model's name with the
sha256 of all those digests' bytes, in the order listed (sorted by name).

The signature is ECDSA (P-256, P-384 or P-521, hashed with SHA-256, SHA-384
or SHA-512 to match) over the DSSE pre-authentication encoding of the
payload, DER-encoded and then base64. A key-signed bundle names its key by a
hint, the hex sha256 of the public key's PEM (SubjectPublicKeyInfo); a
certificate-signed one carries the chain, leaf first, as base64 DER. This is
what the ``model_signing`` reference implementation writes and reads.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cairn.errors import SignatureError
from cairn.i18n import Phrase
from cairn.manifests.mediatypes import SIGSTORE_BUNDLE, SIGSTORE_BUNDLES
from cairn.signing import MAX_BUNDLE_SIZE

if TYPE_CHECKING:  # x509 costs 50 ms to import: only where a certificate is read
    from cryptography import x509

BUNDLE_MEDIA_TYPE = SIGSTORE_BUNDLE
BUNDLE_MEDIA_TYPES = SIGSTORE_BUNDLES
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
GIT_PATHS = (".git", ".github", ".gitattributes", ".gitignore")
"""What ``model_signing sign`` leaves out of a directory by default, and writes in
``ignore_paths``; cairn writes the same, so both tools' bundles read alike."""
MAX_CERTIFICATES = 10
"""Certificates a bundle's chain may carry: the leaf and a few intermediates."""

_CURVES: dict[str, hashes.HashAlgorithm] = {
    "secp256r1": hashes.SHA256(),
    "secp384r1": hashes.SHA384(),
    "secp521r1": hashes.SHA512(),
}


@dataclass(frozen=True)
class Resource:
    """One file of a signed model: its name (a relative POSIX path) and sha256 (hex)."""

    name: str
    digest: str


@dataclass(frozen=True)
class Statement:
    """The in-toto statement an OMS bundle signs: the model's files and their digests."""

    model_name: str
    resources: tuple[Resource, ...]
    ignore_paths: tuple[str, ...] = GIT_PATHS
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    """Serialization parameters kept as read (``allow_symlinks``, ...)."""

    @classmethod
    def of(cls, model_name: str, files: Sequence[tuple[str, str]]) -> Statement:
        """A statement over ``(name, sha256 hex)`` pairs, sorted as model_signing sorts them."""
        ordered = sorted(files, key=lambda item: tuple(item[0].split("/")))
        return cls(model_name, tuple(Resource(name, digest) for name, digest in ordered))

    @property
    def root_digest(self) -> str:
        """The subject's sha256: over the raw bytes of every resource digest, in order."""
        hasher = hashlib.sha256()
        for resource in self.resources:
            hasher.update(bytes.fromhex(resource.digest))
        return hasher.hexdigest()

    def to_bytes(self) -> bytes:
        body = {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": self.model_name, "digest": {"sha256": self.root_digest}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "resources": [
                    {"name": r.name, "algorithm": "sha256", "digest": r.digest}
                    for r in self.resources
                ],
                "serialization": {
                    "method": "files",
                    "ignore_paths": list(self.ignore_paths),
                    "allow_symlinks": False,
                    "hash_type": "sha256",
                },
            },
        }
        return json.dumps(body, indent=2, ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Statement:
        obj = _json_object(data, Phrase("the signed statement"))
        if obj.get("_type") != STATEMENT_TYPE:
            raise SignatureError(
                "the signed statement is of type {kind!r:.100}, not an in-toto Statement v1",
                kind=obj.get("_type"),
            )
        if obj.get("predicateType") != PREDICATE_TYPE:
            raise SignatureError(
                "the signed statement's predicate type is {kind!r:.100}, not {wanted}",
                kind=obj.get("predicateType"),
                wanted=PREDICATE_TYPE,
            )
        predicate = obj.get("predicate")
        subjects = obj.get("subject")
        if not isinstance(predicate, dict) or not isinstance(subjects, list) or len(subjects) != 1:
            raise SignatureError("the signed statement needs one subject and a predicate")
        serialization_ = predicate.get("serialization")
        if not isinstance(serialization_, dict) or serialization_.get("method") != "files":
            method = serialization_.get("method") if isinstance(serialization_, dict) else None
            raise SignatureError(
                "the signature hashes the model by {method!r:.40}; cairn checks signatures"
                " over whole files (method 'files') only",
                method=method,
            )
        ignore = serialization_.get("ignore_paths", [])
        if not isinstance(ignore, list) or not all(isinstance(p, str) for p in ignore):
            raise SignatureError("the signed statement's ignore_paths is not a list of paths")
        raw = predicate.get("resources")
        if not isinstance(raw, list):
            raise SignatureError("the signed statement lists no resources")
        resources = []
        named: set[str] = set()
        for entry in raw:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise SignatureError("a resource of the signed statement has no name")
            name, digest = entry["name"], entry.get("digest")
            if entry.get("algorithm") != "sha256":
                raise SignatureError(
                    "file {name!r:.200} is signed with a {algorithm!r:.40} digest; cairn checks"
                    " sha256 digests only",
                    name=name,
                    algorithm=entry.get("algorithm"),
                )
            if not isinstance(digest, str) or len(digest) != 64 or not _is_hex(digest):
                raise SignatureError(
                    "file {name!r:.200} has no valid sha256 digest in the signature", name=name
                )
            if name in named:
                # Two digests vouched for under one name: which one was meant?
                raise SignatureError(
                    "the signed statement lists file {name!r:.200} twice", name=name
                )
            named.add(name)
            resources.append(Resource(name, digest.lower()))
        subject = subjects[0]
        name = subject.get("name") if isinstance(subject, dict) else None
        digest = subject.get("digest") if isinstance(subject, dict) else None
        statement = cls(
            name if isinstance(name, str) else "",
            tuple(resources),
            tuple(ignore),
            {k: v for k, v in serialization_.items() if k not in ("method", "ignore_paths")},
        )
        if not isinstance(digest, dict) or digest.get("sha256") != statement.root_digest:
            raise SignatureError(
                "the signed statement is inconsistent: its subject digest is not that of its files"
            )
        return statement


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def _json_object(data: bytes, what: Phrase) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        raise SignatureError("{what} is not JSON (cut short?)", what=what) from None
    if not isinstance(obj, dict):
        raise SignatureError("{what} is not a JSON object", what=what)
    return obj


def pae(payload: bytes, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """DSSE's pre-authentication encoding: what the signature is made over."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def key_hint(public_key: ec.EllipticCurvePublicKey) -> str:
    """How a bundle names its key: the hex sha256 of the key's PEM (SubjectPublicKeyInfo)."""
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(pem).hexdigest()


def _hash_for(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> hashes.HashAlgorithm:
    found = _CURVES.get(key.curve.name)
    if found is None:
        raise SignatureError(
            "keys on curve {curve} cannot sign models (P-256, P-384 or P-521)",
            curve=key.curve.name,
        )
    return found


def _read(path: Path, what: Phrase) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SignatureError(
            "cannot read {what} {path}: {reason}", what=what, path=path, reason=exc.strerror
        ) from None


def load_private_key(path: Path, password: str | None = None) -> ec.EllipticCurvePrivateKey:
    data = _read(path, Phrase("the key"))
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except TypeError:
        raise SignatureError(
            "the key {path} is encrypted: cairn sign takes an unencrypted key", path=path
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise SignatureError("{path} is not a PEM private key", path=path) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SignatureError(
            "{path} is not an elliptic-curve key (P-256, P-384 or P-521)", path=path
        )
    _hash_for(key)
    return key


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    data = _read(path, Phrase("the key"))
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise SignatureError("{path} is not a PEM public key", path=path) from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureError(
            "{path} is not an elliptic-curve key (P-256, P-384 or P-521)", path=path
        )
    _hash_for(key)
    return key


def load_certificates(paths: Sequence[Path]) -> list[x509.Certificate]:
    from cryptography import x509

    found: list[x509.Certificate] = []
    for path in paths:
        try:
            certs = x509.load_pem_x509_certificates(_read(path, Phrase("the certificate")))
        except ValueError:
            raise SignatureError("{path} holds no PEM certificate", path=path) from None
        found.extend(certs)
    return found


def sign(
    statement: Statement,
    key: ec.EllipticCurvePrivateKey,
    certificates: Sequence[x509.Certificate] = (),
) -> bytes:
    """An OMS bundle (JSON bytes) signing ``statement`` with ``key``; with ``certificates``
    (the signing certificate first, then its chain) the bundle carries them instead of a
    key hint."""
    if certificates and certificates[0].public_key() != key.public_key():
        raise SignatureError("the certificate is not that of the key: their public keys differ")
    payload = statement.to_bytes()
    signature = key.sign(pae(payload), ec.ECDSA(_hash_for(key)))
    material: dict[str, Any]
    if certificates:
        chain = [
            {"rawBytes": base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()}
            for c in certificates
        ]
        material = {"x509CertificateChain": {"certificates": chain}, "tlogEntries": []}
    else:
        material = {"publicKey": {"hint": key_hint(key.public_key())}, "tlogEntries": []}
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": material,
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
        },
    }
    return json.dumps(bundle, indent=2).encode()


@dataclass(frozen=True)
class Bundle:
    """A parsed OMS bundle; nothing in it is trusted until :meth:`verify` says so."""

    payload: bytes
    signatures: tuple[bytes, ...]
    hint: str | None
    certificates: tuple[x509.Certificate, ...]

    @classmethod
    def from_bytes(cls, data: bytes) -> Bundle:
        if len(data) > MAX_BUNDLE_SIZE:
            raise SignatureError(
                "the signature is larger than {limit} bytes", limit=MAX_BUNDLE_SIZE
            )
        obj = _json_object(data, Phrase("the signature"))
        media_type = obj.get("mediaType")
        if media_type not in BUNDLE_MEDIA_TYPES:
            raise SignatureError(
                "the signature's media type {media_type!r:.100} is not that of a Sigstore"
                " bundle v0.3 ({wanted})",
                media_type=media_type,
                wanted=BUNDLE_MEDIA_TYPE,
            )
        envelope = obj.get("dsseEnvelope")
        if not isinstance(envelope, dict):
            raise SignatureError("the signature has no DSSE envelope (dsseEnvelope)")
        if envelope.get("payloadType") != PAYLOAD_TYPE:
            raise SignatureError(
                "the signature's payload type is {kind!r:.100}, not {wanted}",
                kind=envelope.get("payloadType"),
                wanted=PAYLOAD_TYPE,
            )
        payload = _base64(envelope.get("payload"), "dsseEnvelope.payload")
        raw_sigs = envelope.get("signatures")
        if not isinstance(raw_sigs, list) or not raw_sigs:
            raise SignatureError("the signature's DSSE envelope holds no signature")
        if len(raw_sigs) != 1:
            # As sigstore has it; each would cost an ECDSA verification, and 16 MiB of
            # them minutes of CPU for every key a policy lists.
            raise SignatureError(
                "the signature's DSSE envelope holds {count} signatures; a Sigstore bundle"
                " holds exactly one",
                count=len(raw_sigs),
            )
        signatures = tuple(
            _base64(s.get("sig") if isinstance(s, dict) else None, "dsseEnvelope.signatures.sig")
            for s in raw_sigs
        )
        material = obj.get("verificationMaterial")
        if not isinstance(material, dict):
            raise SignatureError("the signature has no verificationMaterial")
        hint = None
        public_key = material.get("publicKey")
        if isinstance(public_key, dict) and isinstance(public_key.get("hint"), str):
            hint = public_key["hint"]
        certificates: list[x509.Certificate] = []
        chain = material.get("x509CertificateChain")
        if isinstance(chain, dict):
            listed = chain.get("certificates") or []
            if not isinstance(listed, list) or len(listed) > MAX_CERTIFICATES:
                raise SignatureError(
                    "the signature's certificate chain is not a list of at most {limit}"
                    " certificates",
                    limit=MAX_CERTIFICATES,
                )
            for entry in listed:
                der = _base64(
                    entry.get("rawBytes") if isinstance(entry, dict) else None,
                    "x509CertificateChain.certificates.rawBytes",
                )
                try:
                    from cryptography import x509

                    certificates.append(x509.load_der_x509_certificate(der))
                except ValueError:
                    raise SignatureError("a certificate in the signature is damaged") from None
        return cls(payload, signatures, hint, tuple(certificates))

    def _verified_by(self, key: ec.EllipticCurvePublicKey) -> bool:
        algorithm = ec.ECDSA(_hash_for(key))
        for signature in self.signatures:
            try:
                key.verify(signature, pae(self.payload), algorithm)
                return True
            except InvalidSignature:
                continue
        return False

    def verify_with_key(self, key: ec.EllipticCurvePublicKey) -> Statement:
        """The statement, once the signature is found to be by ``key``."""
        if self.hint is not None and self.hint != key_hint(key):
            raise SignatureError(
                "signed by another key (key hint {hint:.16}…, not {mine:.16}…)",
                hint=self.hint,
                mine=key_hint(key),
            )
        if self.certificates and self.certificates[0].public_key() != key:
            raise SignatureError("signed by another key (the certificate's key is not this one)")
        if not self._verified_by(key):
            raise SignatureError(
                "the signature does not verify with this key: another key, or a changed statement"
            )
        return Statement.from_bytes(self.payload)

    def verify_with_ca(
        self, roots: Sequence[x509.Certificate], now: datetime | None = None
    ) -> tuple[Statement, str]:
        """The statement and the signer (the leaf's subject), once the certificate chain is
        found to lead to one of ``roots`` and the leaf's key made the signature."""
        from cryptography.x509 import verification

        if not self.certificates:
            raise SignatureError(
                "the signature carries no certificate (it was made with a bare key: use --key)"
            )
        leaf, *intermediates = self.certificates
        policy = (
            verification.PolicyBuilder()
            .store(verification.Store(list(roots)))
            .time(now or datetime.now(UTC))
            .extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=verification.ExtensionPolicy.permit_all(),
            )
        )
        try:
            policy.build_client_verifier().verify(leaf, intermediates)
        except verification.VerificationError as exc:
            raise SignatureError(
                "the signing certificate {subject} does not lead to the given CA: {reason:.200}",
                subject=leaf.subject.rfc4514_string(),
                reason=str(exc),
            ) from None
        if not _may_sign(leaf):
            raise SignatureError(
                "the certificate {subject} is not for signing (key usage)",
                subject=leaf.subject.rfc4514_string(),
            )
        key = leaf.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not self._verified_by(key):
            raise SignatureError("the signature does not verify with its certificate's key")
        return Statement.from_bytes(self.payload), leaf.subject.rfc4514_string()


def _may_sign(certificate: x509.Certificate) -> bool:
    """As model_signing asks: key usage digitalSignature, or extended key usage codeSigning."""
    from cryptography import x509

    try:
        if certificate.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            return True
    except x509.ExtensionNotFound:
        pass
    try:
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        return x509.oid.ExtendedKeyUsageOID.CODE_SIGNING in usage
    except x509.ExtensionNotFound:
        return False


def _base64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise SignatureError("the signature's {what} is missing", what=what)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the signature's {what} is not base64", what=what) from None
