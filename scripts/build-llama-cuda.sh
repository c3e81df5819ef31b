#!/usr/bin/env bash
# Build llama-cpp-python with CUDA (GGML_CUDA=ON) into the Python named by
# $PYTHON (default python3), for the GPUs this machine has.
#
#   CUDA_ARCH        CUDA architectures, e.g. "90" (H100/H200) or "86;89".
#                    Default: every GPU's compute capability, read from
#                    nvidia-smi (9.0 -> 90). Naming them keeps the build to
#                    the code this machine runs (one architecture: minutes;
#                    llama.cpp's default list: several times longer).
#   LLAMA_CPP_SOURCE a llama-cpp-python source tree or sdist to build from.
#                    Default: llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION
#                    from PyPI.
#   PIP_ARGS         more pip arguments (e.g. --no-build-isolation --no-index
#                    on a machine without network).
#   BUILD_DIR        keep CMake's build tree here, so that a second run only
#                    relinks (default: a temporary one).
#
# The CPU half is built without -march=native, with the vector extensions
# this CPU reports in /proc/cpuinfo: a native build may select AMX, which
# crashes in virtual machines that advertise it (docs/runtimes.md).
set -euo pipefail

version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
python=${PYTHON:-python3}

if ! command -v nvcc >/dev/null; then
    for dir in /usr/local/cuda/bin /opt/cuda/bin; do
        [ -x "$dir/nvcc" ] && PATH="$dir:$PATH" && break
    done
fi
command -v nvcc >/dev/null || { echo "build-llama-cuda: nvcc not found (install the CUDA toolkit)" >&2; exit 1; }

# The toolkit's root as nvcc itself reports it (nvcc may be a wrapper script).
cuda_root=$(nvcc --dryrun -c -x cu /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
has() { compgen -G "$cuda_root/lib64/$1" >/dev/null || compgen -G "$cuda_root/targets/*/lib/$1" >/dev/null; }
cuda_args=""
if ! has "libcublas.so*"; then
    # A toolkit assembled from NVIDIA's pip wheels (as PyTorch images have it)
    # keeps cuBLAS in the Python's nvidia-cublas package: point CMake at it.
    cublas=$("$python" -c '
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit
for root in nvidia.__path__:
    for found in sorted(glob.glob(os.path.join(root, "*", "lib", "libcublas.so.*"))):
        print(os.path.dirname(os.path.dirname(found)))
        raise SystemExit
')
    if [ -z "$cublas" ]; then
        echo "build-llama-cuda: no cuBLAS in $cuda_root, nor an nvidia-cublas wheel in $python" >&2
        exit 1
    fi
    lib=$(compgen -G "$cublas/lib/libcublas.so.*" | head -1)
    lt=$(compgen -G "$cublas/lib/libcublasLt.so.*" | head -1)
    cuda_args="-DCUDA_cublas_LIBRARY=$lib -DCUDA_cublasLt_LIBRARY=$lt -DCMAKE_CUDA_FLAGS=-I$cublas/include"
    echo "build-llama-cuda: cuBLAS from $cublas" >&2
fi
if ! has "stubs/libcuda.so"; then
    # No driver stub to link against: the driver's own library, else no VMM
    # (then ggml-cuda does not link libcuda at all).
    driver=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF; exit}')
    if [ -n "$driver" ]; then
        cuda_args="$cuda_args -DCUDA_cuda_driver_LIBRARY=$driver"
    else
        cuda_args="$cuda_args -DGGML_CUDA_NO_VMM=ON"
    fi
fi

# The CUDA runtime's directory goes into the libraries' RPATH: a toolkit
# outside the loader's paths is still found when cairn's runner loads them.
cudart=$( (compgen -G "$cuda_root/lib64/libcudart.so.*" || compgen -G "$cuda_root/targets/*/lib/libcudart.so.*" || true) | head -1)
if [ -n "$cudart" ]; then
    cuda_args="$cuda_args -DCMAKE_SHARED_LINKER_FLAGS=-Wl,-rpath,$(dirname "$(readlink -f "$cudart")")"
fi

arch=${CUDA_ARCH:-}
if [ -z "$arch" ]; then
    caps=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d ' .' | sort -u | paste -sd';' || true)
    [ -n "$caps" ] || { echo "build-llama-cuda: no GPU seen by nvidia-smi; set CUDA_ARCH (e.g. 90)" >&2; exit 1; }
    arch=$caps
fi

cpu_flags="-DGGML_NATIVE=OFF"
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C avx512f:AVX512 avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
    if [[ " $flags " == *" ${pair%%:*} "* ]]; then
        cpu_flags="$cpu_flags -DGGML_${pair#*:}=ON"
    fi
done

source=${LLAMA_CPP_SOURCE:-"llama-cpp-python==$version"}
build_args=()
[ -n "${BUILD_DIR:-}" ] && build_args=(--config-settings "build-dir=$BUILD_DIR")

echo "build-llama-cuda: $source for CUDA architectures $arch, $(nvcc --version | tail -1)" >&2
echo "build-llama-cuda: CMake arguments: $cuda_args $cpu_flags" >&2
# --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS and would hand back a CPU build.
# shellcheck disable=SC2086 # PIP_ARGS are words
CMAKE_ARGS="-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=$arch $cuda_args $cpu_flags" \
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    "$python" -m pip install --no-cache-dir --force-reinstall --no-deps ${PIP_ARGS:-} \
    "${build_args[@]}" "$source"

# What was built: the CUDA library, whether it finds its own libraries, and
# whether llama.cpp says it can offload (that needs a GPU and its driver).
"$python" - <<'EOF'
import importlib.util
import subprocess
from pathlib import Path

spec = importlib.util.find_spec("llama_cpp")
where = list(spec.submodule_search_locations or []) if spec else []
libs = sorted(lib for d in where for lib in Path(d).rglob("libggml-cuda.so*"))
if not libs:
    raise SystemExit("build-llama-cuda: the build has no libggml-cuda")
ldd = subprocess.run(["ldd", str(libs[0])], capture_output=True, text=True).stdout
missing = [line.split()[0] for line in ldd.splitlines() if "not found" in line]
if missing:
    raise SystemExit(f"build-llama-cuda: {libs[0]} cannot find {', '.join(missing)}")
import llama_cpp

print("build-llama-cuda: installed llama-cpp-python", llama_cpp.__version__, "with", libs[0].name)
print("build-llama-cuda: llama_supports_gpu_offload():", llama_cpp.llama_supports_gpu_offload())
EOF
