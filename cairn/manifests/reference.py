"""Model references: ``[scheme://][host[:port]/][namespace/]name[:tag][@sha256:<hex>]``.

Ollama's defaults fill what is left out (host ``registry.ollama.ai``,
namespace ``library``, tag ``latest``), and every part obeys the OCI
distribution grammar as well, so a reference is always pushable and always
a safe relative path under the store: no part can be empty, ``.`` or
``..``, or hold ``/``, ``\\``, ``%`` or NUL.

Two components are ``namespace/name``, unless the first looks like a host
(holds a ``.`` or a ``:``, or is ``localhost``), as Docker reads them; three
are ``host/namespace/name``. Four or more are an OCI repository of any depth
on a registry other than registry.ollama.ai (``ghcr.io/org/team/model``): the
first must look like a host, the namespace holds the middle components
joined by ``/`` (``org/team``), so :attr:`Reference.repository` is the
registry's path unchanged, and each component obeys the OCI grammar alone.
Letters may be upper or lower case; the store looks names up ignoring case,
as Ollama does.

A store is shared with Ollama, so a namespace or name Ollama accepts is
read too, where it breaks the OCI grammar: a part that starts with a
letter, digit or ``_`` and holds letters, digits, ``_``, ``-`` and ``.``
(``library/my_model_``, ``_team/llama``, ``library/a..b``); such a name
cannot be pushed (:func:`require_oci`). Writing a tag refuses what Ollama
would skip as corrupt (:func:`require_ollama_readable`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cairn.blobstore.digest import Digest
from cairn.config import DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG
from cairn.errors import InvalidReferenceError, StoreError
from cairn.i18n import Phrase

MAX_LENGTH = 512
_ALLOWED = re.compile(r"[A-Za-z0-9._:/@-]+")
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"(?::[0-9]{1,5})?"
)
# OCI path component, case-insensitively (Ollama accepts upper case).
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*", re.IGNORECASE)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
# Ollama's own rule for a namespace or model part (types/model/name.go, isValidPart).
_OLLAMA_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_MAX_COMPONENT = 80
_MAX_OLLAMA_TAG = 80
_MAX_HOST = 253


@dataclass(frozen=True)
class Reference:
    """A parsed, validated model reference with defaults filled in."""

    host: str
    namespace: str
    name: str
    tag: str | None
    digest: Digest | None = None
    insecure: bool = False
    """True when the reference was written with ``http://``."""

    @classmethod
    def parse(cls, text: str) -> Reference:
        return parse_reference(text)

    @property
    def repository(self) -> str:
        """``namespace/name``: the repository on the registry."""
        return f"{self.namespace}/{self.name}"

    @property
    def deep(self) -> bool:
        """Whether the namespace has more than one component (``org/team``): an OCI name
        Ollama's layout of exactly ``host/namespace/name`` never sees."""
        return "/" in self.namespace

    @property
    def components(self) -> tuple[str, ...]:
        """``host``, each namespace component, ``name``: the repository's folders in the store."""
        return (self.host, *self.namespace.split("/"), self.name)

    @property
    def tag_or_default(self) -> str:
        return self.tag or DEFAULT_TAG

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.host, self.namespace, self.name, tag, None, self.insecure)

    def __str__(self) -> str:
        text = f"{self.host}/{self.namespace}/{self.name}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def display(self) -> str:
        """The short form ``ollama list`` shows: defaults left out, the tag kept."""
        if self.host.casefold() != DEFAULT_HOST:
            text = f"{self.host}/{self.namespace}/{self.name}"
        elif self.namespace.casefold() != DEFAULT_NAMESPACE:
            text = f"{self.namespace}/{self.name}"
        else:
            text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def same_model(self, other: Reference) -> bool:
        """Equal but for case, as the store compares names."""
        return str(self).casefold() == str(other).casefold()


def _fail(text: str, why: str, **params: Any) -> InvalidReferenceError:
    return InvalidReferenceError(
        "invalid model name {text!r:.120}: {why}", text=text, why=Phrase(why, **params)
    )


def _looks_like_host(part: str) -> bool:
    return "." in part or ":" in part or part.casefold() == "localhost"


def parse_reference(text: str) -> Reference:
    """Parse and validate a reference; raise :class:`InvalidReferenceError` naming the bad part."""
    if not isinstance(text, str):
        raise InvalidReferenceError(
            "a model name must be a string, not {kind}", kind=type(text).__name__
        )
    if not text:
        raise _fail(text, "it is empty")
    if len(text) > MAX_LENGTH:
        raise _fail(text, "longer than {limit} characters", limit=MAX_LENGTH)
    insecure = False
    rest = text
    for scheme in ("https://", "http://"):
        if rest.lower().startswith(scheme):
            insecure = scheme == "http://"
            rest = rest[len(scheme) :]
            break
    if not _ALLOWED.fullmatch(rest):
        bad = next((c for c in rest if not _ALLOWED.fullmatch(c)), "")
        raise _fail(text, f"character {bad!r} is not allowed" if bad else "it is empty")

    digest: Digest | None = None
    if "@" in rest:
        rest, _, digest_text = rest.partition("@")
        try:
            digest = Digest.parse(digest_text)
        except StoreError:
            raise _fail(
                text,
                "digest {digest!r:.80} is not sha256:<64 hex digits> nor sha512:<128 hex digits>",
                digest=digest_text,
            ) from None

    tag: str | None = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise _fail(
                text,
                "tag {tag!r} must be 1-128 letters, digits, '_', '.' or '-',"
                " not starting with '.' or '-'",
                tag=tag,
            )
    if tag is None and digest is None:
        tag = DEFAULT_TAG

    parts = rest.split("/")
    if len(parts) == 1:
        host, namespace, name = DEFAULT_HOST, DEFAULT_NAMESPACE, parts[0]
    elif len(parts) == 2:
        if _looks_like_host(parts[0]):
            host, namespace, name = parts[0], DEFAULT_NAMESPACE, parts[1]
        else:
            host, namespace, name = DEFAULT_HOST, parts[0], parts[1]
    elif len(parts) == 3:
        host, namespace, name = parts
    elif _looks_like_host(parts[0]):
        host, namespace, name = parts[0], "/".join(parts[1:-1]), parts[-1]
    else:
        raise _fail(
            text,
            "a name of more than three parts needs a registry host first"
            " (host[:port]/org/team/name); registry.ollama.ai takes only namespace/name",
        )

    if not host or len(host) > _MAX_HOST or not _HOST.fullmatch(host):
        raise _fail(
            text, "host {host!r} is not a valid host name (with an optional :port)", host=host
        )
    if ":" in host and not 0 < int(host.rpartition(":")[2]) < 65536:
        raise _fail(text, "host {host!r} has a port outside 1-65535", host=host)
    if "/" in namespace:
        _check_deep(text, host, [*namespace.split("/"), name])
        return Reference(host, namespace, name, tag, digest, insecure)
    for part, value in ((Phrase("namespace"), namespace), (Phrase("name"), name)):
        if not value:
            raise _fail(text, "the {label} is empty", label=part)
        if len(value) > _MAX_COMPONENT:
            raise _fail(
                text,
                "the {label} is longer than {limit} characters",
                label=part,
                limit=_MAX_COMPONENT,
            )
        if not _COMPONENT.fullmatch(value) and not _OLLAMA_PART.fullmatch(value):
            raise _fail(
                text,
                "{label} {value!r} must start with a letter, digit or '_' and hold only"
                " letters, digits, '_', '-' and '.'",
                label=part,
                value=value,
            )
    return Reference(host, namespace, name, tag, digest, insecure)


def _check_deep(text: str, host: str, components: list[str]) -> None:
    """The components of a name deeper than ``host/namespace/name``: OCI's grammar alone."""
    if host.casefold() == DEFAULT_HOST:
        raise _fail(
            text,
            "{host} takes only namespace/name, not a deeper repository",
            host=DEFAULT_HOST,
        )
    for value in components:
        if not value:
            raise _fail(text, "a part of the repository path is empty")
        if len(value) > _MAX_COMPONENT:
            raise _fail(
                text,
                "repository part {value!r:.40} is longer than {limit} characters",
                value=value,
                limit=_MAX_COMPONENT,
            )
        if not _COMPONENT.fullmatch(value):
            raise _fail(
                text,
                "repository part {value!r} must be letters and digits separated by single"
                " '.', '_' or '__', or by dashes (a name deeper than host/namespace/name is"
                " an OCI name)",
                value=value,
            )


def is_oci(ref: Reference) -> bool:
    """Whether every part also obeys the OCI distribution grammar (what a registry takes)."""
    return all(_COMPONENT.fullmatch(part) for part in ref.components[1:])


def require_oci(ref: Reference) -> None:
    """Refuse a name only Ollama's grammar allows, before it reaches a registry."""
    if not is_oci(ref):
        raise InvalidReferenceError(
            "{display} cannot be pushed: an OCI registry takes names of letters and digits"
            " separated by single '.', '_' or '__', or by dashes; copy it to such a name first"
            " (cairn cp)",
            display=ref.display,
        )


def require_ollama_readable(ref: Reference) -> None:
    """Refuse to store a tag Ollama, which reads the same layout, would skip as corrupt.

    A deep name (``host/org/team/name``) is one Ollama never reads (see docs/store.md),
    so only the tag's length is checked for it."""
    if "." in ref.namespace and not ref.deep:
        raise InvalidReferenceError(
            "cannot store {display}: Ollama, which shares this store's layout, skips a"
            " namespace with a '.' in it ({namespace!r})",
            display=ref.display,
            namespace=ref.namespace,
        )
    if ref.tag is not None and len(ref.tag) > _MAX_OLLAMA_TAG:
        raise InvalidReferenceError(
            "cannot store {display}: Ollama, which shares this store's layout, skips a tag"
            " longer than {limit} characters",
            display=ref.display,
            limit=_MAX_OLLAMA_TAG,
        )


def is_tag(text: str) -> bool:
    """Whether ``text`` obeys the tag grammar (OCI's, which Ollama's tags also obey)."""
    return bool(_TAG.fullmatch(text))
