"""The trust policy, ``$CAIRN_HOME/policy.json``, in the shape of containers-policy.json.

.. code-block:: json

    {"default": [{"type": "accept"}],
     "registries": {"registry.lab:5000/team": [{"type": "signedBy", "keyPath": "team.pub"}]}}

A scope is ``HOST``, ``HOST/NAMESPACE``, ``HOST/NAMESPACE/NAME`` (or deeper, for a deep
OCI name), matched whole components at a time and without regard to case, as the store
matches names; the longest scope that matches a model's name wins, else ``default``.
Every requirement of the winning list must hold: ``accept``; ``reject``; ``signedBy``
with ``keyPath``, ``keyPaths`` (any one of them) or ``caPath``, met by one stored
signature that verifies and whose statement matches the model's current layers.

A relative key path is read from the policy file's folder. Without a policy file every
model is accepted, as before signatures existed. Every mistake in the file (an unknown
key, a key file that is not a public key) is an error naming the file and the place.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cairn.errors import CairnError, PolicyError, SignatureError
from cairn.i18n import Phrase
from cairn.manifests.reference import Reference

if TYPE_CHECKING:  # cryptography's x509 costs 50 ms to import: only where a policy needs it
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    from cairn.manifests.manifest import Manifest
    from cairn.manifests.models import LocalModel, Models

    Key = tuple[Path, ec.EllipticCurvePublicKey]
    Check = Callable[[Key | None, Sequence[x509.Certificate]], tuple[str | None, str]]
    """Verifies a model's signatures with one key (or CA roots): the signer, or None and
    why."""

Fail = Callable[..., PolicyError]

POLICY_FILE = "policy.json"
_MAX_POLICY = 1 << 20
_TOP_KEYS = frozenset({"default", "registries"})
_KINDS = ("accept", "reject", "signedBy")
_SIGNED_BY_KEYS = frozenset({"type", "keyPath", "keyPaths", "caPath"})


@dataclass(frozen=True)
class Requirement:
    """One requirement: its type, and for ``signedBy`` the keys or CA certificates."""

    kind: str
    keys: tuple[Key, ...] = ()
    roots: tuple[x509.Certificate, ...] = ()
    ca_path: Path | None = None

    def describe(self) -> str:
        if self.kind != "signedBy":
            return self.kind
        if self.ca_path is not None:
            return f"signedBy caPath {self.ca_path}"
        return "signedBy " + ", ".join(str(path) for path, _ in self.keys)


@dataclass(frozen=True)
class Policy:
    """A parsed policy: the default list and the lists by scope."""

    path: Path | None
    default: tuple[Requirement, ...] = (Requirement("accept"),)
    scopes: Mapping[tuple[str, ...], tuple[Requirement, ...]] = field(default_factory=dict)

    def applying_to(self, ref: Reference) -> tuple[str, tuple[Requirement, ...]]:
        """The winning scope (as written, or ``default``) and its requirements."""
        parts = _components(ref)
        best: tuple[str, ...] | None = None
        for scope in self.scopes:
            if tuple(parts[: len(scope)]) == scope and (best is None or len(scope) > len(best)):
                best = scope
        if best is None:
            return "default", self.default
        return "/".join(best), self.scopes[best]

    @property
    def accepts_everything(self) -> bool:
        """Whether no requirement can refuse anything (no work to do on a pull)."""
        lists = [self.default, *self.scopes.values()]
        return all(r.kind == "accept" for requirements in lists for r in requirements)


def _components(ref: Reference) -> list[str]:
    return [part.casefold() for part in (ref.host, *ref.namespace.split("/"), ref.name)]


def load_policy(home: Path) -> Policy:
    """``home/policy.json``, or a policy that accepts everything when there is none."""
    path = home / POLICY_FILE
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_POLICY + 1)
    except FileNotFoundError:
        return Policy(None)
    except OSError as exc:
        raise PolicyError(
            "cannot read the trust policy {path}: {reason}", path=path, reason=exc.strerror
        ) from None
    if len(data) > _MAX_POLICY:
        raise PolicyError("the trust policy {path} is larger than 1 MiB", path=path)
    return parse_policy(data, path)


def parse_policy(data: bytes, path: Path) -> Policy:
    """A policy from the file's bytes; a relative key path is read beside ``path``."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PolicyError(
            "the trust policy {path} is not JSON: {reason:.120}", path=path, reason=str(exc)
        ) from None
    if not isinstance(document, dict):
        raise PolicyError("the trust policy {path} is not a JSON object", path=path)
    for key in document:
        if key not in _TOP_KEYS:
            raise PolicyError(
                "the trust policy {path} has an unknown key {key!r:.60}"
                " (it takes default and registries)",
                path=path,
                key=key,
            )
    if "default" not in document:
        raise PolicyError("the trust policy {path} has no default list", path=path)
    default = _requirements(document["default"], path, "default")
    registries = document.get("registries", {})
    if not isinstance(registries, dict):
        raise PolicyError("the trust policy {path}: registries is not an object", path=path)
    scopes: dict[tuple[str, ...], tuple[Requirement, ...]] = {}
    for scope, listed in registries.items():
        parts = tuple(part.casefold() for part in scope.split("/"))
        if (
            not scope
            or any(not part or part in (".", "..") for part in parts)
            # a tag or digest (``name:1``, ``name@sha256:...``) never matches a name's
            # components: the model meant would fall to the default unguarded
            or any(mark in part for part in parts[1:] for mark in ":@")
            or "@" in parts[0]
        ):
            raise PolicyError(
                "the trust policy {path}: {scope!r:.120} is not a scope"
                " (HOST, HOST/NAMESPACE or HOST/NAMESPACE/NAME)",
                path=path,
                scope=scope,
            )
        if parts in scopes:
            raise PolicyError(
                "the trust policy {path} gives the scope {scope!r:.120} twice",
                path=path,
                scope=scope,
            )
        scopes[parts] = _requirements(listed, path, scope)
    return Policy(path, default, scopes)


def _requirements(listed: Any, path: Path, scope: str) -> tuple[Requirement, ...]:
    if not isinstance(listed, list) or not listed:
        raise PolicyError(
            "the trust policy {path}: {scope!r:.120} must be a non-empty list of requirements",
            path=path,
            scope=scope,
        )
    return tuple(_requirement(item, path, scope) for item in listed)


def _requirement(item: Any, path: Path, scope: str) -> Requirement:
    def _fail(why: str, **params: Any) -> PolicyError:
        return PolicyError(
            "the trust policy {path}, {scope!r:.120}: {why}",
            path=path,
            scope=scope,
            why=Phrase(why, **params),
        )

    if not isinstance(item, dict):
        raise _fail("a requirement must be an object with a type")
    kind = item.get("type")
    if kind not in _KINDS:
        raise _fail("unknown requirement type {kind!r:.60} (accept, reject or signedBy)", kind=kind)
    allowed = _SIGNED_BY_KEYS if kind == "signedBy" else frozenset({"type"})
    for key in item:
        if key not in allowed:
            raise _fail("{kind} has an unknown key {key!r:.60}", kind=kind, key=key)
    if kind != "signedBy":
        return Requirement(kind)
    given = [key for key in ("keyPath", "keyPaths", "caPath") if key in item]
    if len(given) != 1:
        raise _fail("signedBy needs exactly one of keyPath, keyPaths or caPath")
    if given[0] == "caPath":
        ca = _path(item["caPath"], path, _fail)
        return Requirement(kind, roots=tuple(_certificates(ca, _fail)), ca_path=ca)
    paths = [item["keyPath"]] if given[0] == "keyPath" else item["keyPaths"]
    if not isinstance(paths, list) or not paths:
        raise _fail("keyPaths must be a non-empty list of file names")
    return Requirement(kind, keys=tuple(_public_key(_path(p, path, _fail), _fail) for p in paths))


def _path(value: Any, policy: Path, _fail: Fail) -> Path:
    if not isinstance(value, str) or not value:
        raise _fail("a key or CA path must be a file name")
    return policy.parent / Path(value).expanduser()


def _public_key(path: Path, _fail: Fail) -> Key:
    from cairn.signing.oms import load_public_key

    try:
        return path, load_public_key(path)
    except SignatureError as exc:
        raise _fail("{reason}", reason=exc) from None


def _certificates(path: Path, _fail: Fail) -> Sequence[x509.Certificate]:
    from cairn.signing.oms import load_certificates

    try:
        found = load_certificates([path])
    except SignatureError as exc:
        raise _fail("{reason}", reason=exc) from None
    if not found:
        raise _fail("{ca} holds no certificate", ca=path)
    return found


@dataclass(frozen=True)
class Verdict:
    """What the policy said of a model: the scope, and the first failed requirement."""

    scope: str
    failed: Requirement | None = None
    why: str = ""
    signers: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.failed is None


def judge(requirements: Sequence[Requirement], scope: str, check: Check) -> Verdict:
    """Each requirement in turn; ``check(key, roots)`` verifies the model's stored
    signatures with one key (or CA) and gives (signer or None, why it failed)."""
    signers: list[str] = []
    for requirement in requirements:
        if requirement.kind == "accept":
            continue
        if requirement.kind == "reject":
            return Verdict(scope, requirement)
        reasons: list[str] = []
        signer: str | None = None
        if requirement.ca_path is not None:
            signer, why = check(None, requirement.roots)
            reasons.append(why)
        for key in requirement.keys:
            if signer is not None:
                break
            signer, why = check(key, ())
            reasons.append(why)
        if signer is None:
            return Verdict(scope, requirement, "; ".join(dict.fromkeys(r for r in reasons if r)))
        signers.append(signer)
    return Verdict(scope, None, "", tuple(signers))


def refusal(ref: Reference, verdict: Verdict) -> CairnError:
    """The error for a model the policy refused: the rule, and why it failed."""
    assert verdict.failed is not None
    return PolicyError(
        "the trust policy refuses {display}: rule {rule} of scope {scope}: {why:.300}",
        display=ref.display,
        rule=verdict.failed.describe(),
        scope=verdict.scope,
        why=verdict.why
        or Phrase(
            "the policy rejects every model here"
            if verdict.failed.kind == "reject"
            else "no signature"
        ),
    )


def enforce(models: Models, model: LocalModel, policy: Policy) -> Verdict:
    """The policy's verdict on a stored model, from the signatures stored beside it
    (their statements checked against its current layers; blobs are not rehashed)."""
    from cairn.i18n import localize
    from cairn.signing.check import check_bundle
    from cairn.signing.store import signatures

    scope, requirements = policy.applying_to(model.reference)
    if all(r.kind == "accept" for r in requirements):
        return Verdict(scope)
    stored = signatures(models, model)

    def check(key: Key | None, roots: Sequence[x509.Certificate]) -> tuple[str | None, str]:
        if not stored:
            return None, localize(PolicyError("the model has no signature"))
        reasons: list[str] = []
        for signature in stored:
            checked = check_bundle(
                models, model, str(signature.digest), signature.bundle, key, roots, rehash=False
            )
            if checked.ok:
                return checked.signer, ""
            assert checked.error is not None
            reasons.append(localize(checked.error))
        return None, "; ".join(dict.fromkeys(reasons))

    return judge(requirements, scope, check)


def hold(models: Models, ref: Reference, manifest: Manifest, policy: Policy) -> None:
    """Refuse the model ``manifest`` under the name ``ref`` (tagged already, or about to
    be) unless ``policy`` takes it, judged by the signatures stored beside it."""
    if policy.accepts_everything:
        return
    import time

    from cairn.manifests.models import LocalModel

    verdict = enforce(models, LocalModel(ref, manifest, time.time(), Path()), policy)
    if not verdict.ok:
        raise refusal(ref, verdict)


def require_trusted(models: Models, model: LocalModel, home: Path | None = None) -> None:
    """Refuse to run a model whose stored signatures do not meet the policy for its name
    (``home``: where policy.json is; default ``$CAIRN_HOME``)."""
    if home is None:
        from cairn import config

        home = config.load().home
    hold(models, model.reference, model.manifest, load_policy(home))
