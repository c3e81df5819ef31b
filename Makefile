# Two commands do all the set-up on a fresh machine:
#   make demo   installs everything into .venv and runs the main job
#   make test   installs everything and runs the whole suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install sysdeps demo test lint bench clean

# Debian packages the tests and the demo use: a real registry and a real peer client.
SYSTEM_TOOLS := docker-registry skopeo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --config-settings editable_mode=compat -e '.[test,dev,model]'
	touch $(STAMP)

install: $(STAMP)

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
	$(BIN)/ruff check cairn tests bench
	$(BIN)/ruff format --check cairn tests bench
	$(BIN)/mypy

test: install sysdeps lint
	$(BIN)/pytest -q

bench: install sysdeps
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
