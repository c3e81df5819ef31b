# Two commands do all the set-up on a fresh machine:
#   make demo   installs everything into .venv and runs the main job
#   make test   installs everything and runs the whole suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install install-cuda sysdeps demo test lint bench conformance clean

# Debian packages the tests and the demo use: a real registry and a real peer client.
SYSTEM_TOOLS := docker-registry skopeo zstd

# llama.cpp for CPUs without AMX support in the VM (see docs/runtimes.md and
# ../shared/NOTES.md): a native build dies in ggml_backend_amx_mul_mat here.
# pip's wheel cache keeps the build (about 4 minutes on 2 cores) per machine.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet 'llama-cpp-python==0.3.36'
	$(BIN)/pip install --quiet --config-settings editable_mode=compat -e '.[test,dev,model,llama]'
	touch $(STAMP)

install: $(STAMP)

# llama-cpp-python rebuilt with CUDA for this machine's GPUs (nvcc needed; the
# architecture from nvidia-smi, or CUDA_ARCH=90). See docs/runtimes.md.
install-cuda: $(STAMP)
	PYTHON=$(BIN)/python bash scripts/build-llama-cuda.sh

sysdeps:
	@missing=""; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends$$missing; \
	fi

demo: install sysdeps
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

lint: install
	$(BIN)/ruff check cairn tests bench plugins
	$(BIN)/ruff format --check cairn tests bench plugins
	$(BIN)/mypy

test: install sysdeps lint
	$(BIN)/pytest -q

# The OCI distribution-spec conformance suites against a fresh `cairn registry serve`
# (prebuilt in ../shared/tools/oci-conformance, or CONFORMANCE=DIR); exit 1 on a failure.
CONFORMANCE ?= ../shared/tools/oci-conformance
conformance: install
	bash scripts/conformance.sh $(CONFORMANCE)

bench: install sysdeps
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
