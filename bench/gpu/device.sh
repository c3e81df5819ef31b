#!/usr/bin/env bash
# The GPU proof, run once on a machine with an NVIDIA GPU and no network,
# from the repository root, with .gpu/ made by bench/gpu/prepare.sh:
#   1. builds llama-cpp-python with CUDA by scripts/build-llama-cuda.sh (the
#      recipe of `make install-cuda`) from the carried source;
#   2. makes a Gemma 3 270M-shaped model with random weights (bench/gpu/model.py);
#   3. checks cairn on it: `cairn runtimes` lists CUDA from the real
#      nvidia-smi, `cairn run` offloads every layer by default, honours
#      num_gpu, and with the GPU hidden warns and runs on the CPU;
#   4. measures cairn against llama-cpp-python direct (bench/runtime.py) on
#      the GPU and on the CPU cores, GPU memory from nvidia-smi.
# Everything it prints and measures lands in $OUT (default /tmp/gpu-out).
set -uo pipefail

OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
site=/tmp/site
src=/tmp/llama-cpp-python
export PYTHONPATH="$site:$src/vendor/llama.cpp/gguf-py" PATH="$site/bin:$PATH"
export CAIRN_MODELS=/tmp/cairn-store
failed=0
step() { echo; echo "=== $(date -u +%T) $*"; }
check() {  # check DESCRIPTION COMMAND...: run it, say PASS or FAIL
    if "${@:2}"; then echo "PASS: $1"; else echo "FAIL: $1"; failed=1; fi
}

step machine
date -u
nvidia-smi
nvidia-smi --query-gpu=index,name,memory.total,compute_cap,driver_version --format=csv >"$OUT/nvidia-smi.txt"
# The query cairn's device detection makes, recorded for its tests:
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits >>"$OUT/nvidia-smi.txt"
echo "cores: $(nproc); $(grep -m1 'model name' /proc/cpuinfo)"
python3 -V
command -v nvcc || ls /usr/local/cuda/bin 2>&1 | head -3
cmake --version | head -1

step "install cairn and the wheels the image lacks"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .gpu/whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" . || exit 1

step "build llama-cpp-python with CUDA (scripts/build-llama-cuda.sh)"
tar -xzf .gpu/llama-cpp-python.tar.gz -C /tmp
started=$(date +%s)
if [ -n "${SKIP_BUILD:-}" ]; then  # a dry run of the rest, on a machine with llama-cpp-python
    echo "skipped (SKIP_BUILD)"
elif ! PYTHON=python3 LLAMA_CPP_SOURCE="$src" BUILD_DIR=/tmp/llama-build \
    PIP_ARGS="--no-build-isolation --no-index --upgrade --target $site" \
    timeout 480 bash scripts/build-llama-cuda.sh >"$OUT/build.log" 2>&1; then
    tail -60 "$OUT/build.log"
    echo "the build failed after $(($(date +%s) - started)) s"
    exit 1
fi
tail -3 "$OUT/build.log"
echo "build: $(($(date +%s) - started)) s on $(nproc) cores"

step "a random-weight model of Gemma 3 270M's shape, quantized to Q4_K_M by llama.cpp"
mkdir -p /tmp/model
python3 bench/gpu/model.py make .gpu/gemma3-270m.spec.json.gz /tmp/model/f16.gguf \
    --quantize /tmp/model/q4_k_m.gguf 2>&1 | grep -v '^\[' | tail -4
cat >/tmp/model/Modelfile <<'EOF'
FROM /tmp/model/q4_k_m.gguf
TEMPLATE """<start_of_turn>user
{{ .Prompt }}<end_of_turn>
<start_of_turn>model
"""
PARAMETER temperature 0
PARAMETER seed 1
EOF
cairn create gemma3-random -f /tmp/model/Modelfile --quiet || exit 1

step "cairn runtimes, with the real nvidia-smi"
cairn runtimes | tee /tmp/runtimes.txt
cairn runtimes --json >"$OUT/runtimes.json"
check "cairn runtimes lists cuda:0 for llama-cpp" grep -q 'llama-cpp .*cuda:0,cpu .*yes' /tmp/runtimes.txt

step "cairn run picks CUDA by default and offloads every layer"
prompt="Here is a long story about a lighthouse keeper and the sea:"
cairn run gemma3-random "$prompt" --verbose -p num_predict=64 2>/tmp/gpu.err | tee /tmp/gpu.out | head -c 300
echo
cat /tmp/gpu.err
check "offload: 19/19 layers on the H200" grep -Eq 'offload: +19/19 layers on GPU \(cuda:0 \(NVIDIA' /tmp/gpu.err
check "64 tokens generated" grep -Eq 'eval count: +64 token' /tmp/gpu.err

step "num_gpu honoured"
cairn run gemma3-random "$prompt" --verbose -p num_predict=16 -p num_gpu=7 2>/tmp/part.err >/dev/null
grep -E 'offload|eval rate' /tmp/part.err
check "num_gpu=7: 7/19 layers" grep -Eq 'offload: +7/19 layers on GPU' /tmp/part.err

step "CUDA asked for but hidden: a clear warning, then the CPU"
CUDA_VISIBLE_DEVICES= cairn runtimes
CUDA_VISIBLE_DEVICES= cairn run gemma3-random "$prompt" --verbose -p num_predict=16 -p num_gpu=99 \
    2>/tmp/hidden.err >/dev/null
cat /tmp/hidden.err
check "the warning names the reason" grep -q 'warning: num_gpu=99 asks for GPU offload, but llama-cpp cannot: this llama-cpp-python was built for CUDA, but no CUDA device is visible; running on the CPU' /tmp/hidden.err
check "and it ran on the CPU" grep -Eq 'offload: +0/19 layers on GPU' /tmp/hidden.err

step "GPU memory with nothing loaded"
nvidia-smi --query-gpu=memory.used,memory.total --format=csv

step "benchmark on the GPU: cairn against llama-cpp-python direct, same build"
python3 bench/runtime.py --model /tmp/model/q4_k_m.gguf --num-gpu -1 --threads 16 \
    --runs 7 --tokens 256 --name runtime-gpu
step "benchmark on the CPU cores: the same build, no layers offloaded"
python3 bench/runtime.py --model /tmp/model/q4_k_m.gguf --num-gpu 0 --threads "$(nproc)" \
    --runs 5 --tokens 128 --name runtime-cpu
cp bench/results/runtime-gpu.json bench/results/runtime-cpu.json "$OUT/" 2>/dev/null

step done
[ "$failed" = 0 ] && echo "ALL CHECKS PASSED" || echo "SOME CHECKS FAILED"
exit "$failed"
