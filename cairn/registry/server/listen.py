"""Where a server listens: ``HOST:PORT`` read as Go's ``net.Listen`` reads it (and so
docker-registry's ``addr``), and the sockets bound before the server says it serves.

Binding first turns a port in use, a name that does not resolve or an address this
machine does not have into one line (a :class:`~cairn.errors.ConfigError`) before
anything is printed, instead of a traceback from inside the event loop.

- ``127.0.0.1:5000``, ``localhost:5000``: that address (every address the name has);
- ``:5000``: every interface, IPv4 and IPv6;
- ``[::1]:5000``: an IPv6 address, in brackets as in a URL.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
import ssl
from pathlib import Path

from cairn.errors import ConfigError

BACKLOG = 128
"""aiohttp's own default for a site it binds itself."""

_HOST = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)
"""A host name as resolvers take it (labels of letters, digits, ``-`` and ``_``, at most 63
characters each); an IPv4 address is one too."""


def split_address(text: str, what: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT``; host ``""`` means every interface.

    ``what`` names the setting in the message (``--addr``, ``CAIRN_HOST``).
    """
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isascii() or not port.isdigit():
        raise ConfigError(
            "{what} {text!r} is not HOST:PORT (as in 127.0.0.1:5000, :5000 or [::1]:5000)",
            what=what,
            text=text,
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            mapped = ipaddress.IPv6Address(host).ipv4_mapped
        except ValueError:
            raise ConfigError(
                "{what} {text!r}: {host!r} in brackets is not an IPv6 address",
                what=what,
                text=text,
                host=host,
            ) from None
        if mapped is not None:  # an IPv6 socket here takes IPv6 only (as Go's does)
            raise ConfigError(
                "{what} {text!r}: {host!r} is an IPv4 address written as IPv6; write"
                " {mapped}:{port}",
                what=what,
                text=text,
                host=host,
                mapped=str(mapped),
                port=port,
            )
    elif ":" in host or "[" in host or "]" in host:
        raise ConfigError(
            "{what} {text!r}: write an IPv6 address in brackets, as in [::1]:5000",
            what=what,
            text=text,
        )
    elif host and not _HOST.fullmatch(host):
        raise ConfigError(
            "{what} {text!r}: {host!r} is not a host name or an IP address",
            what=what,
            text=text,
            host=host,
        )
    number = int(port)
    if not 0 < number < 65536:
        raise ConfigError(
            "{what} {text!r}: port {port} is not from 1 to 65535", what=what, text=text, port=port
        )
    return host, number


def url_host(host: str) -> str:
    """``host`` as it goes in a URL: brackets round an IPv6 address, ``0.0.0.0`` for every
    interface."""
    if not host:
        return "0.0.0.0"
    return f"[{host}]" if ":" in host else host


def bind(host: str, port: int, what: str) -> list[socket.socket]:
    """Listening sockets on every address ``host`` has (every interface when ``""``)."""
    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(
            "{what}: cannot resolve {host!r} ({reason}); give an address of this machine, as in"
            " 127.0.0.1:{port}",
            what=what,
            host=host,
            reason=getattr(exc, "strerror", None) or str(exc),
            port=port,
        ) from None
    addresses = []
    for family, _, _, _, sockaddr in found:
        if family in (socket.AF_INET, socket.AF_INET6) and (family, sockaddr) not in addresses:
            addresses.append((family, sockaddr))
    sockets: list[socket.socket] = []
    try:
        for family, sockaddr in addresses:
            sockets.append(_listen(family, sockaddr, what))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _listen(family: int, sockaddr: tuple[object, ...], what: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # as asyncio does: the IPv4 socket takes IPv4
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        where = f"{url_host(str(sockaddr[0]))}:{sockaddr[1]}"
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                "cannot listen on {where}: the port is in use (another server listens there);"
                " pick another port with {what}",
                where=where,
                what=what,
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(
                "cannot listen on {where}: not an address of this machine ({what})",
                where=where,
                what=what,
            ) from None
        if exc.errno == errno.EACCES:
            raise ConfigError(
                "cannot listen on {where}: a port below 1024 needs privileges; pick another"
                " with {what}",
                where=where,
                what=what,
            ) from None
        raise ConfigError(
            "cannot listen on {where}: {reason}", where=where, reason=exc.strerror or str(exc)
        ) from None
    return sock


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server TLS context from PEM files, or one line naming the file that is wrong."""
    certificate = _read(cert, "--tls-cert")
    if b"-----BEGIN CERTIFICATE-----" not in certificate:
        raise ConfigError(
            "--tls-cert {path} is not a PEM certificate (text that begins with"
            " -----BEGIN CERTIFICATE-----)",
            path=cert,
        )
    pem = _read(key, "--tls-key")
    if b"PRIVATE KEY-----" not in pem:
        raise ConfigError(
            "--tls-key {path} is not a PEM private key (text that begins with -----BEGIN"
            " PRIVATE KEY-----)",
            path=key,
        )
    if b"ENCRYPTED" in pem:
        raise ConfigError(
            "--tls-key {path} is encrypted: give the key without a passphrase", path=key
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        # A password callback, so that OpenSSL never asks on the terminal.
        context.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                "--tls-key {key} is not the key of the certificate in --tls-cert {cert}",
                key=key,
                cert=cert,
            ) from None
        if not _certificates_readable(certificate):
            raise ConfigError(
                "--tls-cert {path}: its certificate cannot be read (a damaged PEM block?)",
                path=cert,
            ) from None
        if exc.reason in (None, "PEM_LIB") or "PEM lib" in str(exc):
            raise ConfigError(
                "--tls-key {path}: its private key cannot be read (a damaged PEM block?)",
                path=key,
            ) from None
        raise ConfigError(
            "cannot serve TLS with --tls-cert {cert} and --tls-key {key}: {reason}",
            cert=cert,
            key=key,
            reason=exc.reason or str(exc),
        ) from None
    return context


def _certificates_readable(pem: bytes) -> bool:
    """Whether OpenSSL reads every certificate in ``pem`` (and finds one)."""
    try:
        ssl.create_default_context().load_verify_locations(
            cadata=pem.decode("ascii", errors="replace")
        )
    except (ssl.SSLError, ValueError):
        return False
    return True


PEM_LIMIT = 1 << 20
"""The most read of a TLS file: a certificate chain and a key are a few KB (and
``--tls-cert /dev/zero`` would otherwise be read until memory runs out)."""


def _read(path: Path, option: str) -> bytes:
    try:
        with path.open("rb") as file:
            data = file.read(PEM_LIMIT + 1)
    except OSError as exc:
        raise ConfigError(
            "{option} {path}: {reason}", option=option, path=path, reason=exc.strerror or str(exc)
        ) from None
    if len(data) > PEM_LIMIT:
        raise ConfigError(
            "{option} {path} is larger than {limit} bytes: not a PEM file",
            option=option,
            path=path,
            limit=PEM_LIMIT,
        )
    return data
