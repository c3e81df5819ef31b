"""Every error is one line and an exit code, never a traceback (issue 15, item 5).

Each case runs the real ``cairn`` as a whole process and checks what a user
sees: stdout, stderr and the exit code. The last test walks a table of every
error case the CLI has and holds each to one line on stderr.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import (
    Runner,
    Terminal,
    cairn_env,
    free_port,
    modelfile,
    self_signed,
    stop,
)
from tests.registry.test_pull_push import make_model


def one_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The one line a failed command printed on stderr (after its progress lines, if
    any); it failed with ``code`` and printed no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    return errors[0]


def refused_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    return free_port()


@contextlib.contextmanager
def listening(host: str = "127.0.0.1") -> Iterator[int]:
    """A port that another program listens on for the block."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def answers(url: str, proc: subprocess.Popen[str], seconds: float = 30) -> int:
    """The status of ``GET url`` once the server answers (it must not die first)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(f"the server died: {proc.communicate()}") from None
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer")


def registry_serve(
    store: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``cairn registry serve ARGS`` that is expected to fail at once."""
    return subprocess.run(
        [sys.executable, "-m", "cairn", "registry", "serve", "--root", str(store), *args],
        env={**cairn_env(store), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@contextlib.contextmanager
def served(store: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``cairn registry serve ARGS`` running for the block."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cairn", "registry", "serve", "--root", str(store), *args],
        env=cairn_env(store),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        stop(proc)  # type: ignore[arg-type]


# -- cairn registry serve: where it listens ---------------------------------------------


def test_a_port_in_use_is_one_line_before_serving(store: Path) -> None:
    with listening() as port:
        result = registry_serve(store, "--addr", f"127.0.0.1:{port}")
    line = one_error(result)
    assert line == (
        f"Error: cannot listen on 127.0.0.1:{port}: the port is in use (another server"
        " listens there); pick another port with --addr"
    )
    assert "serving" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("127.0.0.1:99999", "Error: --addr '127.0.0.1:99999': port 99999 is not from 1 to 65535"),
        ("127.0.0.1:0", "Error: --addr '127.0.0.1:0': port 0 is not from 1 to 65535"),
        ("127.0.0.1", "Error: --addr '127.0.0.1' is not HOST:PORT"),
        ("127.0.0.1:http", "Error: --addr '127.0.0.1:http' is not HOST:PORT"),
        ("::1:5000", "Error: --addr '::1:5000': write an IPv6 address in brackets"),
        ("[zz]:5000", "Error: --addr '[zz]:5000': 'zz' in brackets is not an IPv6 address"),
        ("no-such-host.invalid:5000", "Error: --addr: cannot resolve 'no-such-host.invalid'"),
        ("192.0.2.1:5000", "Error: cannot listen on 192.0.2.1:5000: not an address of this"),
    ],
)
def test_an_address_that_cannot_be_listened_on(store: Path, addr: str, expected: str) -> None:
    result = registry_serve(store, "--addr", addr)
    assert one_error(result).startswith(expected)
    assert "serving" not in result.stderr


def test_serving_every_interface(store: Path) -> None:
    port = free_port()
    with served(store, "--addr", f":{port}") as proc:
        assert answers(f"http://127.0.0.1:{port}/v2/", proc) == 200
        if ipv6_loopback():  # Go's ":5000" listens on IPv6 too, and so does cairn
            assert answers(f"http://[::1]:{port}/v2/", proc) == 200
    assert f"serving {store} on http://0.0.0.0:{port}" in (
        proc.stderr.read() if proc.stderr else ""
    )


def test_serving_ipv6_loopback(store: Path) -> None:
    if not ipv6_loopback():  # a CI machine must have it: there the test fails, never skips
        if os.environ.get("CI") == "true":
            pytest.fail("this machine has no IPv6 loopback (::1)")
        pytest.skip("this machine has no IPv6 loopback")
    port = free_port()
    with served(store, "--addr", f"[::1]:{port}") as proc:
        assert answers(f"http://[::1]:{port}/v2/", proc) == 200
    assert f"on http://[::1]:{port}" in (proc.stderr.read() if proc.stderr else "")


def test_a_port_in_use_for_cairn_serve(store: Path) -> None:
    with listening() as port:
        result = subprocess.run(
            [sys.executable, "-m", "cairn", "serve"],
            env=cairn_env(store, CAIRN_HOST=f"127.0.0.1:{port}"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert one_error(result) == (
        f"Error: cannot listen on 127.0.0.1:{port}: the port is in use (another server"
        " listens there); pick another port with CAIRN_HOST"
    )


@pytest.mark.parametrize(
    ("setting", "address"),
    [
        (None, "127.0.0.1:11434"),
        ("0.0.0.0", "0.0.0.0:11434"),  # Ollama's habit: OLLAMA_HOST=0.0.0.0
        ("http://example.lan", "example.lan:11434"),
        ("https://127.0.0.1:8443/", "127.0.0.1:8443"),
        ("[::1]", "[::1]:11434"),
        (":8080", ":8080"),  # every interface, as --addr :5000
    ],
)
def test_cairn_host_is_read_as_ollama_reads_ollama_host(setting: str | None, address: str) -> None:
    from cairn.cli.serve import serve_address

    assert serve_address(setting) == address


# -- cairn registry serve: TLS files and options ------------------------------------------


def test_tls_files_that_are_not_pem(store: Path, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    addr = ("--addr", f"127.0.0.1:{free_port()}")
    bad_cert = one_error(
        registry_serve(store, *addr, "--tls-cert", str(junk), "--tls-key", str(key))
    )
    assert bad_cert.startswith(f"Error: --tls-cert {junk} is not a PEM certificate")
    bad_key = one_error(
        registry_serve(store, *addr, "--tls-cert", str(cert), "--tls-key", str(junk))
    )
    assert bad_key.startswith(f"Error: --tls-key {junk} is not a PEM private key")
    swapped = one_error(
        registry_serve(store, *addr, "--tls-cert", str(key), "--tls-key", str(cert))
    )
    assert swapped.startswith(f"Error: --tls-cert {key} is not a PEM certificate")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other, _ = self_signed(elsewhere)
    mismatch = one_error(
        registry_serve(store, *addr, "--tls-cert", str(other), "--tls-key", str(key))
    )
    assert (
        mismatch
        == f"Error: --tls-key {key} is not the key of the certificate in --tls-cert {other}"
    )


def test_public_read_needs_a_login(store: Path) -> None:
    result = registry_serve(store, "--addr", f"127.0.0.1:{free_port()}", "--public-read")
    assert one_error(result).startswith("Error: --public-read needs --htpasswd (or --ollama-keys)")
    assert "serving" not in result.stderr


# -- --limit-rate 0 -------------------------------------------------------------------------


def test_limit_rate_zero_is_no_limit(cairn: Runner, tmp_path: Path, registry: str) -> None:
    make_model(cairn, tmp_path, size_mb=1)
    pushed = cairn("push", "tiny:1", f"{registry}/lab/tiny:1", "--insecure", "--limit-rate", "0")
    assert pushed.stdout.startswith(f"pushed {registry}/lab/tiny:1 sha256:")
    cairn("rm", "tiny:1")
    pulled = cairn("pull", f"{registry}/lab/tiny:1", "--insecure", "--limit-rate", "0", "-q")
    assert pulled.stdout == "" and pulled.stderr == ""
    assert cairn("list").stdout.count(f"{registry}/lab/tiny:1") == 1


# -- the store ------------------------------------------------------------------------------


def test_a_store_that_is_a_file(cairn: Runner, tmp_path: Path) -> None:
    path = tmp_path / "a-file"
    path.write_text("x")
    for command in ("list", "ls"):
        result = cairn(command, check=False, env={"CAIRN_MODELS": str(path)})
        assert result.stdout == ""
        assert one_error(result) == (
            f"Error: the store at {path} is a file, not a directory: set CAIRN_MODELS to the"
            " store's directory"
        )


def test_a_store_that_does_not_exist(cairn: Runner, tmp_path: Path) -> None:
    path = tmp_path / "typo"
    result = cairn("list", "--json", check=False, env={"CAIRN_MODELS": str(path)})
    assert result.stdout == ""
    assert one_error(result) == (
        f"Error: CAIRN_MODELS names {path}, which does not exist (a pull or create there makes it)"
    )


def test_the_default_store_before_the_first_pull_is_empty(cairn: Runner, tmp_path: Path) -> None:
    home = tmp_path / "fresh-home"
    home.mkdir()
    result = cairn("list", env={"CAIRN_MODELS": "", "HOME": str(home)})
    assert result.stdout.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert result.stderr == ""


# -- login ----------------------------------------------------------------------------------


def test_login_without_a_terminal(cairn: Runner, registry: str) -> None:
    """Refused at once: a wait on standard input would run into the runner's timeout."""
    for args in (("login", registry), ("login", registry, "-u", "alice")):
        result = cairn(*args, "--insecure", check=False, input="")
        assert result.stdout == ""
        assert one_error(result) == (
            "Error: no terminal to ask for the password on: pipe it in with --password-stdin"
            " (and give the user with -u USER)"
        )
    stdin_only = cairn("login", registry, "--password-stdin", check=False, input="pw\n")
    assert one_error(stdin_only) == (
        "Error: --password-stdin needs the user name too: give it with -u USER"
    )


def test_login_on_a_terminal_still_asks(
    tmp_path: Path, store: Path, auth_registry: tuple[str, str, str]
) -> None:
    host, user, password = auth_registry
    argv = [sys.executable, "-m", "cairn", "login", host, "--insecure"]
    terminal = Terminal(argv, cairn_env(store))
    assert "Username" in terminal.until("Username:")
    terminal.type(user + "\n")
    assert "Password" in terminal.until("Password:")
    terminal.type(password + "\n")
    assert "Login Succeeded" in terminal.until("Login Succeeded")
    assert terminal.wait() == 0


# -- registry errors say what to do -----------------------------------------------------


def test_a_plain_http_registry_without_insecure(
    cairn: Runner, tmp_path: Path, registry: str
) -> None:
    make_model(cairn, tmp_path, size_mb=1)
    expected = (
        f"Error: the registry at {registry} answered over HTTP, not HTTPS: use --insecure for a"
        " registry without TLS"
    )
    for args in (
        ("pull", f"{registry}/lab/x:1"),
        ("push", "tiny:1", f"{registry}/lab/x:1", "-q"),
        ("login", registry, "-u", "a", "--password-stdin"),
    ):
        assert one_error(cairn(*args, check=False, input="pw\n")) == expected


def test_a_refused_connection(cairn: Runner, tmp_path: Path) -> None:
    make_model(cairn, tmp_path, size_mb=1)
    where = f"127.0.0.1:{refused_port()}"
    expected = (
        f"Error: nothing listens on {where} (connection refused): is the registry running,"
        " and is the port right?"
    )
    for args in (
        ("pull", f"{where}/lab/x:1", "--insecure"),
        ("push", "tiny:1", f"{where}/lab/x:1", "--insecure", "-q"),
        ("login", where, "-u", "a", "--password-stdin", "--insecure"),
    ):
        assert one_error(cairn(*args, check=False, input="pw\n")) == expected


def test_an_unresolvable_host(cairn: Runner) -> None:
    result = cairn("pull", "no-such-host.invalid/lab/x:1", check=False)
    assert one_error(result).startswith("Error: cannot resolve the host no-such-host.invalid ("), (
        result.stderr
    )
    assert one_error(result).endswith("): check its name, and the network")


def test_a_missing_model_on_the_registry(cairn: Runner, registry: str) -> None:
    result = cairn("pull", f"{registry}/lab/x:1", "--insecure", check=False)
    assert one_error(result).startswith(f"Error: model lab/x:1 not found on {registry} (")


def test_a_tls_registry_reached_with_insecure(
    cairn: Runner, tls_registry: tuple[str, Path]
) -> None:
    host, _ = tls_registry
    result = cairn("pull", f"{host}/lab/x:1", "--insecure", "-q", check=False)
    assert one_error(result) == (
        "Error: manifest lab/x:1: the registry answers over HTTPS, not HTTP: leave out --insecure"
    )
    untrusted = cairn("pull", f"{host}/lab/x:1", "-q", check=False)
    assert one_error(untrusted).startswith(
        f"Error: the certificate of {host} is not trusted (CERTIFICATE_VERIFY_FAILED"
    )
    assert one_error(untrusted).endswith("give its CA in CAIRN_CA_BUNDLE")


# -- every error case: one line, no traceback ---------------------------------------------


@dataclass
class Case:
    """One command that must fail: its arguments, and what the user must see."""

    args: tuple[str, ...]
    shows: str
    """A part of the one error line."""
    code: int = 1
    env: dict[str, str] = field(default_factory=dict)
    input: str | None = None
    progress: bool = False
    """Progress lines may come first (``run`` has no ``--quiet``)."""


@dataclass
class Places:
    """What the cases point at."""

    registry: str
    refused: str
    tmp: Path
    store: Path


def every_case(at: Places) -> list[Case]:
    reg, nowhere, tmp = at.registry, at.refused, at.tmp
    junk = tmp / "junk.pem"
    key = tmp / "registry.key"
    a_file = tmp / "a-file"
    port = str(free_port())
    serve = ("registry", "serve", "--root", str(at.store), "--addr", f"127.0.0.1:{port}")
    return [
        # names
        Case(("show", "../../etc"), "invalid model name '../../etc'"),
        Case(("pull", "../../etc"), "invalid model name '../../etc'"),
        Case(("rm", "Bad Name!"), "invalid model name"),
        Case(("push", "tiny:1", "127.0.0.1:5055"), "is a registry, not a model name"),
        # missing models
        Case(("show", "nothing:1"), "not found"),
        Case(("show", "--json", "nothing:1"), "not found"),
        Case(("rm", "nothing:1"), "not found"),
        Case(("cp", "nothing:1", "other:1"), "not found"),
        Case(("push", "nothing:1", f"{reg}/lab/x:1", "--insecure", "-q"), "not found"),
        Case(("run", "--insecure", f"{reg}/lab/nothing:1", "hi"), "not found on", progress=True),
        Case(("verify", "nothing:1"), "not found"),
        # Modelfiles
        Case(("create", "m", "-f", str(tmp / "Modelfile.typo")), "unknown instruction 'FRM'"),
        Case(("create", "m", "-f", str(tmp / "Modelfile.nofile")), "no such file"),
        Case(("create", "m", "-f", str(tmp / "absent")), "no Modelfile at"),
        # sizes and settings
        Case(("pull", f"{reg}/lab/x:1", "--insecure", "--limit-rate", "fast"), "not a size"),
        Case(("push", "tiny:1", f"{reg}/lab/x:1", "--limit-rate", "-1"), "not a size"),
        Case(("push", "tiny:1", f"{reg}/lab/x:1", "--chunk-size", "big"), "not a size"),
        Case(
            ("pull", f"{reg}/lab/x:1", "--insecure", "-q"),
            "CAIRN_MAX_STREAMS must be",
            env={"CAIRN_MAX_STREAMS": "lots"},
        ),
        Case(
            ("pull", f"{reg}/lab/x:1", "--insecure", "-q"),
            "CAIRN_MAX_RETRY_AFTER must be",
            env={"CAIRN_MAX_RETRY_AFTER": "soon"},
        ),
        Case(("list",), "is a file, not a directory", env={"CAIRN_MODELS": str(a_file)}),
        Case(("list",), "which does not exist", env={"CAIRN_MODELS": str(tmp / "typo")}),
        # registries
        Case(("pull", f"{reg}/lab/x:1", "-q"), "answered over HTTP, not HTTPS: use --insecure"),
        Case(("pull", f"{reg}/lab/x:1", "--insecure", "-q"), f"model lab/x:1 not found on {reg}"),
        Case(("pull", f"{nowhere}/lab/x:1", "--insecure", "-q"), f"nothing listens on {nowhere}"),
        Case(("pull", "no-such-host.invalid/lab/x:1", "-q"), "cannot resolve the host"),
        Case(("push", "tiny:1", f"{reg}/lab/x:1", "-q"), "use --insecure"),
        Case(("push", "tiny:1", f"{nowhere}/lab/x:1", "--insecure", "-q"), "nothing listens"),
        Case(("inspect", f"{reg}/lab/x:1", "--insecure"), f"model lab/x:1 not found on {reg}"),
        Case(("inspect", f"{nowhere}/lab/x:1", "--insecure"), "nothing listens"),
        Case(("tags", f"{reg}/lab/x"), "use --insecure"),
        Case(("tags", f"{nowhere}/lab/x", "--insecure"), "nothing listens"),
        Case(("login", reg), "--password-stdin", input=""),
        Case(("login", reg, "-u", "a", "--password-stdin"), "use --insecure", input="pw\n"),
        Case(("logout", reg), f"not logged in to {reg}"),
        # a host that passes a name's grammar but is no punycode (found by an attack)
        Case(("pull", "xn--zz/lab/x:1"), "host 'xn--zz' cannot go in a URL"),
        Case(("push", "tiny:1", "xn--zz/lab/x:1"), "host 'xn--zz' cannot go in a URL"),
        # cairn registry serve
        Case((*serve[:-2], "--addr", "127.0.0.1:99999"), "is not from 1 to 65535"),
        Case((*serve[:-2], "--addr", "nowhere.invalid:5000"), "cannot resolve"),
        Case((*serve, "--tls-cert", str(junk), "--tls-key", str(key)), "not a PEM certificate"),
        Case((*serve, "--tls-cert", str(junk)), "--tls-cert and --tls-key go together"),
        Case((*serve, "--public-read"), "--public-read needs --htpasswd"),
        Case((*serve, "--quota", "lots"), "not a size"),
        Case((*serve, "--upstream", "ftp://example.com"), "ftp://example.com"),
        Case((*serve, "--upstream-timeout", "0"), "--upstream-timeout must be more than 0"),
        # a server
        Case(("stop", "nothing:1"), "no server is running"),
        # usage errors: one line too, with click's hint on it, exit code 2
        Case(("nonexistentcmd",), "No such command 'nonexistentcmd'", code=2),
        Case(("lst",), "No such command 'lst'. Did you mean 'list'?", code=2),
        Case(("show", "--bogus", "x"), "'--bogus'. Try 'cairn show --help' for help.", code=2),
        Case(("show", "--verbos", "x"), "'--verbos'. Did you mean --verbose?", code=2),
        Case(("pull",), "Missing argument 'NAME'", code=2),
        Case(("list", "--no-such-option"), "No such option '--no-such-option'", code=2),
        Case(("push", "tiny:1", "--format", "zip"), "'zip' is not one of", code=2),
    ]


def test_every_error_is_one_line_without_a_traceback(
    cairn: Runner, tmp_path: Path, store: Path, registry: str
) -> None:
    make_model(cairn, tmp_path, size_mb=1)
    modelfile(tmp_path, "FRM x\n", "Modelfile.typo")
    modelfile(tmp_path, f"FROM {tmp_path / 'nothing.gguf'}\n", "Modelfile.nofile")
    (tmp_path / "junk.pem").write_text("junk\n")
    (tmp_path / "a-file").write_text("x")
    self_signed(tmp_path)
    at = Places(registry, f"127.0.0.1:{refused_port()}", tmp_path, store)
    no_server = {"CAIRN_HOST": f"127.0.0.1:{refused_port()}"}
    wrong: list[str] = []
    for case in every_case(at):
        result = cairn(*case.args, check=False, env={**no_server, **case.env}, input=case.input)
        problem = _problem(case, result)
        if problem:
            wrong.append(f"cairn {' '.join(case.args)}: {problem}")
    assert not wrong, "\n".join(wrong)


def _problem(case: Case, result: subprocess.CompletedProcess[str]) -> str | None:
    everything = result.stdout + result.stderr
    lines = result.stderr.splitlines()
    if "Traceback" in everything:
        return f"a traceback:\n{result.stderr}"
    if result.returncode != case.code:
        return f"exit code {result.returncode}, not {case.code}: {result.stderr!r}"
    errors = [line for line in lines if line.startswith("Error:")]
    if case.code == 1 and (errors != lines[-1:] or (len(lines) != 1 and not case.progress)):
        return f"stderr is not one Error: line: {result.stderr!r}"
    if case.code == 2 and (len(lines) != 1 or not lines[0].startswith("Error: ")):
        return f"a usage error is not one Error: line: {result.stderr!r}"
    if case.shows not in lines[-1]:
        return f"{case.shows!r} is not in {lines[-1]!r}"
    return None
