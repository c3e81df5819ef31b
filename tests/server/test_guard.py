"""What stands before ``cairn serve``'s API: keys, CORS, the body limit and ``/metrics``,
each against a real ``cairn serve`` process and the official clients."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cairn.errors import ConfigError
from cairn.manifests.models import Models
from cairn.server.api import Settings
from cairn.server.guard import check_exposure
from tests.conftest import cairn_env, free_port
from tests.server.conftest import Serve

OPTIONS = {"temperature": 0, "seed": 42, "num_predict": 8}
KEYS = {"CAIRN_API_KEYS": "first-key, second-key"}


def test_without_a_key_every_api_answers_401_in_its_own_shape(serve: Serve) -> None:
    url = serve(**KEYS)
    assert httpx.get(url, timeout=30).text == "Ollama is running"  # the liveness check is open
    assert httpx.head(url, timeout=30).status_code == 200

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-api-key": "wrong"}):
        ollama_api = httpx.get(f"{url}/api/tags", headers=headers, timeout=30)
        assert ollama_api.status_code == 401
        assert ollama_api.headers["WWW-Authenticate"] == "Bearer"
        assert set(ollama_api.json()) == {"error"} and "key" in ollama_api.json()["error"]

        openai_api = httpx.post(f"{url}/v1/chat/completions", json={}, headers=headers, timeout=30)
        assert openai_api.status_code == 401
        assert openai_api.headers["WWW-Authenticate"] == "Bearer"
        error = openai_api.json()["error"]
        assert error["type"] == "invalid_request_error" and "key" in error["message"]

        anthropic_api = httpx.post(f"{url}/v1/messages", json={}, headers=headers, timeout=30)
        assert anthropic_api.status_code == 401
        assert anthropic_api.headers["WWW-Authenticate"] == "Bearer"
        body = anthropic_api.json()
        assert body["type"] == "error" and body["error"]["type"] == "authentication_error"

        metrics = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
        assert metrics.status_code == 401  # the metrics are behind the key too

    not_ascii = httpx.get(f"{url}/api/tags", headers={b"x-api-key": "열쇠".encode()}, timeout=30)
    assert not_ascii.status_code == 401
    assert httpx.get(f"{url}/api/tags", headers={"x-api-key": "second-key"}).status_code == 200
    assert httpx.get(f"{url}/api/tags", headers={"Authorization": "bearer first-key"}).is_success


def test_the_official_clients_get_in_with_a_key_and_not_without(serve: Serve) -> None:
    import anthropic
    import ollama
    import openai

    url = serve(**KEYS)

    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=url).list()
    assert refused.value.status_code == 401
    wrong = ollama.Client(host=url, headers={"Authorization": "Bearer nope"})
    with pytest.raises(ollama.ResponseError) as refused:
        wrong.generate(model="gemma3:270m", prompt="Hi", options=OPTIONS)
    assert refused.value.status_code == 401 and "not valid" in refused.value.error
    client = ollama.Client(host=url, headers={"Authorization": "Bearer first-key"})
    assert [m.model for m in client.list().models] == ["gemma3:270m"]
    answer = client.generate(model="gemma3:270m", prompt="Name a colour.", options=OPTIONS)
    assert answer.done and (answer.response or "").strip()

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).models.list()
    models = openai.OpenAI(base_url=f"{url}/v1", api_key="second-key").models.list()
    assert [m.id for m in models.data] == ["gemma3:270m"]

    with pytest.raises(anthropic.AuthenticationError) as denied:
        anthropic.Anthropic(base_url=url, api_key="nope", max_retries=0).messages.create(
            model="gemma3:270m", max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        )
    assert denied.value.status_code == 401
    # Anthropic's client sends its key as x-api-key.
    listed = anthropic.Anthropic(base_url=url, api_key="first-key").models.list()
    assert [m.id for m in listed.data] == ["gemma3:270m"]


def test_metrics_count_requests_tokens_and_loaded_models(serve: Serve) -> None:
    import ollama
    from prometheus_client.parser import text_string_to_metric_families

    url = serve(**KEYS)
    key = {"Authorization": "Bearer first-key"}
    client = ollama.Client(host=url, headers=key)
    answer = client.generate(model="gemma3:270m", prompt="Name a colour.", options=OPTIONS)
    assert httpx.get(f"{url}/api/tags", timeout=30).status_code == 401  # an error, counted

    page = httpx.get(f"{url}/metrics", headers=key, timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(page.text)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    generated = {"path": "/api/generate", "method": "POST", "status": "200"}
    assert value("cairn_http_requests_total", **generated) == 1
    refused = {"path": "/api/tags", "method": "GET", "status": "401"}
    assert value("cairn_http_requests_total", **refused) == 1
    assert value("cairn_http_errors_total", path="/api/tags", method="GET") == 1
    assert value("cairn_http_errors_total", path="/api/generate", method="POST") == 0
    model = {"model": "gemma3:270m"}
    assert value("cairn_output_tokens_total", **model) == (answer.eval_count or 0) > 0
    assert value("cairn_input_tokens_total", **model) == (answer.prompt_eval_count or 0) > 0
    assert value("cairn_model_load_seconds_count", **model) == 1  # loaded once
    assert value("cairn_model_load_seconds_sum", **model) > 0
    assert value("cairn_loaded_models") == 1
    assert value("cairn_queue_depth") == 0


def test_cors_lets_in_the_allowed_origins_only(serve: Serve) -> None:
    url = serve(CAIRN_ORIGINS="https://app.example.com, https://*.tools.example")
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    for origin in ("https://app.example.com", "https://a.tools.example", "http://localhost:5173"):
        asked = httpx.options(f"{url}/api/chat", headers={"Origin": origin, **preflight})
        assert asked.status_code == 204
        assert asked.headers["Access-Control-Allow-Origin"] == origin
        assert "POST" in asked.headers["Access-Control-Allow-Methods"]
        assert "content-type" in asked.headers["Access-Control-Allow-Headers"]
        listed = httpx.get(f"{url}/api/tags", headers={"Origin": origin}, timeout=30)
        assert listed.status_code == 200
        assert listed.headers["Access-Control-Allow-Origin"] == origin
        assert "Origin" in listed.headers["Vary"]

    for origin in ("https://evil.example.org", "https://app.example.com.evil.org", "null"):
        asked = httpx.options(f"{url}/api/chat", headers={"Origin": origin, **preflight})
        assert asked.status_code == 403
        assert not any(h.lower().startswith("access-control-") for h in asked.headers)
        listed = httpx.get(f"{url}/v1/models", headers={"Origin": origin}, timeout=30)
        assert listed.status_code == 403 and "not allowed" in listed.json()["error"]["message"]
        assert "Access-Control-Allow-Origin" not in listed.headers

    assert "Access-Control-Allow-Origin" not in httpx.get(f"{url}/api/tags").headers  # no Origin


def test_a_body_over_the_limit_is_a_413_in_the_apis_shape(serve: Serve) -> None:
    from cairn.server.fields import MAX_BODY

    url = serve()
    big = b'{"model": "' + b"x" * MAX_BODY + b'"}'
    ollama_api = httpx.post(f"{url}/api/chat", content=big, timeout=120)
    assert ollama_api.status_code == 413 and "larger than" in ollama_api.json()["error"]
    openai_api = httpx.post(f"{url}/v1/chat/completions", content=big, timeout=120)
    assert openai_api.status_code == 413
    assert "larger than" in openai_api.json()["error"]["message"]
    anthropic_api = httpx.post(f"{url}/v1/messages", content=big, timeout=120)
    assert anthropic_api.status_code == 413
    assert anthropic_api.json()["error"]["type"] == "request_too_large"
    assert httpx.get(f"{url}/api/tags", timeout=30).status_code == 200  # still serving


def test_no_key_on_an_address_others_reach_is_refused(serve: Serve, store: Path) -> None:
    """Refused before it binds anything; ``--insecure-no-auth`` is the way past."""
    env = cairn_env(store, CAIRN_HOST=f"0.0.0.0:{free_port()}")
    done = subprocess.run(
        [sys.executable, "-m", "cairn", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "CAIRN_API_KEYS" in done.stderr and "--insecure-no-auth" in done.stderr
    assert "0.0.0.0" in done.stderr

    url = serve("--insecure-no-auth")  # accepted (on loopback here: nothing is exposed)
    assert httpx.get(f"{url}/api/tags", timeout=30).status_code == 200


def test_which_addresses_need_a_key(tmp_path: Path) -> None:
    plain = Settings(Models(tmp_path))
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        check_exposure(host, plain)
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.com"):
        with pytest.raises(ConfigError, match="CAIRN_API_KEYS"):
            check_exposure(host, plain)
        check_exposure(host, Settings(Models(tmp_path), api_keys=("k",)))
        check_exposure(host, Settings(Models(tmp_path), insecure_no_auth=True))


def test_on_loopback_only_requests_naming_this_machine_are_served(serve: Serve) -> None:
    """DNS rebinding: a page at attacker.example that resolves its own name to 127.0.0.1
    sends ``Host: attacker.example``; found by the attack, refused as Ollama refuses it."""
    url = serve()
    port = url.rsplit(":", 1)[1]
    for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1.nip.io:{port}"):
        for path, key in (("/api/tags", "error"), ("/v1/models", "error")):
            answer = httpx.get(url + path, headers={"Host": host})
            assert answer.status_code == 403 and key in answer.json(), (host, path)
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "app.localhost"):
        assert httpx.get(url + "/api/tags", headers={"Host": host}).status_code == 200, host


def test_settings_that_are_not_numbers_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from cairn.server.app import settings_from_environment

    for value in ("nan", "inf", "-inf", "many"):
        monkeypatch.setenv("CAIRN_MAX_QUEUE", value)
        with pytest.raises(ConfigError, match="CAIRN_MAX_QUEUE"):
            settings_from_environment(Models(Path("/nonexistent")))
