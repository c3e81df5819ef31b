"""``cairn registry serve --htpasswd``: bcrypt never stalls the server, nor tells who exists."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import bcrypt
import httpx

from tests.conftest import serving

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
