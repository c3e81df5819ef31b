#!/usr/bin/env bash
# Build llama.cpp's llama-server from the sources inside the llama-cpp-python
# sdist (PyPI), once per machine, and print the path of the binary.
# CPU flags as in docs/runtimes.md (no AMX); set LLAMA_SERVER_CMAKE_ARGS for
# a CUDA (-DGGML_CUDA=ON) or HIP (-DGGML_HIP=ON) build instead.
set -euo pipefail

version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
flags=${LLAMA_SERVER_CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"}
python=${PYTHON:-python3}
key=$(printf '%s %s' "$version" "$flags" | sha256sum | cut -c1-12)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/cairn/llama-server-$version-$key"

if [ -x "$cache/llama-server" ]; then
    echo "$cache/llama-server"
    exit 0
fi

command -v cmake >/dev/null || "$python" -m pip install --quiet cmake >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-binary :all: --no-deps -d "$work" "llama-cpp-python==$version" >&2
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
source_dir=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
# shellcheck disable=SC2086 # the flags are words
cmake -S "$source_dir" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    $flags >&2
cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$cache"
cp "$work/build/bin/llama-server" "$cache/llama-server.tmp"
mv "$cache/llama-server.tmp" "$cache/llama-server"
echo "$cache/llama-server"
