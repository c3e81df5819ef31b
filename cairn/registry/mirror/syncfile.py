"""The file ``cairn sync`` reads (skopeo sync's shape), its source references and
destinations."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cairn.blobstore import Digest
from cairn.errors import (
    ConfigError,
    InvalidDigestError,
)
from cairn.i18n import N_, Phrase
from cairn.sanitize import untrusted

_KEYS = ("images", "images-by-tag-regex", "tls-verify")
_SKOPEO_ONLY = {
    "credentials": N_("cairn takes credentials from `cairn login`"),
    "cert-dir": N_("cairn takes a CA bundle from CAIRN_CA_BUNDLE"),
    "images-by-semver": N_("cairn does not filter by semantic version"),
}
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(f"{_COMPONENT}(?:/{_COMPONENT})*")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_HOST = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?")


# -- what to copy -------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One source repository and which of its tags to copy."""

    host: str
    repository: str
    insecure: bool = False
    tags: tuple[str, ...] | None = None
    """Tags (or digests) to copy; None: every tag (filtered by ``pattern`` if set)."""
    pattern: re.Pattern[str] | None = None

    @property
    def name(self) -> str:
        return f"{self.host}/{self.repository}"


def parse_source(text: str, insecure: bool = False) -> Source:
    """``HOST/ns/name`` (every tag), ``HOST/ns/name:tag`` or ``HOST/ns/name@sha256:...``."""
    plain = text.startswith("http://")
    rest = text.removeprefix("http://").removeprefix("https://")
    host, _, path = rest.partition("/")
    pinned: str | None = None
    if "@" in path:
        path, _, pinned = path.partition("@")
    last = path.rsplit("/", 1)[-1]
    tag: str | None = None
    if ":" in last:
        path, _, tag = path.rpartition(":")
    if not _HOST.fullmatch(host) or not _REPOSITORY.fullmatch(path):
        raise ConfigError(
            "{text!r:.200} is not a repository reference (HOST/namespace/name[:tag])", text=text
        )
    wanted = [w for w in (tag, pinned) if w]
    for each in wanted:
        _check_tag(each, text)
    return Source(host, path, insecure or plain, tuple(wanted[-1:]) if wanted else None)


def _check_tag(tag: str, where: str) -> None:
    if TAG.fullmatch(tag):
        return
    try:
        Digest.parse(tag)
    except InvalidDigestError:
        raise ConfigError(
            "{where}: {tag!r:.140} is not a tag or a digest", where=where, tag=tag
        ) from None


def load_sync_file(path: Path, insecure: bool = False) -> list[Source]:
    """The sources a skopeo-sync-shaped YAML file names; an error names the line."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("cannot read {path}: {exc}", path=path, exc=exc) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise ConfigError(
            "{path}:{line}: not valid YAML: {problem}",
            path=path,
            line=line,
            problem=getattr(exc, "problem", None) or exc,
        ) from None

    def _fail(node: yaml.Node, message: str, **params: Any) -> ConfigError:
        return ConfigError(
            "{path}:{line}: {problem}",
            path=path,
            line=node.start_mark.line + 1,
            problem=Phrase(message, **params),
        )

    def mapping(node: yaml.Node, what: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise _fail(node, "{what} must be a mapping", what=what)
        pairs = []
        lines: dict[str, int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                raise _fail(key, "a key of {what} must be a plain string", what=what)
            name = str(key.value)
            if name in lines:  # YAML forbids it; PyYAML would keep the last silently
                raise _fail(
                    key,
                    "key {key!r:.100} of {what} is given twice: on line {first} and here",
                    key=name,
                    what=what,
                    first=lines[name],
                )
            lines[name] = key.start_mark.line + 1
            pairs.append((name, key, value))
        return pairs

    if root is None:
        raise ConfigError("{path} names no registry", path=path)
    sources: list[Source] = []
    for host, host_node, body in mapping(root, "the file"):
        if not _HOST.fullmatch(host):
            raise _fail(host_node, "{host!r:.100} is not a registry host", host=host)
        plain = insecure
        entries: list[tuple[str, yaml.Node, yaml.Node, str]] = []
        for key, key_node, value in mapping(body, host):
            if key in _SKOPEO_ONLY:
                raise _fail(
                    key_node,
                    "key {key!r} is skopeo's; {why}",
                    key=key,
                    why=Phrase(_SKOPEO_ONLY[key]),
                )
            if key not in _KEYS:
                raise _fail(
                    key_node,
                    "unknown key {key!r} under {host} (known: {known})",
                    key=untrusted(key[:100]),
                    host=host,
                    known=", ".join(_KEYS),
                )
            if key == "tls-verify":
                flag = value.value.lower() if isinstance(value, yaml.ScalarNode) else None
                if flag not in ("true", "false", "yes", "no", "on", "off"):
                    raise _fail(value, "tls-verify must be true or false")
                plain = plain or flag in ("false", "no", "off")
                continue
            for repository, repo_node, spec in mapping(value, key):
                if not _REPOSITORY.fullmatch(repository):
                    raise _fail(
                        repo_node,
                        "{repository!r:.200} is not a repository name",
                        repository=repository,
                    )
                entries.append((key, repo_node, spec, repository))
        for key, _node, spec, repository in entries:
            if key == "images":
                if not isinstance(spec, yaml.SequenceNode) or not all(
                    isinstance(item, yaml.ScalarNode) for item in spec.value
                ):
                    raise _fail(
                        spec, "the tags of {repository} must be a list", repository=repository
                    )
                tags = tuple(str(item.value) for item in spec.value)
                for item in spec.value:
                    try:
                        _check_tag(str(item.value), repository)
                    except ConfigError as exc:
                        raise _fail(item, "{problem}", problem=exc.message) from None
                sources.append(Source(host, repository, plain, tags or None))
            else:
                if not isinstance(spec, yaml.ScalarNode) or not spec.value:
                    raise _fail(
                        spec,
                        "the tag regex of {repository} must be a string",
                        repository=repository,
                    )
                try:
                    pattern = re.compile(str(spec.value))
                except re.error as exc:
                    raise _fail(
                        spec,
                        "the tag regex {regex!r:.200} does not compile: {exc}",
                        regex=spec.value,
                        exc=exc,
                    ) from None
                if backtracks_badly(pattern.pattern):
                    raise _fail(
                        spec,
                        "the tag regex {regex!r:.200} repeats a repeat (as (a+)+ does): with"
                        " Python's backtracking regular expressions one hostile tag can take"
                        " for ever; end each repetition at a fixed character, as"
                        " ^(\\d+\\.)*\\d+$ does",
                        regex=spec.value,
                    )
                sources.append(Source(host, repository, plain, None, pattern))
    if not sources:
        raise ConfigError("{path} names no repository", path=path)
    return sources


def backtracks_badly(pattern: str) -> bool:
    """Whether ``pattern`` repeats a part that holds a repeat of varying length, with no
    fixed character in the part that the inner repeat cannot match: ``(\\d+\\.?)+``,
    ``(a|a+)*``, ``(.+-)+``. Python's ``re`` backtracks: on such a pattern one tag of
    forty characters can take hours, where Go's (skopeo's) is linear. ``(\\d+\\.)+``,
    where each repetition must end at a dot no digit matches, passes."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import sre_parse

    try:
        parsed = sre_parse.parse(pattern)
    except re.error:
        return False  # compiled already: not reached
    return _bad_loop(list(parsed.data))


_Items = list[tuple[Any, Any]]


def _repeats() -> tuple[Any, Any]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import sre_constants

    return sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT


def _children(value: Any) -> list[_Items]:
    """The sub-patterns inside one parsed item's argument, at any depth of tuples."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import sre_parse

    if isinstance(value, sre_parse.SubPattern):
        return [list(value.data)]
    if isinstance(value, tuple | list):
        return [child for each in value for child in _children(each)]
    return []


def _bad_loop(items: _Items) -> bool:
    repeats = _repeats()
    for op, value in items:
        if op in repeats:
            _low, high, body = value
            if high > 1 and _ambiguous(list(body)):
                return True
        if any(_bad_loop(child) for child in _children(value)):
            return True
    return False


def _ambiguous(body: _Items) -> bool:
    """Whether a repeated ``body`` can split one string into repetitions in many ways."""
    varying = _varying(body)
    if not varying:
        return False
    for anchor in _anchors(body):
        chars = {c for c in _TAG_CHARACTERS if _may_match(anchor, c)}
        chars |= {c.swapcase() for c in chars}  # (?i) or not
        if chars and not any(_may_match(inner, c) for inner in varying for c in chars):
            return False  # each repetition holds a character no inner repeat takes
    return True


def _varying(items: _Items) -> list[_Items]:
    """The bodies of the repeats of varying length (more than one) inside ``items``."""
    found: list[_Items] = []
    repeats = _repeats()
    for op, value in items:
        if op in repeats:
            low, high, body = value
            if high > low and high > 1:
                found.append(list(body))
        for child in _children(value):
            found += _varying(child)
    return found


def _anchors(items: _Items) -> list[_Items]:
    """The one-character parts every match of ``items`` holds, outside any repeat."""
    found: list[_Items] = []
    for op, value in items:
        if str(op) in ("LITERAL", "NOT_LITERAL", "IN"):
            found.append([(op, value)])
        elif str(op) == "SUBPATTERN":
            found += _anchors(list(value[-1]))
    return found


def _may_match(body: _Items, char: str) -> bool:
    """Whether a one-character ``body`` may match ``char``; anything larger: yes."""
    if len(body) != 1:
        return True
    op, value = body[0]
    kind = str(op)
    if kind == "LITERAL":
        return chr(value) == char
    if kind == "NOT_LITERAL":
        return chr(value) != char
    if kind != "IN":
        return True
    parts: list[str] = []
    for item, argument in value:
        what = str(item)
        if what == "NEGATE":
            parts.insert(0, "^")
        elif what == "LITERAL":
            parts.append(re.escape(chr(argument)))
        elif what == "RANGE":
            parts.append(f"{re.escape(chr(argument[0]))}-{re.escape(chr(argument[1]))}")
        elif what == "CATEGORY" and str(argument) in _CATEGORIES:
            parts.append(_CATEGORIES[str(argument)])
        else:
            return True
    return re.fullmatch(f"[{''.join(parts)}]", char) is not None


_TAG_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
_CATEGORIES = {
    "CATEGORY_DIGIT": r"\d",
    "CATEGORY_NOT_DIGIT": r"\D",
    "CATEGORY_WORD": r"\w",
    "CATEGORY_NOT_WORD": r"\W",
    "CATEGORY_SPACE": r"\s",
    "CATEGORY_NOT_SPACE": r"\S",
}


# -- where it goes ------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A registry (``host``, repositories under ``prefix``) or a layout path."""

    host: str | None = None
    prefix: str = ""
    insecure: bool = False
    path: str | None = None
    level: int | None = None

    def repository(self, source: str) -> str:
        return f"{self.prefix}/{source}" if self.prefix else source

    def __str__(self) -> str:
        if self.host is None:
            return str(self.path)
        return f"{self.host}/{self.prefix}" if self.prefix else self.host


def parse_target(text: str, insecure: bool = False, level: int | None = None) -> Target:
    """A registry ``HOST[:PORT][/prefix]``, or a path: ``-``, a ``.tar``/``.tar.zst`` file,
    anything that starts ``/``, ``.`` or ``~`` or is there already, or whose first part
    does not look like a host (no ``.``, no ``:``, not ``localhost``)."""
    if text.startswith(("http://", "https://", "docker://")):
        insecure = insecure or text.startswith("http://")
        text = text.split("://", 1)[1]
    elif (
        text == "-"
        or text.lower().endswith((".tar", ".tar.zst", ".tzst"))
        or text.startswith(("/", ".", "~"))
        or Path(text).exists()
        or not _looks_like_host(text.split("/", 1)[0])
    ):
        return Target(path=str(Path(text).expanduser()) if text != "-" else "-", level=level)
    host, _, prefix = text.rstrip("/").partition("/")
    if not _HOST.fullmatch(host) or (prefix and not _REPOSITORY.fullmatch(prefix)):
        raise ConfigError(
            "{text!r:.200} is not a registry (HOST[:PORT][/prefix]) nor a path", text=text
        )
    return Target(host=host, prefix=prefix, insecure=insecure)


def _looks_like_host(part: str) -> bool:
    return "." in part or ":" in part or part.casefold() == "localhost"
